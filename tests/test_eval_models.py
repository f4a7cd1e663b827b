"""`occsynth-train eval --model` for any model: a tiny trained run, exported to ONNX and
TorchScript and wrapped as a factory, gives the same embeddings and the same report through the
four paths; input conventions, sizes and resizing; insightface .bin benchmarks (restricted
unpickling, arcface_torch's folds) score exactly as the shards they were exported from."""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import eval_model_factory
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from train_fixtures import build_pairs_benchmark

from occsynth.errors import UsageError
from occsynth.io.export import export
from occsynth_train.cli import main
from occsynth_train.config import load_config
from occsynth_train.engine.trainer import train
from occsynth_train.eval.evaluate import Benchmark, _prepare, evaluate_model
from occsynth_train.eval.insightface_bin import BinFormatError, kfold_ids, read_bin
from occsynth_train.eval.models import InputConventions, load_model, load_run, parse_size

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def run_dir(tiny_train, tmp_path_factory) -> Path:
    """A tiny IResNet-18 run (32x32 input, 128-d), trained for a few steps."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(load_config(TINY, [f"data.train=[{tiny_train}]", f"output={out}", "train.steps=4"]))
    return out


@pytest.fixture(scope="module")
def bench10(sk_faces, tmp_path_factory) -> Path:
    """200 pairs in 10 contiguous folds of 20 (so arcface_torch's KFold(10) folds of the exported
    .bin are the protocol's folds), with the `reason` field the exporter reads."""
    root, rows = build_pairs_benchmark(tmp_path_factory.mktemp("b10") / "bench", sk_faces, num_folds=10, ratio=0.2)
    (root / "pairs.jsonl").write_text("".join(json.dumps({**r, "reason": ""}) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> dict:
    """The run's method exported: ONNX (dynamic batch; fixed batch 3 + NHWC), TorchScript."""
    out = tmp_path_factory.mktemp("exported")
    method = load_run(run_dir)[0]
    module = eval_model_factory.Embedder(method).eval()
    x = torch.randn(2, 3, 32, 32)
    paths = {"onnx": out / "model.onnx", "pt": out / "model.pt", "nhwc": out / "nhwc_b3.onnx"}
    with torch.no_grad():
        torch.onnx.export(
            module,
            (x,),
            str(paths["onnx"]),
            input_names=["input"],
            output_names=["embedding"],
            dynamic_axes={"input": {0: "n"}, "embedding": {0: "n"}},
            dynamo=False,  # the TorchScript-based exporter: needs `onnx`, not `onnxscript`
        )
        torch.onnx.export(
            eval_model_factory.NHWCEmbedder(method).eval(),
            (torch.randn(3, 32, 32, 3),),
            str(paths["nhwc"]),
            input_names=["input"],
            output_names=["embedding"],
            dynamo=False,
        )
        torch.jit.trace(module, x).save(str(paths["pt"]))
    return paths


@pytest.fixture
def factory_run(run_dir, monkeypatch):
    monkeypatch.setattr(eval_model_factory, "RUN", run_dir)
    eval_model_factory.CALLS.clear()
    return run_dir


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _eval(model: str, bench, out: Path, *extra: str) -> dict:
    result = _invoke("eval", "--model", model, "--benchmark", str(bench), "--out", str(out), "--workers", "0", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


# ----------------------------------------------------------------------------- the four paths
def test_the_four_paths_give_the_same_embeddings(run_dir, exported, factory_run, bench10):
    conv = {"size": (32, 32), "resize": True}
    models = {
        "run": load_model(str(run_dir), None, "cpu"),
        "onnx": load_model(str(exported["onnx"]), {"resize": True}, "cpu"),
        "torchscript": load_model(str(exported["pt"]), conv, "cpu"),
        "module factory": load_model("eval_model_factory:embedder", conv, "cpu"),
        "callable factory": load_model("eval_model_factory:numpy_callable", conv, "cpu"),
    }
    assert [m.kind for m in models.values()] == ["run", "onnx", "torchscript", "factory", "factory"]
    ds = Benchmark(bench10).ds
    images = torch.stack([ds[i]["image"] for i in range(24)])  # uint8 [24, 3, 112, 112]
    with torch.no_grad():
        emb = {name: m.model.embed(_prepare(m.model, images, CPU)).float() for name, m in models.items()}
    reference = emb.pop("run")
    assert reference.shape == (24, 128) and reference.abs().max() > 1e-2
    for name, e in emb.items():
        assert e.shape == reference.shape
        assert (e - reference).abs().max().item() < 1e-4, name
    # the callable got the model's NCHW float batch on the device, as documented
    assert eval_model_factory.CALLS[-1] == ((24, 3, 32, 32), torch.float32)


def test_the_four_paths_give_the_same_report(run_dir, exported, factory_run, bench10, tmp_path):
    resize = ("--input-size", "32x32", "--resize")
    reports = {
        "run": _eval(str(run_dir), bench10, tmp_path / "run.json"),
        "onnx": _eval(str(exported["onnx"]), bench10, tmp_path / "onnx.json", "--resize"),
        "torchscript": _eval(str(exported["pt"]), bench10, tmp_path / "pt.json", *resize),
        "factory": _eval("eval_model_factory:embedder", bench10, tmp_path / "factory.json", *resize),
    }
    ref = reports["run"]["benchmarks"]["bench"]["verification"]
    assert ref["pairs"] == 200 and ref["folds"] == list(range(10))
    for kind, report in reports.items():
        assert report["model_kind"] == kind
        v = report["benchmarks"]["bench"]["verification"]
        assert v["accuracy"] == ref["accuracy"] and v["accuracy_std"] == ref["accuracy_std"], kind
        assert v["tar_at_far"] == ref["tar_at_far"] and v["auc"] == pytest.approx(ref["auc"], abs=1e-9), kind
        assert np.allclose(v["fold_threshold"], ref["fold_threshold"], atol=1e-5), kind
        assert Path(report["roc_png"]).stat().st_size > 1000
        assert report["benchmarks"]["bench"]["occlusion"]["occluded_samples"] == 400
    # what each report says about the model and its input
    onnx = reports["onnx"]
    assert onnx["input"]["size"] == [32, 32] and onnx["input"]["size_from"] == "model file"
    assert (
        onnx["input"]["mean"] == [127.5] * 3 and onnx["input"]["layout"] == "NCHW" and onnx["input"]["color"] == "RGB"
    )
    assert onnx["model_info"]["providers"] == ["CPUExecutionProvider"] and len(onnx["model_info"]["sha256"]) == 64
    assert onnx["flip"] is True and onnx["device"] == "cpu" and onnx["batch_size"] == 256
    assert reports["torchscript"]["input"]["size_from"] == "option"
    assert reports["torchscript"]["model_info"]["loader"] == "torch.jit.load"
    assert reports["run"]["step"] == 4 and reports["run"]["input"]["size_from"] == "run config"


def test_flip_off_is_recorded_and_changes_the_embedding(exported, bench10, tmp_path):
    on = _eval(str(exported["onnx"]), bench10, tmp_path / "on.json", "--resize")
    off = _eval(str(exported["onnx"]), bench10, tmp_path / "off.json", "--resize", "--no-flip")
    assert off["flip"] is False and off["benchmarks"]["bench"]["flip"] is False
    assert off["benchmarks"]["bench"]["verification"]["auc"] != on["benchmarks"]["bench"]["verification"]["auc"]


# ----------------------------------------------------------------------------- sizes, conventions
def test_a_model_of_another_input_size_is_refused_naming_both_sizes(exported, bench10, tmp_path):
    result = _invoke(
        "eval", "--model", str(exported["onnx"]), "--benchmark", str(bench10), "--out", str(tmp_path / "r.json")
    )
    assert result.exit_code == 2
    assert "32x32 (HxW)" in result.output and "112x112 (HxW)" in result.output and "--resize" in result.output
    assert not (tmp_path / "r.json").exists()
    # the size the ONNX file declares wins over a different --input-size
    result = _invoke("eval", "--model", str(exported["onnx"]), "--benchmark", str(bench10), "--input-size", "112x112")
    assert result.exit_code == 2 and "declares 32x32" in result.output


def test_fixed_batch_nhwc_onnx_is_fed_in_its_layout_and_batch(exported, bench10, tmp_path):
    wrong = _invoke("eval", "--model", str(exported["nhwc"]), "--benchmark", str(bench10), "--resize")
    assert wrong.exit_code == 1 and "give --layout nhwc" in wrong.output
    loaded = load_model(str(exported["nhwc"]), {"layout": "nhwc", "resize": True}, "cpu")
    assert loaded.model.fixed_batch == 3 and loaded.model.input_size == (32, 32)
    # 7 images: batches of 3, 3 and 1 + 2 rows of padding, same result as the dynamic model
    dynamic = load_model(str(exported["onnx"]), {"resize": True}, "cpu").model
    images = torch.stack([Benchmark(bench10).ds[i]["image"] for i in range(7)])
    a = loaded.model.embed(loaded.model.prepare_images(images, CPU))
    b = dynamic.embed(dynamic.prepare_images(images, CPU))
    assert a.shape == (7, 128) and (a - b).abs().max().item() < 1e-4
    # the same numbers through the whole evaluation, batch size 8 (not a multiple of 3)
    nhwc = _eval(
        str(exported["nhwc"]), bench10, tmp_path / "nhwc.json", "--layout", "nhwc", "--resize", "--batch-size", "8"
    )
    plain = _eval(str(exported["onnx"]), bench10, tmp_path / "plain.json", "--resize")
    assert (
        nhwc["benchmarks"]["bench"]["verification"]["accuracy"]
        == plain["benchmarks"]["bench"]["verification"]["accuracy"]
    )
    assert nhwc["model_info"]["fixed_batch"] == 3 and nhwc["input"]["layout"] == "NHWC"


def test_prepare_images_applies_color_mean_and_std_by_hand():
    images = torch.tensor([[[[0, 255]], [[10, 20]], [[100, 200]]]], dtype=torch.uint8)  # [1, 3, 1, 2]

    def prepared(**conv):
        loaded = load_model("eval_model_factory:flatten", {"size": (1, 2), **conv}, "cpu")
        return loaded.model.prepare_images(images, CPU)

    default = prepared()  # (x - 127.5) / 127.5
    assert torch.allclose(default[0, :, 0, 0], torch.tensor([-1.0, -117.5 / 127.5, -27.5 / 127.5]))
    bgr = prepared(color="bgr", mean=(1.0, 2.0, 3.0), std=(2.0,))
    # channel order swapped first (B, G, R), then per-channel mean of that order
    assert torch.allclose(bgr[0, :, 0, 1], torch.tensor([(200 - 1) / 2, (20 - 2) / 2, (255 - 3) / 2]))


def test_input_conventions_are_checked_before_anything_is_loaded(run_dir, tmp_path):
    assert parse_size("112x96") == (112, 96)
    for bad in ({"std": (0.0,)}, {"mean": (1.0, 2.0)}, {"color": "yuv"}, {"layout": "chw"}):
        with pytest.raises(UsageError):
            InputConventions(**bad)
    result = _invoke("eval", "--model", "eval_model_factory:embedder", "--benchmark", str(tmp_path), "--mean", "a,b")
    assert result.exit_code == 2 and "--mean" in result.output
    # a run's conventions come from its config: giving some is refused, not ignored
    result = _invoke("eval", "--model", str(run_dir), "--benchmark", str(tmp_path), "--std", "128")
    assert result.exit_code == 2 and "--std apply only to" in result.output


def test_model_specs_that_cannot_be_loaded_fail_in_one_line(tmp_path, monkeypatch):
    bench = str(tmp_path)
    cases = {
        "no_such_pkg.mod:make": "is it on PYTHONPATH?",
        "eval_model_factory:missing": "has no attribute 'missing'",
        "eval_model_factory:NOT_CALLABLE": "not a factory or an nn.Module",
        str(tmp_path / "nothing.onnx"): "no such file or directory",
    }
    for spec, message in cases.items():
        result = _invoke("eval", "--model", spec, "--benchmark", bench)
        assert result.exit_code == 2 and message in result.output, (spec, result.output)
        assert len(result.output.strip().splitlines()[-1]) > 10 and "Traceback" not in result.output
    # a torch.save file is never unpickled: it is refused as "not a TorchScript archive"
    saved = tmp_path / "state.pt"
    torch.save({"weight": torch.zeros(2)}, saved)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    for path in (saved, text):
        result = _invoke("eval", "--model", str(path), "--benchmark", bench)
        assert result.exit_code == 1 and "not a TorchScript archive" in result.output
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    result = _invoke("eval", "--model", str(broken), "--benchmark", bench)
    assert result.exit_code == 1 and "not a loadable ONNX model" in result.output
    # without onnxruntime: what to install, in one line
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'occsynth\[onnx\]'"):
        load_model(str(broken), None, "cpu")


def test_a_failing_model_reports_its_own_last_line(exported, bench10):
    result = _invoke("eval", "--model", str(exported["pt"]), "--benchmark", str(bench10), "--workers", "0")
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert "model.pt failed on a NCHW batch of shape" in line and "3, 112, 112)" in line and "--input-size" in line


# ----------------------------------------------------------------------------- insightface .bin
def test_our_bin_export_scores_as_the_shards(exported, bench10, tmp_path):
    summary = export(bench10, tmp_path / "bench.bin", "insightface-bin")
    assert summary["pairs"] == 200
    shards = evaluate_model(
        str(exported["onnx"]), [bench10], tmp_path / "a.json", device="cpu", num_workers=0, conventions={"resize": True}
    )
    binary = evaluate_model(
        str(exported["onnx"]),
        [tmp_path / "bench.bin"],
        tmp_path / "b.json",
        device="cpu",
        num_workers=0,
        conventions={"resize": True},
    )
    s, b = shards["benchmarks"]["bench"], binary["benchmarks"]["bench.bin"]
    assert b["format"] == "insightface-bin" and b["samples"] == s["samples"] == 400
    for key in ("accuracy", "accuracy_std", "fold_threshold", "fold_accuracy", "auc", "tar_at_far", "folds", "pairs"):
        assert b["verification"][key] == s["verification"][key], key
    assert "occlusion" in s and "occlusion" not in b  # a .bin has no masks or metadata


def test_kfold_ids_are_sklearns_kfold():
    from sklearn.model_selection import KFold

    for n in (6000, 23, 10):
        expected = np.empty(n, int)
        for fold, (_, test) in enumerate(KFold(n_splits=10, shuffle=False).split(np.zeros(n))):
            expected[test] = fold
        assert np.array_equal(kfold_ids(n), expected)


class _Payload:
    """Unpickling this would create a file (os.system is what a malicious .bin would name)."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_bin_unpickling_allows_only_what_bins_hold(tmp_path):
    bins = [b"a", b"b", b"c", b"d"]
    ok = tmp_path / "ok.bin"
    ok.write_bytes(pickle.dumps((bins, np.array([True, False]))))  # issame as a numpy bool array
    assert read_bin(ok)[1].tolist() == [True, False]
    ok.write_bytes(pickle.dumps((bins, [True, False]), protocol=2))
    assert read_bin(ok)[0] == bins
    evil = tmp_path / "evil.bin"
    target = tmp_path / "pwned"
    evil.write_bytes(pickle.dumps((bins, [True, _Payload(target)])))
    with pytest.raises(BinFormatError, match=r"refuses to load (posix|os)\.system"):
        read_bin(evil)
    assert not target.exists()
    for payload, message in (
        ((bins, [True]), "4 images for 1 pairs"),
        ((bins, np.array([1, 0])), "int64 array"),
        (([1, 2], [True]), "list of encoded images"),
        ({"bins": bins}, "expected a pickled"),
    ):
        evil.write_bytes(pickle.dumps(payload))
        with pytest.raises(BinFormatError, match=message):
            read_bin(evil)
    evil.write_bytes(b"\x80\x04garbage")
    with pytest.raises(BinFormatError, match="not an insightface .bin pickle"):
        read_bin(evil)


def test_identification_builds_get_rank1_for_any_model(tiny_ident, tmp_path):
    """Raw pixels as the embedding (a model-free factory) on the identification fixture: the
    rank-1 is the brute-force nearest-neighbour rate of those embeddings."""
    report = _eval("eval_model_factory:flatten", tiny_ident, tmp_path / "ident.json", "--no-flip")
    ident = report["benchmarks"]["ident_bench"]["identification"]
    assert ident["occluded"]["probes"] == 40 and ident["gallery"] == 10 and ident["distractors"] == 4
    bench = Benchmark(tiny_ident)
    ds, protocol = bench.ds, bench.protocol
    emb = {}
    for key in protocol["gallery"] + protocol["distractors"] + protocol["probes"]["occluded"]:
        x = ds[ds.position[key]]["image"].float().flatten()
        x = (x - 127.5) / 127.5
        emb[key] = x / x.norm()
    candidates = protocol["gallery"] + protocol["distractors"]
    hits = 0
    for probe in protocol["probes"]["occluded"]:
        best = max(candidates, key=lambda c: float(emb[probe] @ emb[c]))
        hits += protocol["identity"][best] == protocol["identity"][probe]
    assert ident["rank1"] == pytest.approx(hits / 40)
