"""Small helpers shared by the occlusion methods (msml, pdsn, alob, soidn, lcd)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def opt(cfg, key: str, default):
    """cfg.method_kw[key] or `default` (cfg may be None in unit tests that build modules directly)."""
    if cfg is None:
        return default
    return (cfg.method_kw or {}).get(key, default)


def run_stages(backbone: nn.Module, x: torch.Tensor,
               hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> list[torch.Tensor]:
    """A face backbone's stage maps with `hook(i, map)` (0-based stage i) applied after each stage,
    its output feeding the next stage: the place where MSML's FM and LCD's dropout act.
    Works for IResNet (stem + stages), LightCNN (grey conversion + stages) and VGG (stages)."""
    if getattr(backbone, "in_channels", 3) == 1 and x.shape[1] == 3:
        x = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    if hasattr(backbone, "stem"):
        x = backbone.stem(x)
    out = []
    for i, stage in enumerate(backbone.stages):
        x = stage(x)
        if hook is not None:
            x = hook(i, x)
        out.append(x)
    return out


def id_terms(logits: torch.Tensor, labels: torch.Tensor, name: str = "id") -> dict[str, torch.Tensor]:
    return {name: F.cross_entropy(logits, labels),
            f"log/acc{'' if name == 'id' else '_' + name}": (logits.detach().argmax(1) == labels).float().mean()}


def resize_to(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def seg_targets(masks: torch.Tensor, size) -> torch.Tensor:
    """Occsynth masks float [B,1,H,W] (1 = occluded) -> long class map [B,h,w] at `size` (nearest
    keeps them binary)."""
    if tuple(masks.shape[-2:]) != tuple(size):
        masks = F.interpolate(masks.float(), size=tuple(size), mode="nearest")
    return masks[:, 0].round().long()


def scaled_unet(width: int = 64, out_channels: int = 1, input_size=112):
    """The core ResNet-18 U-Net (backbones/unet.py) with every width scaled by width/64 (64 = the
    registered net, same modules and parameter count): narrow segmentation branches keep the CPU
    tests fast. Forward methods are the core net's own."""
    from ..backbones import create_backbone
    from ..backbones.base import init_weights
    from ..backbones.unet import BasicBlock, ResNet18UNet, Up

    net = create_backbone("resnet18_unet", out_channels=out_channels, input_size=input_size)
    if width == 64:
        return net
    s = lambda c: max(1, c * width // 64)  # noqa: E731
    in_channels = net.stem[0].in_channels
    net.encoder_channels = [s(c) for c in ResNet18UNet.encoder_channels]
    net.decoder_channels = [s(c) for c in ResNet18UNet.decoder_channels]
    net.stem = nn.Sequential(nn.Conv2d(in_channels, s(64), 7, 2, 3, bias=False), nn.BatchNorm2d(s(64)), nn.ReLU(inplace=True))
    layers, cin = [], s(64)
    for i, w in enumerate([s(64), s(128), s(256), s(512)]):
        layers.append(nn.Sequential(BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)))
        cin = w
    net.layers = nn.ModuleList(layers)
    skips = [s(256), s(128), s(64), s(64), in_channels]
    ups = []
    for cskip, cout in zip(skips, net.decoder_channels):
        ups.append(Up(cin, cskip, cout))
        cin = cout
    net.ups = nn.ModuleList(ups)
    net.classifier = nn.Conv2d(cin, out_channels, 1)
    init_weights(net)
    return net
