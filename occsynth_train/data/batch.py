"""The training batch: decoded samples collated into uint8 tensors in the loader workers
(`collate`), then moved to the device, occluded online (optional), resized and normalised to
[-1, 1] as a `Batch` (`prepare_batch`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from occsynth.occluders.torch import TorchOccluder


def collate(samples: list[dict]) -> dict:
    """Stack decoded samples into uint8 tensors; `clean` falls back to the image itself."""
    images = np.stack([s["image"] for s in samples])
    has_clean = [s["clean"] is not None for s in samples]
    clean = np.stack([s["clean"] if s["clean"] is not None else s["image"] for s in samples])
    return {
        "images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        "masks": torch.from_numpy(np.stack([s["mask"] for s in samples]))[:, None].contiguous(),
        "clean": torch.from_numpy(clean).permute(0, 3, 1, 2).contiguous(),
        "has_clean": torch.tensor(has_clean, dtype=torch.bool),
        "labels": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        "landmarks": torch.from_numpy(np.stack([s["landmarks"] for s in samples])),
        "keys": [s["key"] for s in samples],
        "meta": [s.get("meta") or {} for s in samples],
    }


@dataclass
class Batch:
    """One training batch on the device.

    images    float [B, 3, H, W], RGB normalised to [-1, 1] ((x / 255 - 0.5) / 0.5)
    masks     float [B, 1, H, W], 1 = occluded (stored mask, united with any online occlusion)
    labels    long  [B], contiguous identity ids (labels.json)
    landmarks float [B, 5, 2] in pixels of `images`
    clean     float like images: the same face unoccluded where has_clean, else the image itself
    has_clean bool  [B]
    keys      sample keys (for debugging / logging)
    meta      per sample {"occluders": the shard's occluder records, "extra": its extra dict,
              "flipped": whether the loader mirrored it (records keep the unflipped geometry)}
    """

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    landmarks: torch.Tensor
    clean: torch.Tensor
    has_clean: torch.Tensor
    keys: list[str]
    meta: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]


def load_online_occluder(spec: Any, device: torch.device) -> TorchOccluder:
    """The on-device occluder of occsynth for an occlusion spec (data.online_occlusion)."""
    return TorchOccluder(spec, device)


def normalize(images01: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> the models' input range [-1, 1] (training batches and evaluation alike)."""
    return (images01 - 0.5) / 0.5


def prepare_batch(
    raw: dict,
    device: torch.device,
    *,
    input_size: tuple[int, int] | None = None,
    occluder=None,
    generator: torch.Generator | None = None,
    channels_last: bool = False,
) -> Batch:
    """Move a collated batch to `device`, occlude online (optional), resize, normalise.

    The online occluder is called as `occluder(images, landmarks, generator)` with images float
    in [0, 1] on the device and returns (images, masks bool [B, 1, H, W]). Samples that were
    stored clean (empty mask) and had no clean counterpart get their pre-occlusion image as one.
    """
    nb = device.type == "cuda"
    images = raw["images"].to(device, non_blocking=nb).float().div_(255.0)
    masks = raw["masks"].to(device, non_blocking=nb).bool()
    clean = raw["clean"].to(device, non_blocking=nb).float().div_(255.0)
    has_clean = raw["has_clean"].to(device, non_blocking=nb)
    landmarks = raw["landmarks"].to(device, non_blocking=nb).float()
    labels = raw["labels"].to(device, non_blocking=nb)
    if occluder is not None:
        stored_clean = ~masks.flatten(1).any(1)
        adopt = stored_clean & ~has_clean
        clean = torch.where(adopt.view(-1, 1, 1, 1), images, clean)
        has_clean = has_clean | adopt
        images, new_masks = occluder(images, landmarks, generator)
        masks = masks | new_masks.bool()
    masks = masks.float()
    if input_size is not None and tuple(images.shape[-2:]) != tuple(input_size):
        h, w = images.shape[-2:]
        images = F.interpolate(images, size=input_size, mode="bilinear", align_corners=False, antialias=True)
        clean = F.interpolate(clean, size=input_size, mode="bilinear", align_corners=False, antialias=True)
        masks = F.interpolate(masks, size=input_size, mode="nearest")
        scale = torch.tensor([input_size[1] / w, input_size[0] / h], device=device)
        landmarks = (landmarks + 0.5) * scale - 0.5
    images, clean = normalize(images), normalize(clean)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
        clean = clean.contiguous(memory_format=torch.channels_last)
    meta = list(raw.get("meta") or [{} for _ in raw["keys"]])
    return Batch(images, masks, labels, landmarks, clean, has_clean, list(raw["keys"]), meta)
