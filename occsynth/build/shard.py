"""One shard task: the stages chained, the shard published, its stats record written.

Per shard, beside `NNNNN.tar`: `NNNNN.maps.npy` (per-pixel occlusion and RGB sums gathered
while writing, for the card's heat map: stages.OcclusionSums) and, last, `NNNNN.stats.json`
(its presence marks the shard finished: pipeline.py). The task returns a `ShardResult` dict:
the summary the manifest lists, plus everything the parent needs to write index.jsonl,
failures.jsonl, landmarks.jsonl and the statistics without reading the stats file back:
the samples' metadata as index lines, the shard's part of the statistics (stats.SampleStats,
gathered from the metadata before it was encoded), failures, detections as JSON lines.
`result_from_stats` makes the same dict from a stats record (a shard finished by an earlier,
interrupted run).

A task may be one part of a shard (ShardTask.part, pipeline.split_tail: the last shards of a
build shared by the workers): it writes its samples' members, unended, under
`.occsynth-parts/` and returns them made but unpublished; `join_parts`, in the parent, appends
the parts into the shard and publishes it as `run_shard` would have (the same bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from occsynth import contract
from occsynth.build.config import ShardTask
from occsynth.build.executor import shared_value
from occsynth.build.stages import (
    OcclusionSums,
    ShardImages,
    ShardOutput,
    align_images,
    aligned_key,
    decode_images,
    find_faces,
    load_aligned,
    read_sources,
    save_aligned,
    write_samples,
)
from occsynth.build.stats import SampleStats
from occsynth.faces.templates import get_template
from occsynth.io.atomic import atomic_write, write_text
from occsynth.io.tar import ShardWriter


def run_shard(task: ShardTask) -> dict:
    """Build one shard; writes it, its maps and its stats record; returns its ShardResult. A
    part (task.part) is written beside the shard for the parent to join (`join_parts`) and
    returns a PartResult instead."""
    out_dir = Path(task.out_dir)
    if task.part is not None:
        path = out_dir / contract.shard_part_name(task.index, task.part[0])
        with ShardWriter(path, durable=False, end=False) as writer:
            made = _make(task, writer)
            writer.commit()
        return {"out_dir": task.out_dir, "part": (task.index, *task.part), "path": str(path), "made": made}
    # the shard and its stats record are fsynced by the parent, off this worker's path
    # (pipeline.build_all, before the manifest): until then a power cut can only cost a rebuild
    # of the shard, since a resume checks the record (JSON) and the shard's sha256 in it
    with ShardWriter(out_dir / contract.shard_name(task.index), durable=False) as writer:
        made = _make(task, writer)
        digest = writer.commit()
    return _publish(task.out_dir, task.index, digest, made)


@dataclass
class Made:
    """What a shard's samples (or a part's) made, beside the bytes written: the samples'
    metadata and statistics (stages.ShardOutput), the detections (source -> encoded record),
    which of them came from the store, the inputs' sha256 and the aligned state's key."""

    out: ShardOutput
    detections: dict[str, str]
    reused: set[str]
    inputs: dict[str, str | None]
    aligned_key: str | None


def _make(task: ShardTask, writer: ShardWriter) -> Made:
    config = task.config
    source = shared_value(task.source)
    template = get_template(config.template)
    state, data = read_sources(source, task.samples)
    key = aligned_key(state, config) if task.scratch else None
    if key is None or not load_aligned(Path(task.scratch), key, state):
        for chunk in _chunks(data, config):
            part = ShardImages(digests={sid: state.digests[sid] for sid in chunk})
            decode_images(part, chunk, config)
            find_faces(part, config)
            align_images(part, config, template)
            state.merge(part)  # without the decoded sources: not needed once aligned
        if key is not None:
            save_aligned(Path(task.scratch), key, state)
    del data
    out = write_samples(
        writer, task.samples, state, config, template, parse=task.parse_index, part=task.part is not None
    )
    return Made(
        out=out,
        detections={s: contract.dumps(state.detections[s]) for s in sorted(state.detections)},  # encoded once
        reused=set(state.from_store),
        # sha256 of every input read (None: unreadable): a resume refuses changed inputs (guard.py)
        inputs={sid: state.digests.get(sid) for sid in sorted({s.item.sample_id for s in task.samples})},
        aligned_key=key,
    )


def _publish(folder: str, index: int, digest: str, made: Made) -> dict:
    """The shard's maps and stats record written (the record last: it marks the shard
    finished); its ShardResult."""
    out, out_dir = made.out, Path(folder)
    maps_path = out_dir / contract.shard_maps_name(index)
    if out.sums.count:
        # never fsynced: a maps file lost to a power cut only makes the card decode the shards
        # (card.py); the stats record written next marks the shard finished
        with atomic_write(maps_path, "wb", durable=False) as f:
            np.save(f, out.sums.to_array(), allow_pickle=False)
    else:
        maps_path.unlink(missing_ok=True)  # left by an earlier run of this shard
    stats = {
        "name": contract.shard_name(index),
        "sha256": digest,
        "num_samples": out.stats.samples,
        "num_failures": len(out.failures),
        "failures": [f.to_dict() for f in out.failures],
        "reused_detections": len(made.reused),
        "inputs": made.inputs,
    }
    # the detections and the samples' metadata as already encoded (keys: these two last)
    text = (
        contract.dumps(stats)[:-1]
        + ',"detections":['
        + ",".join(made.detections.values())
        + '],"samples":['
        + ",".join(out.texts)
        + "]}"
    )
    write_text(out_dir / contract.shard_stats_name(index), text, durable=False)
    return {
        "out_dir": folder,
        "summary": summary(stats),
        "stats": out.stats,
        "metas": out.metas,
        "index": "".join(t + "\n" for t in out.texts),
        "failures": stats["failures"],
        "detections": made.detections,
        "new_detections": len(made.detections) - len(made.reused),
        "inputs": stats["inputs"],
        "aligned_key": made.aligned_key,
    }


def join_parts(parts: list[dict]) -> dict:
    """The shard of a task built in parts, from their PartResults (any order): the parts'
    members appended in order into the shard, their metadata, statistics, sums, detections
    and inputs joined in sample order, the maps and stats record written as `run_shard`
    writes them for the whole shard (the same bytes: tests/test_shard_parts.py). Removes the
    part files; returns the ShardResult."""
    parts = sorted(parts, key=lambda p: p["part"][1])
    index, _, n = parts[0]["part"]
    if [p["part"] for p in parts] != [(index, k, n) for k in range(n)]:
        raise ValueError(f"shard {index}: parts {[p['part'] for p in parts]} are not parts 0..{n - 1} of one shard")
    folder = parts[0]["out_dir"]
    out_dir = Path(folder)
    made = [p["made"] for p in parts]
    with ShardWriter(out_dir / contract.shard_name(index), durable=False) as writer:
        for p, m in zip(parts, made):
            writer.append_part(p["path"], len(m.out.texts))
        digest = writer.commit()
    out = ShardOutput(
        texts=[t for m in made for t in m.out.texts],
        metas=None if any(m.out.metas is None for m in made) else [x for m in made for x in m.out.metas],
        failures=[f for m in made for f in m.out.failures],
        stats=SampleStats.joined([m.out.stats for m in made]),
        sums=OcclusionSums.joined([m.out.sums for m in made]),
    )
    detections = {s: d for m in made for s, d in m.detections.items()}  # an image in two parts: once
    inputs = {s: d for m in made for s, d in m.inputs.items()}
    result = _publish(
        folder,
        index,
        digest,
        Made(
            out=out,
            detections={s: detections[s] for s in sorted(detections)},
            reused=set().union(*(m.reused for m in made)),
            inputs={s: inputs[s] for s in sorted(inputs)},
            aligned_key=None,
        ),
    )
    for p in parts:
        Path(p["path"]).unlink(missing_ok=True)
    return result


# Images decoded, detected and aligned a few at a time: the decoded sources of a whole shard
# (~190 MB of LFW's 250x250 photos) streamed through memory at once cost each worker ~10% more
# when two run side by side than the bare loop does; a chunk stays in the caches.
CHUNK_IMAGES = 16


def _chunks(data: dict[str, bytes], config) -> list[dict[str, bytes]]:
    """The shard's source images in chunks of CHUNK_IMAGES; all in one when detection batches
    several images (batch-mates change MTCNN's output: stages.aligned_key)."""
    if config.detect_batch != 1:
        return [data]
    items = list(data.items())
    return [dict(items[i : i + CHUNK_IMAGES]) for i in range(0, len(items), CHUNK_IMAGES)]


def result_from_stats(stats: dict) -> dict:
    """The ShardResult of a finished shard, from its stats record."""
    metas = stats["samples"]
    return {
        "summary": summary(stats),
        "stats": SampleStats.of(metas),
        "metas": metas,
        "index": contract.dumps_lines(metas),
        "failures": stats["failures"],
        "detections": {record["source"]: contract.dumps(record) for record in stats["detections"]},
        "new_detections": len(stats["detections"]) - int(stats.get("reused_detections", 0)),
        "inputs": stats["inputs"],
    }


def summary(stats: dict) -> dict:
    return {k: stats[k] for k in ("name", "sha256", "num_samples", "num_failures")}
