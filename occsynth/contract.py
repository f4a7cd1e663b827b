"""The occsynth data contract: what a dataset directory holds and what each sample carries.

Everything downstream (verify, preview, benchmarks, occsynth_train) reads datasets through the
names defined here, so a change of layout is a change of this one file.

A dataset directory::

    00000.tar            WebDataset-style shard; members per sample:
                           <key>.png        aligned RGB image (or <key>.jpg when JPEG was asked for)
                           <key>.mask.png   uint8 L, 255 = occluded, 0 = visible (all 0 when clean)
                           <key>.json       sample metadata (see SAMPLE_REQUIRED_FIELDS)
                           <key>.clean.png  optional: the same face before occlusion
    00000.maps.npy       per-shard occlusion and RGB sums per pixel, written while the shard is
                         (the card's heat map without decoding a mask again)
    00000.stats.json     per-shard record written after the shard (sha256, samples, failures);
                         a shard counts as finished only when both files exist (resume)
    manifest.json        tool version, command, config, seed, template, shards, totals, stats
    index.jsonl          one line of metadata per written sample, in key order
    failures.jsonl       one line per input that produced no sample: key, source, stage, reason

A sample with `"mask_known": false` (MASK_KNOWN) shows a REAL occlusion its mask does not hold.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np

SHARD_PATTERN = "{:05d}.tar"
SHARD_STATS_PATTERN = "{:05d}.stats.json"
SHARD_MAPS_PATTERN = "{:05d}.maps.npy"
# parts of a shard built by several workers (build/shard.py), joined into the shard by the parent
SHARD_PARTS_DIR = ".occsynth-parts"
SHARD_PART_PATTERN = "{:05d}.part{:d}.tar"
MANIFEST = "manifest.json"
INDEX = "index.jsonl"
FAILURES = "failures.jsonl"
LANDMARKS = "landmarks.jsonl"  # the detections a build used (and the machine-wide store's file)

EXT_IMAGE_PNG = "png"
EXT_IMAGE_JPG = "jpg"
EXT_MASK = "mask.png"
EXT_META = "json"
EXT_CLEAN = "clean.png"

MASK_OCCLUDED = 255
MASK_VISIBLE = 0
# The image is RGB; PNG/JPEG members hold it in that order once decoded by PIL/webdataset.

SAMPLE_REQUIRED_FIELDS = (
    "key",  # the member prefix in the shard, unique within the dataset
    "sample_id",  # logical id the seed is derived from (stable across builds)
    "identity",  # identity name (folder name in identity-folder datasets)
    "source",  # source image path relative to the source root
    "template",  # alignment template name, e.g. "arcface-112x112"
    "image_size",  # [width, height] of the written image
    "landmarks",  # 5x[x, y] in the written image (eye L, eye R, nose, mouth L, mouth R)
    "seed",  # per-sample seed, derived from (global seed, sample_id)
    "occluders",  # list of {"family", "name", "params", ...}; [] when clean
    "occlusion_ratio",  # occluded pixels / all pixels of the written image
)

# Optional sample field. `"mask_known": false` marks a face with REAL occlusion (MFR2's masks,
# AR's sunglasses and scarves) whose pixel mask is unknown: its mask member is all 0 and its
# occlusion_ratio 0.0 only because nothing synthetic was added, NOT because the face is clean.
# Absent (the norm: every synthetic sample) means the mask is exact. Anything that trusts masks
# (mask losses, mask IoU, occlusion statistics) must skip or refuse such samples: mask_known().
MASK_KNOWN = "mask_known"

FAILURE_FIELDS = ("key", "sample_id", "source", "stage", "reason")
FAILURE_STAGES = ("read", "decode", "detect", "align", "occlude", "encode", "protocol")


def shard_name(index: int) -> str:
    return SHARD_PATTERN.format(index)


def shard_stats_name(index: int) -> str:
    return SHARD_STATS_PATTERN.format(index)


def shard_maps_name(index: int) -> str:
    return SHARD_MAPS_PATTERN.format(index)


def shard_part_name(index: int, part: int) -> str:
    return SHARD_PARTS_DIR + "/" + SHARD_PART_PATTERN.format(index, part)


def _jsonable(obj: Any) -> Any:
    """Numpy scalars/arrays to plain Python; NaN/inf refused (they are not JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if not math.isfinite(value):
            raise ValueError(f"non-finite number {value!r} cannot be written to JSON")
        return value
    return obj


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# one encoder for every call: json.dumps with options builds a new JSONEncoder each time, which
# cost as much as encoding a sample's metadata
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_default
)


