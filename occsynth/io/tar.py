"""The one tar writer and the one tar reader of the project's shards (WebDataset layout).

Writing is deterministic and atomic (below). Reading checks every member name with the
project's archive rule (io/archive.py) and the WebDataset key/extension rule, sequentially
(`iter_shard`) or by key with random access (`ShardReader`, offsets from one pass).

Determinism: members are written in the order given with fixed metadata (mtime 0, uid/gid 0,
no user names, mode 0644), so equal samples give byte-identical shards on any machine.
Atomicity: a shard is written to `<name>.tmp`, fsynced, then renamed; a reader never sees a
half-written shard under its final name.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import Iterator

from occsynth.io.archive import member_path


def split_member(name: str) -> tuple[str, str]:
    """'000123.mask.png' -> ('000123', 'mask.png'): the WebDataset key/extension rule
    (the key is the basename up to its first dot)."""
    directory, _, base = name.rpartition("/")
    key, dot, ext = base.partition(".")
    if not dot or not key:
        raise ValueError(f"tar member {name!r} does not follow the <key>.<ext> layout")
    return (f"{directory}/{key}" if directory else key), ext


class ShardWriter:
    """Write one shard: `write(key, {ext: bytes})` per sample, then `commit()`.

    Used as a context manager, an exception discards the temporary file instead of
    publishing a partial shard.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.tmp_path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._keys: set[str] = set()
        self.num_samples = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if "." in key.rpartition("/")[2]:
            raise ValueError(f"sample key {key!r} must not contain a dot (WebDataset splits at the first dot)")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in {self.path.name}")
        self._keys.add(key)
        for ext in sorted(members):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.num_samples += 1

    def commit(self) -> str:
        """Publish the shard under its final name; returns its sha256."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = sha256_file(self.tmp_path)
        os.replace(self.tmp_path, self.path)
        return digest

    def abort(self) -> None:
        try:
            self._tar.close()
        finally:
            self._file.close()
            self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self._file.closed:
            self.abort()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ShardError(ValueError):
    """A shard that does not follow the layout (names the shard and the member)."""


def _member(path, info: tarfile.TarInfo) -> tuple[str, str]:
    if not info.isfile():
        raise ShardError(f"{path}: unexpected non-file member {info.name!r}")
    try:
        member_path(info.name, path)
        return split_member(info.name)
    except ValueError as exc:
        raise ShardError(str(exc)) from None


def iter_shard(path: str | Path, *, resync: bool = False) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {ext: bytes}) per sample, in shard order (members of a sample are adjacent).

    resync=True (verify) skips a damaged member header and reads on from the next valid one,
    instead of ending there as tarfile otherwise silently does: the rest of the shard is read."""
    current_key, members = None, {}
    with tarfile.open(path, mode="r", ignore_zeros=resync) as tar:
        for info in tar:
            key, ext = _member(path, info)
            if key != current_key:
                if current_key is not None:
                    yield current_key, members
                current_key, members = key, {}
            if ext in members:
                raise ShardError(f"{path}: member {info.name!r} appears twice")
            members[ext] = tar.extractfile(info).read()
    if current_key is not None:
        yield current_key, members


class ShardReader:
    """Random access to a shard's members: one pass over the headers, then reads by offset.

    `keys()` in shard order, `read(key, ext)` -> bytes, `members(key)` -> {ext: bytes}. Safe
    to use from several processes (each opens its own descriptor on first read)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._offsets: dict[str, dict[str, tuple[int, int]]] = {}
        with tarfile.open(self.path, mode="r") as tar:
            for info in tar:
                key, ext = _member(self.path, info)
                entry = self._offsets.setdefault(key, {})
                if ext in entry:
                    raise ShardError(f"{self.path}: member {info.name!r} appears twice")
                entry[ext] = (info.offset_data, info.size)
        self._fd: int | None = None
        self._pid: int | None = None

    def keys(self) -> list[str]:
        return list(self._offsets)

    def exts(self, key: str) -> list[str]:
        return list(self._offsets[key])

    def __contains__(self, key: str) -> bool:
        return key in self._offsets

    def __len__(self) -> int:
        return len(self._offsets)

    def read(self, key: str, ext: str) -> bytes:
        offset, size = self._offsets[key][ext]
        if self._pid != os.getpid():  # a descriptor does not survive into a forked worker
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise ShardError(f"{self.path}: member {key}.{ext} is truncated ({len(data)} of {size} bytes)")
        return data

    def members(self, key: str) -> dict[str, bytes]:
        return {ext: self.read(key, ext) for ext in self._offsets[key]}

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
