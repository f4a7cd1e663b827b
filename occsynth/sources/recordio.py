"""A pure-Python reader for MXNet RecordIO image sets (insightface's ``train.rec`` +
``train.idx``: MS1M, Glint360K, WebFace42M, CASIA-WebFace packs) — no mxnet needed.

Format (dmlc-core ``include/dmlc/recordio.h``, ``src/recordio.cc``; mxnet ``recordio.py``):

* ``.rec``: records, each ``magic (uint32 0xced7230a) | lrec (uint32) | data | pad``, little
  endian. ``lrec`` holds the continuation flag in its top 3 bits (``cflag = lrec >> 29``) and the
  data length in the low 29 bits; data is zero-padded to a multiple of 4 bytes. When a record's
  data contains the magic number at a 4-byte aligned position, the writer splits the record
  there and drops those 4 bytes: ``cflag`` 1 starts, 2 continues and 3 ends such a record (0 is
  a whole record), and the reader puts the magic back between the parts.
* ``.idx``: text lines ``key<TAB>byte offset`` of each record in the ``.rec``.
* An image record's data starts with the IRHeader ``struct "<IfQQ"``: ``flag`` uint32,
  ``label`` float32, ``id`` uint64, ``id2`` uint64 (24 bytes). When ``flag > 0`` the label is
  instead the ``flag`` float32 values that follow; the encoded image (JPEG) comes after.
* insightface layout: record 0 is a header record with ``flag > 0`` whose label is
  ``[end_of_images, end_of_identities]``: images are records ``1 .. end_of_images - 1`` and
  records ``end_of_images .. end_of_identities - 1`` describe identities (label = the
  ``[first, end)`` image range). Without such a header every record is an image. An image's
  class is its label, or the first value of a label array (``label[0]``, as arcface_torch's
  ``MXFaceDataset`` reads it).
"""

from __future__ import annotations

import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from occsynth.io.images import ImageLoadError
from occsynth.sources._registry import SOURCES
from occsynth.sources.base import Source, SourceError, SourceItem

__all__ = [
    "MAGIC",
    "IRHeader",
    "RecordIOError",
    "RecordIOReader",
    "RecordIOSource",
    "unpack",
]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24


class RecordIOError(ValueError):
    """A .rec/.idx pair that does not follow the RecordIO format (the message names where)."""


@dataclass(frozen=True)
class IRHeader:
    flag: int
    label: float | tuple[float, ...]  # a tuple when flag > 0
    id: int
    id2: int

    def class_label(self) -> int:
        """The integer class: the label, or label[0] for a label array (insightface)."""
        value = self.label[0] if isinstance(self.label, tuple) else self.label
        if not math.isfinite(value) or value != int(value):
            raise RecordIOError(f"label {self.label!r} is not an integer class")
        return int(value)


def unpack(data: bytes, where: str = "record") -> tuple[IRHeader, bytes]:
    """Split one record's data into its IRHeader and payload (the encoded image)."""
    if len(data) < _IR_SIZE:
        raise RecordIOError(f"{where}: {len(data)} bytes, too short for the 24-byte IRHeader")
    flag, label, rid, rid2 = struct.unpack_from(_IR_FORMAT, data)
    payload = data[_IR_SIZE:]
    if flag > 0:
        if len(payload) < 4 * flag:
            raise RecordIOError(f"{where}: header announces {flag} float labels, only {len(payload)} bytes follow")
        label = tuple(float(v) for v in struct.unpack_from(f"<{flag}f", payload))
        payload = payload[4 * flag :]
    return IRHeader(flag, float(label) if flag == 0 else label, rid, rid2), payload


