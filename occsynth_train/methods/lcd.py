"""LCD (learning with channel-wise dropout for occlusion-robust face recognition).

On an IResNet:
  * channel-wise dropout at the end of stage 3 (training only): per sample, n = floor(gamma * C)
    whole channels are zeroed, gamma ~ U[gamma_min, gamma_max] drawn per sample; survivors are
    scaled by C / (C - n) so the map's expected magnitude matches eval time (where nothing is
    dropped). Zeroed channels mimic features destroyed by an occluder.
  * spatial attention module (SAM) on the stage-4 map X [B, C, h, w]: 1x1 conv (C -> 1) gives a
    spatial response, FC(h*w -> hidden) + ReLU + FC(hidden -> C) + sigmoid turns where the
    response lies into per-channel weights; X * w goes to the output head.
  * spatial regularisation: filter orthogonality of the stage-4 convolutions
    (mean squared off-diagonal of the row-normalised Gram of each weight, weight 100) and
    response orthogonality of the stage-4 channels (mean squared off-diagonal of the
    normalised channel-response Gram, weight 1), so channels carry non-redundant evidence and
    losing some to occlusion (or dropout) hurts less.
  * ArcFace (s = 64, m = 0.5) via cfg.model.head.

method_kw: gamma_min 0.0, gamma_max 0.3, filter_orth 100.0, response_orth 1.0, sam_hidden 128,
sam: true, dropout: true.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.backbones.base import down
from ._common import id_terms, opt, run_stages
from ._registry import METHODS
from .base import Method, build_backbone, build_head


class ChannelDropout(nn.Module):
    """Zero floor(gamma * C) whole channels per sample, gamma ~ U[gamma_min, gamma_max] (training)."""

    def __init__(self, gamma_min: float = 0.0, gamma_max: float = 0.3, rescale: bool = True):
        super().__init__()
        if not 0.0 <= gamma_min <= gamma_max < 1.0:
            raise ValueError("LCD needs 0 <= gamma_min <= gamma_max < 1")
        self.gamma_min, self.gamma_max, self.rescale = gamma_min, gamma_max, rescale
        self.last_gamma: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.gamma_max == 0.0:
            return x
        b, c = x.shape[:2]
        gamma = torch.empty(b, device=x.device).uniform_(self.gamma_min, self.gamma_max)
        self.last_gamma = gamma
        n = torch.floor(gamma * c).long()  # channels to drop per sample
        rank = torch.rand(b, c, device=x.device).argsort(1).argsort(1)  # a random permutation rank
        keep = (rank >= n[:, None]).to(x.dtype)  # exactly n ranks < n dropped
        if self.rescale:
            keep = keep * (c / (c - n).clamp(min=1).to(x.dtype))[:, None]
        return x * keep[:, :, None, None]


class SpatialAttention(nn.Module):
    def __init__(self, channels: int, spatial: tuple[int, int], hidden: int = 128):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)
        self.fc = nn.Sequential(
            nn.Linear(spatial[0] * spatial[1], hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )
        nn.init.zeros_(self.fc[2].weight)
        nn.init.constant_(self.fc[2].bias, 3.0)  # start near identity (sigmoid(3) = 0.95)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.fc(torch.flatten(self.conv(x), 1)))
        return x * w[:, :, None, None]


def filter_orthogonality(weights: list[torch.Tensor]) -> torch.Tensor:
    """Mean over convs of the mean squared off-diagonal of W_n W_n^T (W_n: rows = normalised filters)."""
    out = []
    for w in weights:
        wn = F.normalize(w.flatten(1).float(), dim=1)
        g = wn @ wn.t()
        off = g - torch.diag_embed(torch.diagonal(g))
        out.append(off.pow(2).sum() / max(1, g.numel() - g.shape[0]))
    return torch.stack(out).mean()


def response_orthogonality(x: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal of the per-sample Gram of normalised channel responses."""
    r = F.normalize(x.flatten(2).float(), dim=2)  # [B, C, hw]
    g = r @ r.transpose(1, 2)
    c = g.shape[-1]
    off = g - torch.diag_embed(torch.diagonal(g, dim1=1, dim2=2))
    return off.pow(2).sum((1, 2)).mean() / max(1, c * c - c)


@METHODS.register("lcd")
class LCD(Method):
    name = "lcd"

    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        self.backbone = build_backbone(cfg)
        if not hasattr(self.backbone, "stem") or len(self.backbone.stages) != 4:
            raise ValueError("lcd is defined on an IResNet backbone")
        self.head = build_head(cfg, self.backbone.embedding_size, num_classes)
        self.drop = ChannelDropout(float(opt(cfg, "gamma_min", 0.0)), float(opt(cfg, "gamma_max", 0.3)))
        self.use_drop = bool(opt(cfg, "dropout", True))
        c4 = self.backbone.stage_channels[3]
        self.sam = (
            SpatialAttention(c4, down(self.backbone.input_size, 4), int(opt(cfg, "sam_hidden", 128)))
            if bool(opt(cfg, "sam", True))
            else None
        )
        self.w_filter = float(opt(cfg, "filter_orth", 100.0))
        self.w_response = float(opt(cfg, "response_orth", 1.0))

    def _features(self, images: torch.Tensor):
        def hook(i: int, y: torch.Tensor) -> torch.Tensor:
            if i == 2 and self.use_drop:
                return self.drop(y)
            if i == 3 and self.sam is not None:
                return self.sam(y)
            return y

        stages = run_stages(self.backbone, images, hook)
        return self.backbone.forward_head(stages[-1]), stages[-1]

    def forward(self, batch, step: int) -> dict[str, torch.Tensor]:
        emb, x4 = self._features(batch.images)
        terms = id_terms(self.head(emb, batch.labels), batch.labels)
        convs = [
            m.weight for m in self.backbone.stages[3].modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
        ]
        if self.w_filter:
            terms["filter_orth"] = self.w_filter * filter_orthogonality(convs)
        if self.w_response:
            terms["response_orth"] = self.w_response * response_orthogonality(x4)
        return terms

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self._features(images)[0]
