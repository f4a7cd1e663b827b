"""Reproducibility locks: the checksums of a build, committed so a fresh build can be checked
against them (`occsynth build ... --check LOCK`, `--write-lock LOCK`)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from occsynth import __version__

CHECKED_FILES = ("index.jsonl", "failures.jsonl", "pairs.jsonl", "protocol.json")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dataset_checksums(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    sums = {"shards": {s["name"]: s["sha256"] for s in manifest["shards"]},
            "samples": manifest["totals"]["samples"], "failures": manifest["totals"]["failures"]}
    for name in CHECKED_FILES:
        if (out / name).exists():
            sums[name] = _sha(out / name)
    return sums


def make_lock(build: str, options: dict, out: Path, subdirs: list[str]) -> dict:
    return {
        "build": build,
        "options": {k: v for k, v in sorted(options.items()) if k not in ("workers", "executor", "quiet", "out",
                                                                          "check", "write_lock",
                                                                          "max_failure_rate")},
        "tool_version": __version__,
        "note": "checksums depend on the versions of OpenCV, zlib and torch that encode and detect",
        "datasets": {sub or ".": dataset_checksums(out / sub) for sub in subdirs},
    }


def compare_lock(expected: dict, actual: dict) -> list[str]:
    """Differences between a committed lock and a fresh build's ([] = identical)."""
    problems = []
    for sub, want in expected["datasets"].items():
        have = actual["datasets"].get(sub)
        if have is None:
            problems.append(f"{sub}: not built")
            continue
        for key in sorted(set(want) | set(have)):
            if key == "shards":
                for shard in sorted(set(want["shards"]) | set(have["shards"])):
                    if want["shards"].get(shard) != have["shards"].get(shard):
                        problems.append(f"{sub}/{shard}: {have['shards'].get(shard, 'missing')} != locked {want['shards'].get(shard, 'absent')}")
            elif want.get(key) != have.get(key):
                problems.append(f"{sub}/{key}: {have.get(key)} != locked {want.get(key)}")
    return problems
