"""PDSN (pairwise differential siamese network, Song et al., ICCV 2019) in four stages.

The aligned face is cut into a grid x grid (5 x 5) grid of blocks (the cells of occsynth's
`grid_cell` occluder, occluders/families/grid.py); an occluder on block b corrupts a fixed set of
elements of the trunk's top conv feature map, and PDSN learns which.

  stage: trunk       the trunk (backbone + margin head, CosFace in the paper) trained as usual.
  stage: masks       trunk AND margin head frozen (eval-mode BN, no gradients); one mask generator
                     per block (all 25 with blocks: all, or the 9 central ones) maps the pair's
                     feature difference |f(x_occ) - f(x_clean)| (Eq. 4) to a mask M in (0, 1) of
                     the top map's shape. Loss, per clean/occluded pair on the generator's block:
                       0.5 * CE(head(M * f(x_clean))) + 0.5 * CE(head(M * f(x_occ)))
                         + lambda * L1(M * f(x_occ), M * f(x_clean)),   lambda = l1_weight = 10.
                     The L1 term pushes M to zero where occluded and clean features differ, the
                     CE keeps the masked features discriminative.
  stage: dictionary  statistics only, on the same pairs: the block's mask of each pair is min-max
                     normalised and summed; dictionary entry b = the mean mask binarised by
                     zeroing its lowest floor(tau * K) elements (tau = 0.25, K = elements of the
                     map). Sums and counts are buffers, so the dictionary lives in the checkpoint.
  stage: finetune    the feature discarding mask FDM = AND (product) of the entries of the
                     occluded blocks multiplies the top feature map before the FC; the FC and the
                     margin head are fine-tuned with a small LR (finetune_lr), the conv trunk with
                     a ten times smaller one (finetune_trunk_lr; 0 freezes it).

Facts, readings and sources (the reproduction sheet, occsynth_train/reproduction/pdsn.md, has the
full table). The paper's text could not be read offline; the authors' public code
(github.com/linserSnow/PDSN) could, and settles these points:
  * mask generator: Conv3x3 (no bias) -> PReLU -> BN -> sigmoid on |f1 - f2| (net_sia.py `sia`);
  * stage-2 loss: 0.5 * CE(clean) + 0.5 * CE(occluded) + 10 * nn.L1Loss(reduction="mean"), i.e.
    the L1 term is the MEAN over the batch's mask entries (main_dic.py, with the per-element
    division spelled out in a comment there). l1_reduction: sum is the other reading (the L1
    norm summed over the C*h*w entries of each pair, averaged over pairs);
  * stage 2 freezes the trunk, the FC and the classifier (lr 0, eval mode; only `sia` trains);
  * dictionary: per-pair min-max over all elements, then the mean (extract_mask_dic_mean.py);
  * stage 3 (main_webface_msk.py): lr 0.001 for the FC and the classifier, 0.1 x that for the
    conv trunk (`lr_freeze`), all BN in train mode, the FDM multiplying the layer-4 map before
    the FC's BN.
Block selection at test time (block_selection): a block is occluded when its occluded FRACTION
is >= block_threshold (0.5), "coverage", the paper's reading (its sunglasses example selects the
three eye-row blocks, M12, M13, M14 numbered 1..25); "iou" (the block's IoU with the whole
occluded region >= threshold) is kept as an option, but an occluder spanning three blocks scores
1/3 in each and selects none, so PDSN then degrades to the plain baseline.

Which block a training pair's occluder sits on comes from the sample's `grid_cell` occluder record
(`params.cell`, mirrored when the loader flipped the image): `occsynth build pdsn-pairs
--with-neighbours` occludes a cell and its 4-neighbours, where only the record names the centre.
Samples without such a record (other occluders) fall back to the grid cell with the most
occluded pixels in the mask. The masks and dictionary stages need each occluded sample's clean
counterpart (batch.has_clean) and refuse data without it.

Occlusion detector at test time (occlusion_source): "segmentation" (a ResNet-18 U-Net trained in
the masks and finetune stages on the shards' masks) or "gt" (the benchmark's true masks, which
the evaluator passes to embed / embed_pair because `uses_gt_masks` is set).
Pairwise test protocol (pairwise_fdm, default true in the finetune stage): the paper applies the
probe's FDM to both faces of a comparison. Verification scores each pair with embed_pair(), which
applies the AND of both faces' FDMs to both (with a clean gallery face, FDM all ones, that is the
probe's FDM; it stays symmetric when both faces are occluded, LFW_block). Identification applies
each probe's FDM to the gallery through pair_condition / embed_conditioned (the evaluator embeds
the gallery once per distinct FDM). pairwise_fdm: false scores per-image embeddings (own FDM each).

method_kw (OPTIONS below): stage, grid 5, blocks all|central, l1_weight 10, l1_reduction mean|sum,
tau 0.25, block_selection coverage|iou, block_threshold 0.5, occlusion_source segmentation|gt,
pairwise_fdm true, seg_width 64, finetune_lr 1e-3, finetune_trunk_lr 1e-4. Each stage starts from
the previous stage's checkpoint with `train.init_from` (loaded non-strictly by the trainer).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from occsynth.occluders.families.grid import CENTRAL_CELLS_5x5, cell_bounds

from ..models.backbones.base import down
from ..models.losses import pixel_cross_entropy
from ._common import id_terms, opt, scaled_unet
from ._registry import METHODS
from .base import Method, build_backbone, build_head

STAGES = ("trunk", "masks", "dictionary", "finetune")
BLOCK_SELECTIONS = ("coverage", "iou")
L1_REDUCTIONS = ("mean", "sum")
OPTIONS = {  # method_kw key -> default
    "stage": "trunk",
    "grid": 5,
    "blocks": "all",
    "l1_weight": 10.0,
    "l1_reduction": "mean",
    "tau": 0.25,
    "block_selection": "coverage",
    "block_threshold": 0.5,
    "occlusion_source": "segmentation",
    "pairwise_fdm": True,
    "seg_width": 64,
    "finetune_lr": 1.0e-3,
    "finetune_trunk_lr": 1.0e-4,
}
RENAMED = {"block_score": "block_selection", "iou_threshold": "block_threshold"}
CLEAN_NEEDED = (
    "the mask generators take |f(x_occ) - f(x_clean)| (Eq. 4): train this stage on "
    "`occsynth build pdsn-pairs ...` shards or an `occsynth build occ-train ... --keep-clean` build"
)


def block_ids(grid: int, blocks: str) -> list[int]:
    """Row-major cell indices that get a mask generator: all grid^2 or the central (grid-2)^2."""
    if blocks == "all":
        return list(range(grid * grid))
    if blocks != "central":
        raise ValueError(f"pdsn blocks must be all or central, got {blocks!r}")
    ids = [r * grid + c for r in range(1, grid - 1) for c in range(1, grid - 1)]
    assert grid != 5 or tuple(ids) == CENTRAL_CELLS_5x5
    return ids


@functools.lru_cache(maxsize=16)
def _cell_map(h: int, w: int, grid: int) -> torch.Tensor:
    """Cell index of every pixel [h * w], cells as the grid_cell occluder draws them (cell_bounds)."""
    out = torch.empty(h, w, dtype=torch.long)
    for cell in range(grid * grid):
        x0, y0, x1, y1 = cell_bounds(cell, grid, w, h)
        out[y0:y1, x0:x1] = cell
    return out.flatten()


def _cell_counts(masks: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(occluded pixels per cell [B, G], pixels per cell [G]) of masks [B, 1, H, W] (> 0.5 = occluded)."""
    b, _, h, w = masks.shape
    cell_of = _cell_map(h, w, grid).to(masks.device)
    occ = (masks.float() > 0.5).flatten(1).float()
    inter = torch.zeros(b, grid * grid, device=masks.device).index_add_(1, cell_of, occ)
    area = torch.bincount(cell_of, minlength=grid * grid).float()
    return inter, area


