"""LightCNN-9 / LightCNN-29 (Wu et al., "A Light CNN for Deep Face Representation with Noisy
Labels"): 128x128 input, Max-Feature-Map activations, 256-d embedding.

The original nets take grayscale; `in_channels=1` converts the RGB input to luma inside
forward, so the data path stays RGB. Stage maps: 64, 32, 16 and 8 px (at 128 input).
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import BACKBONES
from .base import Backbone, as_size, down, init_weights


class MFM(nn.Module):
    """Max-Feature-Map: a conv (or linear) with 2*out channels, then the max of the two halves."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int = 1, linear: bool = False):
        super().__init__()
        self.cout = cout
        self.op = nn.Linear(cin, 2 * cout) if linear else nn.Conv2d(cin, 2 * cout, kernel, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(self.op(x), self.cout, dim=1)
        return torch.maximum(a, b)


class Group(nn.Sequential):
    """1x1 MFM then 3x3 MFM (the LightCNN 'group' unit)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(MFM(cin, cin, 1, 1, 0), MFM(cin, cout, 3, 1, 1))


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(MFM(c, c), MFM(c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ToGray(nn.Module):
    """RGB -> luma (ITU-R 601 weights), so grayscale LightCNNs take the RGB data path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3] if x.shape[1] == 3 else x


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(2, 2, ceil_mode=True)


class LightCNN(Backbone):
    def __init__(
        self,
        depth: int = 9,
        embedding_size: int = 256,
        dropout: float = 0.0,
        input_size: int | tuple[int, int] = 128,
        in_channels: int = 3,
    ):
        super().__init__()
        if depth not in (9, 29):
            raise ValueError(f"LightCNN depth must be 9 or 29, got {depth}")
        self.input_size = as_size(input_size)
        self.embedding_size = embedding_size
        self.stage_channels = [48, 96, 192, 128]
        self.stem = ToGray() if in_channels == 1 else nn.Identity()
        res = (lambda c, n: [ResBlock(c) for _ in range(n)]) if depth == 29 else (lambda c, n: [])
        self.stages = nn.ModuleList(
            [
                nn.Sequential(MFM(in_channels, 48, 5, 1, 2), _pool(), *res(48, 1)),
                nn.Sequential(Group(48, 96), _pool(), *res(96, 2)),
                nn.Sequential(Group(96, 192), _pool(), *res(192, 3)),
                nn.Sequential(Group(192, 128), *res(128, 4), Group(128, 128), _pool()),
            ]
        )
        fh, fw = down(self.input_size, 4)
        self.dropout = nn.Dropout(dropout)
        self.fc = MFM(128 * fh * fw, embedding_size, linear=True)
        init_weights(self)

    def forward_head(self, last: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(last, 1)))


@BACKBONES.register("lightcnn9")
def lightcnn9(**kw) -> LightCNN:
    return LightCNN(9, **kw)


@BACKBONES.register("lightcnn29")
def lightcnn29(**kw) -> LightCNN:
    return LightCNN(29, **kw)
