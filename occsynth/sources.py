"""Where input images come from: a folder, a tar archive (plain or compressed) or the embedded
demo images.

Layout is ``<identity>/<image>`` below the source root:

* ``sample_id`` is the file's posix path relative to the root ("Aaron_Eckhart/Aaron_Eckhart_0001.jpg")
  and ``identity`` its first component.
* A single wrapper folder holding the identity folders is stripped (LFW's archive is
  ``lfw-deepfunneled/<Name>/<Name>_0001.jpg``). Exactly one level is stripped, and only when the
  root holds nothing but that folder and the folder holds at least one sub-folder, so a source
  with a single identity folder keeps it.
* Files directly at the root have no identity folder; rather than an empty identity, each such
  file is its own identity named after the file stem ("photo.jpg" -> "photo").
* Deeper files (``<identity>/<sub>/<image>``) belong to the first component.

Every entry that is not a folder becomes an item, whatever its name: a ``notes.txt`` or
``.DS_Store`` is an item that fails to decode and gets a failure record; a broken symbolic link
or a FIFO is an item whose read fails with that reason. Nothing is skipped silently.

Items are sorted by ``sample_id`` (never file-system order). Items and sources are plain
picklable objects: worker processes receive them and read by themselves.

Archives are never extracted. A plain tar is indexed (member -> data offset, size) and read by
seek. A compressed tar (gzip/bzip2/xz, recognised by content, not by name) is decompressed once
into the cache as a plain tar, keyed by the archive's (absolute path, size, mtime_ns), written to
a temporary file and moved into place with ``os.replace`` so an interrupted run never leaves a
partial cache. Indexes are cached beside it as JSON.
"""
from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import json
import lzma
import os
import posixpath
import re
import secrets
import stat
import tarfile
import time
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

from . import cache as _cache
from .image_io import ImageLoadError
from .io.archive import UnsafeArchiveError, member_path

__all__ = [
    "FolderSource",
    "Source",
    "SourceError",
    "SourceItem",
    "TarSource",
    "open_source",
]

_INDEX_FORMAT = 1
_STALE_TEMP_SECONDS = 3600  # a temp file untouched this long belongs to a killed run
_CHUNK = 1 << 20
_MAX_LINK_HOPS = 40  # as the Linux kernel's limit for symlink chains


class SourceError(Exception):
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


