"""Building several datasets with one set of workers, and what the speed work kept exact:
workers kept inside `with`, a source sent once per worker, datasets finished in order while the
workers go on, the card's heat map from the sums gathered while writing (equal to decoding the
shards), the parsed index remembered for the steps after a build, clean samples without a
generator. Inputs are synthetic aligned faces (no detection)."""

from __future__ import annotations

import gc
import json
import os
import pickle
import re
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
from tiny_dataset import write_blocky_faces

from occsynth import contract
from occsynth.build import BuildConfig, plan_align
from occsynth.build import shard as shard_module
from occsynth.build.executor import ProcessExecutor, Shared, create_executor, shared_value
from occsynth.build.pipeline import SCRATCH_DIR, DatasetBuild, build, build_all
from occsynth.build.stages import ShardImages, composer, make_sample
from occsynth.faces.templates import get_template
from occsynth.inspect.card import occlusion_frequency
from occsynth.io import dataset as dataset_module
from occsynth.io.dataset import Dataset, remember_index
from occsynth.io.images import encode_image, encode_mask
from occsynth.sources import open_source

SPECS = {"clean": None, "blocks": "block(ratio=0.2..0.4)", "mixed": "0.5*clean | 0.5*ellipse(ratio=0.3)"}


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """12 aligned 112x112 'faces' of 3 identities (blocks of noise, so PNG sizes vary)."""
    return write_blocky_faces(tmp_path_factory.mktemp("faces"), per_person=4, seed=3)


def _jobs(faces: Path, out: Path) -> list[DatasetBuild]:
    source = open_source(str(faces))
    jobs = []
    for name, spec in SPECS.items():
        config = BuildConfig(name=name, specs={"": spec}, aligned_input=True, shard_size=5, seed=11)
        jobs.append(DatasetBuild(config, plan_align(source.items(), variants=2), source, out / name))
    return jobs


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix == ".tar" or p.name == "index.jsonl"}


def _pid(_):
    return os.getpid()


def test_an_executor_keeps_its_workers_inside_with():
    with ProcessExecutor(2) as executor:
        first = set(executor.map_unordered(_pid, range(8)))
        second = set(executor.map_unordered(_pid, range(8)))
    assert second <= first and len(first) <= 2 and os.getpid() not in first  # the same workers again
    outside = ProcessExecutor(2)
    assert not set(outside.map_unordered(_pid, range(4))) & set(outside.map_unordered(_pid, range(4)))


_WARMED: list = []


def _warm(value):
    _WARMED.append(value)


def _fail():
    raise FileNotFoundError("a landmarks file that is not there")


def _imported(name):
    return name in sys.modules, list(_WARMED), os.getpid()


def test_start_runs_the_workers_and_their_imports_before_any_task():
    with ProcessExecutor(2) as executor:
        # a module nothing here imports; a warm-up call; one that fails (the tasks would meet it)
        executor.start(preload=("colorsys",), warm=[(_fail, ()), (_warm, ("landmarks",))])
        started = executor._ready()
        assert started is not None
        results = list(executor.map_unordered(_imported, ["colorsys"] * 4))
        assert executor._pool is started  # the tasks ran on the workers start() made
    assert all(loaded and warmed == ["landmarks"] for loaded, warmed, _ in results)
    assert len({pid for *_, pid in results}) <= 2
    serial = create_executor("process", 1)
    serial.start(preload=("colorsys",))  # nothing to start: tasks run in this process


class _Cycle:
    pass


_LEFT: list = []


def _leave_a_cycle(_):
    """As the task starts: how many objects are frozen, whether the cycles that earlier tasks of
    this worker left are collected; then it leaves one more."""
    frozen, collected = gc.get_freeze_count(), all(ref() is None for ref in _LEFT)
    node = _Cycle()
    node.me = node
    _LEFT.append(weakref.ref(node))
    return frozen, collected, os.getpid()


def test_a_worker_freezes_what_it_holds_at_each_task_after_collecting_the_last_tasks_garbage():
    with ProcessExecutor(1) as executor:
        results = list(executor.map_unordered(_leave_a_cycle, range(4)))
    assert len({pid for *_, pid in results}) == 1  # one worker ran them one after the other
    assert all(frozen > 0 and collected for frozen, collected, _ in results)


class _Counted:
    pickled = 0

    def __reduce__(self):
        _Counted.pickled += 1
        return (_Counted, ())


def test_a_shared_object_is_pickled_once_and_unpickled_once_per_process():
    obj = _Counted()
    shared = Shared(obj)
    payloads = [pickle.dumps(shared) for _ in range(3)]  # three tasks carrying it
    assert _Counted.pickled == 1
    copies = [pickle.loads(p) for p in payloads]
    assert shared_value(shared) is obj  # in the process that made it: the object itself
    assert copies[0].get() is copies[1].get() is copies[2].get()  # unpickled once here
    assert isinstance(copies[0].get(), _Counted) and shared_value(5) == 5


