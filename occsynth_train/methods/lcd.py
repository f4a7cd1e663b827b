"""LCD: "Locality-aware Channel-wise Dropout for Occluded Face Recognition" (He, Zhang, Shan, Liu,
Wu, Chen; IEEE TIP 31, 2022; arXiv 2107.09270). Facts and their tests: reproduction/lcd.md.

On an IResNet, trained on clean faces (the dropout is the occlusion simulation):
  * the layer L: the last 3x3 conv of the last block of stage 3 and its BN (the block's output is
    BN(conv(...)) + shortcut; L's output is taken before that residual addition).
  * locality-aware channel-wise dropout (training only) on L's BN output: per sample,
    n = floor(gamma * C) whole channels are zeroed, gamma ~ U[gamma_min, gamma_max]; the kept
    channels are NOT rescaled (the paper's form; `rescale: true`, C / (C - n), is the other
    reading). The shortcut is untouched, so a dropped channel passes the block's input on.
    Implemented as a forward hook on that BN module: the backbone is not forked and its
    parameter names stay those of the plain IResNet (checkpoints interchange).
  * spatial regularisation on L (Alg. 1), so each channel of L answers to a local, different
    face region and dropping a channel resembles occluding a region:
      Eq. 1 (filters)   sum_{i != j} | sum_p cos(w_i^p, w_j^p) |, w_i^p = W[i, :, p] the input-channel
                        vector of filter i at kernel position p (3x3: 9 positions), weight alpha = 100;
      Eq. 2 (responses) sum_{i != j} cos^2(r_i, r_j), r_i = channel i of L's BN output (before the
                        dropout) flattened over positions, per sample, averaged over the batch,
                        weight beta = 1.
    Sums run over ordered pairs (i, j), i != j, as written; `reduction: mean` divides each by the
    C (C - 1) pairs (the other reading).
  * spatial attention module (SAM) on the stage-4 map X [B, C, h, w]: 1x1 conv (C -> 1) gives a
    spatial response, FC(h*w -> hidden) + ReLU + FC(hidden -> C) + sigmoid turns where the
    response lies into per-channel weights; X * w goes to the output head.
  * ArcFace (s = 64, m = 0.5) via cfg.model.head.

method_kw: gamma_min 0.0, gamma_max 0.3 (not verified offline), rescale false, filter_orth 100.0
(alpha), response_orth 1.0 (beta), reduction sum | mean, response_at bn | conv (which output of L
Eq. 2 reads; bn = the tensor the dropout acts on), sam_hidden 128, sam true, dropout true.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.backbones.base import down
from ._common import id_terms, opt, run_stages
from ._registry import METHODS
from .base import Method, build_backbone, build_head

REDUCTIONS = ("sum", "mean")


class ChannelDropout(nn.Module):
    """Zero floor(gamma * C) whole channels per sample, gamma ~ U[gamma_min, gamma_max] (training);
    the kept channels keep their values unless `rescale` (then x C / (C - n))."""

    def __init__(self, gamma_min: float = 0.0, gamma_max: float = 0.3, rescale: bool = False):
        super().__init__()
        if not 0.0 <= gamma_min <= gamma_max < 1.0:
            raise ValueError(f"LCD needs 0 <= gamma_min <= gamma_max < 1, got {gamma_min}, {gamma_max}")
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


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"LCD reduction must be one of {REDUCTIONS}, got {reduction!r}")


def filter_orthogonality(weight: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Eq. 1 on one conv weight [C_out, C_in, kh, kw]: sum over i != j of |sum_p cos(w_i^p, w_j^p)|,
    w_i^p = weight[i, :, p] (p over the kh * kw kernel positions)."""
    _check_reduction(reduction)
    c = weight.shape[0]
    w = F.normalize(weight.float().flatten(2).permute(2, 0, 1), dim=2)  # [P, C_out, C_in], unit rows
    s = (w @ w.transpose(1, 2)).sum(0)  # [C_out, C_out]: sum_p cos(w_i^p, w_j^p)
    off = s.abs().sum() - torch.diagonal(s).abs().sum()
    return off / max(1, c * (c - 1)) if reduction == "mean" else off


