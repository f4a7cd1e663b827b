"""Backbones by name: `create_backbone("iresnet50", embedding_size=512)`.

Every face backbone is a `Backbone` (`stem` + `stages` ModuleList + head): `forward(x)` gives
the [B, D] embedding, `forward_features(x)` the list of stage maps, fine to coarse (what
stage-hooking methods such as MSML/LCD tap), `forward_head(last_stage)` the embedding from the
last map; attributes `input_size`, `embedding_size`, `stage_channels`. The segmentation net
(`resnet18_unet`, see unet.py) instead returns per-pixel occlusion logits and its encoder and
decoder maps (`forward_all`).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ...registry import Registry
from .base import Backbone

BACKBONES: Registry[nn.Module] = Registry("backbone")
register_backbone = BACKBONES.register


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered backbone, e.g. create_backbone("iresnet18", dropout=0.0)."""
    return BACKBONES.create(name, **kwargs)


def list_backbones() -> list[str]:
    return BACKBONES.names()


# Modules register on import (kept at the bottom: they import `register_backbone` from here).
from . import iresnet, lightcnn, unet, vgg  # noqa: E402,F401

__all__ = ["BACKBONES", "Backbone", "create_backbone", "list_backbones", "register_backbone"]
