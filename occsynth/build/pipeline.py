"""The build pipeline: a plan of samples -> per-shard tasks -> shards + index + manifest.

sources -> align -> occlude -> write shards. A build is described by a `BuildConfig` and a
`plan` (one `PlannedSample` per output sample, each naming its source image, occlusion spec
and extra metadata). The plan is cut into shards of `shard_size` samples in key order; each
shard is one task whose output depends only on its samples and the config, so any executor
and worker count give byte-identical shards, and a killed run resumes by redoing only the
shards that have no published `NNNNN.tar` + `NNNNN.stats.json` pair (the record holds the
shard's sha256, checked on resume; both files are fsynced by the parent, in a background thread,
before the manifest is written: the workers never wait for the disk).

The output folder is guarded (guard.py): one build at a time (an exclusive lock), and a resume
only of the same build: same config, plan and version, and finished shards whose inputs still
have the content they were made from. A build that writes no sample of a non-empty plan, or
fails more than `max_failure_rate` of it, raises BuildFailed after writing its manifest (so the
failures can be read).

`build_all` builds several datasets (lfw-block's levels) with one set of workers: their tasks
are queued together and each dataset is finalized as soon as its shards are done, while the
workers go on with the next. The index, failures, landmarks and statistics come from what the
shard tasks return (shard.py), so no shard or stats file is read back on a fresh build.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from occsynth import __version__, contract
from occsynth.build.config import BuildConfig, BuildFailed, PlannedSample, ShardTask
from occsynth.build.executor import Shared, create_executor
from occsynth.build.guard import changed_inputs, check_identity, exclusive, refuse_changed_inputs
from occsynth.build.shard import join_parts, result_from_stats, run_shard
from occsynth.build.stages import composer
from occsynth.build.stats import merge_stats
from occsynth.errors import UsageError
from occsynth.faces.templates import get_template
from occsynth.io.atomic import BackgroundSync, write_text
from occsynth.io.dataset import remember_index
from occsynth.io.tar import sha256_file


# ---------------------------------------------------------------- the whole build
def plan_fingerprint(plan: list[PlannedSample]) -> str:
    h = hashlib.sha256()
    for s in plan:
        row = [s.key, s.sample_id, s.item.sample_id, s.spec, s.extra]
        if not s.mask_known:
            row.append("mask-unknown")  # only then: fingerprints of earlier plans stay as they were
        h.update(contract.dumps(row).encode())
    return h.hexdigest()


def _shard_done(out_dir: Path, index: int) -> dict | None:
    """The ShardResult of a finished shard; None when it must be (re)built: missing, damaged,
    or made by an occsynth that did not record its inputs' content."""
    tar = out_dir / contract.shard_name(index)
    stats_path = out_dir / contract.shard_stats_name(index)
    if not (tar.exists() and stats_path.exists()):
        return None
    try:
        stats = json.loads(stats_path.read_text())
        if stats["sha256"] != sha256_file(tar) or not isinstance(stats.get("inputs"), dict):
            return None
        return result_from_stats(stats)
    except (ValueError, KeyError, TypeError):
        return None  # a damaged record: the shard is made again


@dataclass
class DatasetBuild:
    """One dataset of a `build_all` call: what `build` takes for one."""

    config: BuildConfig
    plan: list[PlannedSample]
    source: Any
    out_dir: str | Path
    extra_manifest: dict | None = None


def build(
    config: BuildConfig,
    plan: list[PlannedSample],
    source: Any,
    out_dir: str | Path,
    *,
    workers: int = 2,
    executor: str = "process",
    runner: Any = None,
    command: str | None = None,
    progress: bool = True,
    extra_manifest: dict | None = None,
    max_failure_rate: float | None = None,
    on_built: Callable[[int, dict, int], None] | None = None,
    parse_index: bool = True,
) -> dict:
    """Run a build (resuming a killed one) and return its manifest (see build_all)."""
    return build_all(
        [DatasetBuild(config, plan, source, out_dir, extra_manifest)],
        workers=workers,
        executor=executor,
        runner=runner,
        command=command,
        progress=progress,
        max_failure_rate=max_failure_rate,
        on_built=on_built,
        parse_index=parse_index,
    )[0]


