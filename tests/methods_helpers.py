"""Shared smoke run for tests/test_methods_*.py: train a method a few steps on the tiny shards
(train_fixtures.py), check the loss is finite and falls, then evaluate the run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from occsynth_train.config import load_config
from occsynth_train.engine.trainer import train
from occsynth_train.eval.evaluate import evaluate_benchmark, load_run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_cfg(name: str, train_dir, out, *overrides):
    return load_config(
        CONFIGS / f"{name}_tiny_cpu.yaml",
        [f"data.train=[{train_dir}]", f"output={out}", "train.log_every=1", "train.ckpt_every=1000", *overrides],
    )


def train_and_evaluate(name: str, train_dir, pairs_dir, out, *overrides, term: str = "loss"):
    """Returns (per-step values of `term`, evaluation report, trained method)."""
    run = train(tiny_cfg(name, train_dir, out, *overrides))
    with open(Path(run) / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    values = np.array([float(r[term]) for r in rows])
    assert len(values) > 4 and np.isfinite(values).all()
    assert np.isfinite([float(r["loss"]) for r in rows]).all()
    method, cfg, _, _ = load_run(run)
    assert not method.training
    report, _ = evaluate_benchmark(method, pairs_dir, torch.device("cpu"), 32, 0)
    ver = report["verification"]
    assert ver["pairs"] == 40 and 0.0 <= ver["accuracy"] <= 1.0
    # flip-sum embedding as the evaluator computes it: finite, right width, batch-independent
    x = torch.rand(3, 3, *method.input_size) * 2 - 1
    with torch.no_grad():
        e = method.embed(x) + method.embed(torch.flip(x, dims=[3]))
        e1 = method.embed(x[:1]) + method.embed(torch.flip(x[:1], dims=[3]))
    assert e.shape == (3, report["embedding_dim"]) and torch.isfinite(e).all()
    assert torch.allclose(e[:1], e1, atol=1e-4, rtol=1e-3)  # eval mode: no batch statistics, no dropout
    return values, report, method


def falls(values: np.ndarray, k: int = 3) -> bool:
    return float(np.mean(values[-k:])) < float(np.mean(values[:k]))
