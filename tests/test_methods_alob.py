"""ALOB: gradient reversal, projection purification, ablation switches, smoke run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from methods_helpers import CONFIGS, falls, train_and_evaluate

from occsynth_train.config import load_config
from occsynth_train.engine.optim import build_optimizer, lr_factor
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
    batch = SimpleNamespace(images=torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1]))
    grads = {}
    for grl in (True, False):
        m = _method(f"method_kw.grl={str(grl).lower()}", "method_kw.fusion=none").eval()  # eval: same BN path
        torch.manual_seed(0)
        m.trimmer.load_state_dict(_method().trimmer.state_dict())
        m.m_classifier.load_state_dict(_method().m_classifier.state_dict())
        m(batch, 0)["m"].backward()
        grads[grl] = torch.cat([p.grad.flatten() for p in m.trimmer.parameters() if p.grad is not None])
        head_grad = m.m_classifier.weight.grad
        assert head_grad is not None and head_grad.abs().max() > 0
    assert torch.allclose(grads[True], -grads[False], atol=1e-6) and grads[True].abs().max() > 0


def test_ablations_and_groups():
    assert _method("method_kw.fusion=concat", "method_kw.shared_classifier=false").head.weight.shape[1] == 2 * 128
    x = torch.randn(2, 3, 32, 32)
    m = _method().eval()
    with torch.no_grad():
        assert torch.allclose(m.embed(x), project_out(m.backbone(x), m.trimmer(x)))
        assert torch.allclose(_method("method_kw.fusion=none").eval().embed(x), m.backbone(x))
    groups = {g["name"]: g for g in m.param_groups()}
    trim = {id(p) for p in groups["trimmer"]["params"]}
    assert trim == {
        id(p) for p in m.trimmer.parameters() if p.requires_grad
    }  # the shared classifier is the Identifier's
    assert not trim & {id(p) for p in groups["identifier"]["params"]}
    assert groups["trimmer"]["optimizer"] == "sgd" and groups["identifier"]["optimizer"] == "adam"


def test_alob_trains_and_evaluates(tiny_train, tiny_pairs, tmp_path):
    ident, report, _ = train_and_evaluate("alob", tiny_train, tiny_pairs, tmp_path / "run", "train.steps=16", term="id")
    assert falls(ident) and report["embedding_dim"] == 128


# ---- one classifier for Y_m and Y_f (Eq. 5/9), the -F ablation, the paper config ---------------


def _batch(n=2, size=(32, 32)):
    torch.manual_seed(1)
    return SimpleNamespace(images=torch.randn(n, 3, *size), labels=torch.arange(n) % 5)


def _head_grad(m, term):
    m.zero_grad(set_to_none=True)
    m(_batch(), 0)[term].backward()
    return torch.cat([p.grad.flatten() for p in m.head.parameters()])


def test_one_classifier_is_shared_by_y_f_and_y_m_and_gets_both_gradients():
    m = _method().eval()  # eval: the same BN path in every call
    assert m.shared_classifier and m.trimmer_head is None and m.m_classifier is m.head
    assert not any(n.startswith("trimmer_head.") for n, _ in m.named_parameters())  # one module, registered once
    calls = []
    m.head.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape))
    with torch.no_grad():
        m(_batch(), 0)
    assert len(calls) == 2  # Y_f and Y_m both come out of the one classifier
    g_f, g_m = _head_grad(m, "id"), _head_grad(m, "m")
    assert g_f.abs().max() > 0 and g_m.abs().max() > 0 and not torch.allclose(g_f, g_m)
    m.zero_grad(set_to_none=True)
    terms = m(_batch(), 0)
    (terms["id"] + terms["m"]).backward()
    assert torch.allclose(torch.cat([p.grad.flatten() for p in m.head.parameters()]), g_f + g_m, atol=1e-6)
    # the GRL sits between the Trimmer and the classifier: the classifier minimises L_m (no flip)
    m2 = _method("method_kw.grl=false").eval()
    m2.load_state_dict(m.state_dict())
    assert torch.allclose(_head_grad(m2, "m"), g_m, atol=1e-6)
    groups = {g["name"]: g for g in m.param_groups()}
    head_ids = {id(p) for p in m.head.parameters()}
    assert head_ids <= {id(p) for p in groups["identifier"]["params"]}
    assert not head_ids & {id(p) for p in groups["trimmer"]["params"]}


def test_loss_is_l_f_plus_lambda_l_m_from_the_one_classifier():
    m = _method("method_kw.m_weight=0.5").eval()
    batch = _batch()
    with torch.no_grad():
        terms = m(batch, 0)
        f, fm = m.backbone(batch.images), m.trimmer(batch.images)
        ce = torch.nn.functional.cross_entropy
        l_f = ce(m.head(project_out(f, fm), batch.labels), batch.labels)
        l_m = ce(m.head(fm, batch.labels), batch.labels)
    assert terms["id"].item() == pytest.approx(l_f.item(), rel=1e-5)
    assert terms["m"].item() == pytest.approx(0.5 * l_m.item(), rel=1e-5)


def test_two_classifiers_as_an_option():
    m = _method("method_kw.shared_classifier=false").eval()
    assert m.m_classifier is m.trimmer_head and m.trimmer_head is not m.head
    assert m.trimmer_head.s == 30.0 and m.trimmer_head.m3 == 0.4  # CosFace s = 30, m = 0.4 by default
    assert _method("method_kw.shared_classifier=false", "method_kw.trimmer_head_kw={s: 16.0}").trimmer_head.s == 16.0
    groups = {g["name"]: g for g in m.param_groups()}
    trim = {id(p) for p in groups["trimmer"]["params"]}
    assert trim == {id(p) for p in [*m.trimmer.parameters(), *m.trimmer_head.parameters()] if p.requires_grad}
    m.zero_grad(set_to_none=True)
    m(_batch(), 0)["m"].backward()
    assert all(p.grad is None for p in m.head.parameters())  # L_m reaches only its own classifier
    with pytest.raises(ValueError, match="trimmer_head_kw"):
        _method("method_kw.shared_classifier=true", "method_kw.trimmer_head_kw={s: 30.0}")
    with pytest.raises(ValueError, match="shared"):
        _method("method_kw.fusion=concat", "method_kw.shared_classifier=true")


def test_minus_f_ablation_is_f_minus_f_m():
    m = _method("method_kw.fusion=subtract").eval()
    f, fm = torch.tensor([[3.0, 1.0, -2.0]]), torch.tensor([[1.0, 2.0, 0.5]])
    assert torch.equal(m._fuse(f, fm), torch.tensor([[2.0, -1.0, -2.5]]))
    assert not torch.allclose(project_out(f, fm), m._fuse(f, fm))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m.embed(x), m.backbone(x) - m.trimmer(x))
    with pytest.raises(ValueError, match="fusion"):
        _method("method_kw.fusion=minus")


def test_alob_r18_config_is_the_paper_setting():
    cfg = load_config(CONFIGS / "alob_r18.yaml", ["data.train=[x]"])
    assert cfg.model.backbone == "iresnet18" and cfg.model.input_size == [112, 96]
    assert cfg.data.batch_size == 128 and cfg.train.epochs == 21
    assert cfg.method_kw.get("shared_classifier", True) and cfg.method_kw.get("fusion", "project") == "project"
    torch.manual_seed(0)
    m = create_method("alob", cfg, 5)
    assert m.input_size == (112, 96) and m.m_classifier is m.head
    opt = build_optimizer(m.param_groups(), cfg.optim)
    assert all(g["lr"] == pytest.approx(0.01) for g in opt.param_groups)
    per_epoch = 10  # LR / 10 from the 11th epoch (after 10 complete epochs) on
    steps = (0, 10 * per_epoch - 1, 10 * per_epoch, 21 * per_epoch - 1)
    assert [lr_factor(s, 21 * per_epoch, cfg.optim, cfg.train.epochs) for s in steps] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1]
    )
    with torch.no_grad():
        assert m.eval().embed(torch.rand(2, 3, 112, 96) * 2 - 1).shape == (2, 512)
