"""The one reader of an occsynth dataset folder: manifest, index, failures, shards, stats.

verify, preview, export, the card, the builders' finish steps and occsynth_train all read a
dataset through `Dataset`, so a missing or malformed file gives the same one-line DatasetError
everywhere instead of a KeyError or JSONDecodeError somewhere deep.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from occsynth import contract
from occsynth.io.tar import ShardReader, iter_shard

__all__ = ["Dataset", "DatasetError", "ShardEntry", "iter_jsonl", "json_line", "read_jsonl", "remember_index"]

_MANIFEST_KEYS = ("shards", "totals", "template", "image_size")


# index.jsonl files parsed in this process: resolved path -> (file identity, the parsed lines).
# The builder that writes an index registers the values it wrote (remember_index), so the steps
# that follow in the same process (protocol files, the card, locks) do not parse 12,000 lines
# again; any change of the file (size, mtime, inode) makes it read afresh. The lists are shared:
# readers must not modify them.
_INDEX_MEMO: OrderedDict[str, tuple[tuple, list[dict]]] = OrderedDict()
_INDEX_MEMO_SIZE = 2


def _file_identity(path: Path) -> tuple:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def remember_index(path: str | os.PathLike, metas: list[dict]) -> None:
    """Register the values of an index.jsonl just written (the same values json.loads gives)."""
    path = Path(path).resolve()
    _INDEX_MEMO[str(path)] = (_file_identity(path), metas)
    _INDEX_MEMO.move_to_end(str(path))
    while len(_INDEX_MEMO) > _INDEX_MEMO_SIZE:
        _INDEX_MEMO.popitem(last=False)


def _read_index(path: Path) -> list[dict]:
    key, identity = str(path.resolve()), _file_identity(path)
    held = _INDEX_MEMO.get(key)
    if held is not None and held[0] == identity:
        return held[1]
    metas = read_jsonl(path, "index")
    remember_index(path, metas)
    return metas


class DatasetError(ValueError):
    """A dataset folder that cannot be read as one (named in the message, one line)."""


@dataclass(frozen=True)
class ShardEntry:
    name: str
    path: Path
    sha256: str
    num_samples: int
    num_failures: int


def iter_jsonl(path: str | os.PathLike, what: str = "") -> Iterator[tuple[int, dict]]:
    """(line number, object) of every non-blank JSON line; a bad line is a DatasetError naming
    the file and the line."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                yield line_no, json_line(path, line_no, line, what)


def json_line(path: str | os.PathLike, line_no: int, line: str | bytes, what: str = "") -> dict:
    """One line of a JSON-lines file as an object; a DatasetError naming the file and the line
    when it is not one (bytes that are not UTF-8 included)."""
    try:
        record = json.loads(line.decode("utf-8") if isinstance(line, bytes) else line)
    except ValueError as exc:  # UnicodeDecodeError included
        raise DatasetError(f"{path}:{line_no}: not a JSON line{f' ({what})' if what else ''}: {exc}") from None
    if not isinstance(record, dict):
        raise DatasetError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
    return record


def read_jsonl(path: str | os.PathLike, what: str = "") -> list[dict]:
    """Every JSON line of a file (see iter_jsonl)."""
    return [record for _, record in iter_jsonl(path, what)]


class Dataset:
    """A finished (or interrupted) occsynth dataset at `root`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: no such dataset folder")
        path = self.root / contract.MANIFEST
        if not path.is_file():
            raise DatasetError(f"{path} is missing: {self.root} is not a finished occsynth dataset")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(manifest, dict):
            raise DatasetError(f"{path}: expected a JSON object")
        missing = [k for k in _MANIFEST_KEYS if k not in manifest]
        if missing:
            raise DatasetError(f"{path}: incomplete manifest, missing {', '.join(missing)}")
        self.manifest: dict = manifest
        self._index: list[dict] | None = None
        self._readers: dict[str, ShardReader] = {}

    # ---------------------------------------------------------------- manifest
    @property
    def shards(self) -> list[ShardEntry]:
        out = []
        for i, entry in enumerate(self.manifest["shards"]):
            try:
                name = entry["name"]
                out.append(
                    ShardEntry(
                        name,
                        self.root / name,
                        entry.get("sha256", ""),
                        int(entry["num_samples"]),
                        int(entry.get("num_failures", 0)),
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise DatasetError(f"{self.root / contract.MANIFEST}: shards[{i}] is malformed ({exc})") from None
        return sorted(out, key=lambda s: s.name)

    @property
    def image_size(self) -> tuple[int, int]:
        w, h = self.manifest["image_size"]
        return int(w), int(h)

    @property
    def template(self) -> str:
        return str(self.manifest["template"])

    @property
    def num_samples(self) -> int:
        return int(self.manifest["totals"]["samples"])

    # ---------------------------------------------------------------- index, failures, stats
    def has_index(self) -> bool:
        return (self.root / contract.INDEX).is_file()

    def index(self) -> list[dict]:
        """Per-sample metadata in key order: index.jsonl, or the shards' json members without it.
        The list is shared (by this Dataset, and by every reader of the same unchanged file in
        this process): do not modify it."""
        if self._index is None:
            if self.has_index():
                self._index = _read_index(self.root / contract.INDEX)
            else:
                metas = [json.loads(members[contract.EXT_META]) for _, members in self.iter_samples()]
                self._index = sorted(metas, key=lambda m: m["key"])
        return self._index

    def failures(self) -> list[dict]:
        path = self.root / contract.FAILURES
        return read_jsonl(path, "failures") if path.is_file() else []

    def shard_stats(self, shard: ShardEntry) -> dict:
        path = self.root / (shard.name.split(".")[0] + ".stats.json")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DatasetError(f"{path} is missing") from None
        except ValueError as exc:
            raise DatasetError(f"{path}: not valid JSON ({exc})") from None

    # ---------------------------------------------------------------- samples
    def iter_samples(self) -> Iterator[tuple[str, dict[str, bytes]]]:
        """(key, {ext: bytes}) of every sample, shard by shard in manifest order."""
        for shard in self.shards:
            if not shard.path.is_file():
                raise DatasetError(f"{shard.path} is missing (listed in {contract.MANIFEST})")
            yield from iter_shard(shard.path)

    def reader(self, shard: ShardEntry | str) -> ShardReader:
        """Random access into one shard (cached per dataset)."""
        name = shard if isinstance(shard, str) else shard.name
        if name not in self._readers:
            self._readers[name] = ShardReader(self.root / name)
        return self._readers[name]

    def __repr__(self) -> str:
        return f"<Dataset {self.root} shards={len(self.manifest['shards'])} samples={self.num_samples}>"