def cell_fractions(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """Occluded fraction of each grid cell, [B, grid*grid] row-major (the 'coverage' score)."""
    inter, area = _cell_counts(masks, grid)
    return inter / area.clamp(min=1)[None]


def block_iou(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """IoU between each grid cell (as a region) and the whole occluded region, [B, grid*grid]."""
    inter, area = _cell_counts(masks, grid)
    occ = inter.sum(1, keepdim=True)
    return inter / (area[None] + occ - inter).clamp(min=1)


def select_blocks(masks: torch.Tensor, grid: int, rule: str = "coverage", threshold: float = 0.5) -> torch.Tensor:
    """Occluded cells [B, grid*grid] (bool): coverage (occluded fraction of the cell) or IoU with
    the occluded region, >= threshold."""
    if rule == "coverage":
        return cell_fractions(masks, grid) >= threshold
    if rule == "iou":
        return block_iou(masks, grid) >= threshold
    raise ValueError(f"pdsn block_selection must be one of {BLOCK_SELECTIONS}, got {rule!r}")


def mask_l1(mask: torch.Tensor, f_occ: torch.Tensor, f_clean: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Per pair [N]: |M * f_occ - M * f_clean| averaged ("mean", the authors' nn.L1Loss(reduction=
    'mean') once averaged over pairs) or summed ("sum", the literal L1 norm) over the C*h*w entries."""
    d = (mask * f_occ - mask * f_clean).abs().flatten(1)
    if reduction == "mean":
        return d.mean(1)
    if reduction == "sum":
        return d.sum(1)
    raise ValueError(f"pdsn l1_reduction must be one of {L1_REDUCTIONS}, got {reduction!r}")


def binarise(mean_mask: torch.Tensor, tau: float) -> torch.Tensor:
    """1 everywhere except the floor(tau * K) smallest entries (exactly that many, ties by order)."""
    flat = mean_mask.flatten()
    n = int(math.floor(tau * flat.numel()))
    out = torch.ones_like(flat)
    if n > 0:
        out[torch.argsort(flat, stable=True)[:n]] = 0
    return out.view_as(mean_mask)


def min_max(m: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max normalisation of masks [B, ...] to [0, 1]."""
    flat = m.flatten(1)
    lo, hi = flat.min(1, keepdim=True)[0], flat.max(1, keepdim=True)[0]
    return ((flat - lo) / (hi - lo).clamp(min=1e-8)).view_as(m)


class MaskGenerator(nn.Module):
    """Conv3x3 (no bias) -> PReLU -> BN -> sigmoid on the feature difference |f(x_occ) - f(x_clean)|,
    the generator (`sia`) of the authors' public code, with its Xavier-uniform conv init."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.prelu = nn.PReLU(c)
        self.bn = nn.BatchNorm2d(c)
        nn.init.xavier_uniform_(self.conv.weight)

    def forward(self, diff: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.bn(self.prelu(self.conv(diff))))


@METHODS.register("pdsn")
class PDSN(Method):
    name = "pdsn"
    find_unused_parameters = True  # only the generators of the blocks present in a batch are used

    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        kw = dict((cfg.method_kw or {}) if cfg is not None else {})
        if "init_from" in kw:
            raise ValueError("pdsn: method_kw.init_from moved to train.init_from (the previous stage's checkpoint)")
        renamed = sorted(k for k in kw if k in RENAMED)
        if renamed:
            raise ValueError(f"pdsn: method_kw {renamed} renamed: use {[RENAMED[k] for k in renamed]}")
        unknown = sorted(set(kw) - set(OPTIONS))
        if unknown:
            raise ValueError(f"pdsn: unknown method_kw {unknown}; known: {sorted(OPTIONS)}")
        self.stage = str(opt(cfg, "stage", OPTIONS["stage"]))
        if self.stage not in STAGES:
            raise ValueError(f"pdsn stage must be one of {STAGES}, got {self.stage!r}")
        self.requires_clean = self.stage in ("masks", "dictionary")  # Eq. 4 needs the clean twin
        self.backbone = build_backbone(cfg)
        self.head = build_head(cfg, self.backbone.embedding_size, num_classes)
        self.grid = int(opt(cfg, "grid", OPTIONS["grid"]))
        self.blocks = block_ids(self.grid, str(opt(cfg, "blocks", OPTIONS["blocks"])))
        c = self.backbone.stage_channels[-1]
        self.generators = nn.ModuleDict({str(b): MaskGenerator(c) for b in self.blocks})
        self.l1_weight = float(opt(cfg, "l1_weight", OPTIONS["l1_weight"]))
        self.l1_reduction = str(opt(cfg, "l1_reduction", OPTIONS["l1_reduction"]))
        if self.l1_reduction not in L1_REDUCTIONS:
            raise ValueError(f"pdsn l1_reduction must be one of {L1_REDUCTIONS}, got {self.l1_reduction!r}")
        self.tau = float(opt(cfg, "tau", OPTIONS["tau"]))
        self.block_selection = str(opt(cfg, "block_selection", OPTIONS["block_selection"]))
        if self.block_selection not in BLOCK_SELECTIONS:
            raise ValueError(f"pdsn block_selection must be one of {BLOCK_SELECTIONS}, got {self.block_selection!r}")
        self.block_threshold = float(opt(cfg, "block_threshold", OPTIONS["block_threshold"]))
        self.finetune_lr = float(opt(cfg, "finetune_lr", OPTIONS["finetune_lr"]))
        self.finetune_trunk_lr = float(opt(cfg, "finetune_trunk_lr", OPTIONS["finetune_trunk_lr"]))
        if self.finetune_lr <= 0 or self.finetune_trunk_lr < 0:
            raise ValueError("pdsn finetune_lr must be > 0 and finetune_trunk_lr >= 0 (0 freezes the conv trunk)")
        self.source = str(opt(cfg, "occlusion_source", OPTIONS["occlusion_source"]))
        if self.source not in ("segmentation", "gt"):
            raise ValueError(f"pdsn occlusion_source must be segmentation or gt, got {self.source!r}")
        self.has_segmentation = self.source == "segmentation"
        self.uses_gt_masks = self.source == "gt"
        self.pairwise = self.stage == "finetune" and bool(opt(cfg, "pairwise_fdm", OPTIONS["pairwise_fdm"]))
        # what each stage continues from the previous one (frozen there, or read as statistics)
        self.init_required = {
            "trunk": (),
            "masks": ("backbone.", "head."),
            "dictionary": ("backbone.", "head.", "generators."),
            "finetune": ("backbone.", "head.", "generators.", "dict_sum", "dict_count"),
        }[self.stage]
        self.seg = (
            scaled_unet(int(opt(cfg, "seg_width", OPTIONS["seg_width"])), 1, tuple(self.input_size))
            if self.has_segmentation
            else None
        )
        fh, fw = self._feature_size()
        self.register_buffer("dict_sum", torch.zeros(len(self.blocks), c, fh, fw))
        self.register_buffer("dict_count", torch.zeros(len(self.blocks)))
        self._set_trainable()

    def _feature_size(self) -> tuple[int, int]:
        """Top feature map size: four stride-2 stages (IResNet, LightCNN)."""
        return down(tuple(self.input_size), 4)

    # ------------------------------------------------------------ stage switches
    def _trunk_params(self) -> list[nn.Parameter]:
        """The conv trunk (stem + stages): what produces the top feature map the FDM masks."""
        return list(self.backbone.stem.parameters()) + list(self.backbone.stages.parameters())

    def _fc_params(self) -> list[nn.Parameter]:
        """The backbone's head on the top map (BN, FC, BN1d: the authors' `fc`)."""
        trunk = {id(p) for p in self._trunk_params()}
        return [p for p in self.backbone.parameters() if id(p) not in trunk]

    @property
    def trunk_trainable(self) -> bool:
        return self.stage == "trunk" or (self.stage == "finetune" and self.finetune_trunk_lr > 0)

    def _set_trainable(self) -> None:
        for p in self._trunk_params():
            p.requires_grad_(self.trunk_trainable)
        for p in self._fc_params():
            p.requires_grad_(self.stage in ("trunk", "finetune"))
        if hasattr(self.backbone, "features") and isinstance(self.backbone.features, nn.BatchNorm1d):
            self.backbone.features.weight.requires_grad_(False)  # IResNet's fixed-scale BN1d
        for p in self.head.parameters():  # frozen with the trunk in stage 2 (the authors' lr 0)
            p.requires_grad_(self.stage in ("trunk", "finetune"))
        for p in self.generators.parameters():
            p.requires_grad_(self.stage == "masks")
        if self.seg is not None:
            for p in self.seg.parameters():
                p.requires_grad_(self.stage in ("masks", "finetune"))

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.stage in ("masks", "dictionary"):
            self.backbone.eval()  # frozen trunk + FC: BN statistics stay those of stage 1
            self.head.eval()
            if self.stage == "dictionary":
                self.generators.eval()
        if mode and self.stage == "finetune" and not self.trunk_trainable:
            self.backbone.stem.eval()
            self.backbone.stages.eval()
        return self

    def _base_lr(self) -> float:
        o = self.cfg.optim
        return float(((o.by_type or {}).get(o.name) or {}).get("lr", o.lr))

    def param_groups(self) -> list[dict]:
        """finetune: FC + margin head at finetune_lr, conv trunk at finetune_trunk_lr, segmentation
        branch at the configured LR (each as an lr_scale of optim.lr, so the schedule still applies)."""
        if self.stage != "finetune":
            return super().param_groups()
        base = self._base_lr()
        fc = [p for p in self._fc_params() + list(self.head.parameters()) if p.requires_grad]
        groups = [{"params": fc, "name": "fc+head", "lr_scale": self.finetune_lr / base}]
        if self.trunk_trainable:
            trunk = [p for p in self._trunk_params() if p.requires_grad]
            groups.append({"params": trunk, "name": "trunk", "lr_scale": self.finetune_trunk_lr / base})
        if self.seg is not None:
            groups.append({"params": [p for p in self.seg.parameters() if p.requires_grad], "name": "segmentation"})
        return groups

    # ------------------------------------------------------------ dictionary and FDM
    def dictionary(self) -> torch.Tensor:
        """Binary entries [n_blocks, C, h, w]; all-ones for blocks never seen."""
        mean = self.dict_sum / self.dict_count.clamp(min=1)[:, None, None, None]
        out = torch.stack([binarise(m, self.tau) for m in mean])
        return torch.where(self.dict_count[:, None, None, None] > 0, out, torch.ones_like(out))

    def chosen_blocks(self, masks: torch.Tensor) -> torch.Tensor:
        """Which generator blocks each image's occlusion selects, bool [B, n_blocks]."""
        return select_blocks(masks, self.grid, self.block_selection, self.block_threshold)[:, self.blocks]

    def fdm_of(self, chosen: torch.Tensor) -> torch.Tensor:
        """FDM [B, C, h, w] of chosen blocks [B, n_blocks]: the AND (product) of their binary entries,
        all ones when none is chosen."""
        entries = self.dictionary()
        zeros = chosen.float() @ (1.0 - entries).flatten(1)  # how many chosen entries zero each element
        return (zeros == 0).float().view(chosen.shape[0], *entries.shape[1:])

    def fdm(self, masks: torch.Tensor) -> torch.Tensor:
        """FDM per image [B, C, h, w] from its occlusion mask [B, 1, H, W]."""
        return self.fdm_of(self.chosen_blocks(masks))

    def occlusion(self, images: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(self.seg(images)) > 0.5).float()

    # ------------------------------------------------------------ training
    def _recorded_cell(self, meta: dict) -> int | None:
        """The grid cell named by a sample's grid_cell occluder record (as the model sees it)."""
        for rec in meta.get("occluders") or []:
            params = rec.get("params") or {}
            if rec.get("name") == "grid_cell" and "cell" in params and int(params.get("grid", 5)) == self.grid:
                row, col = divmod(int(params["cell"]), self.grid)
                if meta.get("flipped"):
                    col = self.grid - 1 - col
                return row * self.grid + col
        return None

    def _block_of(self, masks: torch.Tensor, metas: list[dict] | None = None) -> torch.Tensor:
        """The generator index (into self.blocks) of each sample's occluded cell, -1 if none:
        the recorded grid cell when the sample has one, else the cell with most occluded pixels."""
        frac = cell_fractions(masks, self.grid)
        best = torch.where(frac.amax(1) > 0, frac.argmax(1), torch.full_like(frac[:, 0], -1, dtype=torch.long))
        if metas:
            recorded = [self._recorded_cell(m) for m in metas]
            best = torch.tensor(
                [int(b) if r is None else r for b, r in zip(best.tolist(), recorded)],
                dtype=torch.long,
                device=masks.device,
            )
        lookup = torch.full((self.grid * self.grid + 1,), -1, dtype=torch.long, device=masks.device)
        lookup[torch.tensor(self.blocks, device=masks.device)] = torch.arange(len(self.blocks), device=masks.device)
        return lookup[best]  # best == -1 reads the extra last entry: -1

    def _require_clean(self, batch, block: torch.Tensor) -> None:
        missing = ((block >= 0) & ~batch.has_clean.to(block.device)).nonzero().flatten()
        if missing.numel():
            keys = getattr(batch, "keys", None)
            which = f"sample {keys[int(missing[0])]!r}" if keys else f"batch position {int(missing[0])}"
            raise ValueError(
                f"pdsn stage {self.stage}: {which} is occluded on a generator block but has no clean counterpart; "
                + CLEAN_NEEDED
            )

    def forward(self, batch, step: int) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if self.seg is not None and self.stage in ("masks", "finetune"):
            terms["occ"] = pixel_cross_entropy(self.seg(batch.images), batch.masks)
        if self.stage == "trunk":
            terms.update(id_terms(self.head(self.backbone(batch.images), batch.labels), batch.labels))
            return terms
        if self.stage == "finetune":
            top = self.backbone.forward_features(batch.images)[-1]
            emb = self.backbone.forward_head(top * self.fdm(batch.masks))
            terms.update(id_terms(self.head(emb, batch.labels), batch.labels))
            return terms
        # masks / dictionary: per-block generators on clean/occluded pairs
        block = self._block_of(batch.masks, getattr(batch, "meta", None))
        self._require_clean(batch, block)
        pairs = (block >= 0).nonzero().flatten()
        block, labels = block[pairs], batch.labels[pairs]
        if pairs.numel():
            with torch.no_grad():  # frozen trunk
                f_occ = self.backbone.forward_features(batch.images[pairs])[-1]
                f_clean = self.backbone.forward_features(batch.clean[pairs])[-1]
            diff = (f_occ - f_clean).abs()  # Eq. 4: the generators see the pair's feature difference
        ce, l1, n = batch.images.new_zeros(()), batch.images.new_zeros(()), 0
        for k, b in enumerate(self.blocks):
            sel = (block == k).nonzero().flatten()
            if sel.numel() == 0:
                continue
            m = self.generators[str(b)](diff[sel])
            if self.stage == "dictionary":
                with torch.no_grad():
                    self.dict_sum[k] += min_max(m.float()).sum(0)
                    self.dict_count[k] += sel.numel()
                continue
            y = labels[sel]
            for f in (f_clean[sel], f_occ[sel]):  # 0.5 * CE(clean) + 0.5 * CE(occluded), both masked
                logits = self.head(self.backbone.forward_head(m * f), y)
                ce = ce + 0.5 * F.cross_entropy(logits, y, reduction="sum")
            l1 = l1 + mask_l1(m, f_occ[sel], f_clean[sel], self.l1_reduction).sum()
            n += sel.numel()
        if self.stage == "dictionary":  # nothing to train: loss terms without gradient (trainer counts the step)
            terms["log/pairs"] = self.dict_count.sum().detach()
            return terms
        if n == 0:  # no pair on a generator block: a zero loss that still reaches the generators (DDP)
            ce = l1 = sum(p.flatten()[0] for p in self.generators.parameters()) * 0.0
        n = max(n, 1)
        terms["mask_ce"] = ce / n
        terms["mask_l1"] = self.l1_weight * l1 / n
        terms["log/pairs"] = torch.tensor(float(n))
        return terms

    # ------------------------------------------------------------ evaluation
    def _test_masks(self, images: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        if masks is not None:
            return masks
        if self.seg is None:
            raise ValueError("pdsn with occlusion_source=gt needs the true masks at test time")
        return self.occlusion(images)

    def _image_fdm(self, images: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor | None:
        """FDM of each image from its given mask or the segmentation branch; None before finetune."""
        if self.stage != "finetune":
            return None
        return self.fdm(self._test_masks(images, masks))

    def embed(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        top = self.backbone.forward_features(images)[-1]
        fdm = self._image_fdm(images, masks)
        return self.backbone.forward_head(top if fdm is None else top * fdm)

    def embed_pair(
        self, a: torch.Tensor, b: torch.Tensor, masks_a: torch.Tensor | None = None, masks_b: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's test protocol: one FDM (AND of both faces' FDMs) applied to both faces."""
        fa = self.backbone.forward_features(a)[-1]
        fb = self.backbone.forward_features(b)[-1]
        fdm_a, fdm_b = self._image_fdm(a, masks_a), self._image_fdm(b, masks_b)
        if fdm_a is None:
            return self.backbone.forward_head(fa), self.backbone.forward_head(fb)
        fdm = fdm_a * fdm_b
        return self.backbone.forward_head(fa * fdm), self.backbone.forward_head(fb * fdm)

    def pair_condition(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """The blocks each image's FDM discards, uint8 [B, n_blocks]: what a probe imposes on the gallery."""
        if self.stage != "finetune":
            raise ValueError(f"pdsn: no FDM before the finetune stage (stage {self.stage!r})")
        return self.chosen_blocks(self._test_masks(images, masks)).to(torch.uint8)

    def embed_conditioned(self, images: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Embeddings of `images` under the FDM of chosen blocks `condition` ([n_blocks] for the whole
        batch, or [B, n_blocks]): a gallery face seen with a probe's FDM."""
        top = self.backbone.forward_features(images)[-1]
        chosen = condition.to(top.device).bool()
        if chosen.dim() == 1:
            chosen = chosen[None].expand(top.shape[0], -1)
        return self.backbone.forward_head(top * self.fdm_of(chosen))

    def predict_mask(self, images: torch.Tensor) -> torch.Tensor | None:
        return self.seg(images) if self.seg is not None else None
