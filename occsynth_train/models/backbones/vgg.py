"""VGG16 in the VGG-Face layout: 224x224, 13 3x3 convs (with bias) in five pooled blocks, fc6 -> fc7.

Defaults follow VGG-Face (Parkhi et al. 2015) in the convs: no BatchNorm. Two switches:
  * `batch_norm=True`: BN after each conv (conv without bias), which lets the net train from
    scratch with margin heads;
  * `embedding`: "bn" (default) = fc7 is the embedding followed by a BN1d (a ReLU'd embedding is
    non-negative, a poor fit for cosine-margin heads); "relu" = VGG-Face's own fc7 -> ReLU ->
    Dropout, the descriptor being relu7 (the input of VGG-Face's fc8 classifier, which our
    `softmax` head plays). VGG-Face's 4096-d descriptor is `embedding_size=4096`.

A VGG-Face checkpoint enters through `vggface_state_dict` (our parameter names, the input
normalisation folded into conv1_1); see occsynth_train/reproduction/soidn.md for the recipe.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from ._registry import BACKBONES
from .base import Backbone, as_size, down, init_weights

log = logging.getLogger(__name__)

BLOCKS = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
EMBEDDINGS = ("bn", "relu")
# VGG-Face's layer names (the release and its ports) and torchvision's VGG16 layout of the same net
VGGFACE_CONVS = [f"conv{b + 1}_{i + 1}" for b, widths in enumerate(BLOCKS) for i in range(len(widths))]
TORCHVISION_CONVS = [f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)]
TORCHVISION_FCS = {"fc6": "classifier.0", "fc7": "classifier.3"}
# VGG-Face's input: RGB in 0..255 minus its average face colour (std 1); the Caffe original takes
# BGR. These are the values its ports ship (e.g. vgg_face_dag's meta); check your port's metadata.
VGGFACE_MEAN_RGB = (129.186279296875, 104.76238250732422, 93.59396362304688)


class VGG(Backbone):
    def __init__(
        self,
        embedding_size: int = 512,
        dropout: float = 0.5,
        input_size: int | tuple[int, int] = 224,
        batch_norm: bool = False,
        in_channels: int = 3,
        hidden: int = 4096,
        embedding: str = "bn",
        width: int = 64,
    ):
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ValueError(f"vgg16: embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        self.input_size = as_size(input_size)
        self.embedding_size = embedding_size
        self.batch_norm = bool(batch_norm)
        if width < 1:
            raise ValueError(f"vgg16: width must be >= 1, got {width}")
        # width: channels of the first block (64 in VGG16); the others scale with it (CPU-scale runs)
        blocks = [[w * width // 64 for w in widths] for widths in BLOCKS]
        self.stage_channels = [b[-1] for b in blocks]
        self.stem = nn.Identity()
        stages, cin = [], in_channels
        for widths in blocks:
            layers: list[nn.Module] = []
            for w in widths:
                layers += [nn.Conv2d(cin, w, 3, 1, 1, bias=not batch_norm)]
                layers += [nn.BatchNorm2d(w)] if batch_norm else []
                layers += [nn.ReLU(inplace=True)]
                cin = w
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        fh, fw = down(self.input_size, 5)
        self.fc6 = nn.Sequential(
            nn.Linear(self.stage_channels[-1] * fh * fw, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)
        )
        self.fc7 = nn.Linear(hidden, embedding_size)
        self.features = (
            nn.BatchNorm1d(embedding_size)
            if embedding == "bn"
            else nn.Sequential(nn.ReLU(inplace=True), nn.Dropout(dropout))
        )
        init_weights(self)

    def forward_head(self, last: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc7(self.fc6(torch.flatten(last, 1))))


@BACKBONES.register("vgg16")
def vgg16(**kw) -> VGG:
    return VGG(**kw)


def conv_names(batch_norm: bool = False) -> list[str]:
    """Our names of the 13 convs under a VGG's `stages` (conv, [BN,] ReLU per layer, pool per stage)."""
    step = 3 if batch_norm else 2
    return [f"stages.{s}.{i * step}" for s, widths in enumerate(BLOCKS) for i in range(len(widths))]