def open_source(spec: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Source:
    """Open a folder, a tar archive (plain, .tgz/.tar.gz, .tar.bz2, .tar.xz) or, for the exact
    string "embedded", the embedded demo images (a folder named so is reached as "./embedded").

    ``cache_dir`` is where compressed archives are decompressed and indexes are kept (default:
    see :func:`occsynth.cache.cache_dir`).
    """
    if isinstance(spec, str) and spec == "embedded":
        from .embedded import EmbeddedSource  # late: embedded imports this module

        return EmbeddedSource()
    path = Path(spec).expanduser()
    try:
        st = path.stat()
    except OSError as exc:
        raise SourceError(f"{spec}: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(st.st_mode):
        return FolderSource(path)
    if stat.S_ISREG(st.st_mode):
        if path.suffix == ".rec":  # insightface train.rec (+ train.idx beside it)
            from .recordio import RecordIOSource

            return RecordIOSource(path)
        return TarSource(path, cache_dir=cache_dir)
    raise SourceError(f"{spec}: neither a folder nor a regular file")


# --------------------------------------------------------------------------------------------
# layout: member paths -> (sample_id, identity)


def _layout(paths: list[str]) -> tuple[dict[str, tuple[str, str]], str]:
    """Map each file path (posix, relative) to (sample_id, identity); also return the stripped
    wrapper folder name ("" when none)."""
    split = [p.split("/") for p in paths]
    wrapper = ""
    if split and len({parts[0] for parts in split}) == 1 \
            and all(len(parts) >= 2 for parts in split) and any(len(parts) >= 3 for parts in split):
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


# --------------------------------------------------------------------------------------------
# folders


class FolderSource(Source):
    kind = "folder"

    def __init__(self, root: str | os.PathLike):
        self._root = Path(root).expanduser().absolute()
        items, wrapper = _make_items(_walk(self._root))
        super().__init__(str(self._root), f"folder {self._root} ({_summary(items, wrapper)})", items)

    def _read(self, item: SourceItem) -> bytes:
        try:
            return (self._root / item.member).read_bytes()
        except OSError as exc:
            raise ImageLoadError("read", f"cannot read {item.member}: {exc.strerror or exc}") from exc


def _walk(root: Path) -> list[tuple[str, int, int, str]]:
    """All non-folder entries below root as (relative posix path, size, -1, problem), following
    symbolic links; a link back to an enclosing folder is a loop and an error."""
    found: list[tuple[str, int, int, str]] = []

    def visit(folder: str, rel: str, ancestors: frozenset) -> None:
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            # Skipping an unreadable folder would silently lose its images.
            raise SourceError(f"cannot list {folder}: {exc.strerror or exc}") from exc
        for entry in entries:
            relpath = f"{rel}/{entry.name}" if rel else entry.name
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise SourceError(f"symbolic link loop at {entry.path}") from exc
                if entry.is_symlink():
                    found.append((relpath, -1, -1, f"broken symbolic link -> {os.readlink(entry.path)}"))
                    continue
                raise SourceError(f"cannot stat {entry.path}: {exc.strerror or exc}") from exc
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    raise SourceError(
                        f"symbolic link loop: {entry.path} -> {os.path.realpath(entry.path)}, "
                        "which encloses it")
                visit(entry.path, relpath, ancestors | {key})
            elif stat.S_ISREG(st.st_mode):
                found.append((relpath, st.st_size, -1, ""))
            else:
                found.append((relpath, -1, -1, f"not a regular file ({_file_kind(st.st_mode)})"))

    try:
        top = root.stat()
    except OSError as exc:
        raise SourceError(f"{root}: {exc.strerror or exc}") from exc
    visit(str(root), "", frozenset({(top.st_dev, top.st_ino)}))
    return found


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


# --------------------------------------------------------------------------------------------
# tar archives


class TarSource(Source):
    kind = "tar"

    def __init__(self, archive: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
        self.archive = Path(archive).expanduser().absolute()
        self.cache_dir = _cache.cache_dir(cache_dir)
        try:
            st = self.archive.stat()
            with open(self.archive, "rb") as fh:
                magic = fh.read(6)
        except OSError as exc:
            raise SourceError(f"{self.archive}: {exc.strerror or exc}") from exc
        if magic.startswith(b"PK\x03\x04"):
            raise SourceError(f"{self.archive}: zip archives are not supported; unpack it into a "
                              "folder or repack it as a tar")
        key = _cache_key(self.archive, st)
        index_path = self.cache_dir / f"{key}.index.json"
        compression = _compression(magic)
        if compression is None:
            self.tar_path = self.archive
            entries = _read_index(self.tar_path, index_path)
            if entries is None:
                entries = _index_tar(self.tar_path, self.archive)
                try:
                    _write_index(index_path, self.tar_path, self.archive, entries)
                except OSError:
                    pass  # a plain tar can simply be indexed again next time
            how = "read in place"
        else:
            self.tar_path = self.cache_dir / f"{key}.tar"
            entries = _read_index(self.tar_path, index_path)
            if entries is None:
                if self.tar_path.is_file():
                    # The copy is indexed before it is renamed into place, so it is sound; only
                    # its index is missing (a run killed in between) or damaged.
                    try:
                        entries = _index_tar(self.tar_path, self.archive)
                    except SourceError:
                        entries = None  # damaged after the fact: decompress again
                if entries is None:
                    entries = _decompress(self.archive, compression, self.tar_path)
                try:
                    _write_index(index_path, self.tar_path, self.archive, entries)
                except OSError as exc:
                    raise SourceError(_cache_hint(self.cache_dir, exc)) from exc
            how = f"{compression}, decompressed once to {self.tar_path}"
        items, wrapper = _make_items(entries)
        super().__init__(str(self.archive),
                         f"tar archive {self.archive} ({how}; {_summary(items, wrapper)})", items)

    def _read(self, item: SourceItem) -> bytes:
        # A fresh handle per read: safe in forked workers and threads (no shared file offset),
        # and an open() costs microseconds next to decoding the image.
        try:
            with open(self.tar_path, "rb") as fh:
                fh.seek(item.offset)
                data = fh.read(item.size)
        except OSError as exc:
            raise ImageLoadError(
                "read", f"cannot read {item.member} from {self.tar_path}: {exc.strerror or exc}") from exc
        if len(data) != item.size:
            raise ImageLoadError(
                "read", f"{self.tar_path} ended early: {item.member} needs {item.size} bytes at "
                f"offset {item.offset}, got {len(data)}")
        return data


def _compression(magic: bytes) -> str | None:
    if magic.startswith(b"\x1f\x8b"):
        return "gzip"
    if magic.startswith(b"BZh"):
        return "bzip2"
    if magic.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    return None


_OPENERS = {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}


def _cache_key(archive: Path, st: os.stat_result) -> str:
    ident = f"{archive}\0{st.st_size}\0{st.st_mtime_ns}".encode("utf-8", "surrogateescape")
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", archive.name.split(".")[0])[:40] or "archive"
    return f"{stem}-{hashlib.sha256(ident).hexdigest()[:32]}"


def _temp_name(final: Path) -> Path:
    return final.with_name(f"{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _decompress(archive: Path, compression: str, final: Path) -> list[list]:
    """Decompress into ``final`` (a plain tar) and return its index.

    The copy is written under a temporary name, indexed (so it is known to be a sound tar) and
    only then renamed: ``final`` exists only when complete, whoever was killed when.
    """
    cache = final.parent
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SourceError(_cache_hint(cache, exc)) from exc
    _remove_stale_temps(cache, final.name.rsplit(".", 1)[0])
    tmp = _temp_name(final)
    try:
        with _OPENERS[compression](archive, "rb") as src, open(tmp, "wb") as dst:
            while True:
                try:
                    chunk = src.read(_CHUNK)
                except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
                    raise SourceError(f"{archive}: corrupt {compression} archive ({exc})") from exc
                if not chunk:
                    break
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())  # so a power loss cannot leave a renamed but empty file
        entries = _index_tar(tmp, archive)
        os.replace(tmp, final)
    except OSError as exc:
        raise SourceError(_cache_hint(cache, exc)) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return entries


def _cache_hint(cache: Path, exc: OSError) -> str:
    return (f"cannot write the cache folder {cache}: {exc.strerror or exc} "
            f"(choose another with ${_cache.ENV_VAR} or cache_dir=)")


def _remove_stale_temps(cache: Path, key: str) -> None:
    now = time.time()
    for tmp in cache.glob(f"{key}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TEMP_SECONDS:
                tmp.unlink()
        except OSError:
            pass  # another process may be removing or still writing it


def _read_index(tar_path: Path, index_path: Path) -> list | None:
    """The cached index when it exists and matches the tar's size, else None."""
    try:
        tar_size = tar_path.stat().st_size
        cached = json.loads(index_path.read_text(encoding="utf-8"))
        if cached.get("format") == _INDEX_FORMAT and cached.get("tar_size") == tar_size:
            return [tuple(entry) for entry in cached["entries"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # absent or unusable: the caller rebuilds it
    return None


def _write_index(index_path: Path, tar_path: Path, archive: Path, entries: list) -> None:
    payload = json.dumps({"format": _INDEX_FORMAT, "archive": str(archive),
                          "tar_size": tar_path.stat().st_size, "entries": entries})
    tmp = _temp_name(index_path)
    try:
        index_path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(payload, encoding="utf-8")
        os.replace(tmp, index_path)
    finally:
        tmp.unlink(missing_ok=True)


def _index_tar(tar_path: Path, archive: Path) -> list[list]:
    """[member path, size, data offset, problem] for every non-folder member, links resolved."""
    file_size = tar_path.stat().st_size
    try:
        with tarfile.open(tar_path, "r:") as tf:
            members = tf.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SourceError(f"{archive}: not a readable tar archive ({exc})") from exc

    files: dict[str, tuple[int, int]] = {}
    links: dict[str, str] = {}
    others: dict[str, str] = {}
    folders: set[str] = set()
    for m in members:
        path = _member_path(m.name, archive)
        if not path:
            continue  # the archive root itself ("./")
        if m.isdir():
            folders.add(path)
            continue
        if path in files or path in links or path in others:
            # tar lets a later member replace an earlier one; which one is meant is a guess
            raise SourceError(f"{archive}: member {m.name!r} appears more than once")
        if m.isreg() and m.issparse():
            others[path] = "sparse tar member (not supported)"
        elif m.isreg():
            if m.offset_data + m.size > file_size:
                raise SourceError(f"{archive}: truncated, member {m.name!r} extends past the end")
            files[path] = (m.size, m.offset_data)
        elif m.islnk():
            links[path] = posixpath.normpath(m.linkname.lstrip("/"))
        elif m.issym():
            links[path] = "" if m.linkname.startswith("/") else \
                posixpath.normpath(posixpath.join(posixpath.dirname(path), m.linkname))
        else:
            others[path] = f"not a regular file (tar member type {m.type!r})"

    entries = [[path, size, offset, ""] for path, (size, offset) in files.items()]
    entries += [[path, -1, -1, problem] for path, problem in others.items()]
    for path in links:
        size, offset, problem = _resolve_link(path, files, links, folders, archive)
        entries.append([path, size, offset, problem])
    entries.sort(key=lambda e: e[0])
    return entries


def _member_path(name: str, archive: Path) -> str:
    # the project's one member-name check (occsynth.io.archive); members are read in place, so
    # links are resolved inside the archive below instead of being refused
    try:
        path = member_path(name, archive)
    except UnsafeArchiveError as exc:
        raise SourceError(str(exc)) from None
    return "" if str(path) == "." else str(path)


def _resolve_link(path, files, links, folders, archive) -> tuple[int, int, str]:
    seen = [path]
    target = links[path]
    for _ in range(_MAX_LINK_HOPS):
        if not target or target.startswith("../") or target == "..":
            return -1, -1, f"link {path} points outside the archive"
        if target in files:
            size, offset = files[target]
            return size, offset, ""
        if target in folders:
            return -1, -1, f"link {path} points to a folder ({target}); not supported in archives"
        if target not in links:
            return -1, -1, f"broken link {path} -> {target} (not in the archive)"
        if target in seen:
            raise SourceError(f"{archive}: symbolic link loop: {' -> '.join(seen + [target])}")
        seen.append(target)
        target = links[target]
    raise SourceError(f"{archive}: link chain too long from {path}")


class CombinedSource(Source):
    """Several sources under name prefixes ("probes/...", "distractors/..."), read as one:
    builders whose protocol spans two folders (MF1_occ) still run a single pipeline."""

    kind = "combined"

    def __init__(self, parts: dict[str, Source]):
        self.parts = dict(sorted(parts.items()))
        items = [
            SourceItem(f"{prefix}/{item.sample_id}", item.identity, item.member, item.size, item.offset, item.problem)
            for prefix, source in self.parts.items() for item in source.items()
        ]
        description = "; ".join(f"{prefix}: {source.description}" for prefix, source in self.parts.items())
        super().__init__("+".join(source.root for source in self.parts.values()), description, items)

    def _read(self, item: SourceItem) -> bytes:
        prefix, _, rest = item.sample_id.partition("/")
        source = self.parts[prefix]
        return source.read(source._by_id[rest])
