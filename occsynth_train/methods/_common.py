"""Small helpers shared by the occlusion methods (msml, pdsn, alob, soidn, lcd)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models.backbones import create_backbone


def opt(cfg, key: str, default):
    """cfg.method_kw[key] or `default` (cfg may be None in unit tests that build modules directly)."""
    if cfg is None:
        return default
    return (cfg.method_kw or {}).get(key, default)


def run_stages(
    backbone: nn.Module, x: torch.Tensor, hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """A face backbone's stage maps with `hook(i, map)` (0-based stage i) applied after each stage,
    its output feeding the next stage: the place where MSML's FM and LCD's dropout act.
    Works for IResNet (stem + stages), LightCNN (grey conversion + stages) and VGG (stages)."""
    if getattr(backbone, "in_channels", 3) == 1 and x.shape[1] == 3:
        x = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    if hasattr(backbone, "stem"):
        x = backbone.stem(x)
    out = []
    for i, stage in enumerate(backbone.stages):
        x = stage(x)
        if hook is not None:
            x = hook(i, x)
        out.append(x)
    return out


def id_terms(logits: torch.Tensor, labels: torch.Tensor, name: str = "id") -> dict[str, torch.Tensor]:
    return {
        name: F.cross_entropy(logits, labels),
        f"log/acc{'' if name == 'id' else '_' + name}": (logits.detach().argmax(1) == labels).float().mean(),
    }


def resize_to(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def seg_targets(masks: torch.Tensor, size) -> torch.Tensor:
    """Occsynth masks float [B,1,H,W] (1 = occluded) -> long class map [B,h,w] at `size` (nearest
    keeps them binary)."""
    if tuple(masks.shape[-2:]) != tuple(size):
        masks = F.interpolate(masks.float(), size=tuple(size), mode="nearest")
    return masks[:, 0].round().long()


def scaled_unet(width: int = 64, out_channels: int = 1, input_size=112):
    """The core ResNet-18 U-Net (models/backbones/unet.py) at a stem width (64 = the standard net):
    narrow segmentation branches keep the CPU tests fast."""
    return create_backbone("resnet18_unet", out_channels=out_channels, input_size=input_size, width=width)