def vggface_layers(state: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """{conv1_1 .. conv5_3, fc6, fc7: (weight, bias)} from a VGG-Face state dict named like the
    release (conv1_1.weight ... fc7.weight) or laid out like torchvision's VGG16 (features.N,
    classifier.N); a leading "module." (DataParallel) is ignored."""
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for convs, fcs in ((VGGFACE_CONVS, {"fc6": "fc6", "fc7": "fc7"}), (TORCHVISION_CONVS, TORCHVISION_FCS)):
        if all(f"{n}.weight" in state for n in convs):
            names = dict(zip(VGGFACE_CONVS, convs)) | fcs
            return {ours: (state[f"{theirs}.weight"], state.get(f"{theirs}.bias")) for ours, theirs in names.items()}
    shown = ", ".join(sorted(state)[:6]) or "nothing"
    raise ValueError(
        "not a VGG-Face / VGG16 state dict: expected conv1_1.weight ... conv5_3.weight (VGG-Face names) "
        f"or features.0.weight ... (torchvision layout); found {shown}"
    )


def fold_input_normalisation(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mean: Sequence[float] = VGGFACE_MEAN_RGB,
    std: Sequence[float] = (1.0, 1.0, 1.0),
    bgr: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """conv1_1 of a net fed v = (x255 - mean) / std (RGB mean/std in 0..255 units; `bgr`: its input
    channels are in BGR order) rewritten for our input x = x255 / 127.5 - 1 (RGB): W' = 127.5 W / std,
    b' = b + sum_c (127.5 - mean_c) / std_c * sum_k W[:, c]. Exact away from the 1-pixel border
    (zero padding stands for a different colour in the two input spaces)."""
    w = weight.float().flip(1) if bgr else weight.float()  # input channels in RGB order
    mean_t = torch.as_tensor(mean, dtype=torch.float32)
    std_t = torch.as_tensor(std, dtype=torch.float32)
    b = torch.zeros(w.shape[0]) if bias is None else bias.float()
    shift = ((127.5 - mean_t) / std_t)[None, :]  # [1, C_in]
    new_b = b + (w.sum((2, 3)) * shift).sum(1)
    new_w = w * (127.5 / std_t)[None, :, None, None]
    return new_w.to(weight.dtype), new_b.to(weight.dtype)


def vggface_state_dict(
    state: dict,
    *,
    prefix: str = "",
    batch_norm: bool = False,
    fc: bool = True,
    mean: Sequence[float] = VGGFACE_MEAN_RGB,
    std: Sequence[float] = (1.0, 1.0, 1.0),
    bgr: bool = False,
) -> dict[str, torch.Tensor]:
    """A VGG-Face (or any VGG16) state dict -> our VGG's parameter names under `prefix`: the 13
    convs (conv1_1 with the input normalisation folded in), and fc6 / fc7 when `fc`. A BN net's
    convs have no bias: the checkpoint's conv biases are left out (its BN layers start fresh)."""
    layers = vggface_layers(state)
    out: dict[str, torch.Tensor] = {}
    for k, (theirs, ours) in enumerate(zip(VGGFACE_CONVS, conv_names(batch_norm))):
        w, b = layers[theirs]
        if k == 0:
            w, b = fold_input_normalisation(w, b, mean, std, bgr)
        out[f"{prefix}{ours}.weight"] = w
        if not batch_norm and b is not None:
            out[f"{prefix}{ours}.bias"] = b
    if batch_norm:
        log.info("vggface_state_dict: a BN net's convs have no bias; the checkpoint's conv biases are not used")
    if fc:
        for theirs, ours in (("fc6", "fc6.0"), ("fc7", "fc7")):
            w, b = layers[theirs]
            out[f"{prefix}{ours}.weight"] = w
            if b is not None:
                out[f"{prefix}{ours}.bias"] = b
    return out
