"""MSML (multi-scale segmentation-based mask learning, Yuan et al., AAAI 2022).

Two branches on the same (occluded) image:
  * face branch: a stage-wise face backbone (IResNet-18/34/50 or LightCNN-29);
  * segmentation branch: the ResNet-18 U-Net (5 transposed-conv decoder stages with skips),
    supervised by the shards' exact occlusion masks with pixel-wise CE (2 classes).
Feature-masking (FM) operators bridge them: for face stage i (1-based, k = 4 stages) the decoder
map of scale j = k + 1 - i (same spatial size) is detached, concatenated with the face map Y_f,
then 3x3 conv -> R residual blocks -> 1x1 conv -> sigmoid gives a mask M and the next face stage
sees Z = M * Y_f. Detaching Y_s keeps the segmentation branch trained by L_occ only, so the
face loss cannot bend it into an identity feature extractor.
Loss: L_cls + lambda * L_occ (lambda = 1).

method_kw (the Table-4-style ablation grid is expressed with these switches):
  fm_layers: [1, 2, 3, 4]   face stages that carry an FM (empty = plain two-task baseline)
  res_blocks: 2             R, residual blocks inside each FM
  detach_seg: true          stop-gradient on Y_s (false = the face loss also trains the decoder)
  seg_weight: 1.0           lambda
  seg_lr_scale / face_lr_scale: 1.0 / 1.0   separate LRs of the two branches
  seg_classes: 2            2 = softmax CE over [visible, occluded]; 1 = binary CE
  seg_width: 64             U-Net width (64 = the paper's ResNet-18; smaller only for CPU tests)
"""
from __future__ import annotations

import torch
from torch import nn

from . import register_method
from ..losses import pixel_cross_entropy
from ._common import id_terms, opt, resize_to, run_stages, scaled_unet
from .base import Method, build_backbone, build_head


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                  nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.body(x))


class FeatureMasking(nn.Module):
    """concat[Y_s, Y_f] -> 3x3 conv -> R res blocks -> 1x1 conv -> sigmoid = M; returns (M * Y_f, M)."""

    def __init__(self, c_seg: int, c_face: int, res_blocks: int = 2, detach: bool = True):
        super().__init__()
        self.detach = detach
        self.body = nn.Sequential(nn.Conv2d(c_seg + c_face, c_face, 3, 1, 1, bias=False), nn.BatchNorm2d(c_face),
                                  nn.ReLU(inplace=True), *[ResBlock(c_face) for _ in range(res_blocks)],
                                  nn.Conv2d(c_face, c_face, 1))

    def forward(self, y_seg: torch.Tensor, y_face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.detach:
            y_seg = y_seg.detach()
        y_seg = resize_to(y_seg, y_face.shape[-2:])
        mask = torch.sigmoid(self.body(torch.cat([y_seg, y_face], 1)))
        return mask * y_face, mask


@register_method("msml")
class MSML(Method):
    name = "msml"
    has_segmentation = True

    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        self.backbone = build_backbone(cfg)
        self.head = build_head(cfg, self.backbone.embedding_size, num_classes)
        self.seg = scaled_unet(int(opt(cfg, "seg_width", 64)), int(opt(cfg, "seg_classes", 2)), tuple(self.input_size))
        self.seg_weight = float(opt(cfg, "seg_weight", 1.0))
        self.fm_layers = [int(i) for i in opt(cfg, "fm_layers", [1, 2, 3, 4])]
        k = len(self.backbone.stage_channels)
        dec = self.seg.decoder_channels
        fms = {}
        for i in self.fm_layers:
            if not 1 <= i <= k:
                raise ValueError(f"msml fm_layers must be in 1..{k}, got {i}")
            j = k + 1 - i  # decoder scale (1 = coarsest) of the same resolution as face stage i
            fms[str(i)] = FeatureMasking(dec[j - 1], self.backbone.stage_channels[i - 1],
                                         int(opt(cfg, "res_blocks", 2)), bool(opt(cfg, "detach_seg", True)))
        self.fm = nn.ModuleDict(fms)

    def _forward_all(self, images: torch.Tensor):
        seg = self.seg.forward_all(images)
        k = len(self.backbone.stage_channels)
        masks = {}

        def hook(idx: int, y: torch.Tensor) -> torch.Tensor:
            i = idx + 1
            if str(i) not in self.fm:
                return y
            z, masks[i] = self.fm[str(i)](seg["decoder"][k - i], y)  # decoder index j-1 = k-i
            return z

        stages = run_stages(self.backbone, images, hook)
        return self.backbone.forward_head(stages[-1]), seg["logits"], masks

    def forward(self, batch, step: int) -> dict[str, torch.Tensor]:
        emb, seg_logits, _ = self._forward_all(batch.images)
        terms = id_terms(self.head(emb, batch.labels), batch.labels)
        terms["occ"] = self.seg_weight * pixel_cross_entropy(seg_logits, batch.masks)
        return terms

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self._forward_all(images)[0]

    def predict_mask(self, images: torch.Tensor) -> torch.Tensor:
        return self.seg(images)

    def param_groups(self) -> list[dict]:
        seg = [p for p in self.seg.parameters() if p.requires_grad]
        seg_ids = {id(p) for p in seg}
        face = [p for p in self.parameters() if p.requires_grad and id(p) not in seg_ids]
        return [{"params": face, "lr_scale": float(opt(self.cfg, "face_lr_scale", 1.0)), "name": "face"},
                {"params": seg, "lr_scale": float(opt(self.cfg, "seg_lr_scale", 1.0)), "name": "seg"}]
