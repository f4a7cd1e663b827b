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

from occsynth.errors import UsageError
from occsynth.io.images import ImageLoadError


class SourceError(ValueError):
    """A source that cannot be opened or listed as a whole (bad path, corrupt archive, loop)."""


class SourceNotFoundError(SourceError, UsageError):
    """The source path the user gave does not exist (bad usage)."""


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

    def __init__(self, root: str, description: str, items: Iterable[SourceItem], ignored: Iterable[str] = ()):
        self.root = root
        self.description = description
        self.ignored = tuple(sorted(ignored))  # entries listed but not items (see the package doc)
        self._items = tuple(sorted(items, key=lambda item: item.sample_id))
        if not self._items:
            raise SourceError(
                f"{root}: no files found"
                + (f" (only {len(self.ignored)} ignored top-level files)" if self.ignored else "")
            )
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
            **({"ignored": list(self.ignored)} if self.ignored else {}),
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


def printable_name(path: str) -> str:
    """A file name as text that JSON and UTF-8 can hold: bytes that are not UTF-8 (which Python
    carries as surrogate escapes, e.g. a latin-1 "caf\xe9.jpg") are written as \\xNN."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _printable_names(paths: list[str]) -> dict[str, str]:
    """path -> printable_name(path), made unique: an escaped name that collides with a real one
    (a file literally named "caf\\xe9.jpg") gets a "~N" suffix (N = 1, 2, ...)."""
    names = {p: p for p in paths if printable_name(p) == p}
    taken = set(names.values())
    for p in sorted(set(paths) - set(names)):
        name, n = printable_name(p), 0
        while name in taken:
            n += 1
            name = f"{printable_name(p)}~{n}"
        names[p] = name
        taken.add(name)
    return names


def _layout(paths: list[str]) -> tuple[dict[str, tuple[str, str]], str, list[str]]:
    """Map each file path (posix, relative, printable) to (sample_id, identity); also return the
    stripped wrapper folder name ("" when none) and the top-level files ignored beside identity
    folders."""
    split = {p: p.split("/") for p in paths}
    ignored: list[str] = []

    def drop_top_level_files() -> None:
        if any(len(parts) >= 2 for parts in split.values()):
            for p in [p for p, parts in split.items() if len(parts) == 1]:
                ignored.append(p)
                del split[p]

    drop_top_level_files()  # files beside identity folders (pairs.txt, labels) are not images of anyone
    wrapper = ""
    heads = {parts[0] for parts in split.values()}
    if len(heads) == 1 and any(len(parts) >= 3 for parts in split.values()):
        wrapper = heads.pop()
        split = {p: parts[1:] for p, parts in split.items()}
        drop_top_level_files()  # and files beside them inside the wrapper folder
    mapping = {}
    for path, parts in split.items():
        identity = parts[0] if len(parts) >= 2 else PurePosixPath(parts[0]).stem
        mapping[path] = ("/".join(parts), identity)
    return mapping, wrapper, sorted(ignored)


def _make_items(entries: Iterable[tuple[str, int, int, str]]) -> tuple[list[SourceItem], str, list[str]]:
    """entries: (member path, size, offset, problem) -> (items, wrapper, ignored printable paths).
    ``member`` keeps the path as found (to read it); ids and identities are printable names."""
    entries = list(entries)
    names = _printable_names([e[0] for e in entries])
    mapping, wrapper, ignored = _layout(list(names.values()))
    items = []
    for member, size, offset, problem in entries:
        if names[member] not in mapping:
            continue  # ignored (listed in `ignored`)
        sample_id, identity = mapping[names[member]]
        items.append(SourceItem(sample_id, identity, member, size, offset, problem))
    return items, wrapper, ignored


def _summary(items: list[SourceItem], wrapper: str, ignored: list[str] = ()) -> str:
    identities = len({item.identity for item in items})
    text = f"{len(items):,} files, {identities:,} identities"
    text += f", wrapper folder '{wrapper}/' stripped" if wrapper else ""
    return text + (f", {len(ignored):,} top-level file(s) beside the identity folders ignored" if ignored else "")
