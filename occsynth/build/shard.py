"""One shard task: the stages chained, the shard published, its stats record written."""
from __future__ import annotations

from pathlib import Path

from occsynth import contract
from occsynth.build.config import ShardTask
from occsynth.build.stages import align_images, find_faces, read_images, write_samples
from occsynth.faces.templates import get_template
from occsynth.io.atomic import write_text
from occsynth.io.tar import ShardWriter


def run_shard(task: ShardTask) -> dict:
    """Build one shard; returns the summary of (and writes) its stats record."""
    config = task.config
    template = get_template(config.template)
    out_dir = Path(task.out_dir)
    state = read_images(task.source, task.samples, config)
    find_faces(state, config)
    align_images(state, config, template)
    with ShardWriter(out_dir / contract.shard_name(task.index)) as writer:
        metas, failures = write_samples(writer, task.samples, state, config, template)
        digest = writer.commit()
    stats = {
        "name": contract.shard_name(task.index),
        "sha256": digest,
        "num_samples": len(metas),
        "num_failures": len(failures),
        "samples": metas,
        "failures": [f.to_dict() for f in failures],
        "detections": [state.detections[s] for s in sorted(state.detections)],
        "reused_detections": len(state.from_store),
        # sha256 of every input read (None: unreadable): a resume refuses changed inputs (guard.py)
        "inputs": {sid: state.digests.get(sid) for sid in sorted({s.item.sample_id for s in task.samples})},
    }
    write_text(out_dir / contract.shard_stats_name(task.index), contract.dumps(stats))
    return summary(stats)


def summary(stats: dict) -> dict:
    return {k: stats[k] for k in ("name", "sha256", "num_samples", "num_failures")}
