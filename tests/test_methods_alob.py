"""ALOB: gradient reversal, projection purification, ablation switches, smoke run."""

from __future__ import annotations

import torch
from methods_helpers import CONFIGS, falls, train_and_evaluate

from occsynth_train.config import load_config
from occsynth_train.methods import create_method
from occsynth_train.methods.alob import grad_reverse, project_out


def test_grl_is_identity_forward_and_flips_and_scales_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(3, 4)
    y = grad_reverse(x, 0.7)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -0.7 * w)


def test_projection_removes_the_trimmer_direction():
    f, fm = torch.randn(5, 16), torch.randn(5, 16)
    p = project_out(f, fm)
    assert torch.allclose((p * fm).sum(1), torch.zeros(5), atol=1e-5)
    assert torch.allclose(project_out(f, torch.zeros(5, 16)), f)  # nothing to remove


def _method(*overrides):
    cfg = load_config(CONFIGS / "alob_tiny_cpu.yaml", ["data.train=[x]", *overrides])
    torch.manual_seed(0)
    return create_method("alob", cfg, 5)


def test_trimmer_gets_reversed_gradient_of_its_classifier_loss():
    from types import SimpleNamespace

    batch = SimpleNamespace(images=torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1]))
    grads = {}
    for grl in (True, False):
        m = _method(f"method_kw.grl={str(grl).lower()}", "method_kw.fusion=none").eval()  # eval: same BN path
        torch.manual_seed(0)
        m.trimmer.load_state_dict(_method().trimmer.state_dict())
        m.trimmer_head.load_state_dict(_method().trimmer_head.state_dict())
        m(batch, 0)["m"].backward()
        grads[grl] = torch.cat([p.grad.flatten() for p in m.trimmer.parameters() if p.grad is not None])
        head_grad = m.trimmer_head.weight.grad
        assert head_grad is not None and head_grad.abs().max() > 0
    assert torch.allclose(grads[True], -grads[False], atol=1e-6) and grads[True].abs().max() > 0


def test_ablations_and_groups():
    assert _method("method_kw.fusion=concat").head.weight.shape[1] == 2 * 128
    x = torch.randn(2, 3, 32, 32)
    m = _method().eval()
    with torch.no_grad():
        assert torch.allclose(m.embed(x), project_out(m.backbone(x), m.trimmer(x)))
        assert torch.allclose(_method("method_kw.fusion=none").eval().embed(x), m.backbone(x))
    groups = {g["name"]: g for g in m.param_groups()}
    trim = {id(p) for p in groups["trimmer"]["params"]}
    assert trim == {id(p) for p in [*m.trimmer.parameters(), *m.trimmer_head.parameters()] if p.requires_grad}
    assert not trim & {id(p) for p in groups["identifier"]["params"]}
    assert groups["trimmer"]["optimizer"] == "sgd" and groups["identifier"]["optimizer"] == "adam"


def test_alob_trains_and_evaluates(tiny_train, tiny_pairs, tmp_path):
    ident, report, _ = train_and_evaluate("alob", tiny_train, tiny_pairs, tmp_path / "run", "train.steps=16", term="id")
    assert falls(ident) and report["embedding_dim"] == 128
