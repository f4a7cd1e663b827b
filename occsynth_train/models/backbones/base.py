"""The common face-backbone interface."""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """Image [B, 3, H, W] -> embedding [B, embedding_size], with its stage maps on request.

    Layout every face backbone follows: `stem` (a module, possibly Identity), `stages` (a
    ModuleList, each stage downsamples once), and a head taking the last stage map. Methods that
    act between stages (e.g. mask a middle map, then go on) run `stem` and `stages[i]` directly.
    """

    input_size: tuple[int, int]  # (H, W) the head's flatten size was built for
    embedding_size: int
    stage_channels: list[int]  # channels of each map forward_features returns
    stem: nn.Module
    stages: nn.ModuleList

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage, fine to coarse."""
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def forward_head(self, last: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[-1])


def as_size(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def down(size: tuple[int, int], times: int) -> tuple[int, int]:
    """Spatial size after `times` stride-2 stages with ceil rounding (3x3/pad 1 and ceil pools)."""
    h, w = size
    for _ in range(times):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def init_weights(module: nn.Module) -> None:
    if any(p.is_meta for p in module.parameters()):
        return  # a shape-only build (device "meta"): nothing to initialise
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
