"""ALOB (Adversarially Learning Occlusions by Backpropagation, Sensors 2023, 23(20), 8559):
an Identifier and a Trimmer.

Two backbones with no shared weights on the same image:
  * Identifier F: embedding f^f, the identity feature;
  * Trimmer T: embedding f^m, meant to hold the occlusion (nuisance) information. f^m goes
    through a gradient reversal layer (identity forward, -C * grad backward) into the
    classifier: the classifier learns identity from f^m while T is pushed to remove identity
    from it, so whatever T keeps is not identity.
  * feature projection purification: the Identifier's feature is f' = f^f - proj(f^f, f^m) =
    f^f - (<f^f, f^m> / |f^m|^2) f^m, i.e. f^f with its component along the nuisance direction
    removed; f' is the test embedding.
  * one classifier W (cfg.model.head, e.g. CosFace s = 30, m = 0.4) gives both logits, as Eq. 5/9
    write them: Y_f = W(f') and Y_m = W(GRL(f^m)). W gets the gradients of both losses (the GRL
    sits between T and W, so W itself minimises L_m while T maximises it).
Loss: L_f + lambda * L_m (lambda = 1), both cross-entropies of the classifier's logits.

method_kw:
  shared_classifier: true   one W for Y_f and Y_m (Eq. 5/9); false = a second CosFace classifier
                            for Y_m (trimmer_head_kw: its s, m; default s = 30, m = 0.4); an
                            earlier reading of the paper, kept as an option
  grl: true                 false = ablation -G (T and the classifier simply minimise L_m)
  fusion: project           projection purification (default); subtract = ablation -F
                            (f^f - f^m); none (f^f alone), sum (f^f + f^m), concat ([f^f, f^m],
                            needs shared_classifier: false: W cannot take both widths)
  grl_scale C = 1.0, m_weight lambda = 1.0, trimmer_lr_scale, identifier_lr_scale

Optimisers: the Trimmer trains with SGD and the Identifier with Adam (identifier_optimizer /
trimmer_optimizer, defaults adam / sgd; the shared classifier belongs to the Identifier's group,
our choice: it is Eq. 5's identity classifier). The param groups say so ("optimizer" key) and the
trainer builds one torch optimiser per type; each type's hyper-parameters come from
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


FUSIONS = ("project", "subtract", "none", "sum", "concat")


@METHODS.register("alob")
class ALOB(Method):
    name = "alob"

    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        self.backbone = build_backbone(cfg)  # the Identifier
        self.trimmer = build_backbone(cfg)  # same architecture, separate weights
        self.fusion = str(opt(cfg, "fusion", "project"))
        if self.fusion not in FUSIONS:
            raise ValueError(f"alob fusion must be one of {FUSIONS}, got {self.fusion!r}")
        self.shared_classifier = opt(cfg, "shared_classifier", True)
        if not isinstance(self.shared_classifier, bool):
            raise ValueError(f"alob shared_classifier must be true or false, got {self.shared_classifier!r}")
        d = self.backbone.embedding_size
        self.head = build_head(cfg, 2 * d if self.fusion == "concat" else d, num_classes)
        if self.shared_classifier:
            if self.fusion == "concat":
                raise ValueError(
                    "alob fusion 'concat' gives a 2d feature: one shared classifier cannot take it "
                    "and the d-wide f^m; set shared_classifier: false"
                )
            if opt(cfg, "trimmer_head_kw", None) is not None:
                raise ValueError(
                    "alob trimmer_head_kw configures a second classifier: it needs shared_classifier: false"
                )
            self.trimmer_head = None  # Y_m comes out of self.head (m_classifier)
        else:
            head_kw = {"s": 30.0, "m": 0.4, **(opt(cfg, "trimmer_head_kw", None) or {})}
            self.trimmer_head = create_head("cosface", d, num_classes, **head_kw)
        self.grl = bool(opt(cfg, "grl", True))
        self.grl_scale = float(opt(cfg, "grl_scale", 1.0))
        self.m_weight = float(opt(cfg, "m_weight", 1.0))
        self.optimizers = {
            "identifier": str(opt(cfg, "identifier_optimizer", "adam")),
            "trimmer": str(opt(cfg, "trimmer_optimizer", "sgd")),
        }

    @property
    def m_classifier(self) -> torch.nn.Module:
        """The classifier of Y_m: the one shared W (default) or the Trimmer's own."""
        return self.head if self.trimmer_head is None else self.trimmer_head

    def _fuse(self, f: torch.Tensor, fm: torch.Tensor) -> torch.Tensor:
        if self.fusion == "project":
            return project_out(f, fm)
        if self.fusion == "subtract":
            return f - fm
        if self.fusion == "sum":
            return f + fm
        if self.fusion == "concat":
            return torch.cat([f, fm], 1)
        return f

    def forward(self, batch, step: int) -> dict[str, torch.Tensor]:
        f, fm = self.backbone(batch.images), self.trimmer(batch.images)
        terms = id_terms(self.head(self._fuse(f, fm), batch.labels), batch.labels)
        adv = grad_reverse(fm, self.grl_scale) if self.grl else fm
        m_logits = self.m_classifier(adv, batch.labels)
        terms["m"] = self.m_weight * F.cross_entropy(m_logits, batch.labels)
        terms["log/acc_m"] = (m_logits.detach().argmax(1) == batch.labels).float().mean()
        return terms

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        f = self.backbone(images)
        return f if self.fusion == "none" else self._fuse(f, self.trimmer(images))

    def param_groups(self) -> list[dict]:
        trim = list(self.trimmer.parameters())
        if self.trimmer_head is not None:
            trim += list(self.trimmer_head.parameters())
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
