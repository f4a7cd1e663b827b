"""occsynth's batched occluders as a torchvision.transforms.v2-style transform.

    from torchvision.transforms import v2
    from occsynth.adapters.torchvision import OccludeBatch

    augment = v2.Compose([OccludeBatch("0.5*clean | 0.5*ellipse(ratio=0.1..0.4)", seed=0), v2.ToDtype(torch.float32, scale=True)])
    out = augment({"image": tv_tensors.Image(images), "landmarks": landmarks})   # images [B, 3, H, W]

Written against v2's documented protocol for custom transforms (an `nn.Module` whose forward
takes what the pipeline passes and returns the same structure; tv_tensors are Tensor subclasses
and keep their type), without importing torchvision: it is only recognised by its types when the
caller already uses it, so this module works with plain tensors too.

Input: an image batch [B, 3, H, W] (uint8, or float in `value_range`, default [0, 1]; a plain
tensor or a tv_tensors.Image), or a dict with "image", optional "landmarks" [B, 5, 2] (a tensor
or tv_tensors.KeyPoints; or `template=` for aligned crops; the geometric families need none) and
optional "mask" [B, 1, H, W] or [B, H, W] (bool: united; uint8: occluded pixels set to 255).
A dict comes back with "image" occluded and "mask" (the union, or the occlusion mask as bool
[B, 1, H, W], a tv_tensors.Mask when the image was a tv_tensors.Image); a batch comes back as a
batch. Other keys pass through untouched.

Randomness: every call draws from one torch.Generator (`generator=`, or one seeded with `seed`).
The output is exactly `TorchOccluder(spec)(images, landmarks, generator)` for a generator in the
same state: the batched path of occsynth (occluders/torch), whose families follow the CPU
algorithms in distribution but not sample by sample (see TorchOccluder). For the per-image CPU
path use the albumentations or webdataset adapters, which equal `occsynth.occlude`.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from occsynth.adapters.landmarks import template_points
from occsynth.contract import MASK_OCCLUDED
from occsynth.occluders.torch import TensorBank, TorchOccluder

__all__ = ["OccludeBatch"]


def _tv_tensors():
    """torchvision.tv_tensors when the caller has imported it, else None (never imported here)."""
    return sys.modules.get("torchvision.tv_tensors")


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(torch.Tensor) if type(t) is not torch.Tensor else t


class OccludeBatch(nn.Module):
    """Occlude a batch of aligned faces with an occsynth spec (the module doc)."""

    def __init__(
        self,
        spec: Any,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        template: str | None = None,
        device: str | torch.device = "cpu",
        banks: dict[str, TensorBank] | None = None,
        value_range: tuple[float, float] | None = None,
    ):
        super().__init__()
        if generator is not None and seed is not None:
            raise ValueError("OccludeBatch: give seed or generator, not both")
        self.occluder = TorchOccluder(spec, device=device, banks=banks, value_range=value_range)
        self.spec, self.template = spec, template
        if generator is None:
            generator = torch.Generator(device=torch.device(device))
            generator.manual_seed(int(seed) if seed is not None else int(torch.seed()))
        self.generator = generator

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}" + (f", template={self.template!r}" if self.template else "")

    def _landmarks(self, landmarks, images: torch.Tensor) -> torch.Tensor | None:
        b, _, h, w = images.shape
        if landmarks is None:
            if self.template is None:
                return None
            points = torch.as_tensor(template_points(self.template, h, w), dtype=torch.float32)
            return points.expand(b, 5, 2)
        lm = _plain(torch.as_tensor(landmarks)).float()
        if lm.shape != (b, 5, 2):
            raise ValueError(f"OccludeBatch: landmarks must be [{b}, 5, 2] for {b} images, got {tuple(lm.shape)}")
        return lm

    def forward(self, *inputs: Any) -> Any:
        if len(inputs) != 1:
            raise TypeError(
                f"OccludeBatch takes one input (an image batch or a dict with 'image'), got {len(inputs)}: "
                "put the landmarks and mask in a dict"
            )
        sample = inputs[0]
        if isinstance(sample, torch.Tensor):
            return self._occlude(sample, None)[0]
        if not isinstance(sample, dict) or "image" not in sample:
            keys = f" with keys {sorted(map(str, sample))}" if isinstance(sample, dict) else ""
            raise TypeError(
                f"OccludeBatch takes an image batch or a dict with 'image' (and optional 'landmarks', 'mask'); "
                f"got {type(sample).__name__}{keys}"
            )
        images, occluded = self._occlude(sample["image"], sample.get("landmarks"))
        out = dict(sample)
        out["image"] = images
        out["mask"] = self._mask(sample.get("mask"), occluded, sample["image"])
        return out

    def _occlude(self, images: torch.Tensor, landmarks) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"OccludeBatch: images must be a [B, 3, H, W] batch, got {shape}")
        plain = _plain(images)
        out, mask = self.occluder(plain, self._landmarks(landmarks, plain), self.generator)
        if type(images) is not torch.Tensor:
            out = out.as_subclass(type(images))  # a tv_tensors.Image stays one
        return out, mask

    def _mask(self, given, occluded: torch.Tensor, images) -> torch.Tensor:
        if given is None:
            tv = _tv_tensors()
            if tv is not None and isinstance(images, tv.Image):
                return occluded.as_subclass(tv.Mask)
            return occluded
        plain = _plain(given)
        hit = occluded if plain.ndim == 4 else occluded[:, 0]
        if plain.shape != hit.shape:
            raise ValueError(f"OccludeBatch: mask {tuple(plain.shape)} does not match the images' {tuple(hit.shape)}")
        if plain.dtype == torch.bool:
            merged = plain | hit
        elif plain.dtype == torch.uint8:
            merged = torch.where(hit, torch.tensor(MASK_OCCLUDED, dtype=torch.uint8, device=plain.device), plain)
        else:
            raise ValueError(f"OccludeBatch: mask must be bool or uint8 (255 = occluded), got {plain.dtype}")
        return merged.as_subclass(type(given)) if type(given) is not torch.Tensor else merged
