"""An occsynth dataset directory on disk (see occsynth/contract.py): its manifest, shard list and
per-sample index, and the members of its tar shards (raw samples and their decoding)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from webdataset.tariterators import tarfile_samples

from occsynth import contract

IMAGE_EXTS = (contract.EXT_IMAGE_PNG, contract.EXT_IMAGE_JPG)


@dataclass(frozen=True)
class ShardInfo:
    path: str
    num_samples: int


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / contract.MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {root} is not a finished occsynth dataset")
    return json.loads(path.read_text())


def list_shards(root: str | Path) -> list[ShardInfo]:
    """The dataset's shards with their sample counts, from manifest.json."""
    root = Path(root)
    shards = []
    for entry in read_manifest(root)["shards"]:
        # the pipeline writes "shard", the contract notes say "name": accept both
        name = entry.get("name", entry.get("shard"))
        shards.append(ShardInfo(str(root / name), int(entry["num_samples"])))
    return sorted(shards, key=lambda s: s.path)


def read_index(root: str | Path) -> list[dict]:
    """Per-sample metadata in key order: index.jsonl, or the shards' json members without it."""
    root = Path(root)
    path = root / contract.INDEX
    if path.exists():
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    metas = []
    for shard in list_shards(root):
        for sample in tar_samples(shard.path):
            metas.append(json.loads(sample[contract.EXT_META]))
    return sorted(metas, key=lambda m: m["key"])


def dataset_image_size(roots: Sequence[str | Path]) -> tuple[int, int]:
    """(H, W) shared by all datasets (from their manifests or first sample)."""
    sizes = set()
    for root in roots:
        manifest = read_manifest(root)
        size = manifest.get("image_size")
        if size is None:
            size = read_index(root)[0]["image_size"]
        sizes.add((int(size[1]), int(size[0])))  # contract sizes are [width, height]
    if len(sizes) != 1:
        raise ValueError(f"training datasets have different image sizes {sorted(sizes)}; build them with one template")
    return sizes.pop()



# ---------------------------------------------------------------- raw samples
def tar_samples(path: str) -> Iterator[dict]:
    """Samples of one tar as {ext: bytes, "__key__": key} (webdataset's key/extension rule)."""
    for sample in tarfile_samples([{"url": path}]):
        yield sample


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
