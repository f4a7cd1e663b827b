"""The Method interface: what a training recipe provides to the shared trainer and evaluator.

The trainer owns data, devices, DDP, precision, optimiser, schedule, clipping, checkpoints,
logging and the NaN guard; a method owns its models and losses:

    class MyMethod(Method):
        requires_clean = True                  # needs batch.clean (a real clean counterpart)
        has_segmentation = True                # implements predict_mask (IoU is evaluated)
        uses_gt_masks = False                  # True: the evaluator passes the benchmark's true
                                               # masks, embed(images, masks) / embed_pair(..)
        pairwise = False                       # True: verification scores pairs with embed_pair
                                               # (a comparison-dependent embedding, PDSN's FDM),
                                               # identification with pair_condition +
                                               # embed_conditioned (the probe's on the gallery)

        def __init__(self, cfg, num_classes):  # build modules from cfg.model / cfg.method_kw
        def forward(self, batch, step) -> dict[str, Tensor]   # loss terms, see below
        def embed(self, images) -> Tensor                      # [B, D] for evaluation
        def embed_pair(self, a, b, masks_a, masks_b)           # ([B, D], [B, D]) of both faces
        def pair_condition(self, images, masks) -> Tensor      # pairwise identification: [B, K]
        def embed_conditioned(self, images, condition)         # gallery seen under a probe's [K]
        def predict_mask(self, images) -> Tensor | None        # occlusion logits [B, 1, H, W]
        def param_groups(self) -> list[dict]                   # optimiser groups
        def on_step_start(self, step, total_steps)             # stage switches, freezing

Loss terms: `forward` returns {name: scalar tensor}. The trainer minimises the sum of all
terms except those whose name starts with "log/" (logged only, e.g. "log/acc"); weight terms
inside the method. Each term is a CSV column, and the NaN guard names the term that broke.
`forward` is what DDP wraps, so every trainable module must be used in it (or set
`find_unused_parameters = True` for methods whose branches are used only in some steps).

Images in `batch` and given to `embed`/`predict_mask` are normalised RGB in [-1, 1] at
`self.input_size`; `embed` returns un-normalised embeddings (the evaluator adds the flipped
view's embedding and L2-normalises).

Param groups: dicts of torch.optim param-group keys; "lr_scale" (default 1) multiplies the
scheduled learning rate for that group, e.g. a 10x head LR or a frozen-then-thawed branch;
"optimizer" ("sgd" | "adam" | "adamw", default cfg.optim.name) picks the group's optimiser type,
with that type's hyper-parameters from cfg.optim.by_type (engine/optim.py). A configuration with
nothing to train (a statistics pass) returns loss terms without gradient; the trainer then only
counts the step.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..models import create_head
from ..models.backbones import create_backbone


class Method(nn.Module):
    name: ClassVar[str] = ""
    requires_clean: ClassVar[bool] = False
    has_segmentation: ClassVar[bool] = False
    find_unused_parameters: ClassVar[bool] = False
    uses_gt_masks: bool = False
    pairwise: bool = False
    # state-dict prefixes that must come from train.init_from (a stage that continues a previous
    # one, e.g. PDSN's frozen trunk and head): the trainer refuses to start without them, so a
    # frozen part is never left at its random initialisation
    init_required: tuple[str, ...] = ()

    def __init__(self, cfg, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.num_classes = int(num_classes)

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) the trainer resizes batches to; default: the `backbone` attribute's input size."""
        if self.cfg.model.input_size:
            h, w = self.cfg.model.input_size
            return int(h), int(w)
        return tuple(self.backbone.input_size)

    def forward(self, batch, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_pair(
        self, a: torch.Tensor, b: torch.Tensor, masks_a: torch.Tensor | None = None, masks_b: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of the two faces of each comparison; default: independent of each other."""
        if self.uses_gt_masks:
            return self.embed(a, masks_a), self.embed(b, masks_b)
        return self.embed(a), self.embed(b)

    def pair_condition(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Pairwise methods: what each image imposes on the other face of a comparison, a small
        integer code [B, K] (PDSN: the blocks its FDM discards). Identification applies each
        probe's code to the gallery (embed_conditioned), one gallery pass per distinct code."""
        raise NotImplementedError(f"{self.name}: pairwise identification needs pair_condition and embed_conditioned")

    def embed_conditioned(self, images: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, D] of `images` under one pair_condition code [K] (e.g. a probe's)."""
        raise NotImplementedError(f"{self.name}: pairwise identification needs pair_condition and embed_conditioned")

    def predict_mask(self, images: torch.Tensor) -> torch.Tensor | None:
        return None

    def param_groups(self) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def on_step_start(self, step: int, total_steps: int) -> None:
        pass


def build_backbone(cfg, **overrides) -> nn.Module:
    """The backbone of cfg.model (input_size from cfg.model.input_size when set)."""
    kw = dict(cfg.model.backbone_kw)
    if cfg.model.input_size:
        kw.setdefault("input_size", tuple(cfg.model.input_size))
    kw.update(overrides)
    return create_backbone(cfg.model.backbone, **kw)


def build_head(cfg, embedding_size: int, num_classes: int, **overrides) -> nn.Module:
    return create_head(cfg.model.head, embedding_size, num_classes, **{**cfg.model.head_kw, **overrides})