def build_all(
    builds: list[DatasetBuild],
    *,
    workers: int = 2,
    executor: str = "process",
    runner: Any = None,
    command: str | None = None,
    progress: bool = True,
    max_failure_rate: float | None = None,
    on_built: Callable[[int, dict, int], None] | None = None,
    parse_index: bool = True,
) -> list[dict]:
    """Build (or resume) several datasets with one set of workers; their manifests in order.
    (`parse_index`: the workers also parse each sample's metadata back, and the parent keeps
    the parsed index for what reads it next: protocol files, the card; False where nothing does.)

    Every value is checked before any work. All shard tasks go to the executor at once, in
    dataset order; as soon as dataset i and every one before it have all their shards, dataset
    i is finalized (index, failures, landmarks, manifest), checked (BuildFailed) and handed to
    `on_built(i, manifest, new_detections)` (new_detections: detections run, not reused) while
    the workers go on with the next datasets' shards. `runner`: an executor (create_executor)
    to use instead of starting one; it stays open."""
    if max_failure_rate is not None and not 0.0 <= max_failure_rate <= 1.0:
        raise UsageError(f"max_failure_rate must be in [0, 1], got {max_failure_rate!r}")
    builds = [dataclasses.replace(b, out_dir=Path(b.out_dir), plan=sorted(b.plan, key=lambda s: s.key)) for b in builds]
    folders = [b.out_dir.resolve() for b in builds]
    if len(set(folders)) != len(folders):
        raise ValueError("two datasets of one build_all call share an output folder")
    for b in builds:
        _check_plan(b)

    with contextlib.ExitStack() as stack:
        if runner is None:
            runner = stack.enter_context(create_executor(executor, workers))
        syncer = stack.enter_context(BackgroundSync())  # the shards' fsyncs (shard.run_shard)
        keep = stack.enter_context(_kept_out_of_gc())
        for b in builds:
            stack.enter_context(exclusive(b.out_dir))
        shared: dict[int, Shared] = {}  # one copy of each source for the workers
        results: list[dict[int, dict]] = []
        chunks: list[list[list[PlannedSample]]] = []
        tasks, owner = [], {}
        for i, b in enumerate(builds):
            done, todo, dataset_chunks = _resume(b)
            for index in done:  # kept from a killed run, whose fsyncs may not have run
                syncer.add(b.out_dir / contract.shard_name(index))
                syncer.add(b.out_dir / contract.shard_stats_name(index))
            results.append(done)
            chunks.append(dataset_chunks)
            source = shared.setdefault(id(b.source), Shared(b.source))
            for index in todo:
                tasks.append(
                    ShardTask(index, str(b.out_dir), source, dataset_chunks[index], b.config, parse_index=parse_index)
                )
                owner[(folders[i], index)] = i
        last_use = _share_alignments(builds, tasks, owner, folders)
        to_build = len(tasks)  # shards (before the tail is cut into parts)
        tasks = split_tail(tasks, getattr(runner, "workers", 1))
        parts: dict[tuple[Path, int], list[dict]] = {}  # the parts of a split shard received so far
        pending = [len(chunks[i]) - len(results[i]) for i in range(len(builds))]
        manifests: list[dict] = []

        def finish_ready() -> None:
            while len(manifests) < len(builds) and pending[len(manifests)] == 0:
                i = len(manifests)
                b = builds[i]
                syncer.wait()  # every shard of dataset i on disk before its manifest says so
                manifest = finalize(b.out_dir, b.config, b.source, results[i], command=command, extra=b.extra_manifest)
                manifests.append(manifest)
                _check_outcome(b.out_dir, manifest, max_failure_rate)
                new_detections = sum(r["new_detections"] for r in results[i].values())
                results[i] = {}  # the metadata is in the files (and the index memo) now
                if on_built is not None:
                    on_built(i, manifest, new_detections)

        names = sorted({b.config.name for b in builds})
        desc = names[0] if len(builds) == 1 else f"{', '.join(names)} ({len(builds)} datasets)"
        bar = _progress(
            total=sum(len(b.plan) for b in builds),
            initial=sum(len(chunks[i][k]) for i in range(len(builds)) for k in results[i]),
            enabled=progress,
            desc=f"{desc} ({to_build}/{sum(map(len, chunks))} shards to build)",
        )
        try:
            finish_ready()
            keep()  # the sources and tasks too: the parent may run tasks itself (parent_works)
            for result in runner.map_unordered(run_shard, tasks):
                keep()  # what arrived so far (the samples' metadata) out of the next collections
                whole = "part" not in result
                if not whole:  # one part of a shard: the shard is joined once all are here
                    made = result["made"].out
                    bar.update(len(made.texts) + len(made.failures))
                    got = parts.setdefault((Path(result["out_dir"]).resolve(), result["part"][0]), [])
                    got.append(result)
                    if len(got) < result["part"][2]:
                        continue
                    result = join_parts(got)
                index = int(result["summary"]["name"].split(".")[0])
                i = owner[(Path(result["out_dir"]).resolve(), index)]
                results[i][index] = result
                pending[i] -= 1
                syncer.add(Path(result["out_dir"]) / contract.shard_name(index))
                syncer.add(Path(result["out_dir"]) / contract.shard_stats_name(index))
                if last_use.get((i, index)) and result["aligned_key"]:  # no later dataset needs it
                    for suffix in (".json", ".npy"):
                        (Path(last_use[(i, index)]) / (result["aligned_key"] + suffix)).unlink(missing_ok=True)
                if whole:
                    bar.update(len(chunks[i][index]))
                finish_ready()
        finally:
            bar.close()
        finish_ready()
        for folder in {t.scratch for t in tasks if t.scratch}:
            shutil.rmtree(folder, ignore_errors=True)  # kept after a failure: a resume reuses it
        for b in builds:  # parts left by a killed run, split otherwise (the shards are whole now)
            shutil.rmtree(b.out_dir / contract.SHARD_PARTS_DIR, ignore_errors=True)
    return manifests


