"""A machine-wide store of detections, keyed by the sha256 of each source file's bytes.

A dataset is detected once: every build adds its new detections here, and later builds of the
same images (from a folder, an archive, a renamed copy) reuse them instead of running MTCNN.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import contract


class LandmarkCache:
    def __init__(self, directory: str | Path | None = None):
        from .cache import cache_dir

        self.path = Path(cache_dir(directory)) / "landmarks.jsonl"

    def update_from(self, landmarks_jsonl: str | Path) -> int:
        """Merge the records of a build's landmarks.jsonl; returns how many were new."""
        landmarks_jsonl = Path(landmarks_jsonl)
        if not landmarks_jsonl.exists():
            return 0
        from .pipeline import load_landmarks

        known = load_landmarks([self.path]) if self.path.exists() else {}
        fresh = {k: v for k, v in load_landmarks([landmarks_jsonl]).items() if known.get(k) != v}
        if not fresh:
            return 0
        known.update(fresh)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(contract.dumps_lines(known[k] for k in sorted(known)))
        os.replace(tmp, self.path)  # concurrent builds: last writer wins, never a torn file
        return len(fresh)

    def __len__(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path) as f:
            return sum(1 for line in f if line.strip())
