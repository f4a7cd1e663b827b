"""Building datasets: a config and a plan of samples -> per-shard tasks (stages: read, find
faces, align, occlude and encode, write) run by an executor -> shards, index, manifest.
See pipeline.py for resume and determinism, stages.py for what happens to each sample."""

from occsynth.build.config import BuildConfig, NoFaceError, PlannedSample, ShardTask
from occsynth.build.pipeline import build, finalize, plan_align

__all__ = ["BuildConfig", "NoFaceError", "PlannedSample", "ShardTask", "build", "finalize", "plan_align"]
