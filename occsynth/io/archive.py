"""The one way this project takes members out of an archive.

Every member name is checked before anything is written (or, for sources that read members in
place, before the member becomes an item): absolute paths, `..`, empty components (`a//b`, which
some extractors turn into `/b`), links, devices and FIFOs are refused with the member named.
Files are created with O_NOFOLLOW under a destination that is resolved once, so neither a name
nor a link already inside the destination can lead a write outside it.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

__all__ = ["UnsafeArchiveError", "member_path", "check_member", "safe_extract", "iter_files"]


class UnsafeArchiveError(ValueError):
    """An archive member that must not be unpacked (named in the message)."""


def member_path(name: str, archive: str | os.PathLike = "archive") -> PurePosixPath:
    """The member's relative path, or UnsafeArchiveError. One leading "./" (what `tar -C dir .`
    writes) and one trailing "/" (folders) are allowed; "" or "." is the archive root."""
    raw = name
    if name.startswith("./"):
        name = name[2:]
    if name.endswith("/"):
        name = name[:-1]
    if name in ("", "."):
        return PurePosixPath(".")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\\" in name:
        raise UnsafeArchiveError(f"{archive}: unsafe member {raw!r} (absolute path)")
    parts = name.split("/")
    if any(p == "" for p in parts):
        raise UnsafeArchiveError(f"{archive}: unsafe member {raw!r} (empty path component)")
    if any(p in (".", "..") for p in parts):
        raise UnsafeArchiveError(f"{archive}: unsafe member {raw!r} ('.' or '..' component)")
    if any("\x00" in p for p in parts):
        raise UnsafeArchiveError(f"{archive}: unsafe member {raw!r} (NUL in name)")
    return PurePosixPath(*parts)


def check_member(info: tarfile.TarInfo, archive: str | os.PathLike = "archive") -> PurePosixPath:
    """member_path() plus the type check: only regular files and folders may be unpacked."""
    path = member_path(info.name, archive)
    if info.issym() or info.islnk():
        raise UnsafeArchiveError(f"{archive}: refused member {info.name!r} (a link to {info.linkname!r})")
    if not (info.isreg() or info.isdir()):
        kind = "device" if (info.ischr() or info.isblk()) else "FIFO" if info.isfifo() else f"type {info.type!r}"
        raise UnsafeArchiveError(f"{archive}: refused member {info.name!r} ({kind})")
    return path


def iter_files(archive: str | os.PathLike) -> Iterator[tuple[PurePosixPath, tarfile.TarInfo, tarfile.TarFile]]:
    """(checked path, info, open tar) of every regular-file member, in archive order; any
    unsafe member stops the iteration with UnsafeArchiveError."""
    with tarfile.open(archive) as tf:
        for info in tf:
            path = check_member(info, archive)
            if info.isreg():
                yield path, info, tf


def safe_extract(
    archive: str | os.PathLike,
    dest: str | os.PathLike,
    select: Callable[[PurePosixPath], PurePosixPath | None] | None = None,
) -> list[Path]:
    """Unpack the regular files of a tar archive (any compression) under `dest`.

    `select(path)` maps a member's checked path to its path below `dest` (None: leave it);
    the default keeps every file where it is. Returns the written paths. Raises
    UnsafeArchiveError at the first unsafe member, whether selected or not (an archive that
    carries one is not trusted)."""
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    written: list[Path] = []
    for path, info, tf in iter_files(archive):
        rel = path if select is None else select(path)
        if rel is None:
            continue
        rel = member_path(str(rel), archive)  # what select() returned must be safe too
        target = root.joinpath(*rel.parts)
        parent = target.parent.resolve()
        if parent != root and root not in parent.parents:
            raise UnsafeArchiveError(
                f"{archive}: member {info.name!r} would be written outside {root} "
                f"(through a link already in the destination)"
            )
        parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(parent / target.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "wb") as out, tf.extractfile(info) as src:
            shutil.copyfileobj(src, out, 1 << 20)
        written.append(target)
    return written