def response_orthogonality(x: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Eq. 2 on a map [B, C, h, w]: per sample, sum over i != j of cos^2(r_i, r_j) (r_i: channel i
    over the h * w positions); the mean over the batch."""
    _check_reduction(reduction)
    c = x.shape[1]
    r = F.normalize(x.flatten(2).float(), dim=2)  # [B, C, hw]
    g = (r @ r.transpose(1, 2)).square()
    off = g.sum((1, 2)) - torch.diagonal(g, dim1=1, dim2=2).sum(1)
    off = off.mean()
    return off / max(1, c * (c - 1)) if reduction == "mean" else off


def stage3_layer(backbone: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """(conv, BN) of the last 3x3 conv of the last block of stage 3 (an IResNet block's `body`)."""
    block = backbone.stages[2][-1]
    body = list(getattr(block, "body", []))
    convs = [i for i, m in enumerate(body) if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    if not convs or convs[-1] + 1 >= len(body) or not isinstance(body[convs[-1] + 1], nn.BatchNorm2d):
        raise ValueError("lcd: stage 3's last block has no 3x3 conv followed by a BatchNorm2d in its body")
    return body[convs[-1]], body[convs[-1] + 1]


@METHODS.register("lcd")
class LCD(Method):
    name = "lcd"

    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        self.backbone = build_backbone(cfg)
        if not hasattr(self.backbone, "stem") or len(self.backbone.stages) != 4:
            raise ValueError("lcd is defined on an IResNet backbone")
        self.head = build_head(cfg, self.backbone.embedding_size, num_classes)
        self.drop = ChannelDropout(
            float(opt(cfg, "gamma_min", 0.0)), float(opt(cfg, "gamma_max", 0.3)), bool(opt(cfg, "rescale", False))
        )
        self.use_drop = bool(opt(cfg, "dropout", True))
        c4 = self.backbone.stage_channels[3]
        self.sam = (
            SpatialAttention(c4, down(self.backbone.input_size, 4), int(opt(cfg, "sam_hidden", 128)))
            if bool(opt(cfg, "sam", True))
            else None
        )
        self.w_filter = float(opt(cfg, "filter_orth", 100.0))
        self.w_response = float(opt(cfg, "response_orth", 1.0))
        self.reduction = str(opt(cfg, "reduction", "sum"))
        _check_reduction(self.reduction)
        self.response_at = str(opt(cfg, "response_at", "bn"))
        if self.response_at not in ("bn", "conv"):
            raise ValueError(f"lcd: response_at must be bn or conv, got {self.response_at!r}")
        conv, bn = stage3_layer(self.backbone)  # not stored as attributes: no second name in the state dict
        self._response: torch.Tensor | None = None
        conv.register_forward_hook(self._conv_hook)
        bn.register_forward_hook(self._bn_hook)

    # forward hooks on layer L (training only): keep its response for Eq. 2, drop channels
    def _conv_hook(self, module, inputs, output):
        if self.training and self.response_at == "conv":
            self._response = output
        return None

    def _bn_hook(self, module, inputs, output):
        if not self.training:
            return None
        if self.response_at == "bn":
            self._response = output
        return self.drop(output) if self.use_drop else None

    def _features(self, images: torch.Tensor):
        def hook(i: int, y: torch.Tensor) -> torch.Tensor:
            return self.sam(y) if i == 3 and self.sam is not None else y

        stages = run_stages(self.backbone, images, hook)
        return self.backbone.forward_head(stages[-1])

    def forward(self, batch, step: int) -> dict[str, torch.Tensor]:
        self._response = None
        emb = self._features(batch.images)
        response, self._response = self._response, None
        terms = id_terms(self.head(emb, batch.labels), batch.labels)
        if self.w_filter:
            conv = stage3_layer(self.backbone)[0]
            terms["filter_orth"] = self.w_filter * filter_orthogonality(conv.weight, self.reduction)
        if self.w_response:
            if response is None:
                raise RuntimeError("lcd: stage 3's layer did not run in training mode (no response for Eq. 2)")
            terms["response_orth"] = self.w_response * response_orthogonality(response, self.reduction)
        return terms

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self._features(images)
