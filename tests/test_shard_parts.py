"""The last shards of a build cut into parts for the workers to share (pipeline.split_tail) and
joined back by the parent (shard.join_parts): the same shard, stats record, maps and results as
the shard built whole, whatever the cut. Inputs are synthetic aligned faces (no detection), one
of them unreadable (a failure inside a part)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
from tiny_dataset import write_blocky_faces

from occsynth import contract
from occsynth.build import BuildConfig, ShardTask, pipeline, plan_align
from occsynth.build.executor import SerialExecutor
from occsynth.build.pipeline import build, split_tail
from occsynth.build.shard import join_parts, run_shard
from occsynth.sources import open_source

SPEC = "0.4*clean | 0.6*ellipse(ratio=0.2..0.4)"


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """15 aligned 112x112 'faces' of 3 identities and one file that is not an image."""
    root = write_blocky_faces(tmp_path_factory.mktemp("faces"), per_person=5, seed=5)
    (root / "Bob" / "Bob_0009.png").write_bytes(b"not a png")
    return root


def _task(faces: Path, out: Path, parse: bool = True) -> ShardTask:
    source = open_source(str(faces))
    # 3 variants of each image: an image's samples fall in different parts of most cuts
    plan = sorted(plan_align(source.items(), variants=3), key=lambda s: s.key)
    config = BuildConfig(name="parts", specs={"": SPEC}, aligned_input=True, shard_size=len(plan), seed=7)
    out.mkdir(parents=True)
    return ShardTask(3, str(out), source, plan, config, parse_index=parse)


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("cuts", [(0, 24), (0, 1, 47), (0, 10, 11, 30, 47)])
@pytest.mark.parametrize("parse", [True, False])
def test_a_shard_joined_from_its_parts_is_the_shard_built_whole(faces, tmp_path, cuts, parse):
    whole_task = _task(faces, tmp_path / "whole", parse)
    samples = whole_task.samples
    whole = run_shard(whole_task)
    bounds = list(cuts) + [len(samples)]
    n = len(cuts)
    base = _task(faces, tmp_path / "parts", parse)
    part_tasks = [dataclasses.replace(base, samples=samples[bounds[k] : bounds[k + 1]], part=(k, n)) for k in range(n)]
    results = [run_shard(t) for t in part_tasks]
    assert all("summary" not in r for r in results)  # parts are not shards
    random.Random(1).shuffle(results)  # they come back in any order
    joined = join_parts(results)

    assert whole["summary"]["num_failures"] == 3 and whole["stats"].samples == len(samples) - 3
    assert _outputs(tmp_path / "parts") == _outputs(tmp_path / "whole")  # tar, stats record, maps
    assert not any((tmp_path / "parts" / contract.SHARD_PARTS_DIR).iterdir())  # part files removed
    for key in whole:
        if key not in ("out_dir", "stats"):
            assert joined[key] == whole[key], key
    for field in dataclasses.fields(whole["stats"]):
        a, b = getattr(joined["stats"], field.name), getattr(whole["stats"], field.name)
        assert a == b and list(getattr(a, "items", lambda: [])()) == list(getattr(b, "items", lambda: [])())


def test_parts_that_are_not_one_whole_shard_are_refused(faces, tmp_path):
    task = _task(faces, tmp_path / "out")
    parts = [
        run_shard(dataclasses.replace(task, samples=task.samples[k * 16 : (k + 1) * 16], part=(k, 3))) for k in (0, 2)
    ]
    with pytest.raises(ValueError, match="not parts 0..2 of one shard"):
        join_parts(parts)


def test_split_tail_cuts_the_last_shards_into_two_parts_per_worker(tmp_path):
    config = BuildConfig(name="x", specs={"": None})
    sizes = [1000, 1000, 1000, 1000, 442]
    tasks = [ShardTask(i, "out", None, list(range(i * 1000, i * 1000 + n)), config) for i, n in enumerate(sizes)]
    assert split_tail(tasks, 1) == tasks
    cut = split_tail(tasks, 2)
    assert cut[:3] == tasks[:3]
    assert [(t.index, t.part, len(t.samples)) for t in cut[3:]] == [(3, (k, 4), 250) for k in range(4)] + [
        (4, (0, 4), 110),
        (4, (1, 4), 111),
        (4, (2, 4), 111),
        (4, (3, 4), 110),
    ]
    assert [s for t in cut for s in t.samples] == [s for t in tasks for s in t.samples]  # contiguous, all
    three = split_tail(tasks, 3)
    assert [(t.index, t.part) for t in three[2:]] == [(i, (k, 6)) for i in (2, 3, 4) for k in range(6)]
    # at least MIN_PART samples a part: a shard of 100 is cut in one part (kept whole) on any workers
    small = [ShardTask(0, "out", None, list(range(100)), config)]
    assert split_tail(small, 8) == small
    assert [len(t.samples) for t in split_tail([dataclasses.replace(small[0], samples=list(range(200)))], 8)] == [
        67,
        66,
        67,
    ]
    # kept whole: aligned faces shared with another dataset, detection in batches
    shared = dataclasses.replace(tasks[4], scratch=str(tmp_path))
    batched = dataclasses.replace(tasks[3], config=dataclasses.replace(config, detect_batch=8))
    assert split_tail([batched, shared], 2) == [batched, shared]


def test_a_build_whose_last_shards_are_cut_writes_what_a_whole_shard_build_writes(faces, tmp_path, monkeypatch):
    source = open_source(str(faces))
    plan = plan_align(source.items(), variants=3)
    config = BuildConfig(name="parts", specs={"": SPEC}, aligned_input=True, shard_size=20, seed=7)
    build(config, plan, source, tmp_path / "whole", executor="serial", progress=False)

    monkeypatch.setattr(pipeline, "MIN_PART", 4)
    joined = []
    monkeypatch.setattr(pipeline, "join_parts", lambda parts: joined.append(len(parts)) or join_parts(parts))
    bars = []
    progress = pipeline._progress
    monkeypatch.setattr(pipeline, "_progress", lambda **kw: bars.append(kw["desc"]) or progress(**kw))
    runner = SerialExecutor()
    runner.workers = 3  # cut as for 3 workers, run here, one part after the other
    stale = tmp_path / "cut" / contract.SHARD_PARTS_DIR
    stale.mkdir(parents=True)
    (stale / "00001.part5.tar").write_bytes(b"left by a killed run")
    manifest = build(config, plan, source, tmp_path / "cut", runner=runner, progress=False)

    assert bars == ["parts (3/3 shards to build)"]  # shards, not the parts they were cut into
    assert joined == [5, 5, 2]  # 48 samples in shards of 20, 20, 8: up to 6 parts, each of MIN_PART or more
    assert manifest["totals"]["samples"] == 45 and manifest["totals"]["failures"] == 3
    whole, cut = _outputs(tmp_path / "whole"), _outputs(tmp_path / "cut")
    assert whole == cut and "manifest.json" in cut and "00002.maps.npy" in cut  # every file, byte for byte
    assert not stale.exists()
