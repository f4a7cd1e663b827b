"""Backbones: canonical shapes (on the meta device: no compute) and a real CPU forward/backward
at small sizes for every registered net."""

from __future__ import annotations

import pytest
import torch

from occsynth_train.models.backbones import create_backbone, list_backbones
from occsynth_train.models.backbones.base import Backbone

# name -> (canonical input, embedding size, stage (channels, side) at that input)
CANONICAL = {
    "iresnet18": (112, 512, [(64, 56), (128, 28), (256, 14), (512, 7)]),
    "iresnet34": (112, 512, [(64, 56), (128, 28), (256, 14), (512, 7)]),
    "iresnet50": (112, 512, [(64, 56), (128, 28), (256, 14), (512, 7)]),
    "lightcnn9": (128, 256, [(48, 64), (96, 32), (192, 16), (128, 8)]),
    "lightcnn29": (128, 256, [(48, 64), (96, 32), (192, 16), (128, 8)]),
    "vgg16": (224, 512, [(64, 112), (128, 56), (256, 28), (512, 14), (512, 7)]),
}


def test_registry_lists_every_backbone():
    assert set(CANONICAL) | {"resnet18_unet"} <= set(list_backbones())
    with pytest.raises(KeyError, match="unknown backbone 'nope'"):
        create_backbone("nope")


@pytest.mark.parametrize("name", sorted(CANONICAL))
def test_canonical_shapes(name):
    size, dim, stages = CANONICAL[name]
    with torch.device("meta"):
        net = create_backbone(name)
        x = torch.empty(3, 3, size, size)
        assert tuple(net(x).shape) == (3, dim)
        feats = net.forward_features(x)
    assert isinstance(net, Backbone)
    assert net.input_size == (size, size) and net.embedding_size == dim
    assert [(f.shape[1], f.shape[2]) for f in feats] == stages
    assert net.stage_channels == [c for c, _ in stages]


def test_unet_canonical_shapes():
    with torch.device("meta"):
        net = create_backbone("resnet18_unet")
        out = net.forward_all(torch.empty(2, 3, 112, 112))
    assert tuple(out["logits"].shape) == (2, 1, 112, 112)  # 112 is not a multiple of 32
    assert [f.shape[-1] for f in out["encoder"]] == [56, 28, 14, 7, 4]
    assert [(f.shape[1], f.shape[-1]) for f in out["decoder"]] == [(256, 7), (128, 14), (64, 28), (64, 56), (32, 112)]


SMALL = {  # real compute at small inputs: kwargs, input side
    "iresnet18": ({"input_size": 32}, 32),
    "iresnet34": ({"input_size": 32, "width": 16}, 32),
    "iresnet50": ({"input_size": 32, "width": 16}, 32),
    "lightcnn9": ({"input_size": 32}, 32),
    "lightcnn29": ({"input_size": 32, "in_channels": 1}, 32),
    "vgg16": ({"input_size": 32, "hidden": 64}, 32),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_backward_cpu(name):
    kw, side = SMALL[name]
    torch.manual_seed(0)
    net = create_backbone(name, **kw).train()
    x = torch.randn(2, 3, side, side, requires_grad=True)
    emb = net(x)
    assert emb.shape == (2, net.embedding_size) and torch.isfinite(emb).all()
    emb.square().sum().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert x.grad is not None and x.grad.abs().sum() > 0
    feats = net.forward_features(x.detach())
    assert [f.shape[1] for f in feats] == net.stage_channels
    # the stem/stages layout lets a method run the stack piecewise (e.g. to mask a middle map)
    y = net.stem(x.detach())
    for stage in net.stages:
        y = stage(y)
    assert torch.equal(y, feats[-1])
    assert all(a.shape[-1] > b.shape[-1] for a, b in zip(feats[:-1], feats[1:])) or name.startswith("lightcnn29")


def test_iresnet_head_bn_has_fixed_scale():
    net = create_backbone("iresnet18", input_size=32, width=16)
    assert not net.features.weight.requires_grad and torch.all(net.features.weight == 1)


def test_unet_forward_backward_cpu():
    torch.manual_seed(0)
    net = create_backbone("resnet18_unet", input_size=48)
    x = torch.randn(2, 3, 48, 48)
    out = net.forward_all(x)
    assert out["logits"].shape == (2, 1, 48, 48)
    out["logits"].mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
