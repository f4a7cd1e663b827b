"""LCD (He et al., TIP 2022): channel dropout on the BN output of stage 3's last 3x3 conv (before
the residual add, kept channels not rescaled), Eq. 1 / Eq. 2 on that same layer (hand-computed
3-channel cases), attention in stage 4, the paper config, smoke run."""

from __future__ import annotations

import math
from pathlib import PurePosixPath
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from methods_helpers import CONFIGS, falls, train_and_evaluate

from occsynth_train.config import load_config
from occsynth_train.methods import create_method
from occsynth_train.methods.lcd import ChannelDropout, filter_orthogonality, response_orthogonality


def _tiny_lcd(*overrides):
    cfg = load_config(CONFIGS / "lcd_tiny_cpu.yaml", ["data.train=[x]", *overrides])
    return create_method("lcd", cfg, 5)


def _tap(m):
    """Forward hooks on stage 3's last block: its input and output, the last 3x3 conv's output,
    and the BN output as the next stage sees it (registered after LCD's own hook)."""
    block = m.backbone.stages[2][-1]
    conv, bn = block.body[4], block.body[5]
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3)
    assert isinstance(bn, torch.nn.BatchNorm2d)
    seen = {}
    conv.register_forward_hook(lambda mod, i, o: seen.__setitem__("conv", o))
    bn.register_forward_hook(lambda mod, i, o: seen.__setitem__("bn", o))
    block.register_forward_hook(lambda mod, i, o: seen.update(x=i[0], out=o))
    return conv, bn, seen


def test_channel_dropout_zeroes_exactly_floor_gamma_c_channels_without_rescaling():
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
    assert torch.equal(y[~zero], x[~zero])  # the paper's dropout: survivors keep their values


def test_channel_dropout_rescaling_is_the_other_reading():
    torch.manual_seed(0)
    drop = ChannelDropout(0.25, 0.25, rescale=True).train()
    x = torch.rand(2, 8, 2, 2) + 0.1
    y = drop(x)
    keep = y.flatten(2).abs().amax(2) > 0
    assert keep.sum(1).tolist() == [6, 6]
    assert torch.allclose(y[keep], x[keep] * 8 / 6)


def test_channel_dropout_is_identity_at_eval():
    drop = ChannelDropout(0.2, 0.3).eval()
    x = torch.randn(4, 8, 2, 2)
    assert torch.equal(drop(x), x)
    with pytest.raises(ValueError, match="gamma_max"):
        ChannelDropout(0.5, 0.2)


def test_dropout_acts_on_the_bn_of_stage3s_last_conv_before_the_residual_add():
    torch.manual_seed(0)
    m = _tiny_lcd("method_kw.gamma_min=0.25", "method_kw.gamma_max=0.25").train()
    conv, bn, seen = _tap(m)
    m._features(torch.randn(4, 3, 32, 32))
    y = seen["bn"]
    c = y.shape[1]
    assert c == m.backbone.stage_channels[2]
    dropped = y.flatten(2).abs().amax(2) == 0  # [B, C]
    assert dropped.sum(1).tolist() == [math.floor(0.25 * c)] * 4
    # kept channels: exactly the undropped BN output (batch statistics), no C / (C - n) factor
    undropped = F.batch_norm(seen["conv"], None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    assert torch.allclose(y[~dropped], undropped[~dropped], atol=1e-5)
    # the residual path is untouched: where the body's channel is dropped, the block passes x on
    assert torch.equal(seen["out"][dropped], seen["x"][dropped])
    assert (seen["out"][dropped].flatten(1).abs().amax(1) > 0).all()
    # nothing is dropped at evaluation
    m.eval()
    with torch.no_grad():
        m.embed(torch.randn(2, 3, 32, 32))
    assert (seen["bn"].flatten(2).abs().amax(2) > 0).all()


def test_the_hooked_backbone_keeps_the_plain_iresnet_state_dict():
    m = _tiny_lcd()
    plain = create_method("baseline", load_config(CONFIGS / "lcd_tiny_cpu.yaml", ["data.train=[x]"]), 5)
    ours = {k for k in m.state_dict() if not k.startswith("sam.")}
    assert ours == set(plain.state_dict())  # checkpoints interchange with the baseline's (init_from)


def test_eq1_filter_term_on_a_hand_computed_3_channel_case():
    # 3 filters over 2 input channels at p = 2 spatial positions (a 1x2 kernel): w[i, :, 0, p] = w_i^p
    w = torch.zeros(3, 2, 1, 2)
    w[0, :, 0, 0], w[0, :, 0, 1] = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])
    w[1, :, 0, 0], w[1, :, 0, 1] = torch.tensor([3.0, 0.0]), torch.tensor([-1.0, 0.0])
    w[2, :, 0, 0], w[2, :, 0, 1] = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 2.0])
    # pair (0,1): cos 1 at p=0, cos -1 at p=1 -> |1 - 1| = 0 (the |.| is outside the sum over p)
    # pairs (0,2) and (1,2): cos 1/sqrt(2) at p=0, 0 at p=1 -> 1/sqrt(2) each
    # sum over the ordered pairs i != j: 2 * (0 + 1/sqrt(2) + 1/sqrt(2)) = 2 sqrt(2)
    assert filter_orthogonality(w).item() == pytest.approx(2 * math.sqrt(2), rel=1e-6)
    # cosines: the filters' norms do not matter
    assert filter_orthogonality(w * torch.tensor([2.0, 0.5, 7.0])[:, None, None, None]).item() == pytest.approx(
        2 * math.sqrt(2), rel=1e-6
    )
    # the "other reading" (mean over the 6 ordered pairs) is an option
    assert filter_orthogonality(w, reduction="mean").item() == pytest.approx(2 * math.sqrt(2) / 6, rel=1e-6)
    assert filter_orthogonality(torch.eye(4).view(4, 4, 1, 1)).item() == pytest.approx(0.0, abs=1e-7)


