"""ResNet-18 U-Net: a per-pixel occlusion segmenter for methods with a segmentation branch.

Encoder: ResNet-18 (7x7/2 stem, max-pool, four BasicBlock stages; maps at 1/2, 1/4, 1/4, 1/8,
1/16, 1/32). Decoder: five stride-2 transposed-conv up stages, each followed by concatenating
the encoder map of that scale (the last one concatenates the input image) and two 3x3
conv-BN-ReLU. Output: `out_channels` logits at the input resolution (1 channel = binary
occluded-vs-visible logits, the contract's mask). Sizes that are not multiples of 32 (112!)
are handled by resizing each up-sampled map to its skip's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import BACKBONES
from .base import init_weights


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + (x if self.shortcut is None else self.shortcut(x)))


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Up(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, 2)
        self.fuse = nn.Sequential(_conv_bn_relu(cout + cskip, cout), _conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, skip], 1))


class ResNet18UNet(nn.Module):
    """`forward(x) -> logits [B, out_channels, H, W]`; `forward_all(x)` also returns the encoder
    maps (fine to coarse) and the decoder maps (coarse to fine, the last at input size)."""

    encoder_channels = [64, 64, 128, 256, 512]
    decoder_channels = [256, 128, 64, 64, 32]

    def __init__(
        self, out_channels: int = 1, in_channels: int = 3, input_size: int | tuple[int, int] = 112, width: int = 64
    ):
        """`width` is the stem width (64 = the standard ResNet-18); every channel count scales
        with it, which keeps CPU tests of the methods that embed this net fast."""
        super().__init__()
        self.input_size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.out_channels = out_channels
        s = lambda c: max(1, c * width // 64)  # noqa: E731
        self.encoder_channels = [s(c) for c in ResNet18UNet.encoder_channels]
        self.decoder_channels = [s(c) for c in ResNet18UNet.decoder_channels]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, s(64), 7, 2, 3, bias=False), nn.BatchNorm2d(s(64)), nn.ReLU(inplace=True)
        )
        self.pool = nn.MaxPool2d(3, 2, 1)
        widths, cin, layers = [s(64), s(128), s(256), s(512)], s(64), []
        for i, w in enumerate(widths):
            layers.append(nn.Sequential(BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)))
            cin = w
        self.layers = nn.ModuleList(layers)
        skips = [s(256), s(128), s(64), s(64), in_channels]
        ups = []
        for cskip, cout in zip(skips, self.decoder_channels):
            ups.append(Up(cin, cskip, cout))
            cin = cout
        self.ups = nn.ModuleList(ups)
        self.classifier = nn.Conv2d(cin, out_channels, 1)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder maps: stem (1/2), layer1 (1/4), layer2 (1/8), layer3 (1/16), layer4 (1/32)."""
        feats = [self.stem(x)]
        y = self.pool(feats[0])
        for layer in self.layers:
            y = layer(y)
            feats.append(y)
        return feats

    def forward_decoder(self, x: torch.Tensor, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = [feats[3], feats[2], feats[1], feats[0], x]
        y, decoded = feats[4], []
        for up, skip in zip(self.ups, skips):
            y = up(y, skip)
            decoded.append(y)
        return self.classifier(y), decoded

    def forward_all(self, x: torch.Tensor) -> dict[str, object]:
        feats = self.forward_features(x)
        logits, decoded = self.forward_decoder(x, feats)
        return {"logits": logits, "encoder": feats, "decoder": decoded}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_decoder(x, self.forward_features(x))[0]


@BACKBONES.register("resnet18_unet")
def resnet18_unet(**kw) -> ResNet18UNet:
    return ResNet18UNet(**kw)
