"""The one tar writer and the one tar reader of the project's shards (WebDataset layout).

Writing is deterministic and atomic (below). Reading checks every member name with the
project's archive rule (io/archive.py) and the WebDataset key/extension rule, sequentially
(`iter_shard`) or by key with random access (`ShardReader`, offsets from one pass).

Determinism: members are written in the order given with fixed metadata (mtime 0, uid/gid 0,
no user names, mode 0644), so equal samples give byte-identical shards on any machine.
Atomicity: a shard is written to `<name>.tmp`, fsynced, then renamed; a reader never sees a
half-written shard under its final name. (`durable=False` leaves the fsync to the caller: a
build fsyncs its shards off the workers' path, before its manifest says they are complete.)
"""

from __future__ import annotations

import hashlib
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


# A member header as tarfile writes it for our fixed metadata (USTAR, mode 0644, uid/gid 0, mtime
# 0, no user names), made by tarfile itself once; each member patches in its name, size and
# checksum. Names over 100 bytes (USTAR's prefix split) and sizes of 8 GiB or more go through
# tarfile, as before.
def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


_TEMPLATE = _member_info("", 0).tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
_NAME, _SIZE, _CHKSUM = slice(0, 100), slice(124, 136), slice(148, 156)
_BLANK_SUM = sum(_TEMPLATE[:148]) + 8 * ord(" ") + sum(_TEMPLATE[156:]) - sum(_TEMPLATE[_SIZE])
_MAX_SIZE = 8**11  # USTAR's 11 octal digits
_PADDING = [tarfile.NUL * n for n in range(tarfile.BLOCKSIZE)]  # zeros to the next 512-byte block


def member_header(name: str, size: int) -> bytes:
    """The 512-byte USTAR header tarfile writes for a member with the shards' fixed metadata."""
    encoded = name.encode(tarfile.ENCODING, "surrogateescape")
    if len(encoded) > 100 or not 0 <= size < _MAX_SIZE:
        return _member_info(name, size).tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
    header = bytearray(_TEMPLATE)
    header[: len(encoded)] = encoded
    size_field = b"%011o\0" % size
    header[_SIZE] = size_field
    checksum = _BLANK_SUM + sum(encoded) + sum(size_field)
    header[_CHKSUM] = b"%06o\0 " % checksum
    return bytes(header)


class ShardWriter:
    """Write one shard: `write(key, {ext: bytes})` per sample, then `commit()`.

    The bytes are those of `tarfile` (USTAR, members in the order given, 512-byte blocks, two
    zero blocks and zero padding to a 10,240-byte record at the end: tests/test_shards.py
    compares them), written directly and hashed as they are written. Used as a context manager,
    an exception discards the temporary file instead of publishing a partial shard.
    """

    def __init__(self, path: str | Path, *, durable: bool = True, end: bool = True):
        self.path = Path(path)
        self.durable = durable
        # end=False: a part of a shard (build/shard.py), its members only; the shard that
        # appends the parts (`append_part`) ends the archive
        self.end = end
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.tmp_path, "wb")
        self._hash = hashlib.sha256() if end else None  # a part is not hashed: the shard it joins is
        self._offset = 0
        self._keys: set[str] = set()
        self.num_samples = 0

    def _put(self, data: bytes) -> None:
        self._file.write(data)
        if self._hash is not None:
            self._hash.update(data)
        self._offset += len(data)

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if "." in key.rpartition("/")[2]:
            raise ValueError(f"sample key {key!r} must not contain a dot (WebDataset splits at the first dot)")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in {self.path.name}")
        self._keys.add(key)
        parts = []
        for ext in sorted(members):
            data = members[ext]
            parts += (member_header(f"{key}.{ext}", len(data)), data, _PADDING[-len(data) % tarfile.BLOCKSIZE])
        self._put(b"".join(parts))  # one write and one hash update per sample
        self.num_samples += 1

    def append_part(self, path: str | Path, samples: int) -> None:
        """Append the members of a part written with end=False (`samples` samples): the bytes
        a writer given those samples directly would have written, since a member's header does
        not depend on where it lies."""
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                self._put(block)
        self.num_samples += samples

    def commit(self) -> str:
        """Publish the shard (or part) under its final name; returns its sha256 ("" for a part)."""
        if self.end:
            self._put(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
            if self._offset % tarfile.RECORDSIZE:
                self._put(tarfile.NUL * (tarfile.RECORDSIZE - self._offset % tarfile.RECORDSIZE))
        self._file.flush()
        if self.durable:
            os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp_path, self.path)
        return self._hash.hexdigest() if self._hash is not None else ""

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
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