def test_eq2_response_term_on_a_hand_computed_3_channel_case():
    # two samples, 3 channels, 2x2 responses (flattened: 4 positions)
    x = torch.tensor(
        [
            [[1.0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]],  # cos^2: (0,1) 1/2, (0,2) 0, (1,2) 0
            [[1.0, 0, 0, 0], [-2, 0, 0, 0], [1, 1, 1, 1]],  # cos^2: (0,1) 1, (0,2) 1/4, (1,2) 1/4
        ]
    ).view(2, 3, 2, 2)
    # per sample, ordered pairs i != j: 2 * 1/2 = 1 and 2 * (1 + 1/4 + 1/4) = 3; mean over the batch: 2
    assert response_orthogonality(x).item() == pytest.approx(2.0, rel=1e-6)
    assert response_orthogonality(x[:1]).item() == pytest.approx(1.0, rel=1e-6)
    assert response_orthogonality(x[1:], reduction="mean").item() == pytest.approx(3.0 / 6, rel=1e-6)


def test_regularisers_are_on_the_dropped_layer_with_alpha_100_and_beta_1():
    torch.manual_seed(0)
    m = _tiny_lcd().train()
    assert (m.w_filter, m.w_response) == (100.0, 1.0)
    conv, bn, seen = _tap(m)
    batch = SimpleNamespace(images=torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 3]))
    terms = m(batch, 0)
    undropped = F.batch_norm(seen["conv"], None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    assert terms["filter_orth"].item() == pytest.approx(100.0 * filter_orthogonality(conv.weight).item(), rel=1e-5)
    assert terms["response_orth"].item() == pytest.approx(response_orthogonality(undropped).item(), rel=1e-4)
    # gradients of both terms reach that conv (and only stage 3's last block for the filter term)
    (terms["filter_orth"] + terms["response_orth"]).backward()
    assert conv.weight.grad.abs().max() > 0
    assert m.backbone.stages[3][0].body[1].weight.grad is None
    # the other reading of "responses": the conv output before its BN
    m = _tiny_lcd("method_kw.response_at=conv").train()
    conv, bn, seen = _tap(m)
    terms = m(batch, 0)
    assert terms["response_orth"].item() == pytest.approx(response_orthogonality(seen["conv"]).item(), rel=1e-4)
    for bad in ("method_kw.response_at=relu", "method_kw.reduction=max"):
        with pytest.raises(ValueError, match="response_at|reduction"):
            _tiny_lcd(bad)


def test_attention_sits_in_stage4():
    m = _tiny_lcd().train()
    assert m.sam.fc[0].in_features == 2 * 2  # stage-4 map of a 32 px input is 2x2
    c4 = m.backbone.stage_channels[3]
    w = torch.sigmoid(m.sam.fc(torch.flatten(m.sam.conv(torch.randn(2, c4, 2, 2)), 1)))
    assert w.shape == (2, c4) and ((w >= 0) & (w <= 1)).all()


def test_paper_config_trains_on_clean_data_with_the_papers_settings():
    cfg = load_config(CONFIGS / "lcd_r50.yaml")
    assert cfg.method == "lcd" and cfg.model.backbone == "iresnet50"
    assert cfg.data.online_occlusion is None and cfg.data.pairing is not True
    assert all("clean" in PurePosixPath(p).name for p in cfg.data.train)  # an `occ-train --ratio 1:0` build
    kw = cfg.method_kw
    assert kw["filter_orth"] == 100.0 and kw["response_orth"] == 1.0
    assert kw["rescale"] is False and kw["reduction"] == "sum"
    assert (cfg.model.head, cfg.model.head_kw) == ("arcface", {"s": 64.0, "m": 0.5})


def test_lcd_trains_and_evaluates(tiny_train, tiny_pairs, tmp_path):
    # the paper's form (alpha 100, sums over i != j): the filter term dominates the loss at first
    # (~1e5 here), so over 16 steps it is the total loss that falls, not yet the identity term
    loss, _, _ = train_and_evaluate("lcd", tiny_train, tiny_pairs, tmp_path / "run", "train.steps=16", term="loss")
    assert falls(loss)
    # with the mean reduction (the other reading) the regularisers are O(1) and identity learning shows
    ident, _, _ = train_and_evaluate(
        "lcd", tiny_train, tiny_pairs, tmp_path / "mean", "train.steps=16", "method_kw.reduction=mean", term="id"
    )
    assert falls(ident)
