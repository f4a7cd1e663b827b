"""MSML (multi-scale segmentation-based mask learning, Yuan et al., AAAI 2022).

Two branches on the same (occluded) image:
  * face branch: a stage-wise face backbone (IResNet-18/34/50 or LightCNN-29);
  * segmentation branch: the ResNet-18 U-Net (5 transposed-conv decoder stages with skips),
    supervised by the shards' exact occlusion masks (2 classes) with L_occ = the
    structure-via-consensus loss (Masi et al., CVPR 2020; models/losses.py), the loss MSML's
    released train.py puts on this branch (alpha 10, beta 5, blobs = the true mask's visible and
    occluded regions); occlusion_loss: ce = plain pixel cross-entropy.
Feature-masking (FM) operators bridge them: for face stage i (1-based, k = 4 stages) the decoder
map Y_s of scale j = k + 1 - i (same spatial size) is detached, concatenated with the face map
Y_f, and the FM operator
    x = filter(concat[Y_s, Y_f]) -> BN-ReLU -> R residual blocks -> 1x1 conv;  M = act(x)
gives the map the next face stage sees:
    Z = M * Y_f   (fm_combine "multiply", the paper's text, default)
    Z = M + Y_f   (fm_combine "residual", the form of an early commit of the authors' code; their
                   latest FM computes M * Y_f + Y_f).
Detaching Y_s keeps the segmentation branch trained by L_occ only, so the face loss cannot bend
it into an identity feature extractor.
Loss: L_cls + lambda * L_occ (lambda = 1).

method_kw (the Table-4-style ablation grid is expressed with these switches):
  fm_layers: [1, 2, 3, 4]   face stages that carry an FM (empty = plain two-task baseline), or a
                            quoted string of four 0/1 characters, "0111" == [2, 3, 4] (stage i
                            carries an FM iff character i is "1"; quote it: YAML reads 0111 as a number)
  fm_kernel: 3              the FM's first ("2D filter") conv: 3 (3x3) or 1 (1x1)
  res_blocks: 2             R, residual blocks inside each FM (0 = none)
  res_block: basic          "basic": two 3x3 conv-BN, ReLU(x + body(x));
                            "bottleneck": 1x1 to b = c//2 (c <= 128) or 128 -> BN-PReLU -> 3x3 ->
                            BN-PReLU -> 1x1 back to c -> BN, PReLU(x + body(x))
  fm_activation: sigmoid    "sigmoid" (M in (0, 1)) or "tanh" (M in (-1, 1); with "multiply" such a
                            mask can be negative, i.e. it can flip the sign of face features)
  fm_combine: multiply      "multiply" (Z = M * Y_f) or "residual" (Z = M + Y_f)
  variant: null             shorthand letters for the grid, see below
  detach_seg: true          stop-gradient on Y_s (false = the face loss also trains the decoder)
  fm_input: concat          Table 4: "concat" = concat[Y_s, Y_f] (default); "seg" = Y_s alone
                            (the FM's first conv takes only the segmentation map's channels)
  fm_mask: soft             Table 4: "soft" = M = act(x) (default); "binary" = M = [x > 0] in
                            {0, 1} (act(x) above act(0), for sigmoid and tanh alike), gradient
                            straight-through (backward as if M = act(x)); "segmentation" = the
                            other reading of "binarised mask": no FM operator, M = the branch's own
                            hard visible map [P(occluded) < 0.5] resized (nearest) to each face
                            stage, no gradient through it, so the segmentation branch learns from
                            L_occ only (takes neither fm_input "seg" nor fm_combine "residual";
                            fm_kernel / res_blocks / fm_activation then have nothing to act on)
  occlusion_loss: consensus "consensus" (consensus_alpha 10, consensus_beta 5) | "ce"
  seg_weight: 1.0           lambda
  seg_lr_scale / face_lr_scale: 1.0 / 1.0   separate LRs of the two branches
  seg_classes: 2            2 = softmax CE over [visible, occluded]; 1 = binary CE
  seg_width: 64             U-Net width (64 = the paper's ResNet-18; smaller only for CPU tests)

variant letters (any order, each at most once):
  F      3x3 "2D filter" (fm_kernel 3); without F: fm_kernel 1
  R      residual blocks present (res_blocks, default 2, must then be >= 1); without R: res_blocks 0
  S / T  fm_activation sigmoid / tanh; exactly one of the two
  e.g. "FRS" (= the defaults), "FRT", "FS", "RS", "S". The variant sets no res_block type and no
  fm_combine. Explicit fm_kernel / res_blocks / fm_activation given alongside a variant must agree
  with it (null counts as not given), otherwise a ValueError names both.
  CAVEAT: this letter mapping follows the three components of the authors' released FM operator
  (github ygtxr1997/MSML: "2D filter", "ResBlock", "activation function"), because the paper's
  Table 4 could not be consulted when this was written. Check it against the paper before quoting
  results as Table-4 entries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.losses import occlusion_probability, pixel_cross_entropy, structure_consensus_loss
from ._common import id_terms, opt, resize_to, run_stages, scaled_unet
from ._registry import METHODS
from .base import Method, build_backbone, build_head

FM_KERNELS = (3, 1)
RES_BLOCKS = ("basic", "bottleneck")
FM_ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}
FM_COMBINES = ("multiply", "residual")
FM_INPUTS = ("concat", "seg")
FM_MASKS = ("soft", "binary", "segmentation")
OCCLUSION_LOSSES = ("consensus", "ce")


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, x):
        return torch.relu(x + self.body(x))


class BottleneckBlock(nn.Module):
    """1x1 to b channels (c // 2 for c <= 128, else 128) -> BN-PReLU -> 3x3 -> BN-PReLU -> 1x1 back
    to c -> BN, then PReLU(x + body(x))."""

    def __init__(self, c: int):
        super().__init__()
        b = max(1, c // 2) if c <= 128 else 128
        self.body = nn.Sequential(
            nn.Conv2d(c, b, 1, bias=False),
            nn.BatchNorm2d(b),
            nn.PReLU(b),
            nn.Conv2d(b, b, 3, 1, 1, bias=False),
            nn.BatchNorm2d(b),
            nn.PReLU(b),
            nn.Conv2d(b, c, 1, bias=False),
            nn.BatchNorm2d(c),
        )
        self.act = nn.PReLU(c)

    def forward(self, x):
        return self.act(x + self.body(x))


class FeatureMasking(nn.Module):
    """concat[Y_s, Y_f] (fm_input "concat") or Y_s alone ("seg") -> kxk conv -> BN-ReLU -> R res
    blocks -> 1x1 conv = x; M = act(x), or with `binary` the hard mask [x > 0] in {0, 1} whose
    backward is act's (straight-through); returns (Z, M) with Z = M * Y_f ("multiply") or
    M + Y_f ("residual")."""

    def __init__(
        self,
        c_seg: int,
        c_face: int,
        res_blocks: int = 2,
        detach: bool = True,
        *,
        kernel: int = 3,
        res_block: str = "basic",
        activation: str = "sigmoid",
        combine: str = "multiply",
        fm_input: str = "concat",
        binary: bool = False,
    ):
        super().__init__()
        if (
            kernel not in FM_KERNELS
            or res_block not in RES_BLOCKS
            or activation not in FM_ACTIVATIONS
            or combine not in FM_COMBINES
            or fm_input not in FM_INPUTS
            or res_blocks < 0
        ):
            raise ValueError(
                f"bad FeatureMasking settings: kernel={kernel!r} res_blocks={res_blocks!r} "
                f"res_block={res_block!r} activation={activation!r} combine={combine!r} fm_input={fm_input!r}"
            )
        self.detach, self.activation, self.combine = detach, activation, combine
        self.fm_input, self.binary = fm_input, bool(binary)
        block = ResBlock if res_block == "basic" else BottleneckBlock
        c_in = c_seg + c_face if fm_input == "concat" else c_seg
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_face, kernel, 1, kernel // 2, bias=False),
            nn.BatchNorm2d(c_face),
            nn.ReLU(inplace=True),
            *[block(c_face) for _ in range(res_blocks)],
            nn.Conv2d(c_face, c_face, 1),
        )

    def forward(self, y_seg: torch.Tensor, y_face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.detach:
            y_seg = y_seg.detach()
        y_seg = resize_to(y_seg, y_face.shape[-2:])
        x = self.body(torch.cat([y_seg, y_face], 1) if self.fm_input == "concat" else y_seg)
        mask = FM_ACTIVATIONS[self.activation](x)
        if self.binary:  # {0, 1} forward (x > 0, i.e. act(x) above act(0)); straight-through backward
            mask = (x > 0).to(mask.dtype) + (mask - mask.detach())
        return (mask * y_face if self.combine == "multiply" else mask + y_face), mask


def parse_fm_layers(value, k: int = 4) -> list[int]:
    """fm_layers as a list of 1-based stage indices, or a string of k 0/1 characters ("0111")."""
    if isinstance(value, str):
        if len(value) != k or set(value) - {"0", "1"}:
            raise ValueError(f"msml fm_layers string must be {k} characters of 0/1 like '0111', got {value!r}")
        return [i + 1 for i, ch in enumerate(value) if ch == "1"]
    if not isinstance(value, (list, tuple)):
        raise ValueError(
            f"msml fm_layers must be a list of stage indices in 1..{k} or a quoted 0/1 string "
            f"like '0111' (YAML reads an unquoted 0111 as a number), got {value!r}"
        )
    for i in value:
        if isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= k:
            raise ValueError(f"msml fm_layers entries must be stage indices in 1..{k}, got {i!r} in {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"msml fm_layers has repeated stages: {value!r}")
    return sorted(value)


def _parse_variant(variant: str) -> dict:
    """Variant letters -> the switches they fix (res_blocks: None = 'present, count from res_blocks')."""
    letters = str(variant).upper()
    if set(letters) - set("FRST") or len(set(letters)) != len(letters) or ("S" in letters) == ("T" in letters):
        raise ValueError(
            f"msml variant must be letters from F, R and exactly one of S/T, each once "
            f"(e.g. 'FRS', 'FRT', 'FS', 'RS', 'S'), got {variant!r}"
        )
    return {
        "fm_kernel": 3 if "F" in letters else 1,
        "res_blocks": None if "R" in letters else 0,
        "fm_activation": "sigmoid" if "S" in letters else "tanh",
    }


def fm_settings(cfg) -> dict:
    """The FM switches from method_kw (explicit keys + optional `variant`), validated.
    Returns the FeatureMasking keyword arguments: res_blocks, kernel, res_block, activation, combine."""
    given = {key: opt(cfg, key, None) for key in ("fm_kernel", "res_blocks", "fm_activation")}
    s = {"fm_kernel": 3, "res_blocks": 2, "fm_activation": "sigmoid"}
    s.update({k: v for k, v in given.items() if v is not None})
    variant = opt(cfg, "variant", None)
    if variant is not None:
        for key, want in _parse_variant(variant).items():
            have = given[key]
            if key == "res_blocks" and want is None:  # R: blocks present, count from res_blocks
                if have == 0:
                    raise ValueError(f"msml variant {variant!r} (R: residual blocks present) contradicts res_blocks=0")
                continue
            if have is not None and have != want:
                raise ValueError(f"msml variant {variant!r} sets {key}={want!r}, contradicting {key}={have!r}")
            s[key] = want
    res_block, combine = opt(cfg, "res_block", "basic"), opt(cfg, "fm_combine", "multiply")
    if s["fm_kernel"] not in FM_KERNELS or isinstance(s["fm_kernel"], bool):
        raise ValueError(f"msml fm_kernel must be 3 or 1, got {s['fm_kernel']!r}")
    if isinstance(s["res_blocks"], bool) or not isinstance(s["res_blocks"], int) or s["res_blocks"] < 0:
        raise ValueError(f"msml res_blocks must be an integer >= 0, got {s['res_blocks']!r}")
    if not isinstance(res_block, str) or res_block not in RES_BLOCKS:
        raise ValueError(f"msml res_block must be one of {RES_BLOCKS}, got {res_block!r}")
    if not isinstance(s["fm_activation"], str) or s["fm_activation"] not in FM_ACTIVATIONS:
        raise ValueError(f"msml fm_activation must be one of {tuple(FM_ACTIVATIONS)}, got {s['fm_activation']!r}")
    if not isinstance(combine, str) or combine not in FM_COMBINES:
        raise ValueError(f"msml fm_combine must be one of {FM_COMBINES}, got {combine!r}")
    return {
        "res_blocks": s["res_blocks"],
        "kernel": s["fm_kernel"],
        "res_block": res_block,
        "activation": s["fm_activation"],
        "combine": combine,
    }


def mask_settings(cfg) -> tuple[str, str]:
    """(fm_input, fm_mask) from method_kw, validated: the Table-4 input and mask switches."""
    fm_input, fm_mask = opt(cfg, "fm_input", "concat"), opt(cfg, "fm_mask", "soft")
    if not isinstance(fm_input, str) or fm_input not in FM_INPUTS:
        raise ValueError(f"msml fm_input must be one of {FM_INPUTS}, got {fm_input!r}")
    if not isinstance(fm_mask, str) or fm_mask not in FM_MASKS:
        raise ValueError(f"msml fm_mask must be one of {FM_MASKS}, got {fm_mask!r}")
    if fm_mask == "segmentation" and (fm_input != "concat" or opt(cfg, "fm_combine", "multiply") != "multiply"):
        raise ValueError(
            "msml fm_mask 'segmentation' masks Y_f by the branch's hard prediction (Z = M * Y_f, no FM "
            "operator): it takes neither fm_input 'seg' nor fm_combine 'residual'"
        )
    return fm_input, fm_mask


@METHODS.register("msml")
class MSML(Method):
    name = "msml"
    has_segmentation = True

    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        self.backbone = build_backbone(cfg)
        self.head = build_head(cfg, self.backbone.embedding_size, num_classes)
        self.seg = scaled_unet(int(opt(cfg, "seg_width", 64)), int(opt(cfg, "seg_classes", 2)), tuple(self.input_size))
        self.seg_weight = float(opt(cfg, "seg_weight", 1.0))
        self.occlusion_loss = opt(cfg, "occlusion_loss", "consensus")
        if not isinstance(self.occlusion_loss, str) or self.occlusion_loss not in OCCLUSION_LOSSES:
            raise ValueError(f"msml occlusion_loss must be one of {OCCLUSION_LOSSES}, got {self.occlusion_loss!r}")
        self.consensus_ab = float(opt(cfg, "consensus_alpha", 10.0)), float(opt(cfg, "consensus_beta", 5.0))
        k = len(self.backbone.stage_channels)
        self.fm_layers = parse_fm_layers(opt(cfg, "fm_layers", [1, 2, 3, 4]), k)
        self.fm_settings = fm_settings(cfg)
        self.fm_input, self.fm_mask = mask_settings(cfg)
        dec = self.seg.decoder_channels
        fms = {}
        for i in self.fm_layers if self.fm_mask != "segmentation" else ():
            j = k + 1 - i  # decoder scale (1 = coarsest) of the same resolution as face stage i
            fms[str(i)] = FeatureMasking(
                dec[j - 1],
                self.backbone.stage_channels[i - 1],
                detach=bool(opt(cfg, "detach_seg", True)),
                fm_input=self.fm_input,
                binary=self.fm_mask == "binary",
                **self.fm_settings,
            )
        self.fm = nn.ModuleDict(fms)

    def _forward_all(self, images: torch.Tensor):
        seg = self.seg.forward_all(images)
        k = len(self.backbone.stage_channels)
        masks = {}
        if self.fm_mask == "segmentation":  # the branch's own hard "visible" map, no gradient
            visible = (occlusion_probability(seg["logits"].detach()) < 0.5).to(images.dtype)

        def hook(idx: int, y: torch.Tensor) -> torch.Tensor:
            i = idx + 1
            if i not in self.fm_layers:
                return y
            if self.fm_mask == "segmentation":
                masks[i] = F.interpolate(visible, size=y.shape[-2:], mode="nearest").to(y.dtype).expand_as(y)
                return masks[i] * y
            z, masks[i] = self.fm[str(i)](seg["decoder"][k - i], y)  # decoder index j-1 = k-i
            return z

        stages = run_stages(self.backbone, images, hook)
        return self.backbone.forward_head(stages[-1]), seg["logits"], masks

    def occlusion_term(self, seg_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """L_occ: the consensus loss (default) or plain pixel CE."""
        if self.occlusion_loss == "ce":
            return pixel_cross_entropy(seg_logits, masks)
        alpha, beta = self.consensus_ab
        return structure_consensus_loss(seg_logits, masks, alpha=alpha, beta=beta)

    def forward(self, batch, step: int) -> dict[str, torch.Tensor]:
        emb, seg_logits, _ = self._forward_all(batch.images)
        terms = id_terms(self.head(emb, batch.labels), batch.labels)
        terms["occ"] = self.seg_weight * self.occlusion_term(seg_logits, batch.masks)
        return terms

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self._forward_all(images)[0]

    def predict_mask(self, images: torch.Tensor) -> torch.Tensor:
        return self.seg(images)

    def param_groups(self) -> list[dict]:
        seg = [p for p in self.seg.parameters() if p.requires_grad]
        seg_ids = {id(p) for p in seg}
        face = [p for p in self.parameters() if p.requires_grad and id(p) not in seg_ids]
        return [
            {"params": face, "lr_scale": float(opt(self.cfg, "face_lr_scale", 1.0)), "name": "face"},
            {"params": seg, "lr_scale": float(opt(self.cfg, "seg_lr_scale", 1.0)), "name": "seg"},
        ]
