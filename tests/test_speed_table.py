"""benchmarks/speed_table.py: issue 16's targets against the newest results, read from the JSON the
benchmarks wrote (the committed ones, and made-up folders for the choice of files)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("speed_table", ROOT / "benchmarks" / "speed_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and line[2].isdigit()
    ]


def test_the_committed_results_give_a_row_for_every_item(tmp_path):
    out = tmp_path / "speed.md"
    assert _module().main(["--out", str(out)]) == 0
    rows = _rows(out.read_text())
    assert {row[0] for row in rows} == {"1", "2", "3", "4", "5"}
    for row in rows:  # each figure says where it came from, or that it was not measured
        assert row[4] in ("met", "**not met**", "not measured") or row[2] == row[4] == "no target (diagnostic)", row
        assert row[5].startswith("`") or row[4] == "not measured", row
    assert any(row[0] == "4" and "GPU" in row[1] for row in rows)  # measured or said not to be


def _result(kind: str, date: str, cpu: str | None = None, **fields) -> dict:
    return {"benchmark": kind, "machine": {"date": date, "git_commit": "0123456789", "cpu": cpu}, **fields}


def test_a_newer_file_that_measured_something_else_does_not_hide_older_figures(tmp_path):
    paired = {"block": {"median": 1.2, "rounds": [1.2]}}
    occluder_targets = {"cpu_shapes_and_templates": {"value": 5000.0}, "torch_gpu_h100": {"value": 50000.0}}
    full = _result(
        "occluders",
        "2026-12-01T10:00:00",
        targets=occluder_targets,
        occluders={"fit_area": {"rate": {"value": 6000.0}}},
        torch_cpu_over_per_image_paired=paired,
        coarse_dropout_reference={
            "block_0.3_over_coarse_dropout": 1.4,
            "block_0.3_over_coarse_dropout_paired": {"median": 1.6, "rounds": [1.6]},
        },
        torch_cuda="not measured: no GPU",
    )
    gpu_only = _result(
        "occluders",
        "2026-12-02T10:00:00",
        targets=occluder_targets,
        torch_cuda={"shapes": {"rate": {"value": 61000.0}}, "bank": {"rate": {"value": 40000.0}}},
        gpu_name="H200",
    )
    builds = _result(
        "build_speed",
        "2026-12-01T11:00:00",
        targets={
            "lfw-occ-0.43 wall s (2 workers)": 10,
            "lfw-block wall s (2 workers)": 60,
            "end_to_end_per_core_over_in_process": 0.8,
        },
        summary={
            "lfw-occ-0.43": {
                "median_seconds": {"end_to_end_w2": 12.0, "end_to_end_w2_no_harmonize": 9.0, "floor_x2": 4.0},
                "end_to_end_w2_per_core_over_in_process": 0.85,
            }
        },
    )
    for name, result in (("a.json", full), ("b.json", gpu_only), ("c.json", builds)):
        (tmp_path / name).write_text(json.dumps(result))
    out = tmp_path / "speed.md"
    assert _module().main(["--results", str(tmp_path), "--out", str(out)]) == 0
    rows = {(row[0], row[1]): row for row in _rows(out.read_text())}
    assert rows[("2", "fit_area (default: harmonised object)")][3:5] == ["6,000 images/s/core", "met"]
    assert rows[("2", "fit_area (default: harmonised object)")][5].startswith("`a.json`")
    assert rows[("4", "torch GPU, batch 1,024: shapes")][3:5] == ["61,000 images/s (H200)", "met"]
    assert rows[("4", "torch GPU, batch 1,024: bank")][4] == "**not met**"
    assert rows[("5", "block(ratio=0.3) over albumentations CoarseDropout")][3:5] == [
        "1.400 (paired 1.600)",
        "**not met**",
    ]
    occ = rows[("2", "lfw-occ-0.43 end to end, 2 workers, default build")]
    assert occ[3:5] == ["12.0 s (floor on 2 processes 4.0 s)", "**not met**"]
    assert (
        rows[("2", "lfw-occ-0.43 end to end, 2 workers, --no-harmonize (the build when the target was set)")][4]
        == "met"
    )
    assert rows[("2", "lfw-block end to end, 2 workers")][3:] == ["-", "not measured", "no result"]
    assert rows[("1", "align over the bare loop")][4] == "not measured"


def _sections(text: str) -> dict[str, list[list[str]]]:
    """{machine heading: its table's rows}."""
    out: dict[str, list[list[str]]] = {}
    for block in text.split("\n## ")[1:]:
        heading, _, body = block.partition("\n")
        out[heading] = _rows(body)
    return out


def test_each_machine_gets_its_own_table_and_the_gpu_rows_come_from_any(tmp_path):
    """A slower machine's newer seconds do not stand for a faster one's build: one table per CPU
    model, newest machine first; the device's GPU result fills the GPU rows of each."""
    targets = {"lfw-block wall s (2 workers)": 60, "end_to_end_per_core_over_in_process": 0.8}

    def block(seconds: float, floor: float) -> dict:
        return {"median_seconds": {"end_to_end_w2": seconds, "floor_x2": floor}}

    fast = _result(
        "build_speed", "2026-12-01T10:00:00", "AMD EPYC", targets=targets, summary={"lfw-block": block(44.0, 28.0)}
    )
    slow = _result(
        "build_speed", "2026-12-02T10:00:00", "Intel Xeon", targets=targets, summary={"lfw-block": block(110.0, 70.0)}
    )
    gpu_only = _result(
        "occluders",
        "2026-12-03T10:00:00",
        "device host",
        targets={"torch_gpu_h100": {"value": 50000.0}},
        torch_cuda={"shapes": {"rate": {"value": 61000.0}}, "bank": {"rate": {"value": 52000.0}}},
        gpu_name="H200",
    )
    for name, result in (("fast.json", fast), ("slow.json", slow), ("gpu.json", gpu_only)):
        (tmp_path / name).write_text(json.dumps(result))
    out = tmp_path / "speed.md"
    assert _module().main(["--results", str(tmp_path), "--out", str(out)]) == 0
    sections = _sections(out.read_text())
    assert list(sections) == ["Intel Xeon", "AMD EPYC"]  # newest first; no table for the GPU's host
    for machine, seconds, met in (("Intel Xeon", "110.0 s", "**not met**"), ("AMD EPYC", "44.0 s", "met")):
        rows = {(row[0], row[1]): row for row in sections[machine]}
        block_row = rows[("2", "lfw-block end to end, 2 workers, default build")]
        assert block_row[3].startswith(seconds) and block_row[4] == met
        assert rows[("4", "torch GPU, batch 1,024: shapes")][3:5] == ["61,000 images/s (H200)", "met"]


def test_a_rerun_of_the_default_build_alone_keeps_the_older_no_harmonize_figure(tmp_path):
    targets = {"lfw-occ-0.43 wall s (2 workers)": 10, "end_to_end_per_core_over_in_process": 0.8}
    both = {"end_to_end_w2": 49.0, "end_to_end_w2_no_harmonize": 26.4, "floor_x2": 11.1}
    older = _result(
        "build_speed",
        "2026-12-02T10:00:00",
        "Intel Xeon",
        targets=targets,
        summary={"lfw-occ-0.43": {"median_seconds": both}},
    )
    newer = _result(
        "build_speed",
        "2026-12-03T10:00:00",
        "Intel Xeon",
        targets=targets,
        summary={"lfw-occ-0.43": {"median_seconds": {"end_to_end_w2": 54.0, "floor_x2": 12.1}}},
    )
    for name, result in (("older.json", older), ("newer.json", newer)):
        (tmp_path / name).write_text(json.dumps(result))
    out = tmp_path / "speed.md"
    assert _module().main(["--results", str(tmp_path), "--out", str(out)]) == 0
    rows = {row[1]: row for row in _sections(out.read_text())["Intel Xeon"]}
    default = rows["lfw-occ-0.43 end to end, 2 workers, default build"]
    legacy = rows["lfw-occ-0.43 end to end, 2 workers, --no-harmonize (the build when the target was set)"]
    assert default[3].startswith("54.0 s (floor on 2 processes 12.1 s)") and default[5].startswith("`newer.json`")
    assert legacy[3].startswith("26.4 s (floor on 2 processes 11.1 s)") and legacy[5].startswith("`older.json`")


def test_the_fit_area_ceiling_row_comes_from_the_bounds_benchmark(tmp_path):
    """fit_area_bounds.py's known-size rate (no search) is set against the fit_area target, on
    its machine's table, with its ratio to the object it sizes."""
    rates = {
        "object": {"median": 3200.0, "over_object": 1.0},
        "fit_area_known_size": {"median": 2150.0, "over_object": 0.672},
    }
    bounds = _result("fit_area_bounds", "2026-12-03T10:00:00", "Intel Xeon", rates=rates, target={"value": 5000.0})
    (tmp_path / "bounds.json").write_text(json.dumps(bounds))
    out = tmp_path / "speed.md"
    assert _module().main(["--results", str(tmp_path), "--out", str(out)]) == 0
    (row,) = [row for row in _sections(out.read_text())["Intel Xeon"] if "size known" in row[1]]
    assert row[0] == "2" and row[2] == ">= 5,000/s/core" and row[4] == "**not met**"
    assert row[3] == "2,150 images/s/core (0.672 of object harmonize=false)" and row[5].startswith("`bounds.json`")


def test_item_3_splits_into_the_pipelines_cost_and_two_busy_processes_when_measured(tmp_path):
    """build_speed's in_process_x2 (the shard work on 2 processes at once) splits item 3's ratio
    in two: a diagnostic row beside it, only for results that have it."""
    targets = {"lfw-occ-0.43 wall s (2 workers)": 10, "end_to_end_per_core_over_in_process": 0.8}
    seconds = {"end_to_end_w2": 42.7, "floor_x2": 10.2, "in_process_x2": 35.8, "in_process": 64.2}
    summary = {
        "median_seconds": seconds,
        "end_to_end_w2_per_core_over_in_process": 0.755,
        "end_to_end_w2_over_in_process_x2": 0.839,
        "in_process_x2_per_core_over_in_process": 0.897,
    }
    new = _result(
        "build_speed", "2026-12-03T10:00:00", "Intel Xeon", targets=targets, summary={"lfw-occ-0.43": summary}
    )
    old = _result(
        "build_speed",
        "2026-12-02T10:00:00",
        "AMD EPYC",
        targets=targets,
        summary={"lfw-occ-0.43": {"median_seconds": seconds, "end_to_end_w2_per_core_over_in_process": 0.9}},
    )
    for name, result in (("new.json", new), ("old.json", old)):
        (tmp_path / name).write_text(json.dumps(result))
    out = tmp_path / "speed.md"
    assert _module().main(["--results", str(tmp_path), "--out", str(out)]) == 0
    sections = _sections(out.read_text())
    (main,) = [r for r in sections["Intel Xeon"] if r[0] == "3" and r[1].endswith("per core over in-process")]
    assert main[3:5] == ["0.755", "**not met**"]
    (split,) = [r for r in sections["Intel Xeon"] if r[0] == "3" and "pipeline's own cost" in r[1]]
    assert split[2:5] == ["no target (diagnostic)", "0.839; 0.897", "no target (diagnostic)"]
    assert split[5].startswith("`new.json`")
    assert not [r for r in sections["AMD EPYC"] if "pipeline's own cost" in r[1]]


def test_a_folder_without_results_is_one_error_line(tmp_path, capsys):
    assert _module().main(["--results", str(tmp_path), "--out", str(tmp_path / "speed.md")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: no floor, build_speed or occluders results")
    assert not (tmp_path / "speed.md").exists()
