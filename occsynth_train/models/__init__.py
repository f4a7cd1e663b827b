"""The networks: face backbones (backbones/), classification heads (heads.py), the mask losses
of segmentation branches (losses.py) and mixed-precision helpers (amp.py).

Heads are created by name: `create_head("arcface", 512, 10572, s=64.0, m=0.5)`; a head module
registers its factories with `@HEADS.register("name")` and is listed in _registry.py.
"""

from __future__ import annotations

from torch import nn

from ._registry import HEADS


def create_head(name: str, embedding_size: int, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered head, e.g. create_head("arcface", 512, 10572, s=64.0, m=0.5)."""
    return HEADS.create(name, embedding_size=embedding_size, num_classes=num_classes, **kwargs)


def list_heads() -> list[str]:
    return HEADS.names()


__all__ = ["HEADS", "create_head", "list_heads"]
