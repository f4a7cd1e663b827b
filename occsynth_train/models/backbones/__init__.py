"""Backbones by name: `create_backbone("iresnet50", embedding_size=512)`.

Every face backbone is a `Backbone` (`stem` + `stages` ModuleList + head): `forward(x)` gives
the [B, D] embedding, `forward_features(x)` the list of stage maps, fine to coarse (what
stage-hooking methods such as MSML/LCD tap), `forward_head(last_stage)` the embedding from the
last map; attributes `input_size`, `embedding_size`, `stage_channels`. The segmentation net
(`resnet18_unet`, see unet.py) instead returns per-pixel occlusion logits and its encoder and
decoder maps (`forward_all`).

A new backbone module registers its factories with `@BACKBONES.register("name")` and is listed in
_registry.py, which imports it on the first lookup.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ._registry import BACKBONES


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered backbone, e.g. create_backbone("iresnet18", dropout=0.0)."""
    return BACKBONES.create(name, **kwargs)


def list_backbones() -> list[str]:
    return BACKBONES.names()


__all__ = ["BACKBONES", "create_backbone", "list_backbones"]