def dumps(obj: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, so equal metadata gives equal bytes.

    numpy values are converted by json's C encoder hook (no Python pre-walk: this runs for
    every sample); NaN/inf are refused."""
    try:
        return _ENCODER.encode(obj)
    except ValueError as exc:
        raise ValueError(f"non-finite number cannot be written to JSON ({exc})") from None


def dumps_lines(rows: Iterable[Any]) -> str:
    return "".join(dumps(r) + "\n" for r in rows)


def occlusion_ratio(mask: np.ndarray) -> float:
    """Fraction of occluded pixels of a contract mask (uint8, 255 = occluded)."""
    if mask.size == 0:
        return 0.0
    return float(np.count_nonzero(mask >= 128)) / float(mask.size)


def round_points(points: np.ndarray | list, decimals: int = 3) -> np.ndarray:
    """Landmarks are rounded before use so that the stored value IS the value used:
    a rebuild from stored landmarks then reproduces the detected build byte for byte."""
    return np.asarray(points, dtype=np.float64).round(decimals)  # np.round's own call, without its wrapper


def mask_known(meta: dict) -> bool:
    """Whether a sample's mask is exact (False for real occlusions: see MASK_KNOWN)."""
    return meta.get(MASK_KNOWN, True) is not False


def validate_sample_meta(meta: dict) -> list[str]:
    """Return a list of contract violations of one sample's metadata ([] when valid)."""
    problems = [f"missing field {name!r}" for name in SAMPLE_REQUIRED_FIELDS if name not in meta]
    if problems:
        return problems
    size = meta["image_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        problems.append(f"image_size must be [width, height] of positive ints, got {size!r}")
    lm = np.asarray(meta["landmarks"], dtype=float)
    if lm.shape != (5, 2):
        problems.append(f"landmarks must be 5x2, got shape {lm.shape}")
    ratio = meta["occlusion_ratio"]
    if not (isinstance(ratio, (int, float)) and 0.0 <= ratio <= 1.0):
        problems.append(f"occlusion_ratio must be in [0, 1], got {ratio!r}")
    if MASK_KNOWN in meta and meta[MASK_KNOWN] is not False:
        problems.append(f"{MASK_KNOWN} is written only as false, got {meta[MASK_KNOWN]!r}")
    if not isinstance(meta["occluders"], list):
        problems.append("occluders must be a list")
    else:
        for i, occ in enumerate(meta["occluders"]):
            for field in ("family", "name", "params"):
                if field not in occ:
                    problems.append(f"occluders[{i}] lacks {field!r}")
    return problems


# ---------------------------------------------------------------- failure records
# An input that yields no sample is written down (failures.jsonl), never silently dropped.


@dataclass(frozen=True)
class Failure:
    key: str
    sample_id: str
    source: str
    stage: str
    reason: str

    def __post_init__(self) -> None:
        if self.stage not in FAILURE_STAGES:
            raise ValueError(f"unknown failure stage {self.stage!r}; expected one of {FAILURE_STAGES}")

    def to_dict(self) -> dict:
        return asdict(self)


class SampleError(Exception):
    """Raised inside the per-sample pipeline; becomes a Failure record for that sample."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
