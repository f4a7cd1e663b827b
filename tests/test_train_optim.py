"""Optimisers per param-group type, the LR schedule, init_from, and statistics-only steps."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from methods_helpers import CONFIGS, tiny_cfg
from torch import nn

from occsynth_train.config import OptimConfig, load_config
from occsynth_train.engine.checkpoint import list_checkpoints, load_checkpoint
from occsynth_train.engine.optim import OptimizerSet, build_optimizer, lr_factor, set_lr
from occsynth_train.engine.trainer import init_weights, train
from occsynth_train.methods import create_method


def _groups():
    a, b, c = nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(3, 2)
    return (
        a,
        b,
        c,
        [
            {"params": a.parameters(), "name": "a", "optimizer": "adam", "lr_scale": 0.5},
            {"params": b.parameters(), "name": "b"},
            {"params": c.parameters(), "name": "c", "optimizer": "sgd", "lr_scale": 10.0},
        ],
    )


def test_groups_get_the_optimiser_type_they_name():
    a, b, c, groups = _groups()
    cfg = OptimConfig(name="sgd", lr=0.1, momentum=0.8, by_type={"adam": {"lr": 1e-3, "betas": [0.5, 0.9]}})
    opt = build_optimizer(groups, cfg)
    assert list(opt.by_type) == ["adam", "sgd"]
    adam, sgd = opt.by_type["adam"], opt.by_type["sgd"]
    assert isinstance(adam, torch.optim.Adam) and isinstance(sgd, torch.optim.SGD)
    assert [g["name"] for g in adam.param_groups] == ["a"] and [g["name"] for g in sgd.param_groups] == ["b", "c"]
    assert adam.param_groups[0]["betas"] == (0.5, 0.9) and sgd.param_groups[0]["momentum"] == 0.8
    assert [g["base_lr"] for g in opt.param_groups] == pytest.approx([0.5e-3, 0.1, 1.0])
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.125e-3, 0.025, 0.25])


def test_each_optimiser_steps_its_own_groups():
    a, b, c, groups = _groups()
    opt = build_optimizer(
        groups,
        OptimConfig(
            name="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, by_type={"adam": {"lr": 1e-2, "weight_decay": 0.0}}
        ),
    )
    before = [m.weight.detach().clone() for m in (a, b, c)]
    x = torch.randn(4, 3)
    (a(x).sum() + b(x).sum() + c(x).sum()).backward()
    grads = [m.weight.grad.clone() for m in (a, b, c)]
    opt.step()
    # Adam's first step moves every weight by lr * sign(grad) (bias-corrected m / sqrt(v))
    assert torch.allclose(a.weight - before[0], -0.5e-2 * grads[0].sign(), atol=1e-6)
    assert torch.allclose(b.weight - before[1], -0.1 * grads[1], atol=1e-6)  # plain SGD
    assert torch.allclose(c.weight - before[2], -1.0 * grads[2], atol=1e-6)
    opt.zero_grad()
    assert all(m.weight.grad is None for m in (a, b, c))


def test_state_dict_round_trip_and_mismatch():
    _, _, _, groups = _groups()
    cfg = OptimConfig(lr=0.1, by_type={"adam": {"lr": 1e-3}})
    opt = build_optimizer(groups, cfg)
    state = opt.state_dict()
    assert set(state["optimizers"]) == {"adam", "sgd"}
    _, _, _, groups2 = _groups()
    other = build_optimizer(groups2, cfg)
    other.load_state_dict(state)
    with pytest.raises(ValueError, match="checkpoint optimisers"):
        build_optimizer([groups2[1]], cfg).load_state_dict(state)
    # a checkpoint of a single plain optimiser still loads into a one-type set
    plain = torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1)
    build_optimizer([{"params": nn.Linear(3, 2).parameters()}], cfg).load_state_dict(plain.state_dict())


def test_bad_types_and_empty_groups():
    with pytest.raises(ValueError, match="unknown optimiser 'rmsprop'"):
        build_optimizer([{"params": nn.Linear(2, 2).parameters(), "optimizer": "rmsprop"}], OptimConfig())
    with pytest.raises(ValueError, match="unknown key"):
        build_optimizer(
            [{"params": nn.Linear(2, 2).parameters(), "optimizer": "adam"}],
            OptimConfig(by_type={"adam": {"learning_rate": 1.0}}),
        )
    empty = build_optimizer([{"params": []}], OptimConfig())
    assert isinstance(empty, OptimizerSet) and empty.optimizers == [] and empty.param_groups == []
    with pytest.raises(ValueError, match="by_type keys"):
        load_config(None, ["data.train=[x]", "train.steps=1", "optim.by_type={lion: {lr: 1}}"])


def test_lr_schedules():
    cfg = OptimConfig(schedule="cosine", warmup=0.1)
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1) and lr_factor(9, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(10, 100, cfg) == pytest.approx(1.0) and lr_factor(99, 100, cfg) < 0.01
    step = OptimConfig(schedule="step", milestones=[0.5, 0.75], gamma=0.1)
    assert [lr_factor(s, 100, step) for s in (49, 50, 75)] == pytest.approx([1.0, 0.1, 0.01])


def test_step_schedule_in_epochs():
    cfg = OptimConfig(schedule="step", milestone_epochs=[2, 3], gamma=0.5)
    # 4 epochs of 25 steps: LR halves when epoch 3 begins (step 50) and again at epoch 4 (step 75)
    assert [lr_factor(s, 100, cfg, 4) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])
    with pytest.raises(ValueError, match="train.epochs"):
        lr_factor(0, 100, cfg)
    base = ["data.train=[x]", "optim.schedule=step", "optim.milestone_epochs=[10]"]
    assert load_config(None, [*base, "train.epochs=21"]).optim.milestone_epochs == [10]
    for bad, match in (
        ("train.steps=100", "needs optim.schedule=step and train.epochs"),
        ("train.epochs=10", "in \\(0"),
    ):
        with pytest.raises(ValueError, match=match):
            load_config(None, [*base, bad])


def test_trainer_places_epoch_milestones(tiny_train, tmp_path):
    over = ["train.steps=null", "train.epochs=2", "optim.schedule=step", "optim.milestone_epochs=[1]", "optim.warmup=0"]
    cfg = load_config(
        CONFIGS / "tiny_cpu.yaml",
        [f"data.train=[{tiny_train}]", f"output={tmp_path / 'run'}", "train.log_every=1", *over],
    )
    run = train(cfg)
    with open(run / "train_log.csv", newline="") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    half = int(round(0.5 * len(lrs)))  # 2 epochs of 50 samples at batch 8: 13 steps, LR / 10 from step 6
    assert len(lrs) == 13 and lrs[:half] == pytest.approx([cfg.optim.lr] * half)
    assert lrs[half:] == pytest.approx([0.1 * cfg.optim.lr] * (len(lrs) - half))


def test_alob_refuses_an_adam_group_without_adam_settings():
    cfg = load_config(CONFIGS / "alob_tiny_cpu.yaml", ["data.train=[x]", "optim.by_type={}"])
    method = create_method("alob", cfg, 5)
    with pytest.raises(ValueError, match="optim.by_type has no 'adam' entry"):
        build_optimizer(method.param_groups(), cfg.optim)
    with pytest.raises(ValueError, match="group 'a' trains with adam.*no 'adam' entry"):
        build_optimizer(_groups()[3], OptimConfig(name="sgd"))


def test_alob_run_keeps_adam_and_sgd_state(tiny_train, tmp_path):
    run = train(tiny_cfg("alob", tiny_train, tmp_path / "run", "train.steps=3"))
    state = load_checkpoint(list_checkpoints(run)[-1])["optimizer"]["optimizers"]
    assert set(state) == {"adam", "sgd"}
    assert all("exp_avg" in s for s in state["adam"]["state"].values())
    assert all("momentum_buffer" in s for s in state["sgd"]["state"].values())
    assert [g["name"] for g in state["adam"]["param_groups"]] == ["identifier"]
    assert [g["name"] for g in state["sgd"]["param_groups"]] == ["trimmer"]


def test_init_weights_loads_matching_tensors_and_reports_the_rest(tmp_path):
    src, dst = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 5)), nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 6))
    torch.save({"model": src.state_dict()}, tmp_path / "ckpt.pt")
    report = init_weights(dst, tmp_path / "ckpt.pt")
    assert torch.equal(dst[0].weight, src[0].weight) and not torch.equal(dst[1].bias[:5], src[1].bias)
    assert report["loaded"] == ["0.bias", "0.weight"] and report["skipped_shape"] == ["1.bias", "1.weight"]
    with pytest.raises(FileNotFoundError, match="init_from"):
        init_weights(dst, tmp_path / "missing.pt")


def test_init_from_starts_a_fresh_run_only(tiny_train, tmp_path):
    first = train(tiny_cfg("pdsn", tiny_train, tmp_path / "a", "train.steps=2"))
    ckpt = list_checkpoints(first)[-1]
    second = train(
        tiny_cfg(
            "pdsn", tiny_train, tmp_path / "b", "train.steps=2", "method_kw.stage=dictionary", f"train.init_from={ckpt}"
        )
    )
    report = json.loads((second / "init_from.json").read_text())
    assert report["path"] == str(ckpt) and "head.weight" in report["loaded"] and not report["skipped_shape"]
    a, b = load_checkpoint(ckpt)["model"], load_checkpoint(list_checkpoints(second)[-1])["model"]
    assert torch.equal(a["head.weight"], b["head.weight"])  # dictionary pass: nothing trained
    assert load_checkpoint(list_checkpoints(second)[-1])["optimizer"] == {"optimizers": {}}
