"""The build pipeline: a plan of samples -> per-shard tasks -> shards + index + manifest.

sources -> align -> occlude -> write shards. A build is described by a `BuildConfig` and a
`plan` (one `PlannedSample` per output sample, each naming its source image, occlusion spec
and extra metadata). The plan is cut into shards of `shard_size` samples in key order; each
shard is one task whose output depends only on its samples and the config, so any executor
and worker count give byte-identical shards, and a killed run resumes by redoing only the
shards that have no published `NNNNN.tar` + `NNNNN.stats.json` pair.

The output folder is guarded (guard.py): one build at a time (an exclusive lock), and a resume
only of the same build: same config, plan and version, and finished shards whose inputs still
have the content they were made from. A build that writes no sample of a non-empty plan, or
fails more than `max_failure_rate` of it, raises BuildFailed after writing its manifest (so the
failures can be read).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from occsynth import __version__, contract
from occsynth.build.config import BuildConfig, BuildFailed, PlannedSample, ShardTask
from occsynth.build.executor import create_executor
from occsynth.build.guard import changed_inputs, check_identity, exclusive, refuse_changed_inputs
from occsynth.build.shard import run_shard, summary
from occsynth.build.stages import composer
from occsynth.build.stats import dataset_stats
from occsynth.errors import UsageError
from occsynth.faces.templates import get_template
from occsynth.io.atomic import write_text
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


def _shard_done(out_dir: Path, index: int) -> tuple[dict, dict] | None:
    """(summary, recorded input digests) of a finished shard; None when it must be (re)built:
    missing, damaged, or made by an occsynth that did not record its inputs' content."""
    tar = out_dir / contract.shard_name(index)
    stats_path = out_dir / contract.shard_stats_name(index)
    if not (tar.exists() and stats_path.exists()):
        return None
    try:
        stats = json.loads(stats_path.read_text())
        if stats["sha256"] != sha256_file(tar) or not isinstance(stats.get("inputs"), dict):
            return None
        return summary(stats), stats["inputs"]
    except (ValueError, KeyError, TypeError):
        return None  # a damaged record: the shard is made again


def build(
    config: BuildConfig,
    plan: list[PlannedSample],
    source: Any,
    out_dir: str | Path,
    *,
    workers: int = 2,
    executor: str = "process",
    command: str | None = None,
    progress: bool = True,
    extra_manifest: dict | None = None,
    max_failure_rate: float | None = None,
) -> dict:
    """Run a build (resuming a killed one) and return its manifest."""
    config.validate()
    if max_failure_rate is not None and not 0.0 <= max_failure_rate <= 1.0:
        raise UsageError(f"max_failure_rate must be in [0, 1], got {max_failure_rate!r}")
    out_dir = Path(out_dir)
    plan = sorted(plan, key=lambda s: s.key)
    if not plan:
        raise BuildFailed(f"nothing to build into {out_dir}: the plan has no samples (no input matched)")
    keys = [s.key for s in plan]
    if len(set(keys)) != len(keys):
        raise ValueError("plan has duplicate sample keys")
    missing = sorted({s.spec for s in plan} - set(config.specs))
    if missing:
        raise ValueError(f"plan names occlusion specs not in the config: {missing}")
    for spec in config.specs.values():
        composer(spec)  # a bad spec is the user's error, not 13,000 per-sample failures
    runner = create_executor(executor, workers)

    with exclusive(out_dir):
        identity = {"config": config.content(), "plan": plan_fingerprint(plan), "version": __version__}
        check_identity(out_dir, identity)

        chunks = [plan[i : i + config.shard_size] for i in range(0, len(plan), config.shard_size)]
        results: dict[int, dict] = {}
        recorded: dict[str, str | None] = {}
        tasks = []
        for index, chunk in enumerate(chunks):
            done = _shard_done(out_dir, index)
            if done is not None:
                results[index] = done[0]
                recorded.update(done[1])
            else:
                tasks.append(ShardTask(index, str(out_dir), source, chunk, config))
        if recorded:
            items = {s.item.sample_id: s.item for s in plan}
            refuse_changed_inputs(out_dir, changed_inputs(source, items, recorded), len(recorded))

        bar = _progress(total=len(plan), initial=sum(len(chunks[i]) for i in results), enabled=progress,
                        desc=f"{config.name} ({len(tasks)}/{len(chunks)} shards to build)")
        try:
            for summary in runner.map_unordered(run_shard, tasks):
                index = int(summary["name"].split(".")[0])
                results[index] = summary
                bar.update(len(chunks[index]))
        finally:
            bar.close()
        manifest = finalize(out_dir, config, source, results, command=command, extra=extra_manifest)
    _check_outcome(out_dir, manifest, max_failure_rate)
    return manifest


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
    return tqdm(total=total, initial=initial, disable=not enabled, unit="img", desc=desc,
                file=sys.stderr, dynamic_ncols=True)


def finalize(out_dir: Path, config: BuildConfig, source: Any, results: dict[int, dict],
             command: str | None, extra: dict | None) -> dict:
    """Merge per-shard stats into index.jsonl, failures.jsonl, landmarks.jsonl, manifest.json."""
    metas, failures, detections = [], [], {}
    for index in sorted(results):
        stats = json.loads((out_dir / contract.shard_stats_name(index)).read_text())
        metas.extend(stats["samples"])
        failures.extend(stats["failures"])
        for record in stats["detections"]:
            detections[record["source"]] = record
    failures.sort(key=lambda f: f["key"])
    write_text(out_dir / contract.INDEX, contract.dumps_lines(metas))
    write_text(out_dir / contract.FAILURES, contract.dumps_lines(failures))
    if detections:
        write_text(out_dir / "landmarks.jsonl", contract.dumps_lines(detections[k] for k in sorted(detections)))
    template = get_template(config.template)
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
        "source": {"description": getattr(source, "description", str(source)),
                   "fingerprint": source.fingerprint(),
                   # top-level files beside identity folders, not items (only when there are some)
                   **({"ignored": list(source.ignored)} if getattr(source, "ignored", ()) else {})},
        "shards": [results[i] for i in sorted(results)],
        "totals": {
            "planned": sum(r["num_samples"] + r["num_failures"] for r in results.values()),
            "samples": len(metas),
            "failures": len(failures),
            "shards": len(results),
        },
        "stats": dataset_stats(metas, failures),
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
            plan.append(PlannedSample(f"{i * variants + v:0{width}d}", sample_id, item, spec,
                                      {"variant": v} if variants > 1 else {}))
    return plan
