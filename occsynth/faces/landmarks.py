"""Stored detections: landmarks.jsonl files and the machine-wide store, keyed by the sha256 of
each source file's bytes.

A dataset is detected once: every build adds its new detections here, and later builds of the
same images (from a folder, an archive, a renamed copy) reuse them instead of running MTCNN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from occsynth import contract
from occsynth.io.atomic import write_text
from occsynth.io.cache import cache_dir
from occsynth.io.dataset import iter_jsonl


def load_landmarks(paths: Iterable[str | Path]) -> dict[str, dict]:
    """sha256 of the source file -> detection record, from landmarks.jsonl files.

    Keyed by content, so detections made on a folder are reused for the same images in an
    archive, and a renamed file keeps its landmarks."""
    store: dict[str, dict] = {}
    for path in paths:
        path = Path(path)
        if path.is_dir():
            path = path / "landmarks.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"landmarks file not found: {path}")
        for line_no, record in iter_jsonl(path, "landmarks"):
            if "sha256" not in record:
                raise ValueError(f"{path}:{line_no}: not a landmarks record (no sha256)")
            store[record["sha256"]] = record
    return store


class LandmarkCache:
    def __init__(self, directory: str | Path | None = None):
        self.path = Path(cache_dir(directory)) / "landmarks.jsonl"

    def update_from(self, landmarks_jsonl: str | Path) -> int:
        """Merge the records of a build's landmarks.jsonl; returns how many were new."""
        landmarks_jsonl = Path(landmarks_jsonl)
        if not landmarks_jsonl.exists():
            return 0
        known = load_landmarks([self.path]) if self.path.exists() else {}
        fresh = {k: v for k, v in load_landmarks([landmarks_jsonl]).items() if known.get(k) != v}
        if not fresh:
            return 0
        known.update(fresh)
        # concurrent builds: last writer wins, never a torn file
        write_text(self.path, contract.dumps_lines(known[k] for k in sorted(known)))
        return len(fresh)

    def __len__(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path) as f:
            return sum(1 for line in f if line.strip())
