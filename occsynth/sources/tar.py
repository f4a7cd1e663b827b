"""Tar archives read in place (see the package docstring): plain tars are indexed and read by
seek; compressed ones are decompressed once into the cache."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import posixpath
import re
import stat
import tarfile
import time
import zlib
from pathlib import Path

from occsynth.io import cache as _cache
from occsynth.io.archive import UnsafeArchiveError, member_path
from occsynth.io.atomic import atomic_write, write_text
from occsynth.io.images import ImageLoadError
from occsynth.sources._registry import SOURCES
from occsynth.sources.base import Source, SourceError, SourceItem, _make_items, _summary

_INDEX_FORMAT = 1
_STALE_TEMP_SECONDS = 3600  # a temp file untouched this long belongs to a killed run
_CHUNK = 1 << 20
_MAX_LINK_HOPS = 40  # as the Linux kernel's limit for symlink chains


@SOURCES.register("tar")
class TarSource(Source):
    kind = "tar"
    priority = 30  # any other regular file

    @classmethod
    def claims(cls, spec, path, st) -> bool:
        return st is not None and stat.S_ISREG(st.st_mode)

    @classmethod
    def open(cls, spec, path, cache_dir) -> TarSource:
        return cls(path, cache_dir=cache_dir)

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
            raise SourceError(
                f"{self.archive}: zip archives are not supported; unpack it into a folder or repack it as a tar"
            )
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
        items, wrapper, ignored = _make_items(entries)
        summary = _summary(items, wrapper, ignored)
        super().__init__(str(self.archive), f"tar archive {self.archive} ({how}; {summary})", items, ignored)

    def _read(self, item: SourceItem) -> bytes:
        # A fresh handle per read: safe in forked workers and threads (no shared file offset),
        # and an open() costs microseconds next to decoding the image.
        try:
            with open(self.tar_path, "rb") as fh:
                fh.seek(item.offset)
                data = fh.read(item.size)
        except OSError as exc:
            raise ImageLoadError(
                "read", f"cannot read {item.member} from {self.tar_path}: {exc.strerror or exc}"
            ) from exc
        if len(data) != item.size:
            raise ImageLoadError(
                "read",
                f"{self.tar_path} ended early: {item.member} needs {item.size} bytes at "
                f"offset {item.offset}, got {len(data)}",
            )
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
    try:
        with _OPENERS[compression](archive, "rb") as src, atomic_write(final, "wb") as dst:
            while True:
                try:
                    chunk = src.read(_CHUNK)
                except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
                    raise SourceError(f"{archive}: corrupt {compression} archive ({exc})") from exc
                if not chunk:
                    break
                dst.write(chunk)
            dst.flush()
            entries = _index_tar(Path(dst.name), archive)  # a sound tar before it is published
    except OSError as exc:
        raise SourceError(_cache_hint(cache, exc)) from exc
    return entries


def _cache_hint(cache: Path, exc: OSError) -> str:
    return (
        f"cannot write the cache folder {cache}: {exc.strerror or exc} "
        f"(choose another with ${_cache.ENV_VAR} or cache_dir=)"
    )


def _remove_stale_temps(cache: Path, key: str) -> None:
    now = time.time()
    for tmp in cache.glob(f".{key}.*.tmp"):  # io.atomic's temporary names of the tar and its index
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
    payload = json.dumps(
        {"format": _INDEX_FORMAT, "archive": str(archive), "tar_size": tar_path.stat().st_size, "entries": entries}
    )
    write_text(index_path, payload)


# ustar ("ustar\0" "00") and GNU ("ustar  \0") magics: the headers `_scan_plain` reads itself
_PLAIN_MAGICS = (b"ustar\x0000", b"ustar  \x00")
_NUMERIC_FIELDS = ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148), (329, 337), (337, 345))


def _octal(field: bytes) -> int | None:
    """tarfile's reading of a plain octal header number (its `nti`), None where tarfile would
    read it otherwise (base-256) or refuse it."""
    if field[:1] in (b"\x80", b"\xff"):
        return None
    end = field.find(b"\0")
    try:
        return int(field[: None if end < 0 else end].decode("ascii").strip() or "0", 8)
    except (UnicodeDecodeError, ValueError):
        return None


def _scan_plain(tar_path: Path) -> list[tarfile.TarInfo] | None:
    """The members of a tar made only of plain ustar/GNU file and folder headers (what tar
    writers make for image folders, occsynth's shards included), read header by header: the
    same names, types, sizes and data offsets as tarfile's `getmembers()`, about ten times
    faster (an index of LFW's 13,233 images is otherwise ~2 s of a re-alignment). None at
    anything else (pax or GNU long-name headers, links, sparse files, base-256 numbers, a bad
    checksum, a truncated or empty archive): the caller then reads it with tarfile, which knows
    every variant and its errors."""
    encoding, errors = tarfile.ENCODING, "surrogateescape"
    members: list[tarfile.TarInfo] = []
    offset = 0
    with open(tar_path, "rb", buffering=0) as fh:
        size_on_disk = os.fstat(fh.fileno()).st_size
        while True:
            fh.seek(offset)
            buf = fh.read(512)
            if len(buf) != 512:
                return None  # tarfile stops (or fails) at a short header: its call
            if buf.count(0) == 512:
                return members if members else None  # the end-of-archive block (an empty tar: tarfile's error)
            if buf[257:265] not in _PLAIN_MAGICS:
                return None
            kind = buf[156:157]
            if kind not in (b"0", b"\0", b"5"):
                return None
            numbers = [_octal(buf[a:b]) for a, b in _NUMERIC_FIELDS]
            chksum = _octal(buf[148:156])
            if None in numbers or chksum != sum(buf[:148]) + 256 + sum(buf[156:]):
                return None  # a signed checksum or a bad one: tarfile decides
            size = numbers[3]
            name = buf[:100].split(b"\0", 1)[0].decode(encoding, errors)
            prefix = buf[345:500].split(b"\0", 1)[0].decode(encoding, errors)
            if kind == b"\0" and name.endswith("/"):
                kind = b"5"  # old tars mark a folder by its trailing slash
            if kind == b"5":
                if size:
                    return None
                name = name.rstrip("/")
            if prefix:
                name = prefix + "/" + name
            info = tarfile.TarInfo(name)
            info.type, info.size, info.offset, info.offset_data = kind, size, offset, offset + 512
            members.append(info)
            offset += 512 + (-(-size // 512) * 512 if kind != b"5" else 0)
            if offset > size_on_disk + 512:
                return None  # truncated data: tarfile's own reading (and our check below) handle it


def _index_tar(tar_path: Path, archive: Path) -> list[list]:
    """[member path, size, data offset, problem] for every non-folder member, links resolved."""
    file_size = tar_path.stat().st_size
    try:
        members = _scan_plain(tar_path)
        if members is None:
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
            links[path] = (
                ""
                if m.linkname.startswith("/")
                else posixpath.normpath(posixpath.join(posixpath.dirname(path), m.linkname))
            )
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
