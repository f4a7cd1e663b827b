"""Margin heads and mask losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from occsynth_train.models import create_head, list_heads
from occsynth_train.models.losses import occlusion_probability, pixel_cross_entropy, region_consistency


def _at_angle(theta: float) -> torch.Tensor:
    """A 2-d unit embedding at angle theta from class 0's centre (1, 0)."""
    return torch.tensor([[math.cos(theta), math.sin(theta)]])


def _head(name: str, **kw):
    head = create_head(name, 2, 2, **kw)
    with torch.no_grad():
        if hasattr(head, "weight"):
            head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    return head


def test_registry():
    assert {"arcface", "cosface", "combined", "softmax"} <= set(list_heads())


@pytest.mark.parametrize("theta", [0.3, 1.0, 2.0])
def test_arcface_target_logit_is_s_cos_theta_plus_m(theta):
    head = _head("arcface", s=64.0, m=0.5)
    logits = head(_at_angle(theta), torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(64.0 * math.cos(theta + 0.5), abs=1e-3)
    assert logits[0, 1].item() == pytest.approx(64.0 * math.sin(theta), abs=1e-3)  # non-target: s*cos only


def test_arcface_fallback_past_pi_minus_m_is_monotonic_and_finite():
    # theta + m > pi: cos(theta + m) would rise again; the fallback cos - m*sin(m) keeps falling
    head = _head("arcface", s=1.0, m=0.5)
    thetas = [2.5, 2.8, 3.0, 3.1, math.pi]
    values = [head(_at_angle(t), torch.tensor([0]))[0, 0].item() for t in thetas]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[2] == pytest.approx(math.cos(3.0) - 0.5 * math.sin(0.5), abs=1e-5)


@pytest.mark.parametrize("theta", [0.0, math.pi])
def test_gradient_finite_at_cos_plus_minus_one(theta):
    head = _head("arcface", s=64.0, m=0.5)
    emb = _at_angle(theta).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(head(emb, torch.tensor([0])), torch.tensor([0]))
    loss.backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()


def test_cosface_subtracts_margin():
    head = _head("cosface", s=30.0, m=0.35)
    logits = head(_at_angle(0.7), torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(30.0 * (math.cos(0.7) - 0.35), abs=1e-3)


def test_combined_margin_generalises_arcface_and_cosface():
    emb, y = torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 1])
    arc = _head("arcface", s=64.0, m=0.5)(emb, y)
    comb = _head("combined", s=64.0, m1=1.0, m2=0.5, m3=0.0)(emb, y)
    assert torch.allclose(arc, comb, atol=1e-5)
    cos = _head("cosface", s=64.0, m=0.4)(emb, y)
    comb = _head("combined", s=64.0, m1=1.0, m2=0.0, m3=0.4)(emb, y)
    assert torch.allclose(cos, comb, atol=1e-5)
    # m1 (multiplicative angular) path: cos(2 * theta)
    sphere = _head("combined", s=1.0, m1=2.0, m2=0.0, m3=0.0)(_at_angle(0.4), torch.tensor([0]))
    assert sphere[0, 0].item() == pytest.approx(math.cos(0.8), abs=1e-4)


def test_heads_compute_in_fp32_under_bf16_autocast():
    head = _head("arcface")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
    assert logits.dtype == torch.float32


def test_softmax_head_is_linear():
    head = create_head("softmax", 3, 4)
    x = torch.randn(2, 3)
    assert torch.allclose(head(x, None), x @ head.fc.weight.T + head.fc.bias)


def test_pixel_cross_entropy_values():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1  # top half occluded
    confident = (mask * 2 - 1) * 20.0
    assert pixel_cross_entropy(confident, mask).item() < 1e-6
    assert pixel_cross_entropy(torch.zeros(1, 1, 4, 4), mask).item() == pytest.approx(math.log(2), abs=1e-6)
    two = torch.cat([torch.zeros(1, 1, 4, 4), confident], 1)  # class 1 logit = confident, class 0 = 0
    assert pixel_cross_entropy(two, mask).item() == pytest.approx(math.log1p(math.exp(-20)), abs=1e-6)
    # masks at another resolution are resized (nearest), not rejected
    assert pixel_cross_entropy(torch.zeros(1, 1, 2, 2), mask).item() == pytest.approx(math.log(2), abs=1e-6)


def test_region_consistency_hand_computed():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1  # top half occluded
    # P(occluded) = 0.5 everywhere, 2x2 grid: top cells true 1, bottom cells true 0 -> mean |.| = 0.5
    assert region_consistency(torch.zeros(1, 1, 4, 4), mask, grid=2).item() == pytest.approx(0.5)
    # prediction: 0.5 over the top half, ~0 below
    prob = torch.full((1, 1, 4, 4), 1e-6)
    prob[..., :2, :] = 0.5
    logits = torch.logit(prob)
    # truth: a checkerboard over the top half, i.e. the right amount per 2x2 cell but other pixels
    checker = torch.zeros(1, 1, 4, 4)
    checker[..., :2, :] = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    assert region_consistency(logits, checker, grid=2).item() == pytest.approx(0.0, abs=1e-5)
    # per-pixel cells: 8 top pixels off by 0.5 out of 16 -> 0.25
    assert region_consistency(logits, checker, grid=4).item() == pytest.approx(0.25, abs=1e-5)
    # grid 1 compares whole-image ratios: predicted 0.25 vs true 0.5
    assert region_consistency(logits, mask, grid=1).item() == pytest.approx(0.25, abs=1e-5)


def test_occlusion_probability_channels():
    assert torch.allclose(occlusion_probability(torch.zeros(1, 1, 2, 2)), torch.full((1, 1, 2, 2), 0.5))
    two = torch.stack([torch.zeros(2, 2), torch.full((2, 2), math.log(3.0))])[None]
    assert torch.allclose(occlusion_probability(two), torch.full((1, 1, 2, 2), 0.75))
    with pytest.raises(ValueError):
        occlusion_probability(torch.zeros(1, 3, 2, 2))
