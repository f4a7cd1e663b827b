"""benchmarks/lfw_mini_table.py end to end on tiny fixtures (CPU): the rows train, PDSN's four stages
chain through train.init_from, every condition is evaluated, and the table is written."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.backbone_kw={width: 16, embedding_size: 64}",
    "model.input_size=[32, 32]",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.shuffle_buffer=64",
    "data.interleave=2",
    "train.steps=4",
    "train.epochs=null",
    "train.precision=fp32",
    "train.channels_last=false",
    "train.progress=false",
    "train.log_every=1",
    "eval.batch_size=32",
    "eval.num_workers=0",
    "method_kw.seg_width=8",
]


def _module():
    spec = importlib.util.spec_from_file_location("lfw_mini_table", ROOT / "benchmarks" / "lfw_mini_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_rows_train_chain_and_report(tiny_train, tiny_pairs, tmp_path, monkeypatch):
    table = _module()
    monkeypatch.setattr(table, "DICTIONARY_STEPS", 2)
    bench = tmp_path / "bench"
    for rel in ("block/level-00", "occ2"):  # two of the four conditions present: the others are left out
        (bench / rel).parent.mkdir(parents=True, exist_ok=True)
        (bench / rel).symlink_to(tiny_pairs, target_is_directory=True)
    out = tmp_path / "table.json"
    argv = [
        "lfw_mini_table.py",
        "--train",
        str(tiny_train),
        "--train-clean",
        str(tiny_train),
        "--pdsn-pairs",
        str(tiny_train),
        "--bench",
        str(bench),
        "--runs",
        str(tmp_path / "runs"),
        "--methods",
        "baseline,pdsn",
        "--out",
        str(out),
    ] + [a for o in TINY for a in ("--set", o)]
    monkeypatch.setattr(sys, "argv", argv)
    table.main()
    result = json.loads(out.read_text())
    assert list(result["rows"]) == ["baseline", "pdsn"]
    for row in result["rows"].values():
        assert set(row["summary"]) == {"clean", "LFW-OCC-2.0 style"}
        assert all(v["pairs"] == 40 and 0.0 <= v["accuracy"] <= 1.0 for v in row["summary"].values())
    assert result["rows"]["pdsn"]["summary"]["clean"]["scoring"] == "pairwise"
    runs = tmp_path / "runs"
    previous = {"masks": "trunk", "dictionary": "masks", "finetune": "dictionary"}
    # the stages share the row budget (4 steps): trunk half, masks and finetune a quarter each
    for stage, steps in (("trunk", 2), ("masks", 1), ("dictionary", 2), ("finetune", 1)):
        log = (runs / f"pdsn_{stage}" / "train_log.csv").read_text().splitlines()
        assert int(log[-1].split(",")[0]) == steps, stage
        if stage in previous:  # each stage starts from the previous one's last checkpoint
            init = json.loads((runs / f"pdsn_{stage}" / "init_from.json").read_text())
            assert Path(init["path"]).parent.parent.name == f"pdsn_{previous[stage]}" and init["loaded"]
    md = out.with_suffix(".md").read_text()
    assert "| baseline |" in md and "| PDSN" in md and "| LFW-OCC-2.0 style |" in md and "| masked" not in md
    # a second call re-evaluates the finished runs instead of training again
    before = (runs / "baseline" / "train_log.csv").read_text()
    table.main()
    assert (runs / "baseline" / "train_log.csv").read_text() == before


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch, capsys):
    table = _module()
    monkeypatch.setattr(
        sys,
        "argv",
        ["lfw_mini_table.py", "--train", str(tmp_path / "nope"), "--bench", str(tmp_path), "--methods", "baseline"],
    )
    with pytest.raises(SystemExit):
        table.main()
    assert "PROTOCOL.md" in capsys.readouterr().err
