"""What a build is: its config (what determines the bytes), its plan of samples, its tasks."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from occsynth.faces.detect import POLICIES
from occsynth.faces.templates import DEFAULT_TEMPLATE, get_template

ON_NO_FACE = ("skip", "center-crop", "fail")


@dataclass(frozen=True)
class PlannedSample:
    key: str          # member prefix in the shard; plans are sorted by it
    sample_id: str    # the per-sample seed derives from (global seed, sample_id)
    item: Any         # sources.SourceItem of the source image
    spec: str = ""    # name of an occlusion spec in BuildConfig.specs ("" = clean)
    extra: dict = field(default_factory=dict)  # builder metadata (pair, fold, side, ...)


@dataclass
class BuildConfig:
    name: str = "align"
    template: str = DEFAULT_TEMPLATE
    seed: int = 0
    specs: dict[str, Any] = field(default_factory=lambda: {"": None})
    on_no_face: str = "skip"
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
        get_template(self.template)
        if self.on_no_face not in ON_NO_FACE:
            raise ValueError(f"on_no_face must be one of {ON_NO_FACE}, got {self.on_no_face!r}")
        if self.multi_face not in POLICIES:
            raise ValueError(f"multi_face must be one of {POLICIES}, got {self.multi_face!r}")
        if self.image_format not in ("png", "jpg"):
            raise ValueError(f"image_format must be png or jpg, got {self.image_format!r}")
        if self.shard_size < 1:
            raise ValueError("shard_size must be >= 1")

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


@dataclass
class ShardTask:
    index: int
    out_dir: str
    source: Any
    samples: list[PlannedSample]
    config: BuildConfig