@contextlib.contextmanager
def _kept_out_of_gc():
    """A function that moves every object alive now out of the cyclic garbage collector's
    reach (gc.freeze) until the block ends (gc.unfreeze). The parent holds the parsed metadata
    of a dataset's samples (~20 containers each) while its shards arrive, and the collections
    that unpickling the next results sets off went through all of them again: lfw-block's 120
    shard results (12,000 samples a dataset) took ~12 s to unpickle, 2 s with what had arrived
    frozen, in a parent that had ~22 CPU-s to spare beside its 2 workers on 2 cores. Frozen
    objects are still freed when unused (reference counts); only cycles among them wait for the
    end. Nothing is frozen when the caller has frozen objects itself (unfreezing would thaw them)."""
    if gc.get_freeze_count():
        yield lambda: None
        return
    try:
        yield gc.freeze
    finally:
        gc.unfreeze()


# A build's last shards are cut into parts for the workers to share: whole shards leave workers
# idle in the last round (all of LFW's 11,442 images in shards of 1,000 over 2 workers: one
# builds 6,000 images, the other 5,442, then waits). Parts of fewer samples are not worth joining.
MIN_PART = 64


def split_tail(tasks: list[ShardTask], workers: int) -> list[ShardTask]:
    """The tasks with each of the last `workers` ones cut into up to 2 x `workers` parts
    (contiguous runs of its samples, as even as can be, at least MIN_PART each; shard.join_parts
    makes the same shard of them), so that every worker's last task ends within half a shard's
    share of the others (a worker's part of a shard, halved: a cut into `workers` parts left one
    worker ~0.5 s idle in all of LFW re-aligned on 2 workers, the last part of the short shard).
    Not cut: tasks sharing aligned faces with another dataset (scratch: keyed by the
    shard's images), and detection in batches of several images (batch-mates change MTCNN's
    output)."""
    if workers < 2:
        return tasks
    out = list(tasks[:-workers])
    for task in tasks[-workers:]:
        n = min(2 * workers, len(task.samples) // MIN_PART)
        if n < 2 or task.scratch or task.config.detect_batch != 1 or task.part is not None:
            out.append(task)
            continue
        cuts = [round(k * len(task.samples) / n) for k in range(n + 1)]
        out.extend(
            dataclasses.replace(task, samples=task.samples[cuts[k] : cuts[k + 1]], part=(k, n)) for k in range(n)
        )
    return out


# Aligned faces kept on disk between the datasets of one build: 112x112x3 bytes per image and
# shard. Above this estimate the build aligns again in each dataset instead.
MAX_SCRATCH_BYTES = 4 << 30
SCRATCH_DIR = ".occsynth-aligned"


def _share_alignments(
    builds: list[DatasetBuild], tasks: list[ShardTask], owner: dict, folders: list[Path]
) -> dict[tuple[int, int], str]:
    """Give a scratch folder to the tasks whose images (same source, same items, same order)
    another task of this build aligns too (lfw-block: shard k of every level); returns, for the
    last task of each such group, the folder to clean its entry from once it is done."""
    groups: dict[tuple, list[ShardTask]] = {}
    for task in tasks:
        i = owner[(Path(task.out_dir).resolve(), task.index)]
        signature = (id(builds[i].source), tuple(s.item.sample_id for s in task.samples))
        groups.setdefault(signature, []).append(task)
    repeated = [group for group in groups.values() if len(group) > 1]
    size = 0
    for group in repeated:
        template = get_template(group[0].config.template)
        size += len({s.item.sample_id for s in group[0].samples}) * template.width * template.height * 3
    if not repeated or size > MAX_SCRATCH_BYTES:
        return {}
    folder = str(folders[0] / SCRATCH_DIR)
    last_use = {}
    for group in repeated:
        for task in group:
            task.scratch = folder
        last = group[-1]
        last_use[(owner[(Path(last.out_dir).resolve(), last.index)], last.index)] = folder
    return last_use


def _check_plan(b: DatasetBuild) -> None:
    """Every value of one dataset's build, before any work."""
    b.config.validate()
    if not b.plan:
        raise BuildFailed(f"nothing to build into {b.out_dir}: the plan has no samples (no input matched)")
    keys = [s.key for s in b.plan]
    if len(set(keys)) != len(keys):
        raise ValueError("plan has duplicate sample keys")
    missing = sorted({s.spec for s in b.plan} - set(b.config.specs))
    if missing:
        raise ValueError(f"plan names occlusion specs not in the config: {missing}")
    for spec in b.config.specs.values():
        composer(spec)  # a bad spec is the user's error, not 13,000 per-sample failures


def _resume(b: DatasetBuild) -> tuple[dict[int, dict], list[int], list[list[PlannedSample]]]:
    """(results of the finished shards, indexes of the shards to build, every shard's samples);
    refuses a folder that holds another build or finished shards of changed inputs."""
    identity = {"config": b.config.content(), "plan": plan_fingerprint(b.plan), "version": __version__}
    check_identity(b.out_dir, identity)
    size = b.config.shard_size
    chunks = [b.plan[i : i + size] for i in range(0, len(b.plan), size)]
    done: dict[int, dict] = {}
    recorded: dict[str, str | None] = {}
    for index in range(len(chunks)):
        result = _shard_done(b.out_dir, index)
        if result is not None:
            done[index] = result
            recorded.update(result["inputs"])
    if recorded:
        items = {s.item.sample_id: s.item for s in b.plan}
        refuse_changed_inputs(b.out_dir, changed_inputs(b.source, items, recorded), len(recorded))
    return done, [i for i in range(len(chunks)) if i not in done], chunks


def _check_outcome(out_dir: Path, manifest: dict, max_failure_rate: float | None) -> None:
    """BuildFailed when no sample was written, or more than max_failure_rate of the plan failed."""
    totals = manifest["totals"]
    planned, failures = totals["planned"], totals["failures"]
    reasons = ", ".join(f"{reason} ({n})" for reason, n in list(manifest["stats"]["failure_reasons"].items())[:3])
    where = f"see {out_dir / contract.FAILURES}: {reasons}"
    if planned and totals["samples"] == 0:
        raise BuildFailed(f"none of the {planned} planned samples could be made; {where}")
    if max_failure_rate is not None and planned and failures / planned > max_failure_rate:
        raise BuildFailed(
            f"{failures} of {planned} planned samples failed ({failures / planned:.1%} > --max-failure-rate "
            f"{max_failure_rate:.1%}); {where}"
        )


def _progress(total: int, initial: int, enabled: bool, desc: str):
    return tqdm(
        total=total, initial=initial, disable=not enabled, unit="img", desc=desc, file=sys.stderr, dynamic_ncols=True
    )


def finalize(
    out_dir: Path, config: BuildConfig, source: Any, results: dict[int, dict], command: str | None, extra: dict | None
) -> dict:
    """Merge the shards' results (shard.ShardResult) into index.jsonl, failures.jsonl,
    landmarks.jsonl and manifest.json. The index lines are the shards' own metadata text and
    the statistics their parts (stats.SampleStats); the index as parsed back by the workers
    (ShardTask.parse_index) is remembered (io.dataset) for a builder's protocol files and card."""
    parts, failures, detections = [], [], {}
    for index in sorted(results):
        parts.append(results[index]["stats"])
        failures.extend(results[index]["failures"])
        detections.update(results[index]["detections"])
    failures.sort(key=lambda f: f["key"])
    index_path = write_text(out_dir / contract.INDEX, "".join(results[i]["index"] for i in sorted(results)))
    if all(results[i]["metas"] is not None for i in results):  # parsed by the workers, in parallel
        remember_index(index_path, [meta for i in sorted(results) for meta in results[i]["metas"]])
    write_text(out_dir / contract.FAILURES, contract.dumps_lines(failures))
    if detections:
        write_text(out_dir / contract.LANDMARKS, "".join(detections[k] + "\n" for k in sorted(detections)))
    template = get_template(config.template)
    summaries = {i: results[i]["summary"] for i in results}
    manifest = {
        "format": "occsynth-shards/1",
        "tool": "occsynth",
        "version": __version__,
        "name": config.name,
        "command": command or " ".join(sys.argv),
        "config": config.content(),
        "seed": config.seed,
        "template": template.name,
        "image_size": [template.width, template.height],
        "source": {
            "description": getattr(source, "description", str(source)),
            "fingerprint": source.fingerprint(),
            # top-level files beside identity folders, not items (only when there are some)
            **({"ignored": list(source.ignored)} if getattr(source, "ignored", ()) else {}),
        },
        "shards": [summaries[i] for i in sorted(summaries)],
        "totals": {
            "planned": sum(r["num_samples"] + r["num_failures"] for r in summaries.values()),
            "samples": sum(part.samples for part in parts),
            "failures": len(failures),
            "shards": len(summaries),
        },
        "stats": merge_stats(parts, failures),
    }
    if extra:
        manifest.update(extra)
    write_text(out_dir / contract.MANIFEST, json.dumps(contract._jsonable(manifest), indent=2, sort_keys=True) + "\n")
    return manifest


# ---------------------------------------------------------------- plans
def plan_align(items: list, *, spec: str = "", variants: int = 1) -> list[PlannedSample]:
    """One sample per source image (or `variants` per image, each with its own seed)."""
    plan = []
    width = len(str(max(len(items) * variants - 1, 0)))
    width = max(width, 6)
    for i, item in enumerate(sorted(items, key=lambda it: it.sample_id)):
        for v in range(variants):
            sample_id = item.sample_id if variants == 1 else f"{item.sample_id}#{v}"
            plan.append(
                PlannedSample(
                    f"{i * variants + v:0{width}d}", sample_id, item, spec, {"variant": v} if variants > 1 else {}
                )
            )
    return plan
