"""LCD: exact channel dropout (training only), regularisers, attention, smoke run."""

from __future__ import annotations

import math

import pytest
import torch
from methods_helpers import CONFIGS, falls, train_and_evaluate

from occsynth_train.config import load_config
from occsynth_train.methods import create_method
from occsynth_train.methods.lcd import ChannelDropout, filter_orthogonality, response_orthogonality


def test_channel_dropout_zeroes_exactly_floor_gamma_c_channels():
    torch.manual_seed(0)
    drop = ChannelDropout(0.1, 0.5).train()
    x = torch.rand(16, 40, 3, 3) + 0.1  # strictly positive: a zero means a dropped channel
    y = drop(x)
    zero = y.flatten(2).abs().amax(2) == 0  # [B, C] whole channels zeroed
    partial = (y == 0).flatten(2).any(2) & ~zero
    assert not partial.any()  # only whole channels
    expected = torch.floor(drop.last_gamma * 40).long()
    assert torch.equal(zero.sum(1), expected)
    assert ((drop.last_gamma >= 0.1) & (drop.last_gamma <= 0.5)).all()
    # survivors rescaled by C / (C - n)
    b = 0
    keep = ~zero[b]
    assert torch.allclose(y[b, keep], x[b, keep] * 40 / (40 - expected[b].item()))


def test_channel_dropout_is_identity_at_eval():
    drop = ChannelDropout(0.2, 0.3).eval()
    x = torch.randn(4, 8, 2, 2)
    assert torch.equal(drop(x), x)


def test_regularisers_vanish_for_orthogonal_inputs():
    w = torch.eye(6).view(6, 6, 1, 1)
    assert filter_orthogonality([w]).item() == pytest.approx(0.0, abs=1e-7)
    assert filter_orthogonality([torch.ones(4, 3, 3, 3)]).item() == pytest.approx(1.0, abs=1e-5)
    x = torch.zeros(1, 4, 2, 2)
    x[0, torch.arange(4), torch.arange(4) // 2, torch.arange(4) % 2] = 1.0  # disjoint responses
    assert response_orthogonality(x).item() == pytest.approx(0.0, abs=1e-7)
    assert response_orthogonality(torch.ones(2, 4, 2, 2)).item() == pytest.approx(1.0, abs=1e-5)


def test_dropout_sits_after_stage3_and_attention_in_stage4():
    cfg = load_config(
        CONFIGS / "lcd_tiny_cpu.yaml", ["data.train=[x]", "method_kw.gamma_min=0.25", "method_kw.gamma_max=0.25"]
    )
    m = create_method("lcd", cfg, 5).train()
    seen = {}

    def grab(mod, inp, out):
        seen["in4"] = inp[0]

    m.backbone.stages[3].register_forward_hook(grab)
    m._features(torch.randn(2, 3, 32, 32))
    c3 = m.backbone.stage_channels[2]
    dropped = (seen["in4"].flatten(2).abs().amax(2) == 0).sum(1)
    assert dropped.tolist() == [math.floor(0.25 * c3)] * 2
    assert m.sam.fc[0].in_features == 2 * 2  # stage-4 map of a 32 px input is 2x2
    w = torch.sigmoid(m.sam.fc(torch.flatten(m.sam.conv(torch.randn(2, m.backbone.stage_channels[3], 2, 2)), 1)))
    assert w.shape == (2, m.backbone.stage_channels[3]) and ((w >= 0) & (w <= 1)).all()


def test_lcd_trains_and_evaluates(tiny_train, tiny_pairs, tmp_path):
    ident, _, _ = train_and_evaluate("lcd", tiny_train, tiny_pairs, tmp_path / "run", "train.steps=16", term="id")
    assert falls(ident)
