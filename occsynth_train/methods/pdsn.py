"""PDSN (pairwise differential siamese network, Song et al., ICCV 2019) in four stages.

The face image is divided into a grid x grid (5 x 5) grid of blocks; an occluder on block b
corrupts a fixed set of elements of the trunk's top conv feature map, and PDSN learns which.

  stage: trunk       the trunk (backbone + margin head, CosFace in the paper) trained as usual.
  stage: masks       trunk frozen; one mask generator per block (the 9 central blocks, or all 25
                     with blocks: all) maps the occluded image's top feature map to a mask
                     M in (0, 1) of the same shape. Trained on clean/occluded pairs with
                     CE(head(M * f(x_occ))) + lambda * mean|M * f(x_occ) - M * f(x)| (lambda = 10):
                     the L1 term pushes M to zero where the occluded and clean features differ,
                     the CE keeps the rest discriminative.
  stage: dictionary  statistics only: for every pair, the block's mask is min-max normalised
                     and summed; dictionary entry b = mean mask binarised by zeroing its lowest
                     floor(tau * K) elements (tau = 0.25, K = elements of the map). Sums and counts
                     are buffers, so the dictionary lives in the checkpoint.
  stage: finetune    the feature discarding mask FDM = AND (product) of the entries of the blocks
                     whose IoU with the occlusion mask is >= 0.5 multiplies the top feature map
                     before the FC; the trunk's FC + head are fine-tuned on occluded images.

Which block a pair's occluder sits on comes from the sample's `grid_cell` occluder record
(`params.cell`, mirrored when the loader flipped the image): `occsynth build pdsn-pairs
--with-neighbours` occludes a cell and its 4-neighbours, where only the record names the centre.
Samples without such a record (other occluders) fall back to the grid cell with the most
occluded pixels in the mask.

Occlusion detector at test time (occlusion_source): "segmentation" (a ResNet-18 U-Net trained in
the masks and finetune stages on the shards' masks) or "gt" (the benchmark's true masks, which
the evaluator passes to embed / embed_pair because `uses_gt_masks` is set).
Pairwise test protocol (pairwise_fdm, default true in the finetune stage): the paper applies the
probe's FDM to both faces of a comparison; the evaluator then scores each pair with
embed_pair(), which applies the AND of both faces' FDMs to both. With a clean gallery face (no
block chosen, FDM all ones) that is exactly the probe's FDM, and it stays symmetric when both
faces are occluded (LFW_block). pairwise_fdm: false scores per-image embeddings (own FDM each).

method_kw: stage, grid 5, blocks central|all, l1_weight 10, tau 0.25, iou_threshold 0.5,
block_score iou|coverage, occlusion_source segmentation|gt, pairwise_fdm true, seg_width 64. Each stage starts from
the previous stage's checkpoint with `train.init_from` (loaded non-strictly by the trainer).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models.backbones.base import down
from ..models.losses import pixel_cross_entropy
from ._common import id_terms, opt, scaled_unet
from ._registry import METHODS
from .base import Method, build_backbone, build_head

STAGES = ("trunk", "masks", "dictionary", "finetune")


def block_ids(grid: int, blocks: str) -> list[int]:
    """Row-major cell indices that get a mask generator: the central (grid-2)^2 or all grid^2."""
    if blocks == "all":
        return list(range(grid * grid))
    return [r * grid + c for r in range(1, grid - 1) for c in range(1, grid - 1)]


def cell_fractions(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """Occluded fraction of each grid cell, [B, grid*grid] row-major."""
    return F.adaptive_avg_pool2d(masks.float(), grid).flatten(1)


def block_iou(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """IoU between each grid cell (as a region) and the occluded region, [B, grid*grid]."""
    b, _, h, w = masks.shape
    m = masks.float() > 0.5
    occ = m.flatten(1).sum(1, keepdim=True).float()
    ys = torch.arange(h, device=masks.device) * grid // h
    xs = torch.arange(w, device=masks.device) * grid // w
    cell_of = (ys[:, None] * grid + xs[None, :]).flatten()  # pixel -> cell
    area = torch.bincount(cell_of, minlength=grid * grid).float()[None]  # [1, G]
    inter = torch.zeros(b, grid * grid, device=masks.device).index_add_(1, cell_of, m.flatten(1).float())
    return inter / (area + occ - inter).clamp(min=1)


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
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.PReLU(c), nn.Conv2d(c, c, 3, 1, 1)
        )
        nn.init.zeros_(self.body[3].weight)
        nn.init.constant_(self.body[3].bias, 3.0)  # start near 'keep everything'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(x))


@METHODS.register("pdsn")
class PDSN(Method):
    name = "pdsn"
    find_unused_parameters = True  # only the generators of the blocks present in a batch are used

    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        self.stage = str(opt(cfg, "stage", "trunk"))
        if self.stage not in STAGES:
            raise ValueError(f"pdsn stage must be one of {STAGES}, got {self.stage!r}")
        self.requires_clean = self.stage == "masks"
        self.backbone = build_backbone(cfg)
        self.head = build_head(cfg, self.backbone.embedding_size, num_classes)
        self.grid = int(opt(cfg, "grid", 5))
        self.blocks = block_ids(self.grid, str(opt(cfg, "blocks", "central")))
        c = self.backbone.stage_channels[-1]
        self.generators = nn.ModuleDict({str(b): MaskGenerator(c) for b in self.blocks})
        self.l1_weight = float(opt(cfg, "l1_weight", 10.0))
        self.tau = float(opt(cfg, "tau", 0.25))
        self.iou_threshold = float(opt(cfg, "iou_threshold", 0.5))
        self.block_score = str(opt(cfg, "block_score", "iou"))
        self.source = str(opt(cfg, "occlusion_source", "segmentation"))
        if self.source not in ("segmentation", "gt"):
            raise ValueError(f"pdsn occlusion_source must be segmentation or gt, got {self.source!r}")
        self.has_segmentation = self.source == "segmentation"
        self.uses_gt_masks = self.source == "gt"
        self.pairwise = self.stage == "finetune" and bool(opt(cfg, "pairwise_fdm", True))
        self.seg = (
            scaled_unet(int(opt(cfg, "seg_width", 64)), 1, tuple(self.input_size)) if self.has_segmentation else None
        )
        fh, fw = self._feature_size()
        self.register_buffer("dict_sum", torch.zeros(len(self.blocks), c, fh, fw))
        self.register_buffer("dict_count", torch.zeros(len(self.blocks)))
        self._set_trainable()
        if "init_from" in (cfg.method_kw or {}):
            raise ValueError("pdsn: method_kw.init_from moved to train.init_from (the previous stage's checkpoint)")

    def _feature_size(self) -> tuple[int, int]:
        """Top feature map size: four stride-2 stages (IResNet, LightCNN)."""
        return down(tuple(self.input_size), 4)

    # ------------------------------------------------------------ stage switches
    def _set_trainable(self) -> None:
        trunk = self.stage in ("trunk", "finetune")
        for p in self.backbone.parameters():
            p.requires_grad_(trunk)
        if hasattr(self.backbone, "features") and isinstance(self.backbone.features, nn.BatchNorm1d):
            self.backbone.features.weight.requires_grad_(False)  # IResNet's fixed-scale BN1d
        for p in self.head.parameters():
            p.requires_grad_(self.stage != "dictionary")
        for p in self.generators.parameters():
            p.requires_grad_(self.stage == "masks")
        if self.seg is not None:
            for p in self.seg.parameters():
                p.requires_grad_(self.stage in ("masks", "finetune"))

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.stage in ("masks", "dictionary"):
            self.backbone.eval()  # frozen trunk: BN statistics stay those of stage 1
            if self.stage == "dictionary":
                self.generators.eval()
        return self

    # ------------------------------------------------------------ dictionary and FDM
    def dictionary(self) -> torch.Tensor:
        """Binary entries [n_blocks, C, h, w]; all-ones for blocks never seen."""
        mean = self.dict_sum / self.dict_count.clamp(min=1)[:, None, None, None]
        out = torch.stack([binarise(m, self.tau) for m in mean])
        return torch.where(self.dict_count[:, None, None, None] > 0, out, torch.ones_like(out))

    def fdm(self, masks: torch.Tensor) -> torch.Tensor:
        """FDM per image [B, C, h, w]: product (AND) of the entries of blocks scoring >= threshold."""
        score = block_iou(masks, self.grid) if self.block_score == "iou" else cell_fractions(masks, self.grid)
        chosen = score[:, self.blocks] >= self.iou_threshold  # [B, n_blocks]
        entries = self.dictionary()  # [n, C, h, w]
        # AND of binary entries = product; unchosen blocks contribute 1
        factors = torch.where(chosen[:, :, None, None, None], entries[None], torch.ones_like(entries)[None])
        return factors.prod(1)

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
        with torch.no_grad():
            f_occ = self.backbone.forward_features(batch.images)[-1]
            f_clean = self.backbone.forward_features(batch.clean)[-1] if self.stage == "masks" else None
        block = self._block_of(batch.masks, getattr(batch, "meta", None))
        if self.stage == "masks":
            block = torch.where(batch.has_clean, block, torch.full_like(block, -1))
        ce, l1, n = f_occ.new_zeros(()), f_occ.new_zeros(()), 0
        for k, b in enumerate(self.blocks):
            sel = (block == k).nonzero().flatten()
            if sel.numel() == 0:
                continue
            m = self.generators[str(b)](f_occ[sel])
            if self.stage == "dictionary":
                with torch.no_grad():
                    self.dict_sum[k] += min_max(m.float()).sum(0)
                    self.dict_count[k] += sel.numel()
                continue
            emb = self.backbone.forward_head(m * f_occ[sel])
            ce = ce + F.cross_entropy(self.head(emb, batch.labels[sel]), batch.labels[sel], reduction="sum")
            l1 = l1 + (m * f_occ[sel] - m * f_clean[sel]).abs().flatten(1).mean(1).sum()
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
    def _image_fdm(self, images: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor | None:
        """FDM of each image from its given mask or the segmentation branch; None before finetune."""
        if self.stage != "finetune":
            return None
        if masks is None:
            if self.seg is None:
                raise ValueError("pdsn with occlusion_source=gt needs the true masks at test time")
            masks = self.occlusion(images)
        return self.fdm(masks)

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

    def predict_mask(self, images: torch.Tensor) -> torch.Tensor | None:
        return self.seg(images) if self.seg is not None else None
