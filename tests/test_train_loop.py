"""The whole loop on tiny shards: train -> checkpoint -> resume -> eval, determinism of resume,
a learnable toy, the NaN guard, and the method plug-in interface."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from occsynth_train.cli import main
from occsynth_train.config import load_config
from occsynth_train.engine.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint
from occsynth_train.engine.trainer import NonFiniteLossError, train
from occsynth_train.eval.evaluate import evaluate_benchmark
from occsynth_train.methods import METHODS
from occsynth_train.methods.base import Method
from occsynth_train.methods.baseline import Baseline

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


def _cfg(train_dir, out, *overrides):
    return load_config(TINY, [f"data.train=[{train_dir}]", f"output={out}", *overrides])


def _log(run):
    with open(Path(run) / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_train_checkpoint_resume_eval_via_cli(tiny_train, tiny_pairs, tiny_ident, tmp_path):
    run = tmp_path / "run"
    runner = CliRunner()
    args = [
        "baseline",
        "--config",
        str(TINY),
        "--set",
        f"data.train=[{tiny_train}]",
        "--output",
        str(run),
        "--set",
        "train.steps=8",
        "--set",
        "train.ckpt_every=100",
    ]
    first = runner.invoke(main, args + ["--stop-after", "5"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert [p.name for p in list_checkpoints(run)] == ["step_00000005.pt"]
    assert json.loads((run / "labels.json").read_text())["num_classes"] == 10
    second = runner.invoke(main, args, catch_exceptions=False)
    assert second.exit_code == 0, second.output
    # the CLI logs to stderr as "occsynth-train: ..." (INFO by default, --quiet: warnings only)
    assert "occsynth-train: resuming" in second.stderr and "resuming" not in second.stdout
    quiet = runner.invoke(main, ["--quiet", *args], catch_exceptions=False)
    assert quiet.exit_code == 0 and "resuming" not in quiet.output
    logger = logging.getLogger("occsynth_train")
    assert logger.level == logging.NOTSET and not logger.handlers  # restored when the command ends
    state = load_checkpoint(list_checkpoints(run)[-1])
    assert state["step"] == 8 and state["samples_seen"] == 64
    assert [int(r["step"]) for r in _log(run)] == [5, 8]

    out = tmp_path / "report.json"
    result = runner.invoke(
        main,
        [
            "eval",
            "--model",
            str(run),
            "--benchmark",
            str(tiny_pairs),
            "--benchmark",
            str(tiny_ident),
            "--out",
            str(out),
            "--workers",
            "0",
            "--batch-size",
            "32",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    ver = report["benchmarks"]["pairs_bench"]["verification"]
    assert ver["pairs"] == 40 and ver["folds"] == [0, 1] and 0.0 <= ver["accuracy"] <= 1.0
    assert set(ver["tar_at_far"]) == {"1e-03", "1e-04"}
    ident = report["benchmarks"]["ident_bench"]["identification"]
    assert ident["occluded"]["probes"] == 40 and ident["distractors"] == 4 and ident["gallery"] == 10
    assert ident["rank1"] == ident["occluded"]["rank1"] and ident["missing_keys"] == 0
    assert Path(report["roc_png"]).stat().st_size > 1000
    assert "acc" in result.output and "rank-1" in result.output


def test_resume_reproduces_uninterrupted_run(tiny_train, tmp_path):
    common = ("train.steps=6", "train.ckpt_every=100", "data.shuffle_buffer=16")
    straight = train(_cfg(tiny_train, tmp_path / "a", *common))
    train(_cfg(tiny_train, tmp_path / "b", *common), stop_after=3)
    resumed = train(_cfg(tiny_train, tmp_path / "b", *common))
    a = load_checkpoint(list_checkpoints(straight)[-1])
    b = load_checkpoint(list_checkpoints(resumed)[-1])
    assert a["step"] == b["step"] == 6
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name  # bitwise, BN buffers included
    assert list(a["optimizer"]["optimizers"]) == ["sgd"]
    momentum_a = [s["momentum_buffer"] for s in a["optimizer"]["optimizers"]["sgd"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in b["optimizer"]["optimizers"]["sgd"]["state"].values()]
    assert len(momentum_a) > 10 and all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b))


def test_resume_after_world_size_change(tiny_train, tmp_path, caplog):
    """A checkpoint written by 2 ranks resumes on 1: step and samples seen carry over, RNG is
    re-derived (the per-rank states cannot be mapped), and the run finishes."""
    run = tmp_path / "ws"
    common = ("train.steps=5", "train.ckpt_every=100")
    train(_cfg(tiny_train, run, *common), stop_after=2)
    path = list_checkpoints(run)[-1]
    state = load_checkpoint(path)
    state.update(world_size=2, rng=state["rng"] * 2, samples_seen=2 * 2 * 8)  # as if 2 ranks x batch 8
    torch.save(state, path)
    caplog.set_level(logging.INFO, logger="occsynth_train")
    train(_cfg(tiny_train, run, *common))
    assert "world size 2 -> 1" in caplog.text
    final = load_checkpoint(list_checkpoints(run)[-1])
    assert final["step"] == 5 and final["samples_seen"] == 32 + 3 * 8


def test_loss_decreases_on_learnable_toy(tiny_train, tmp_path):
    run = train(_cfg(tiny_train, tmp_path / "toy", "train.steps=24", "train.log_every=1", "train.ckpt_every=100"))
    losses = [float(r["loss"]) for r in _log(run)]
    assert len(losses) == 24 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_nan_guard_names_step_and_term(tiny_train, tmp_path, monkeypatch):
    original = Baseline.forward

    def poisoned(self, batch, step):
        terms = original(self, batch, step)
        if step == 2:
            terms["id"] = terms["id"] * float("nan")
        return terms

    monkeypatch.setattr(Baseline, "forward", poisoned)
    run = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"step 2 .*id=nan"):
        train(_cfg(tiny_train, run, "train.steps=5", "train.ckpt_every=1"))
    # stopped before the update: the newest checkpoint is the last good step
    assert [p.name for p in list_checkpoints(run)][-1] == "step_00000002.pt"
    result = CliRunner().invoke(
        main,
        [
            "baseline",
            "--config",
            str(TINY),
            "--set",
            f"data.train=[{tiny_train}]",
            "--output",
            str(tmp_path / "nan_cli"),
            "--set",
            "train.steps=5",
        ],
    )
    assert result.exit_code == 3 and "non-finite loss at step 2" in result.output


class _DarkIsOccluded(Method):
    """A stand-in segmentation method: 'occluded' = black pixels (the fixtures' black blocks)."""

    has_segmentation = True

    def __init__(self, cfg, num_classes):
        super().__init__(cfg, num_classes)
        self.scale = torch.nn.Parameter(torch.ones(()))

    @property
    def input_size(self):
        return (112, 112)

    def forward(self, batch, step):
        return {"id": self.scale * 0.0}

    def embed(self, images):
        return torch.nn.functional.avg_pool2d(images, 16).flatten(1)

    def predict_mask(self, images):
        return (images.amax(1, keepdim=True) < -0.99).float() * 20 - 10


def test_eval_reports_mask_iou_for_segmenting_methods(tiny_pairs):
    report, _ = evaluate_benchmark(_DarkIsOccluded(None, 1).eval(), tiny_pairs, torch.device("cpu"), 32, 0)
    seg = report["segmentation"]
    assert seg["images_with_occlusion"] == 80 and seg["iou_occluded"] > 0.9 and seg["miou"] > 0.9


def test_registered_method_becomes_a_cli_command():
    @METHODS.register("test_plugin")
    class Plugin(_DarkIsOccluded):
        pass

    try:
        result = CliRunner().invoke(main, ["--help"])
        assert "test_plugin" in result.output and "baseline" in result.output
        assert CliRunner().invoke(main, ["test_plugin", "--help"]).exit_code == 0
    finally:
        METHODS._items.pop("test_plugin")


def test_online_occlusion_on_device(tiny_train, tmp_path, monkeypatch):
    """data.online_occlusion runs occsynth's TorchOccluder on the device batch: the method sees
    the union of stored and online masks, and stored-clean samples get a clean counterpart."""
    seen = []
    original = Baseline.forward

    def spy(self, batch, step):
        seen.append((batch.masks.detach().clone(), batch.has_clean.clone()))
        return original(self, batch, step)

    monkeypatch.setattr(Baseline, "forward", spy)
    train(
        _cfg(
            tiny_train,
            tmp_path / "online",
            "train.steps=3",
            "data.online_occlusion=block(ratio=0.25)",
            "data.pairing=true",
        )
    )
    assert len(seen) == 3
    for masks, has_clean in seen:
        assert (masks.flatten(1).mean(1) > 0.15).all()  # every sample got a ~25 % block (32 px input)
        assert has_clean.all()


@pytest.mark.parametrize(
    "args", [["-h"], ["--help"], ["baseline", "-h"], ["eval", "-h"], ["methods", "-h"], ["lfw-mini-split", "-h"]]
)
def test_short_and_long_help(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and result.output.startswith("Usage:"), result.output


def test_methods_command_and_exclusive_verbosity():
    result = CliRunner().invoke(main, ["methods"])
    assert result.exit_code == 0 and "baseline" in result.output and "iresnet50" in result.output
    assert "arcface" in result.output
    both = CliRunner().invoke(main, ["-v", "--quiet", "methods"])
    assert both.exit_code == 2 and "exclude each other" in both.output


def test_a_failed_checkpoint_save_leaves_nothing_behind(tmp_path, monkeypatch):
    def cut_short(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", cut_short)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(checkpoint_path(tmp_path, 3), {"step": 3, "model": {}})
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no step_00000003.pt, no temporary file


def test_run_files_keep_their_format(tiny_train, tmp_path):
    run = train(_cfg(tiny_train, tmp_path / "fmt", "train.steps=2", "train.log_every=1"))
    labels = json.loads((run / "labels.json").read_text(encoding="utf-8"))
    assert (run / "labels.json").read_text(encoding="utf-8") == json.dumps(labels, indent=1, ensure_ascii=False) + "\n"
    assert (run / "train_log.csv").read_bytes().startswith(b"step,samples_seen,epoch,lr,loss,")
    assert (run / "train_log.csv").read_bytes().count(b"\r\n") == 3  # header + 2 rows, csv line ends
    assert load_config(run / "config.yaml").train.steps == 2
    assert not [p.name for p in run.rglob("*") if p.name.endswith(".tmp")]
