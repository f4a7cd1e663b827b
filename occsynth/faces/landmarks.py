"""Stored detections: landmarks.jsonl files (or .jsonl.gz: the detections shipped with the
benchmark locks) and the machine-wide store, keyed by the sha256 of each source file's bytes.

A dataset is detected once: every build adds its new detections here, and later builds of the
same images (from a folder, an archive, a renamed copy) reuse them instead of running MTCNN.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Iterable, Iterator

from occsynth import contract
from occsynth.io.atomic import write_text
from occsynth.io.cache import cache_dir
from occsynth.io.dataset import DatasetError, json_line


def _landmarks_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / contract.LANDMARKS
    if not path.exists():
        raise FileNotFoundError(f"landmarks file not found: {path}")
    return path


def _checked(path: Path, line_no: int, record: dict) -> dict:
    if not isinstance(record.get("sha256"), str):
        raise DatasetError(f"{path}:{line_no}: not a landmarks record (no sha256)")
    return record


def _lines(path: Path) -> list[bytes]:
    """A landmarks file's lines (gunzipped for .gz); bytes.splitlines breaks where text-mode
    reading does (LF, CRLF, CR), so the line numbers are the file's."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:  # BadGzipFile is an OSError
            raise DatasetError(f"{path}: not a gzip file of landmarks: {exc}") from None
    return data.splitlines()


def load_landmarks(paths: Iterable[str | Path]) -> dict[str, dict]:
    """sha256 of the source file -> detection record, from landmarks.jsonl(.gz) files, every
    record parsed and checked now (StoredLandmarks parses a record when it is asked for).

    Keyed by content, so detections made on a folder are reused for the same images in an
    archive, and a renamed file keeps its landmarks. A later record of the same sha256 wins."""
    return {record["sha256"]: record for path in map(_landmarks_file, paths) for record in _records(path)}


def _records(path: Path) -> Iterator[dict]:
    """Every record of one landmarks file, parsed and checked, in file order."""
    for line_no, line in enumerate(_lines(path), 1):
        if line.strip():
            yield _parse(path, line_no, line)


# A line's sha256 as the store writes it (lower-case hex). A line where this finds it once and
# that holds no JSON escape is indexed by it unparsed: the key's text is then the key itself.
_SHA256 = re.compile(rb'"sha256"\s*:\s*"([0-9a-f]{64})"')


class StoredLandmarks:
    """What load_landmarks returns (`get` only), each record parsed when first asked for.

    A build's workers need the records of their own shards' images only, but each parsed every
    record of the machine-wide store before its first shard: ~0.25 s for all of LFW's 13,233
    (json.loads of ~470 bytes each), on the critical path of every multi-worker build, and it
    would be ~10 s per worker for a store of CASIA-WebFace's 500k images. Indexing finds each
    line's sha256 with a regular expression instead (~15x faster); a line where it is not found
    exactly once, or that holds a backslash, is parsed now, as load_landmarks would.

    So a damaged line that was indexed is reported when its record is asked for (the same
    DatasetError naming the file and line, from the shard task that needs it), and not at all
    when no image of the build has its sha256: its record could not have been used.

    Every record of an image is kept, in file order: `get(sha256, detector=settings)` is the
    last one made with those detector settings (a named file's record made with other
    settings does not hide the machine cache's with the right ones)."""

    def __init__(self, paths: Iterable[str | Path]):
        # sha256 -> its records in file order: parsed at load (dict) or indexed lines
        self._entries: dict[str, list[dict | tuple[Path, int, bytes]]] = {}
        self._found: dict[tuple[str, str | None], dict | None] = {}
        for path in map(_landmarks_file, paths):
            for line_no, line in enumerate(_lines(path), 1):
                if not line.strip():
                    continue
                keys = _SHA256.findall(line)
                if len(keys) == 1 and b"\\" not in line:
                    self._entries.setdefault(keys[0].decode("ascii"), []).append((path, line_no, line))
                else:
                    record = _parse(path, line_no, line)
                    self._entries.setdefault(record["sha256"], []).append(record)

    def get(self, sha256: str, default: dict | None = None, detector: dict | None = None) -> dict | None:
        """The last record of `sha256` in the files (the same as load_landmarks(...).get), or
        with `detector` the last one whose "detector" settings are these."""
        key = (sha256, None if detector is None else contract.dumps(detector))
        if key not in self._found:
            found = None
            for entry in reversed(self._entries.get(sha256, ())):
                record = entry if isinstance(entry, dict) else _parse(*entry)
                # an indexed line whose one match was a nested key is not this image's record
                if record["sha256"] == sha256 and (detector is None or record.get("detector") == detector):
                    found = record
                    break
            self._found[key] = found
        found = self._found[key]
        return default if found is None else found

    def __contains__(self, sha256: str) -> bool:
        return self.get(sha256) is not None


def _parse(path: Path, line_no: int, line: bytes) -> dict:
    """One line as load_landmarks reads it (the same errors)."""
    return _checked(path, line_no, json_line(path, line_no, line, "landmarks"))


class LandmarkCache:
    """The machine-wide store: one record per image and detector settings (a build with other
    settings adds its records beside those of the earlier ones instead of replacing them)."""

    def __init__(self, directory: str | Path | None = None):
        self.path = Path(cache_dir(directory)) / contract.LANDMARKS

    def update_from(self, landmarks_jsonl: str | Path) -> int:
        """Merge the records of a build's landmarks.jsonl; returns how many were new."""
        landmarks_jsonl = Path(landmarks_jsonl)
        if not landmarks_jsonl.exists():
            return 0
        known = _by_settings(self.path) if self.path.exists() else {}
        fresh = {k: v for k, v in _by_settings(landmarks_jsonl).items() if known.get(k) != v}
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


def _by_settings(path: Path) -> dict[tuple[str, str], dict]:
    """(sha256, detector settings as JSON) -> the last such record of a landmarks file."""
    return {(record["sha256"], contract.dumps(record.get("detector"))): record for record in _records(path)}
