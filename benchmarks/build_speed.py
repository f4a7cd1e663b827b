"""Benchmark: LFW benchmark builds end to end against their shard work in-process, in one run.

    python benchmarks/build_speed.py [--only lfw-occ-0.43,lfw-block] [--repeats 2] [--out results.json]

For each build of benchmarks/locks/ named with --only, alternating within each repeat:
  * end to end: `occsynth build NAME ... --workers W --check LOCK` (W = 2, and 1 with
    --with-w1), wall time from start to exit: interpreter start-up, source listing, workers,
    index/manifest, pairs.jsonl, card.md and its plots, lock comparison; the lock check proves
    the bytes did not change;
  * in-process shard work: occsynth.build.shard.run_shard on every shard task of the build, one
    after the other in this process (one core; the same aligned-face reuse between datasets as
    build_all arranges), the work alone, without start-up, workers or anything after the shards.
Reported: wall seconds and samples/s, and the ratios end-to-end / in-process per core
(target >= 0.8, issue "Speed to the floor" item 3). Detections come from the machine-wide
landmark cache (as check_locks.py); the load average is recorded before each measurement
(the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from check_locks import build_args, check_command  # noqa: E402
from machine import LFW_TGZ, SHARED_DATA, write_result  # noqa: E402

PAIRS = SHARED_DATA / "lfw" / "pairs.txt"


def end_to_end(lock_path: Path, workers: int, out: Path) -> tuple[float, float, int]:
    """(wall s, CPU s of the command and its workers, samples) of the build, checked against its lock."""
    lock = json.loads(lock_path.read_text())
    shutil.rmtree(out, ignore_errors=True)
    cmd = check_command(lock, lock_path, out, workers)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(HERE.parent)))
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    samples = sum(json.loads(m.read_text())["totals"]["samples"] for m in out.rglob("manifest.json"))
    shutil.rmtree(out, ignore_errors=True)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, samples


def in_process(lock_path: Path, out: Path) -> tuple[float, int]:
    """(seconds of run_shard over every shard task of the build, samples), one core."""
    import click

    from occsynth.benchmarks import get_builder
    from occsynth.build import ShardTask
    from occsynth.build.executor import SerialExecutor
    from occsynth.build.pipeline import _share_alignments
    from occsynth.build.shard import run_shard
    from occsynth.cli import build_options, make_config

    lock = json.loads(lock_path.read_text())
    builder = get_builder(lock["build"])
    # the options exactly as the command line parses them (defaults included)
    common = build_options(lambda: None, on_no_face=builder.on_no_face).__click_params__
    command = click.Command("x", params=list(common))
    for option in builder.options:
        option(command)
    args = build_args(lock)[2:] + ["--lfw", str(LFW_TGZ), "--pairs", str(PAIRS)]
    opts = command.make_context("x", args).params
    shared_keys = {p.name for p in common}
    shared = {k: opts.pop(k) for k in list(opts) if k in shared_keys}
    config = make_config(shared, name=builder.name)
    jobs = builder.jobs(config, **opts)
    shutil.rmtree(out, ignore_errors=True)
    tasks, owner, folders = [], {}, []
    for i, job in enumerate(jobs):
        folder = out / (job.subdir or "all")
        folder.mkdir(parents=True)
        folders.append(folder.resolve())
        plan = sorted(job.plan, key=lambda s: s.key)
        size = job.config.shard_size
        for index, k in enumerate(range(0, len(plan), size)):
            tasks.append(ShardTask(index, str(folder), job.source, plan[k : k + size], job.config))
            owner[(folder.resolve(), index)] = i

    class _Build:  # what _share_alignments reads of a DatasetBuild
        def __init__(self, job):
            self.source, self.config = job.source, job.config

    _share_alignments([_Build(j) for j in jobs], tasks, owner, folders)
    warm = ShardTask(0, str(out / "warm"), jobs[0].source, tasks[0].samples[:20], jobs[0].config)
    (out / "warm").mkdir()
    list(SerialExecutor().map_unordered(run_shard, [warm]))  # landmark store, occluders, template loaded
    t0 = time.perf_counter()
    samples = sum(r["summary"]["num_samples"] for r in SerialExecutor().map_unordered(run_shard, tasks))
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return seconds, samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="lfw-occ-0.43,lfw-block")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--with-w1", action="store_true", help="also the end-to-end build on 1 worker")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not LFW_TGZ.exists():
        print(f"SKIP: {LFW_TGZ} not found (real LFW needed)")
        return 0
    kinds = ["in_process", "end_to_end_w2"] + (["end_to_end_w1"] if args.with_w1 else [])
    names = [n for n in args.only.split(",") if n]
    runs: dict[str, dict[str, list]] = {n: {k: [] for k in kinds} for n in names}
    work = Path(tempfile.mkdtemp(prefix="occsynth-build-speed-"))
    try:
        for rep in range(args.repeats):
            for name in names:
                lock_path = HERE / "locks" / f"{name}.lock.json"
                for kind in kinds:
                    load = os.getloadavg()[0]
                    if kind == "in_process":
                        seconds, samples = in_process(lock_path, work / name)
                        row = {}
                    else:
                        seconds, cpu, samples = end_to_end(lock_path, int(kind[-1]), work / name)
                        row = {"cpu_s": round(cpu, 1), "identical_to_lock": True}
                    runs[name][kind].append(
                        {
                            "seconds": round(seconds, 2),
                            "samples": samples,
                            "samples_per_s": round(samples / seconds, 1),
                            "load_1m_before": round(load, 2),
                            **row,
                        }
                    )
                    print(
                        f"[{rep}] {name} {kind}: {seconds:.1f} s = {samples / seconds:.0f} samples/s (load {load:.2f})",
                        flush=True,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for name in names:
        med = {k: statistics.median(r["samples_per_s"] for r in runs[name][k]) for k in kinds}
        seconds = {k: statistics.median(r["seconds"] for r in runs[name][k]) for k in kinds}
        summary[name] = {
            "median_seconds": seconds,
            "median_samples_per_s": med,
            "end_to_end_w2_per_core_over_in_process": round(med["end_to_end_w2"] / 2 / med["in_process"], 3),
            **(
                {"end_to_end_w1_over_in_process": round(med["end_to_end_w1"] / med["in_process"], 3)}
                if args.with_w1
                else {}
            ),
        }
    loads = [r["load_1m_before"] for n in names for k in kinds for r in runs[n][k]]
    result = {
        "what": "occsynth build from stored landmarks: end to end vs the shard work in-process",
        "targets": {
            "lfw-occ-0.43 wall s (2 workers)": 10,
            "lfw-block wall s (2 workers)": 60,
            "end_to_end_per_core_over_in_process": 0.8,
        },
        "load_1m": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
        "summary": summary,
        "runs": runs,
    }
    path = write_result("build_speed", result, args.out)
    print(json.dumps({"summary": summary, "load_1m": result["load_1m"]}, indent=2), f"\n-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
