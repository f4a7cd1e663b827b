"""What a build is: its config (what determines the bytes), its plan of samples, its tasks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from occsynth.errors import UsageError
from occsynth.faces.detect import POLICIES
from occsynth.faces.templates import ALIASES, DEFAULT_TEMPLATE, TEMPLATES

ON_NO_FACE = ("skip", "center-crop", "fail")
# What a build does on an image where detection found no face, before on_no_face: "padded"
# detects again with the image in the middle of a larger canvas (FaceDetector.detect_padded;
# recorded as align_mode "detected-padded"), "none" goes straight to on_no_face (builds made
# before the padded re-detection existed, and their locks).
REDETECT = ("padded", "none")
FORMATS = ("png", "jpg")
# integer settings: (name, lowest, highest or None)
INT_RANGES = (
    ("seed", -(2**63), 2**63 - 1),
    ("jpeg_quality", 1, 100),
    ("shard_size", 1, None),
    ("min_face_size", 1, None),
    ("detect_batch", 1, None),
    ("max_pixels", 1, None),
)


@dataclass(frozen=True)
class PlannedSample:
    key: str  # member prefix in the shard; plans are sorted by it
    sample_id: str  # the per-sample seed derives from (global seed, sample_id)
    item: Any  # sources.SourceItem of the source image
    spec: str = ""  # name of an occlusion spec in BuildConfig.specs ("" = clean)
    extra: dict = field(default_factory=dict)  # builder metadata (pair, fold, side, ...)
    # False for an image with real occlusion (MFR2's masks, AR's sunglasses): its pixel mask is
    # unknown, and the sample says so (contract.MASK_KNOWN)
    mask_known: bool = True


@dataclass
class BuildConfig:
    name: str = "align"
    template: str = DEFAULT_TEMPLATE
    seed: int = 0
    specs: dict[str, Any] = field(default_factory=lambda: {"": None})
    on_no_face: str = "skip"
    redetect: str = "padded"
    multi_face: str = "center"
    aligned_input: bool = False
    image_format: str = "png"
    jpeg_quality: int = 95
    keep_clean: bool = False
    shard_size: int = 1000
    min_face_size: int = 40  # detect.DEFAULT_MIN_FACE_SIZE: right for LFW-like crops
    detect_batch: int = 1
    device: str = "cpu"
    max_pixels: int = 64_000_000
    landmark_files: tuple[str, ...] = ()  # landmarks.jsonl files to reuse detections from

    def validate(self) -> None:
        """UsageError naming the first value of the wrong type or out of its range."""
        for name, lo, hi in INT_RANGES:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise UsageError(f"{name} must be an integer, got {value!r}")
            if value < lo or (hi is not None and value > hi):
                raise UsageError(f"{name} must be in [{lo}, {'inf' if hi is None else hi}], got {value}")
        if self.template not in TEMPLATES and self.template not in ALIASES:
            raise UsageError(f"unknown template {self.template!r}; choose from {', '.join(TEMPLATES)}")
        for name, allowed in (
            ("on_no_face", ON_NO_FACE),
            ("redetect", REDETECT),
            ("multi_face", POLICIES),
            ("image_format", FORMATS),
        ):
            if getattr(self, name) not in allowed:
                raise UsageError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("aligned_input", "keep_clean"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.specs, dict) or "" not in self.specs:
            raise UsageError("specs must be a mapping of spec names that includes '' (clean)")

    def content(self) -> dict:
        """What determines the shards' bytes (not where or how fast they are made)."""
        data = asdict(self)
        for transient in ("device", "landmark_files"):
            data.pop(transient)
        return data

    def detector_settings(self) -> dict:
        return {"min_face_size": self.min_face_size, "max_pixels": self.max_pixels, "batch": self.detect_batch}


class NoFaceError(RuntimeError):
    """Raised with on_no_face='fail': the whole run stops."""


class BuildFailed(RuntimeError):
    """A build that ran but did not make its plan: no sample written, or too many failures."""


@dataclass
class ShardTask:
    index: int
    out_dir: str
    source: Any
    samples: list[PlannedSample]
    config: BuildConfig
    # a folder where the shard's aligned faces are kept for another dataset of the same build
    # that has the same images (stages.save_aligned), or None; never changes the output bytes
    scratch: str | None = None
    # send the samples' metadata parsed back (as a reader of index.jsonl gets it) with the result:
    # a builder's protocol files and card read it right after (pipeline.build_all); never
    # changes the output bytes
    parse_index: bool = True
    # (k, n): these samples are part k of n of shard `index` (a contiguous run of its samples in
    # plan order), written for the parent to join (shard.join_parts); None: the whole shard
    part: tuple[int, int] | None = None
