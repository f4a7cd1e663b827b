"""The source interface: a sorted, fixed list of items and a way to read each one's bytes,
plus the layout rule shared by folders and archives (see the package docstring)."""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

from occsynth.io.images import ImageLoadError


class SourceError(ValueError):
    """A source that cannot be opened or listed as a whole (bad path, corrupt archive, loop)."""


@dataclass(frozen=True)
class SourceItem:
    """One input entry of a source.

    ``member`` locates the bytes: the path relative to a folder source's root, the member name
    in a tar, the absolute file path for embedded images. ``size`` is in bytes (-1 when the entry
    has no readable data). ``offset`` is where a tar member's data starts (-1 otherwise).
    ``problem`` is set when listing already showed that the entry cannot be read; reading such an
    item raises ImageLoadError("read", problem).
    """

    sample_id: str
    identity: str
    member: str
    size: int
    offset: int = -1
    problem: str = ""


class Source(ABC):
    """A sorted, fixed list of items and a way to read each one's bytes."""

    kind: str = ""
    priority: int = 100  # open_source asks the kinds in this order

    @classmethod
    def claims(cls, spec: str | os.PathLike, path: Path, st: os.stat_result | None) -> bool:
        """Whether open_source(spec) should open this kind (st: the path's stat, None if absent)."""
        return False

    @classmethod
    def open(cls, spec: str | os.PathLike, path: Path, cache_dir: str | os.PathLike | None) -> Source:
        return cls(path)  # type: ignore[call-arg]

    def __init__(self, root: str, description: str, items: Iterable[SourceItem]):
        self.root = root
        self.description = description
        self._items = tuple(sorted(items, key=lambda item: item.sample_id))
        if not self._items:
            raise SourceError(f"{root}: no files found")
        self._by_id = {item.sample_id: item for item in self._items}
        if len(self._by_id) != len(self._items):
            raise SourceError(f"{root}: duplicate sample ids")  # layout rules should prevent it
        self._fingerprint: str | None = None

    def items(self) -> list[SourceItem]:
        """All items, sorted by sample_id (a new list; the source itself is immutable)."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def identities(self) -> list[str]:
        return sorted({item.identity for item in self._items})

    def fingerprint(self) -> str:
        """sha256 over the sorted (sample_id, size) pairs: cheap (no file content is read) and
        stable across machines, so a manifest can tell whether a source changed."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for item in self._items:
                digest.update(json.dumps([item.sample_id, item.size]).encode("ascii") + b"\n")
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def manifest_entry(self) -> dict:
        """What a dataset manifest records about its input."""
        return {
            "kind": self.kind,
            "root": self.root,
            "description": self.description,
            "fingerprint": self.fingerprint(),
            "items": len(self._items),
            "identities": len(self.identities()),
        }

    def read(self, item: SourceItem) -> bytes:
        """The item's bytes; ImageLoadError("read", reason) when they cannot be had."""
        if self._by_id.get(item.sample_id) != item:
            raise ValueError(f"item {item.sample_id!r} does not belong to source {self.root}")
        if item.problem:
            raise ImageLoadError("read", item.problem)
        data = self._read(item)
        if not data:
            raise ImageLoadError("read", "empty file (0 bytes)")
        return data

    @abstractmethod
    def _read(self, item: SourceItem) -> bytes: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.root} items={len(self._items)}>"


def _layout(paths: list[str]) -> tuple[dict[str, tuple[str, str]], str]:
    """Map each file path (posix, relative) to (sample_id, identity); also return the stripped
    wrapper folder name ("" when none)."""
    split = [p.split("/") for p in paths]
    wrapper = ""
    if (
        split
        and len({parts[0] for parts in split}) == 1
        and all(len(parts) >= 2 for parts in split)
        and any(len(parts) >= 3 for parts in split)
    ):
        wrapper = split[0][0]
        split = [parts[1:] for parts in split]
    mapping = {}
    for path, parts in zip(paths, split):
        identity = parts[0] if len(parts) >= 2 else PurePosixPath(parts[0]).stem
        mapping[path] = ("/".join(parts), identity)
    return mapping, wrapper


def _make_items(entries: Iterable[tuple[str, int, int, str]]) -> tuple[list[SourceItem], str]:
    """entries: (member path, size, offset, problem)."""
    entries = list(entries)
    mapping, wrapper = _layout([e[0] for e in entries])
    items = []
    for member, size, offset, problem in entries:
        sample_id, identity = mapping[member]
        items.append(SourceItem(sample_id, identity, member, size, offset, problem))
    return items, wrapper


def _summary(items: list[SourceItem], wrapper: str) -> str:
    identities = len({item.identity for item in items})
    text = f"{len(items):,} files, {identities:,} identities"
    return text + (f", wrapper folder '{wrapper}/' stripped" if wrapper else "")
