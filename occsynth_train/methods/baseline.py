"""Baseline: backbone + margin head, identity cross-entropy only (occlusion seen as data only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._registry import METHODS
from .base import Method, build_backbone, build_head


@METHODS.register("baseline")
class Baseline(Method):
    name = "baseline"

    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        self.backbone = build_backbone(cfg)
        self.head = build_head(cfg, self.backbone.embedding_size, num_classes)

    def forward(self, batch, step: int) -> dict[str, torch.Tensor]:
        logits = self.head(self.backbone(batch.images), batch.labels)
        return {
            "id": F.cross_entropy(logits, batch.labels),
            "log/acc": (logits.detach().argmax(1) == batch.labels).float().mean(),
        }

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)
