"""The one "write to a temporary name, fsync, rename" helper.

A reader (or a resumed run) never sees a half-written file under its final name, and a power
loss cannot leave a renamed but empty file: the data is fsynced before the rename and the folder
after it. The temporary name carries the PID so concurrent writers never share one.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_write", "write_bytes", "write_text", "write_json", "fsync_dir", "temp_path"]


def temp_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_dir(folder: str | os.PathLike) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not every file system lets a folder be opened
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None, durable: bool = True
) -> Iterator[IO[Any]]:
    """`with atomic_write(p, "w") as f: ...` — p appears complete or not at all.

    durable=False skips the two fsyncs (~10-30 ms each): for a file whose loss after a power
    cut is harmless (a cache beside a record that is written durably next); a reader may then
    find it empty or absent after a crash, never half-written under its name while running."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        text = "b" not in mode  # text files are written with "\n" line ends on every platform
        with open(tmp, mode, encoding=encoding if text else None, newline="\n" if text else None) as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=False)
    return write_text(path, text + "\n")
