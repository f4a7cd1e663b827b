"""VGG16 (VGG-Face layout): 224x224, 13 3x3 convs in five pooled blocks, fc6 -> fc7.

Two deliberate departures from VGG-Face, both switchable: BatchNorm after each conv
(`batch_norm=True`, which lets it train from scratch with margin heads) and an fc7 that is the
embedding itself followed by a BN1d instead of ReLU (a ReLU'd embedding is non-negative, a
poor fit for cosine-margin heads). VGG-Face's 4096-d descriptor is `embedding_size=4096`.
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import BACKBONES
from .base import Backbone, as_size, down, init_weights

BLOCKS = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


class VGG(Backbone):
    def __init__(
        self,
        embedding_size: int = 512,
        dropout: float = 0.5,
        input_size: int | tuple[int, int] = 224,
        batch_norm: bool = True,
        in_channels: int = 3,
        hidden: int = 4096,
    ):
        super().__init__()
        self.input_size = as_size(input_size)
        self.embedding_size = embedding_size
        self.stage_channels = [b[-1] for b in BLOCKS]
        self.stem = nn.Identity()
        stages, cin = [], in_channels
        for widths in BLOCKS:
            layers: list[nn.Module] = []
            for w in widths:
                layers += [nn.Conv2d(cin, w, 3, 1, 1, bias=not batch_norm)]
                layers += [nn.BatchNorm2d(w)] if batch_norm else []
                layers += [nn.ReLU(inplace=True)]
                cin = w
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        fh, fw = down(self.input_size, 5)
        self.fc6 = nn.Sequential(nn.Linear(512 * fh * fw, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.fc7 = nn.Linear(hidden, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)
        init_weights(self)

    def forward_head(self, last: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc7(self.fc6(torch.flatten(last, 1))))


@BACKBONES.register("vgg16")
def vgg16(**kw) -> VGG:
    return VGG(**kw)
