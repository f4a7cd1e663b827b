"""Reproducibility locks: the checksums of a build, committed so a fresh build can be checked
against them (`occsynth build ... --check LOCK`, `--write-lock LOCK`).

A lock pins the build's detections too (its landmarks.jsonl): MTCNN's floats differ in the last
bits from one CPU to another (19 of 224 LFW faces moved a landmark by 0.001 px, the stored
rounding, between two machines with the same torch), and a moved landmark moves its crop, so a
build from another machine's detections differs everywhere. Comparing them first says so in
one line; rebuilding from the lock's own detections (`--landmarks FILE --no-cache`) checks the
rest of the build on any machine."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from occsynth import __version__, contract

DETECTIONS = contract.LANDMARKS
CHECKED_FILES = (contract.INDEX, contract.FAILURES, "pairs.jsonl", "protocol.json", DETECTIONS)
NOTE = (
    "checksums depend on the detections (landmarks.jsonl: rebuild from the lock's own with --landmarks "
    "FILE --no-cache) and on the versions of OpenCV and zlib that warp, harmonise and encode"
)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dataset_checksums(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    sums = {
        "shards": {s["name"]: s["sha256"] for s in manifest["shards"]},
        "samples": manifest["totals"]["samples"],
        "failures": manifest["totals"]["failures"],
    }
    for name in CHECKED_FILES:
        if (out / name).exists():
            sums[name] = _sha(out / name)
    return sums


def make_lock(build: str, options: dict, out: Path, subdirs: list[str]) -> dict:
    return {
        "build": build,
        "options": {
            k: v
            for k, v in sorted(options.items())
            if k not in ("workers", "executor", "quiet", "out", "check", "write_lock", "max_failure_rate")
        },
        "tool_version": __version__,
        "note": NOTE,
        "datasets": {sub or ".": dataset_checksums(out / sub) for sub in subdirs},
    }


def compare_lock(expected: dict, actual: dict) -> list[str]:
    """Differences between a committed lock and a fresh build's ([] = identical). Only what the
    lock pins is compared (a lock written before landmarks.jsonl was pinned does not check it);
    when the detections differ, the first line says so, as the cause of the rest."""
    problems, moved = [], []
    for sub, want in expected["datasets"].items():
        have = actual["datasets"].get(sub)
        if have is None:
            problems.append(f"{sub}: not built")
            continue
        for key in sorted(want):
            if key == "shards":
                built = have.get("shards", {})
                for shard in sorted(set(want["shards"]) | set(built)):
                    if want["shards"].get(shard) != built.get(shard):
                        problems.append(
                            f"{sub}/{shard}: {built.get(shard, 'missing')} != locked {want['shards'].get(shard, 'absent')}"
                        )
            elif want.get(key) != have.get(key):
                problems.append(f"{sub}/{key}: {have.get(key)} != locked {want.get(key)}")
                if key == DETECTIONS:
                    moved.append(sub)
    if moved:
        problems.insert(
            0,
            f"the detections differ from the lock's ({DETECTIONS} of {', '.join(moved)}): faces found at other "
            "points move their crops, and so the files below; check the rest of the build against the lock "
            "with the detections it was made from: --landmarks THEIR_landmarks.jsonl --no-cache",
        )
    return problems
