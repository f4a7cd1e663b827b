"""SOIDN: "Occlusion-invariant face recognition using simultaneous segmentation" (Zeng, Veldhuis,
Spreeuwers, Arendsen; IET Biometrics 10(6), 2021; doi 10.1049/bme2.12036): the simultaneous
occlusion invariant deep network. Facts and their tests: reproduction/soidn.md.

Same input to two networks:
  * face network: VGG16 (models/backbones/vgg.py) conv blocks -> pool5 map P_f [B, 512, h, w] -> fc6/fc7;
  * occlusion segmentation network: FCN-8s on its own VGG16 trunk: fc6/fc7 as convs on pool5,
    1x1 score layers on conv7, pool4 and pool3, x2 / x2 / x8 up-sampling with skip sums (2 classes,
    visible / occluded), supervised with pixel-wise CE on the shards' masks;
  * OMA (occlusion mask adaptor): 1x1 conv + sigmoid from the segmentation network's top conv
    features (its pool5 map) to a mask M in [0, 1] of P_f's shape; the face network's FC layers
    see M * P_f, so features of occluded regions are suppressed before they are pooled by fc6.
Loss: CE(identity) + lambda * pixel CE (lambda = 1).

Both VGG16 trunks follow `model.backbone_kw.batch_norm` (default false: VGG16 without BN, as the
paper). The paper starts from VGG-Face: `vggface_init_state` turns a VGG-Face state dict into a
checkpoint for `train.init_from` (the face network's convs, fc6, fc7; the FCN trunk's convs and
its convolutionalised fc6 / fc7, as FCN initialises from a classification net).

method_kw: seg_weight 1.0, fcn_hidden 4096 (fc6/fc7 width of FCN-8s), fcn_kernel 7 (fc6 as a
7x7 conv, as in FCN; use 1 at small inputs), seg_lr_scale 1.0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.backbones import create_backbone
from ..models.backbones.vgg import VGGFACE_MEAN_RGB, vggface_layers, vggface_state_dict
from ..models.losses import pixel_cross_entropy
from ._common import id_terms, opt
from ._registry import METHODS
from .base import Method, build_backbone, build_head


def bilinear_kernel(channels: int, size: int) -> torch.Tensor:
    """[C, C, k, k] weights of a transposed conv that up-samples each channel bilinearly."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor
    k = filt[:, None] * filt[None, :]
    w = torch.zeros(channels, channels, size, size)
    w[range(channels), range(channels)] = k
    return w


class FCN8s(nn.Module):
    def __init__(
        self,
        input_size,
        hidden: int = 4096,
        kernel: int = 7,
        classes: int = 2,
        batch_norm: bool = False,
        width: int = 64,
    ):
        super().__init__()
        # the VGG16 trunk only (its FC layers are replaced by conv6/conv7 below)
        trunk = create_backbone(
            "vgg16", input_size=input_size, batch_norm=batch_norm, hidden=8, embedding_size=8, width=width
        )
        self.stages = trunk.stages
        c3, c4, c5 = trunk.stage_channels[2:]
        self.conv67 = nn.Sequential(
            nn.Conv2d(c5, hidden, kernel, 1, kernel // 2),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.5),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.5),
        )
        self.score7 = nn.Conv2d(hidden, classes, 1)
        self.score4 = nn.Conv2d(c4, classes, 1)
        self.score3 = nn.Conv2d(c3, classes, 1)
        self.up2a = nn.ConvTranspose2d(classes, classes, 4, 2, 1, bias=False)
        self.up2b = nn.ConvTranspose2d(classes, classes, 4, 2, 1, bias=False)
        self.up8 = nn.ConvTranspose2d(classes, classes, 16, 8, 4, bias=False)
        # FCN's initialisation: zero score layers (the net starts from the pixel prior) and
        # bilinear up-sampling kernels (learnable, but starting as interpolation)
        for score in (self.score7, self.score4, self.score3):
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
        for up in (self.up2a, self.up2b, self.up8):
            up.weight.data.copy_(bilinear_kernel(classes, up.kernel_size[0]))

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        pool3, pool4, pool5 = feats[2], feats[3], feats[4]
        s = self.score7(self.conv67(pool5))
        s = F.interpolate(self.up2a(s), size=pool4.shape[-2:], mode="bilinear", align_corners=False) + self.score4(
            pool4
        )
        s = F.interpolate(self.up2b(s), size=pool3.shape[-2:], mode="bilinear", align_corners=False) + self.score3(
            pool3
        )
        logits = F.interpolate(self.up8(s), size=size, mode="bilinear", align_corners=False)
        return {"logits": logits, "top": pool5}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)["logits"]


