"""An occsynth dataset directory as training sees it: shard list, per-sample index, raw samples and
their decoding. Reading goes through occsynth.io.dataset and occsynth.io.tar (the project's one
dataset reader and one tar reader)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from occsynth import contract
from occsynth.io.dataset import Dataset
from occsynth.io.tar import iter_shard

IMAGE_EXTS = (contract.EXT_IMAGE_PNG, contract.EXT_IMAGE_JPG)


@dataclass(frozen=True)
class ShardInfo:
    path: str
    num_samples: int


def read_manifest(root: str | Path) -> dict:
    return Dataset(root).manifest


def list_shards(root: str | Path) -> list[ShardInfo]:
    """The dataset's shards with their sample counts, from manifest.json."""
    return [ShardInfo(str(s.path), s.num_samples) for s in Dataset(root).shards]


def read_index(root: str | Path) -> list[dict]:
    """Per-sample metadata in key order: index.jsonl, or the shards' json members without it."""
    return Dataset(root).index()


def dataset_image_size(roots: Sequence[str | Path]) -> tuple[int, int]:
    """(H, W) shared by all datasets (from their manifests)."""
    sizes = set()
    for root in roots:
        w, h = Dataset(root).image_size  # contract sizes are [width, height]
        sizes.add((h, w))
    if len(sizes) != 1:
        raise ValueError(f"training datasets have different image sizes {sorted(sizes)}; build them with one template")
    return sizes.pop()


# ---------------------------------------------------------------- raw samples
def tar_samples(path: str) -> Iterator[dict]:
    """Samples of one shard as {ext: bytes, "__key__": key, "__url__": path} (occsynth's one tar
    reader; the dict form is webdataset's, so either can feed the stream)."""
    for key, members in iter_shard(path):
        yield {**members, "__key__": key, "__url__": path}


def image_ext(sample: dict) -> str:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext
    raise KeyError(f"sample {sample.get('__key__')!r} in {sample.get('__url__')} has no image member")


def decode_rgb(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("cannot decode image member")
    # BGR -> RGB by slicing, not cv2.cvtColor: that would start OpenCV's thread pool, and a pool
    # inherited through fork() deadlocks DataLoader workers that touch it
    return image[:, :, ::-1]


def decode_mask(data: bytes) -> np.ndarray:
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError("cannot decode mask member")
    return (mask >= 128).astype(np.uint8)  # contract: 255 = occluded
