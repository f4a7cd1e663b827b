"""IResNet (improved residual network of ArcFace): 112x112 -> 512-d.

Layout as in insightface's arcface_torch: stride-1 3x3 stem, four stages that each halve the
size (112 -> 56 -> 28 -> 14 -> 7), pre-activation-style blocks BN-conv-BN-PReLU-conv-BN, and the
"BN-Dropout-FC-BN" output head (the final BN1d has a fixed unit scale, so embeddings are not
rescaled by a learnt gamma).
`width` scales the stage widths (64 = the published nets; smaller values are for quick tests).
"""

from __future__ import annotations

import torch
from torch import nn

from ..amp import autocast_off
from ._registry import BACKBONES
from .base import Backbone, as_size, down, init_weights

DEPTHS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 14, 3], 100: [3, 13, 30, 3]}
WIDTHS = [64, 128, 256, 512]


class IBasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin, eps=1e-5),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout, eps=1e-5),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout, eps=1e-5),
        )
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


class IResNet(Backbone):
    def __init__(
        self,
        depth: int = 50,
        embedding_size: int = 512,
        dropout: float = 0.0,
        input_size: int | tuple[int, int] = 112,
        in_channels: int = 3,
        width: int = 64,
    ):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"IResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
        self.input_size = as_size(input_size)
        self.embedding_size = embedding_size
        self.stage_channels = [w * width // 64 for w in WIDTHS]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width, eps=1e-5), nn.PReLU(width)
        )
        stages, cin = [], width
        for cout, blocks in zip(self.stage_channels, DEPTHS[depth]):
            layers = [IBasicBlock(cin, cout, 2)] + [IBasicBlock(cout, cout, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.ModuleList(stages)
        fh, fw = down(self.input_size, 4)
        self.bn = nn.BatchNorm2d(cin, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin * fh * fw, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        init_weights(self)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad_(False)

    def forward_head(self, last: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.bn(last))
        # the FC runs in fp32 under autocast: a 25088-wide fp16 dot product loses precision
        with autocast_off(x):
            x = self.fc(torch.flatten(x, 1).float())
            return self.features(x)


@BACKBONES.register("iresnet18")
def iresnet18(**kw) -> IResNet:
    return IResNet(18, **kw)


@BACKBONES.register("iresnet34")
def iresnet34(**kw) -> IResNet:
    return IResNet(34, **kw)


@BACKBONES.register("iresnet50")
def iresnet50(**kw) -> IResNet:
    return IResNet(50, **kw)


@BACKBONES.register("iresnet100")
def iresnet100(**kw) -> IResNet:
    return IResNet(100, **kw)