@METHODS.register("soidn")
class SOIDN(Method):
    name = "soidn"
    has_segmentation = True

    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        self.backbone = build_backbone(cfg)
        if cfg.model.backbone != "vgg16":
            raise ValueError("soidn is defined on the vgg16 face network")
        self.head = build_head(cfg, self.backbone.embedding_size, num_classes)
        self.seg = FCN8s(
            tuple(self.input_size),
            int(opt(cfg, "fcn_hidden", 4096)),
            int(opt(cfg, "fcn_kernel", 7)),
            batch_norm=self.backbone.batch_norm,  # the two trunks alike
            width=self.backbone.stage_channels[0],
        )
        c = self.backbone.stage_channels[-1]
        self.oma = nn.Conv2d(c, c, 1)  # the FCN trunk's pool5 has the face trunk's width
        nn.init.zeros_(self.oma.weight)
        nn.init.constant_(self.oma.bias, 3.0)  # start near an all-visible mask (sigmoid(3) = 0.95)
        self.seg_weight = float(opt(cfg, "seg_weight", 1.0))

    def occlusion_mask(self, images: torch.Tensor):
        """(face pool5 map, OMA mask in [0, 1] of its shape, segmentation logits)."""
        seg = self.seg.forward_all(images)
        face_top = self.backbone.forward_features(images)[-1]
        return face_top, torch.sigmoid(self.oma(seg["top"])), seg["logits"]

    def forward(self, batch, step: int) -> dict[str, torch.Tensor]:
        top, mask, seg_logits = self.occlusion_mask(batch.images)
        emb = self.backbone.forward_head(top * mask)
        terms = id_terms(self.head(emb, batch.labels), batch.labels)
        terms["occ"] = self.seg_weight * pixel_cross_entropy(seg_logits, batch.masks)
        return terms

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        top, mask, _ = self.occlusion_mask(images)
        return self.backbone.forward_head(top * mask)

    def predict_mask(self, images: torch.Tensor) -> torch.Tensor:
        return self.seg(images)

    def param_groups(self) -> list[dict]:
        seg = list(self.seg.parameters())
        ids = {id(p) for p in seg}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [
            {"params": rest, "name": "face"},
            {
                "params": [p for p in seg if p.requires_grad],
                "name": "seg",
                "lr_scale": float(opt(self.cfg, "seg_lr_scale", 1.0)),
            },
        ]


def vggface_init_state(
    state: dict,
    *,
    batch_norm: bool = False,
    fcn_kernel: int = 7,
    seg_trunk: bool = True,
    mean=VGGFACE_MEAN_RGB,
    std=(1.0, 1.0, 1.0),
    bgr: bool = False,
) -> dict[str, torch.Tensor]:
    """A VGG-Face state dict (release names conv1_1 ... fc7, or torchvision's features.N /
    classifier.N) -> a SOIDN state dict for `train.init_from`: the face network's 13 convs, fc6 and
    fc7 ("backbone."), and with `seg_trunk` the FCN-8s trunk's convs and its conv6 / conv7 as fc6 /
    fc7 reshaped to [out, 512, k, k] / [out, in, 1, 1] ("seg."). conv1_1 absorbs VGG-Face's input
    normalisation (see vgg.fold_input_normalisation). Save it with engine.checkpoint.save_checkpoint."""
    out = vggface_state_dict(state, prefix="backbone.", batch_norm=batch_norm, mean=mean, std=std, bgr=bgr)
    if seg_trunk:
        out.update(
            vggface_state_dict(state, prefix="seg.", batch_norm=batch_norm, fc=False, mean=mean, std=std, bgr=bgr)
        )
        layers = vggface_layers(state)
        w6, b6 = layers["fc6"]
        if w6.shape[1] != 512 * fcn_kernel * fcn_kernel:
            raise ValueError(
                f"fc6 takes {w6.shape[1]} inputs, not 512 x {fcn_kernel} x {fcn_kernel}: pass the fcn_kernel "
                "of the run's method_kw (7 for a 224 px VGG-Face fc6)"
            )
        w7, b7 = layers["fc7"]
        out["seg.conv67.0.weight"] = w6.reshape(w6.shape[0], 512, fcn_kernel, fcn_kernel)
        out["seg.conv67.3.weight"] = w7.reshape(*w7.shape, 1, 1)
        for name, b in (("seg.conv67.0.bias", b6), ("seg.conv67.3.bias", b7)):
            if b is not None:
                out[name] = b
    return out