def test_workers_start_without_the_callers_torch_and_with_one_omp_thread(tmp_path):
    # on Linux the workers fork from a server process that imported the preload modules only;
    # a caller that imported torch (and set its own thread count) passes neither on
    (tmp_path / "facts.py").write_text(
        "import os, sys\n"
        "def facts(_):\n"
        "    return [os.environ.get('OMP_NUM_THREADS'), os.getppid(), 'torch' in sys.modules, 'colorsys' in sys.modules]\n"
    )
    code = (
        "import json, os, torch, facts\nfrom occsynth.build.executor import ProcessExecutor\n"
        "with ProcessExecutor(2) as ex:\n"
        "    ex.start(preload=('colorsys',))\n"
        "    print(json.dumps([os.getpid(), list(ex.map_unordered(facts.facts, range(4)))]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    caller, facts = json.loads(out.stdout)
    assert all(omp == "1" and not torch and preloaded for omp, _, torch, preloaded in facts)
    if sys.platform.startswith("linux"):  # forked from the fork server, not from the caller
        assert all(parent != caller for _, parent, *_ in facts)


def test_a_serial_run_does_not_import_torch():
    code = (
        "import sys\nfrom occsynth.build.executor import SerialExecutor\n"
        "assert list(SerialExecutor().map_unordered(abs, [-1, 2])) == [1, 2]\nprint('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_build_all_equals_separate_builds_and_finishes_datasets_in_order(faces, tmp_path):
    for job in _jobs(faces, tmp_path / "alone"):
        build(job.config, job.plan, job.source, job.out_dir, executor="serial", progress=False)
    finished = []
    with ProcessExecutor(2) as runner:
        manifests = build_all(
            _jobs(faces, tmp_path / "together"),
            runner=runner,
            progress=False,
            on_built=lambda i, manifest, new: finished.append((i, manifest["name"], new)),
        )
    assert finished == [(0, "clean", 0), (1, "blocks", 0), (2, "mixed", 0)]
    assert [m["totals"]["samples"] for m in manifests] == [24, 24, 24]
    for name in SPECS:
        together, alone = tmp_path / "together" / name, tmp_path / "alone" / name
        assert _files(together) == _files(alone) and len(_files(together)) == 6  # 5 shards + index
        assert (together / "manifest.json").read_bytes() == (alone / "manifest.json").read_bytes()


def test_datasets_of_the_same_images_align_them_once(faces, tmp_path, monkeypatch):
    decoded = []
    original = shard_module.decode_images
    monkeypatch.setattr(
        shard_module,
        "decode_images",
        lambda state, data, config: (decoded.append(len(data)), original(state, data, config)),
    )
    jobs = _jobs(faces, tmp_path)
    build_all(jobs, executor="serial", progress=False)
    assert decoded == [3, 3, 3, 3, 2]  # the 5 shards of the first dataset only (2 variants of 12 images)
    assert not (jobs[0].out_dir / SCRATCH_DIR).exists()  # removed once the build is done
    for job in jobs[1:]:
        stats = json.loads((job.out_dir / "00000.stats.json").read_text())
        assert stats["num_samples"] == 5 and len(stats["detections"]) == 0


def test_the_heat_map_from_the_shards_sums_equals_decoding_the_shards(faces, tmp_path):
    out = tmp_path / "blocks"
    job = _jobs(faces, tmp_path)[1]
    build(job.config, job.plan, job.source, out, executor="serial", progress=False)
    assert sorted(p.name for p in out.glob("*.maps.npy")) == [contract.shard_maps_name(i) for i in range(5)]
    summed, decoded = occlusion_frequency(out), occlusion_frequency(out, decode=True)
    assert summed.count == decoded.count == 24
    assert np.array_equal(summed.frequency, decoded.frequency) and summed.frequency.max() > 0
    assert np.array_equal(summed.mean_face, decoded.mean_face)  # PNG: the same pixels
    assert np.allclose(summed.mean_landmarks, decoded.mean_landmarks, rtol=0, atol=1e-9)
    # a shard without sums (a dataset from before they were kept): the card decodes instead
    (out / contract.shard_maps_name(2)).unlink()
    assert np.array_equal(occlusion_frequency(out).frequency, decoded.frequency)


def test_the_parsed_index_is_remembered_until_the_file_changes(faces, tmp_path, monkeypatch):
    job = _jobs(faces, tmp_path)[0]
    build(job.config, job.plan, job.source, job.out_dir, executor="serial", progress=False)
    index = job.out_dir / contract.INDEX
    parsed = [json.loads(line) for line in index.read_text().splitlines()]
    assert Dataset(job.out_dir).index() == parsed  # what the build remembered is what the file says

    def no_read(*args, **kwargs):
        raise AssertionError("index.jsonl read again")

    monkeypatch.setattr(dataset_module, "read_jsonl", no_read)
    assert Dataset(job.out_dir).index() is Dataset(job.out_dir).index()
    index.write_text(index.read_text().splitlines()[0] + "\n")  # changed: read afresh
    with pytest.raises(AssertionError, match="read again"):
        Dataset(job.out_dir).index()
    monkeypatch.undo()
    assert len(Dataset(job.out_dir).index()) == 1
    remember_index(index, ["x"])
    assert Dataset(job.out_dir).index() == ["x"]


def test_clean_samples_are_what_the_composer_makes_without_drawing(faces):
    template = get_template("arcface-112x112")
    source = open_source(str(faces))
    [sample] = plan_align(source.items()[:1])
    state = ShardImages()
    crop = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    landmarks = contract.round_points(template.points)
    state.aligned[sample.item.sample_id] = (crop, landmarks, {"align_mode": "aligned-input"})
    config = BuildConfig(specs={"": None}, keep_clean=True)
    members, meta, occ = make_sample(sample, state, config, template)
    reference = composer(None)(crop, landmarks, np.random.default_rng(1))
    assert members["png"] == encode_image(reference.image) == members["clean.png"]
    assert members["mask.png"] == encode_mask(reference.mask)
    assert meta["occluders"] == reference.records == [] and meta["occlusion_ratio"] == 0.0
    again, _, _ = make_sample(sample, state, config, template)
    assert again == members  # the encoded crop is reused, the bytes are the same


def test_shards_are_fsynced_off_the_workers_path_before_the_manifest(faces, tmp_path, monkeypatch):
    # run_shard writes its shard and stats record without fsync; the build fsyncs both (in a
    # background thread) before the dataset's manifest is written, kept shards of a killed run too
    import threading

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        # a file's final name, also while it is written under a temporary one (io.atomic, io.tar)
        path = re.sub(r"^\.|(\.\d+)?\.tmp$", "", Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        events.append(("sync", path, threading.current_thread() is threading.main_thread()))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(
        os, "replace", lambda src, dst: (events.append(("publish", Path(dst).name, None)), real_replace(src, dst))[1]
    )

    def check(out: Path, names: set[str]) -> None:
        manifest_at = events.index(("publish", contract.MANIFEST, None))
        synced = {name for kind, name, _ in events[:manifest_at] if kind == "sync"}
        assert names <= synced
        # never by the thread that built the shards (a serial run builds them in the main thread)
        assert not {name for kind, name, main in events if kind == "sync" and main} & names

    job = _jobs(faces, tmp_path)[1]
    build(job.config, job.plan, job.source, job.out_dir, executor="serial", progress=False)
    names = {p.name for p in job.out_dir.iterdir() if p.name.endswith((".tar", ".stats.json"))}
    assert len(names) == 10  # 24 samples, 5 per shard
    check(job.out_dir, names)

    # a resumed build: the shards it keeps are fsynced before its manifest too
    for p in sorted(job.out_dir.glob("*.tar"))[1:]:
        p.unlink()
    (job.out_dir / contract.MANIFEST).unlink()
    events.clear()
    build(job.config, job.plan, job.source, job.out_dir, executor="serial", progress=False)
    check(job.out_dir, names)


def test_the_shards_statistics_parts_merge_to_the_statistics_of_every_parsed_sample(faces, tmp_path):
    # the manifest's statistics come from parts gathered while writing, per shard; they equal the
    # statistics computed from every line of index.jsonl read back (the definition)
    from occsynth.build.stats import SampleStats, dataset_stats, merge_stats

    job = _jobs(faces, tmp_path)[2]  # half clean, half ellipses: ratios, occluders, families
    manifest = build(job.config, job.plan, job.source, job.out_dir, executor="serial", progress=False)
    metas = [json.loads(line) for line in (job.out_dir / contract.INDEX).read_text().splitlines()]
    failures = Dataset(job.out_dir).failures()
    assert manifest["stats"] == dataset_stats(metas, failures)
    assert manifest["stats"]["occluded_samples"] > 0 and manifest["stats"]["families"]
    parts = [SampleStats.of(metas[i : i + 5]) for i in range(0, len(metas), 5)]
    assert merge_stats(parts, failures) == dataset_stats(metas, failures)
    unknown = [{**m, contract.MASK_KNOWN: False} if i % 3 == 0 else m for i, m in enumerate(metas)]
    split = merge_stats([SampleStats.of(unknown[:7]), SampleStats.of(unknown[7:])], failures)
    assert split == dataset_stats(unknown, failures) and split["mask_unknown"] == len(metas[::3])


def test_the_build_remembers_the_index_its_workers_parsed_unless_told_not_to(faces, tmp_path, monkeypatch):
    def no_read(*args, **kwargs):
        raise AssertionError("index.jsonl read")

    jobs = _jobs(faces, tmp_path)
    build(jobs[2].config, jobs[2].plan, jobs[2].source, jobs[2].out_dir, executor="serial", progress=False)
    build(
        jobs[1].config,
        jobs[1].plan,
        jobs[1].source,
        jobs[1].out_dir,
        executor="serial",
        progress=False,
        parse_index=False,
    )  # as `occsynth align`: nothing reads the index after the build
    monkeypatch.setattr(dataset_module, "read_jsonl", no_read)
    lines = (jobs[2].out_dir / contract.INDEX).read_text().splitlines()
    assert Dataset(jobs[2].out_dir).index() == [json.loads(line) for line in lines]  # no read: remembered
    with pytest.raises(AssertionError, match="index.jsonl read"):
        Dataset(jobs[1].out_dir).index()
