"""`occsynth-train eval --suite occlusion`: members scored over already-built folders (tiny fake
benchmarks), the markdown table and the accuracy-vs-area plot, refusals before any work, and
the builds themselves over a small fake LFW (real `occsynth build` runs, resumed and reused).
The model is `eval_model_factory:flatten` (raw pixels as the embedding): no training needed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_lfw import write_fake_lfw
from PIL import Image
from train_fixtures import build_pairs_benchmark

from occsynth.errors import UsageError
from occsynth_train.cli import main
from occsynth_train.eval.suite import SUITES, run_suite, suite_markdown, suite_members

MODEL = "eval_model_factory:flatten"


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def built_suite(sk_faces, tmp_path_factory) -> Path:
    """Three members as finished builds: clean, 30 % blocks on both sides, objects-like 43 %."""
    suite = tmp_path_factory.mktemp("suite") / "suite"
    for folder, ratio in (("lfw-block/level-00", None), ("lfw-block/level-30", 0.3), ("lfw-occ-2.0", 0.43)):
        build_pairs_benchmark(suite / folder, sk_faces, num_folds=10, ratio=ratio)
        (suite / folder / "build_facts.json").write_text("{}")
    return suite


def test_the_occlusion_suite_lists_every_lfw_set():
    names = [m.name for m in SUITES["occlusion"]]
    assert names[:10] == ["clean"] + [f"block-{level}" for level in range(10, 100, 10)]
    assert names[10:] == [
        "lfw-occ-2.0",
        "lfw-occ-3.0",
        "masked",
        "sunglasses",
        "eye-mask",
        "scarf",
        "surgical-mask",
        "cup",
    ]
    by_name = {m.name: m for m in SUITES["occlusion"]}
    assert by_name["lfw-occ-3.0"].args == ("--ratio", "0.52") and by_name["cup"].builder == "lfw-occ-cup"
    assert by_name["block-70"].folder == "lfw-block/level-70" and by_name["clean"].series == "block"
    with pytest.raises(UsageError, match="unknown member"):
        suite_members("occlusion", "clean,block-35")


def test_suite_over_built_folders_writes_one_table_and_one_plot(built_suite, tmp_path):
    out = tmp_path / "report.json"
    result = _invoke(
        "eval", "--model", MODEL, "--suite", "occlusion", "--suite-dir", str(built_suite),
        "--only", "clean,block-30,lfw-occ-2.0", "--out", str(out), "--workers", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows = report["suite"]["rows"]
    assert [r["name"] for r in rows] == ["clean", "block-30", "lfw-occ-2.0"]
    assert {m["state"] for m in report["suite"]["members"].values()} == {"reused"}
    # the area is measured on the samples: a 61x61 block (round(sqrt(0.3 * 112^2))) is 29.66 %
    assert rows[0]["area"] == 0.0
    assert rows[1]["area"] == pytest.approx(61 * 61 / 112**2)
    assert rows[2]["area"] == pytest.approx(73 * 73 / 112**2)  # round(sqrt(0.43 * 112^2)) = 73
    for row in rows:
        v = report["benchmarks"][row["name"]]["verification"]
        assert row["accuracy"] == v["accuracy"] and row["tar_1e-3"] == v["tar_at_far"]["1e-03"]["tar"]
    table = Path(report["suite"]["table_md"]).read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == 5 and lines[0].startswith("| benchmark | occluded area %")
    assert lines[3].startswith(f"| LFW_block 30% | 29.66 | {100 * rows[1]['accuracy']:.2f} |")
    png = Path(report["suite"]["plot_png"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert Image.open(png).size == (720, 504)  # 6 x 4.2 in at 120 dpi
    assert "table:" in result.output and Path(report["roc_png"]).exists()


def test_suite_refusals_come_before_any_work(built_suite, tmp_path):
    out = tmp_path / "r.json"
    result = _invoke(
        "eval", "--model", MODEL, "--suite", "occlusion", "--suite-dir", str(built_suite), "--out", str(out)
    )
    assert result.exit_code == 2 and "block-10" in result.output and "give --lfw" in result.output
    result = _invoke(
        "eval",
        "--model",
        MODEL,
        "--suite",
        "occlusion",
        "--suite-dir",
        str(built_suite),
        "--only",
        "clean",
        "--folds",
        "0",
    )
    assert result.exit_code == 2 and "holds LFW fold(s) [0, 1, 2" in result.output
    both = _invoke("eval", "--model", MODEL, "--suite", "occlusion", "--benchmark", str(built_suite))
    assert both.exit_code == 2 and "not both" in both.output
    stray = _invoke("eval", "--model", MODEL, "--benchmark", str(built_suite / "lfw-occ-2.0"), "--only", "clean")
    assert stray.exit_code == 2 and "apply to --suite" in stray.output
    assert not out.exists()


def test_suite_table_by_hand():
    rows = [
        {"label": "LFW (clean)", "area": 0.0, "accuracy": 0.99, "accuracy_std": 0.005, "tar_1e-3": 0.9,
         "tar_1e-4": None, "auc": 0.999, "pairs": 6000},
    ]  # fmt: skip
    table = suite_markdown(rows, "m: occlusion suite")
    assert "| LFW (clean) | 0.00 | 99.00 | 0.50 | 90.00 | n/a | 0.9990 | 6000 |" in table
    assert table.startswith("# m: occlusion suite")


# ----------------------------------------------------------------------------- builds (fake LFW)
@pytest.fixture
def fake_lfw(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """6 people x 3 images (250x250 colour gradients: no face, so builds centre-crop) and one
    fold of 5 matched + 5 mismatched pairs; a private detection cache (the builds inherit it)."""
    monkeypatch.setenv("OCCSYNTH_CACHE", str(tmp_path / "cache"))
    return write_fake_lfw(tmp_path)


@pytest.mark.slow
def test_suite_builds_missing_members_then_reuses_them(fake_lfw, tmp_path):
    lfw, pairs = fake_lfw
    suite = tmp_path / "suite"
    common = dict(suite_dir=suite, only="clean,block-50,sunglasses", out=tmp_path / "r.json", num_workers=0)
    first = run_suite(MODEL, lfw=lfw, pairs=pairs, build_workers=1, quiet=True, **common)
    states = {name: m["state"] for name, m in first["suite"]["members"].items()}
    assert states == {"clean": "built", "block-50": "built", "sunglasses": "built"}
    for folder in ("lfw-block/level-00", "lfw-block/level-50", "lfw-occ-sunglasses"):
        assert (suite / folder / "build_facts.json").exists()
    assert not (suite / "lfw-block" / "level-10").exists()  # only the asked levels are built
    rows = {r["name"]: r for r in first["suite"]["rows"]}
    assert rows["clean"]["area"] == 0.0 and rows["block-50"]["area"] == pytest.approx(0.5, abs=0.01)
    assert 0.0 < rows["sunglasses"]["area"] < 0.5 and all(r["pairs"] == 10 for r in rows.values())
    # a second run reuses everything, without --lfw, and scores the same
    second = run_suite(MODEL, **common)
    assert {m["state"] for m in second["suite"]["members"].values()} == {"reused"}
    assert second["suite"]["rows"] == first["suite"]["rows"]
    # an unfinished member is built again (the build resumes in its folder)
    shutil.rmtree(suite / "lfw-block" / "level-50")
    third = run_suite(MODEL, lfw=lfw, pairs=pairs, build_workers=1, quiet=True, **common)
    states = {name: m["state"] for name, m in third["suite"]["members"].items()}
    assert states == {"clean": "reused", "block-50": "built", "sunglasses": "reused"}
    assert third["suite"]["rows"] == first["suite"]["rows"]