class RecordIOReader:
    """Random access to a .rec through its .idx.

    ``len(reader)`` is the number of image records and iteration yields ``(key, class label,
    image bytes)`` over them (insightface layout, see the module doc); :meth:`read` reads any
    record by its .idx key. Picklable: each process opens its own file handle.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        try:
            self.rec_size = self.rec_path.stat().st_size
        except OSError as exc:
            raise RecordIOError(f"{self.rec_path}: {exc.strerror or exc}") from None
        self.offsets = _read_idx(self.idx_path)
        self.keys = list(self.offsets)
        self._fh = None
        self.header0: IRHeader | None = None
        self.image_keys = self._image_keys()

    # -- records
    def read_record(self, key: int) -> bytes:
        """The data of record ``key``, continuation parts joined."""
        try:
            offset = self.offsets[key]
        except KeyError:
            raise KeyError(f"{self.idx_path}: no record with key {key}") from None
        return self._read_at(offset, key)

    def read(self, key: int) -> tuple[IRHeader, bytes]:
        """(IRHeader, payload) of record ``key``."""
        return unpack(self.read_record(key), f"{self.rec_path} record {key} (offset {self.offsets[key]})")

    def read_header(self, key: int) -> tuple[IRHeader, int]:
        """(IRHeader, payload size) of record ``key``, reading only the record's first bytes
        (listing a multi-GB .rec must not read every image)."""
        offset = self.offsets[key]
        fh = self._file()
        fh.seek(offset)
        head = fh.read(8 + _IR_SIZE)
        if len(head) >= 8:
            magic, lrec = struct.unpack_from("<II", head)
            cflag, length = lrec >> _LENGTH_BITS, lrec & _LENGTH_MASK
            if magic == MAGIC and cflag == 0 and len(head) == 8 + _IR_SIZE and length >= _IR_SIZE:
                flag = struct.unpack_from("<I", head, 8)[0]
                labels = fh.read(4 * flag) if flag > 0 else b""
                if offset + 8 + ((length + 3) & ~3) <= self.rec_size and len(labels) == 4 * flag:
                    header, _ = unpack(head[8:] + labels, f"{self.rec_path} record {key} (offset {offset})")
                    return header, length - _IR_SIZE - 4 * max(flag, 0)
        # split, damaged or truncated records: the full reader checks them and says what is wrong
        header, payload = self.read(key)
        return header, len(payload)

    def __len__(self) -> int:
        return len(self.image_keys)

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        for key in self.image_keys:
            header, payload = self.read(key)
            yield key, header.class_label(), payload

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RecordIOReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fh"] = None
        return state

    # -- internals
    def _image_keys(self) -> list[int]:
        if 0 not in self.offsets:
            return list(self.keys)
        header, _ = self.read(0)
        if header.flag <= 0:
            return list(self.keys)
        if header.flag < 2:
            raise RecordIOError(
                f"{self.rec_path} record 0: header record with flag {header.flag}, "
                "expected the [end_of_images, end_of_identities] label pair"
            )
        self.header0 = header
        end = header.label[0]
        if end != int(end) or end < 1:
            raise RecordIOError(f"{self.rec_path} record 0: image range end {end!r} is not a positive integer")
        keys = list(range(1, int(end)))
        absent = [k for k in keys if k not in self.offsets]
        if absent:
            raise RecordIOError(
                f"{self.idx_path}: header record announces images 1..{int(end) - 1}, but "
                f"{len(absent)} have no index line (first: {absent[0]})"
            )
        return keys

    def _file(self):
        if self._fh is None:
            try:
                self._fh = open(self.rec_path, "rb")
            except OSError as exc:
                raise RecordIOError(f"{self.rec_path}: {exc.strerror or exc}") from None
        return self._fh

    def _read_at(self, offset: int, key: int) -> bytes:
        fh = self._file()
        parts: list[bytes] = []
        pos = offset
        while True:
            fh.seek(pos)
            head = fh.read(8)
            where = f"{self.rec_path}: record {key} at offset {pos}"
            if len(head) < 8:
                raise RecordIOError(
                    f"{where}: file ends inside the record header (truncated .rec, or "
                    f"an .idx offset past the end of the {self.rec_size}-byte file)"
                )
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise RecordIOError(
                    f"{where}: bad magic 0x{magic:08x} (expected 0x{MAGIC:08x}); not a "
                    "RecordIO file, or the .idx does not belong to this .rec"
                )
            cflag, length = lrec >> _LENGTH_BITS, lrec & _LENGTH_MASK
            first = not parts
            if (first and cflag not in (0, 1)) or (not first and cflag not in (2, 3)):
                expected = "0 or 1 (a record start)" if first else "2 or 3 (a continuation)"
                raise RecordIOError(f"{where}: continuation flag {cflag}, expected {expected}")
            padded = (length + 3) & ~3
            data = fh.read(padded)
            if len(data) < padded:
                raise RecordIOError(
                    f"{where}: truncated, {length} data bytes announced, {max(len(data), 0)} left in the file"
                )
            if not first:
                parts.append(_MAGIC_BYTES)  # the writer dropped it where it split the record
            parts.append(data[:length])
            pos += 8 + padded
            if cflag in (0, 3):
                return b"".join(parts)


def _read_idx(path: Path) -> dict[int, int]:
    offsets: dict[int, int] = {}
    try:
        f = open(path, encoding="ascii")
    except OSError as exc:
        raise RecordIOError(f"{path}: {exc.strerror or exc}") from None
    with f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                key, offset = int(fields[0]), int(fields[1])
                if len(fields) != 2 or offset < 0:
                    raise ValueError
            except (ValueError, IndexError):
                raise RecordIOError(f"{path}:{line_no}: expected 'key<TAB>offset', got {line.rstrip()!r}") from None
            if key in offsets:
                raise RecordIOError(f"{path}:{line_no}: key {key} appears twice")
            offsets[key] = offset
    if not offsets:
        raise RecordIOError(f"{path}: empty index")
    return offsets


@SOURCES.register("recordio")
class RecordIOSource(Source):
    """A ``.rec`` as an occsynth source: one item per image record, identity = str(class label).

    ``sample_id`` is ``"<label>/<key>"`` (the .idx key), so ids are stable across machines and
    group like an identity folder. Listing reads only each image record's header (a seek and a
    small read per record); image bytes are read on demand.
    """

    kind = "recordio"
    priority = 10

    @classmethod
    def claims(cls, spec, path, st) -> bool:
        return st is not None and stat.S_ISREG(st.st_mode) and path.suffix == ".rec"  # insightface train.rec (+ .idx)

    @classmethod
    def open(cls, spec, path, cache_dir) -> RecordIOSource:
        return cls(path)

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        try:
            self.reader = RecordIOReader(rec_path, idx_path)
            items = []
            for key in self.reader.image_keys:
                header, size = self.reader.read_header(key)
                label = header.class_label()
                items.append(SourceItem(f"{label}/{key}", str(label), str(key), size))
        except RecordIOError as exc:
            raise SourceError(str(exc)) from exc
        finally:
            if hasattr(self, "reader"):
                self.reader.close()  # workers reopen it themselves
        rec = self.reader.rec_path.absolute()
        identities = len({item.identity for item in items})
        super().__init__(str(rec), f"RecordIO {rec} ({len(items):,} images, {identities:,} identities)", items)

    def _read(self, item: SourceItem) -> bytes:
        try:
            _, payload = self.reader.read(int(item.member))
        except RecordIOError as exc:
            raise ImageLoadError("read", str(exc)) from None
        except OSError as exc:
            raise ImageLoadError(
                "read", f"cannot read record {item.member} of {self.root}: {exc.strerror or exc}"
            ) from None
        return payload
