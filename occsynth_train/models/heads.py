"""Classification heads for identity training: margin-based softmax and plain softmax.

A head maps (embeddings [B, D], labels [B]) -> logits [B, C] with the margin already applied
to each sample's target class, so the loss is plain `F.cross_entropy(logits, labels)`.
Heads compute in fp32 whatever autocast says: margins on cosines near +-1 are where fp16/bf16
rounding breaks the arccos/sqrt maths.

Combined margin (insightface): target logit = s * (cos(m1 * theta + m2) - m3)
  ArcFace  m1=1, m2=0.5, m3=0      (s=64)
  CosFace  m1=1, m2=0,   m3=0.35   (s=30 in the paper's LFW setting; insightface uses m3=0.4, s=64)
  SphereFace-like m1>1 is allowed but only stable with the usual annealing, which is not here.

Stability (arcface_torch's rule): cos(theta + m2) decreases with theta only while
theta + m2 <= pi. Past that point (cos(theta) <= cos(pi - m2)) the target logit becomes the
linear fallback cos(theta) - m2 * sin(m2), which stays monotonic and below the un-margined
cosine. sin(theta) is sqrt(max(1 - cos^2, 1e-6)): its gradient (like arccos') is infinite at
cos = +-1 without the floor.
`easy_margin=True` instead applies the margin only where cos(theta) > 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import HEADS
from .amp import autocast_off


class CombinedMarginHead(nn.Module):
    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        easy_margin: bool = False,
    ):
        super().__init__()
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.easy_margin = easy_margin
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, 0, 0.01)
        # arcface_torch's fallback constants: below cos(pi - m2), use cos - sin(pi - m2) * m2
        self.th = math.cos(math.pi - self.m2)
        self.mm = math.sin(math.pi - self.m2) * self.m2

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine between each embedding and each class centre, [B, C], fp32."""
        with autocast_off(embeddings):
            return F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float())).clamp(-1.0, 1.0)

    def target_logit(self, cos_t: torch.Tensor) -> torch.Tensor:
        """The margin-applied cosine of the target class (before scaling by s)."""
        if self.m1 != 1.0:
            theta = torch.acos(cos_t.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
            out = torch.cos(self.m1 * theta + self.m2) - self.m3
        elif self.m2 != 0.0:
            sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp(min=1e-6))
            phi = cos_t * math.cos(self.m2) - sin_t * math.sin(self.m2)  # cos(theta + m2)
            if self.easy_margin:
                phi = torch.where(cos_t > 0, phi, cos_t)
            else:
                phi = torch.where(cos_t > self.th, phi, cos_t - self.mm)
            out = phi - self.m3
        else:
            out = cos_t - self.m3
        return out

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosine(embeddings)
        index = labels.view(-1, 1).long()
        target = self.target_logit(cos.gather(1, index))
        return cos.scatter(1, index, target) * self.s


@HEADS.register("arcface")
def arcface(embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5, easy_margin: bool = False):
    return CombinedMarginHead(embedding_size, num_classes, s=s, m1=1.0, m2=m, m3=0.0, easy_margin=easy_margin)


@HEADS.register("cosface")
def cosface(embedding_size: int, num_classes: int, s: float = 30.0, m: float = 0.35):
    return CombinedMarginHead(embedding_size, num_classes, s=s, m1=1.0, m2=0.0, m3=m)


@HEADS.register("combined")
def combined(
    embedding_size: int,
    num_classes: int,
    s: float = 64.0,
    m1: float = 1.0,
    m2: float = 0.5,
    m3: float = 0.0,
    easy_margin: bool = False,
):
    return CombinedMarginHead(embedding_size, num_classes, s=s, m1=m1, m2=m2, m3=m3, easy_margin=easy_margin)


class SoftmaxHead(nn.Module):
    """Plain linear classifier (with bias): the softmax baseline."""

    def __init__(self, embedding_size: int, num_classes: int, bias: bool = True):
        super().__init__()
        self.fc = nn.Linear(embedding_size, num_classes, bias=bias)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        with autocast_off(embeddings):
            return self.fc(embeddings.float())


@HEADS.register("softmax")
def softmax(embedding_size: int, num_classes: int, bias: bool = True):
    return SoftmaxHead(embedding_size, num_classes, bias=bias)
