"""ALOB (adversarial learning of occlusion-robust features with an Identifier and a Trimmer).

Two backbones with no shared weights on the same image:
  * Identifier F: embedding f, the identity feature;
  * Trimmer T: embedding f_m, meant to hold the occlusion (nuisance) information. f_m goes
    through a gradient reversal layer (identity forward, -C * grad backward) into a CosFace
    classifier (m = 0.4, s = 30): the classifier learns identity from f_m while T is pushed to
    remove identity from it, so whatever T keeps is not identity.
  * feature projection purification: the Identifier's feature is f' = f - proj(f, f_m) =
    f - (<f, f_m> / |f_m|^2) f_m, i.e. f with its component along the nuisance direction removed;
    f' feeds the identity head (cfg.model.head) and is the test embedding.
Loss: L_f + lambda * L_m (lambda = 1).

Ablations (method_kw): grl: false (-G: T and its classifier simply minimise L_m),
fusion: project (default) | none (-F: f alone) | sum (f + f_m) | concat ([f, f_m]).
Other method_kw: grl_scale C = 1.0, m_weight lambda = 1.0, trimmer_lr_scale, identifier_lr_scale,
trimmer_head_kw (CosFace s, m).

Optimisers: the paper trains the Trimmer with SGD and the Identifier with Adam. The param groups
say so ("optimizer" key, method_kw identifier_optimizer / trimmer_optimizer, defaults adam / sgd)
and the trainer builds one torch optimiser per type; each type's hyper-parameters come from
optim.by_type (e.g. {adam: {lr: 1.0e-3}}); build_optimizer refuses a type other than optim.name
without an optim.by_type entry, so the Adam group never silently inherits an SGD LR.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import create_head
from ._common import id_terms, opt
from ._registry import METHODS
from .base import Method, build_backbone, build_head


class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return GradReverse.apply(x, scale)


def project_out(f: torch.Tensor, fm: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """f - proj(f onto fm), row-wise: the part of f orthogonal to fm."""
    coef = (f * fm).sum(1, keepdim=True) / (fm * fm).sum(1, keepdim=True).clamp(min=eps)
    return f - coef * fm


@METHODS.register("alob")
class ALOB(Method):
    name = "alob"

    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        self.backbone = build_backbone(cfg)  # the Identifier
        self.trimmer = build_backbone(cfg)  # same architecture, separate weights
        self.fusion = str(opt(cfg, "fusion", "project"))
        if self.fusion not in ("project", "none", "sum", "concat"):
            raise ValueError(f"alob fusion must be project, none, sum or concat, got {self.fusion!r}")
        d = self.backbone.embedding_size
        self.head = build_head(cfg, 2 * d if self.fusion == "concat" else d, num_classes)
        head_kw = {"s": 30.0, "m": 0.4, **opt(cfg, "trimmer_head_kw", {})}
        self.trimmer_head = create_head("cosface", d, num_classes, **head_kw)
        self.grl = bool(opt(cfg, "grl", True))
        self.grl_scale = float(opt(cfg, "grl_scale", 1.0))
        self.m_weight = float(opt(cfg, "m_weight", 1.0))
        self.optimizers = {
            "identifier": str(opt(cfg, "identifier_optimizer", "adam")),
            "trimmer": str(opt(cfg, "trimmer_optimizer", "sgd")),
        }

    def _fuse(self, f: torch.Tensor, fm: torch.Tensor) -> torch.Tensor:
        if self.fusion == "project":
            return project_out(f, fm)
        if self.fusion == "sum":
            return f + fm
        if self.fusion == "concat":
            return torch.cat([f, fm], 1)
        return f

    def forward(self, batch, step: int) -> dict[str, torch.Tensor]:
        f, fm = self.backbone(batch.images), self.trimmer(batch.images)
        terms = id_terms(self.head(self._fuse(f, fm), batch.labels), batch.labels)
        adv = grad_reverse(fm, self.grl_scale) if self.grl else fm
        m_logits = self.trimmer_head(adv, batch.labels)
        terms["m"] = self.m_weight * F.cross_entropy(m_logits, batch.labels)
        terms["log/acc_m"] = (m_logits.detach().argmax(1) == batch.labels).float().mean()
        return terms

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        f = self.backbone(images)
        return f if self.fusion == "none" else self._fuse(f, self.trimmer(images))

    def param_groups(self) -> list[dict]:
        trim = list(self.trimmer.parameters()) + list(self.trimmer_head.parameters())
        ids = {id(p) for p in trim}
        ident = [p for p in self.parameters() if id(p) not in ids]
        return [
            {
                "params": [p for p in ident if p.requires_grad],
                "name": "identifier",
                "optimizer": self.optimizers["identifier"],
                "lr_scale": float(opt(self.cfg, "identifier_lr_scale", 1.0)),
            },
            {
                "params": [p for p in trim if p.requires_grad],
                "name": "trimmer",
                "optimizer": self.optimizers["trimmer"],
                "lr_scale": float(opt(self.cfg, "trimmer_lr_scale", 1.0)),
            },
        ]
