"""RecordIO (.rec/.idx) reading against a writer written here from the format description
(dmlc-core recordio.h: magic, lrec = cflag << 29 | length, 4-byte padding, records split where
the data holds the magic at an aligned position; mxnet recordio.pack: IRHeader "<IfQQ" plus
`flag` float labels)."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from occsynth.io.images import ImageLoadError, decode_image
from occsynth.sources import SourceError
from occsynth.sources.recordio import MAGIC, RecordIOError, RecordIOReader, RecordIOSource, unpack

MAGIC_BYTES = struct.pack("<I", MAGIC)


# ------------------------------------------------------------------ a writer, from the spec
def pack(label, payload: bytes, rid: int = 0) -> bytes:
    """mxnet recordio.pack: a number -> flag 0; a sequence -> flag = len, labels after the header."""
    if isinstance(label, (int, float)):
        return struct.pack("<IfQQ", 0, float(label), rid, 0) + payload
    values = [float(v) for v in label]
    return struct.pack("<IfQQ", len(values), 0.0, rid, 0) + struct.pack(f"<{len(values)}f", *values) + payload


def encode_record(data: bytes) -> tuple[bytes, int]:
    """dmlc RecordIOWriter::WriteRecord; returns (bytes, number of splits)."""
    out, start, splits = [], 0, 0
    aligned_end = len(data) // 4 * 4
    for i in range(0, aligned_end, 4):
        if data[i : i + 4] == MAGIC_BYTES:
            out.append(MAGIC_BYTES + struct.pack("<I", ((1 if start == 0 else 2) << 29) | (i - start)))
            out.append(data[start:i])
            start = i + 4
            splits += 1
    rest = data[start:]
    out.append(MAGIC_BYTES + struct.pack("<I", ((3 if start else 0) << 29) | len(rest)))
    out.append(rest)
    out.append(b"\0" * (-len(data) % 4))  # pads the whole logical record, as WriteRecord does
    return b"".join(out), splits


def write_rec(folder: Path, records: dict[int, bytes], name: str = "train") -> tuple[Path, Path, int]:
    rec, idx = folder / f"{name}.rec", folder / f"{name}.idx"
    blob, lines, splits = bytearray(), [], 0
    for key, data in records.items():
        lines.append(f"{key}\t{len(blob)}\n")
        encoded, n = encode_record(data)
        splits += n
        blob += encoded
    rec.write_bytes(bytes(blob))
    idx.write_text("".join(lines))
    return rec, idx, splits


def jpeg(value: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(value)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def insightface_records(labels: list[int]) -> dict[int, bytes]:
    """Header record 0, image records 1..n, then one identity record per class."""
    n = len(labels)
    classes = sorted(set(labels))
    records = {0: pack([n + 1, n + 1 + len(classes)], b"")}
    for key, label in enumerate(labels, 1):
        records[key] = pack(label, jpeg(key), rid=key)
    for c in classes:
        first = labels.index(c) + 1
        records[n + 1 + c] = pack([first, first + labels.count(c)], b"")
    return records


# ------------------------------------------------------------------ tests
def test_round_trip_insightface_layout(tmp_path):
    labels = [0, 0, 0, 1, 1, 2]
    records = insightface_records(labels)
    rec, idx, _ = write_rec(tmp_path, records)
    with RecordIOReader(rec, idx) as reader:
        assert len(reader) == 6
        assert reader.image_keys == [1, 2, 3, 4, 5, 6]
        assert reader.header0.label == (7.0, 10.0)
        got = list(reader)
        assert [(k, label) for k, label, _ in got] == list(zip(range(1, 7), labels))
        assert [payload for _, _, payload in got] == [jpeg(k) for k in range(1, 7)]
        header, payload = reader.read(3)
        assert (header.flag, header.label, header.id, header.id2) == (0, 0.0, 3, 0)
        ident, rest = reader.read(8)  # identity record of class 1: images [4, 6)
        assert ident.label == (4.0, 6.0) and rest == b""
        assert decode_image(payload).shape == (16, 16, 3)


def test_without_header_record_every_record_is_an_image(tmp_path):
    records = {5: pack(3, jpeg(5)), 9: pack([7.0, 1.0], jpeg(9))}
    rec, idx, _ = write_rec(tmp_path, records)
    reader = RecordIOReader(rec)  # .idx found beside the .rec
    assert reader.header0 is None
    assert [(k, label) for k, label, _ in reader] == [(5, 3), (9, 7)]  # label array -> label[0]


def test_continuation_records_are_joined(tmp_path):
    # the magic at aligned offsets 24 and 28 (two splits) and at an unaligned offset (no split)
    payload = b"abcd" * 6 + MAGIC_BYTES + MAGIC_BYTES + b"xy" + MAGIC_BYTES + b"tail!"
    data = pack(4, b"") + payload
    assert data.index(MAGIC_BYTES) % 4 == 0
    rec, idx, splits = write_rec(tmp_path, {0: pack(1, b"first"), 1: data, 2: pack(2, b"last")})
    assert splits == 2
    raw = rec.read_bytes()
    flags = [
        struct.unpack_from("<I", raw, m + 4)[0] >> 29
        for m in range(0, len(raw) - 3, 4)
        if raw[m : m + 4] == MAGIC_BYTES and m % 4 == 0
    ]
    assert 1 in flags and 2 in flags and 3 in flags
    reader = RecordIOReader(rec, idx)
    assert reader.read_record(1) == data
    assert reader.read(1) == (unpack(data)[0], payload)
    assert reader.read_header(1) == (unpack(data)[0], len(payload))  # split: full-read path
    assert reader.read_header(2) == (unpack(pack(2, b"last"))[0], 4)  # whole: header-only path
    assert reader.read(2)[1] == b"last"


def test_bad_magic_names_the_offset(tmp_path):
    rec, idx, _ = write_rec(tmp_path, {0: pack(1, b"abcdefgh"), 1: pack(2, b"ijkl")})
    idx.write_text("0\t0\n1\t12\n")  # 12 is inside record 0, not a record start
    reader = RecordIOReader(rec, idx)
    with pytest.raises(RecordIOError, match=r"record 1 at offset 12: bad magic 0x[0-9a-f]{8} \(expected 0xced7230a\)"):
        reader.read(1)
    rec.write_bytes(b"\0" * 64)
    with pytest.raises(RecordIOError, match="record 0 at offset 0: bad magic 0x00000000"):
        RecordIOReader(rec, idx).read(0)


def test_truncated_and_malformed_files(tmp_path):
    rec, idx, _ = write_rec(tmp_path, {0: pack(1, b"x" * 40)})
    rec.write_bytes(rec.read_bytes()[:30])
    with pytest.raises(RecordIOError, match="offset 0: truncated"):
        RecordIOReader(rec, idx).read(0)
    idx.write_text("0\t0\nnot a line\n")
    with pytest.raises(RecordIOError, match=r"train.idx:2: expected 'key<TAB>offset'"):
        RecordIOReader(rec, idx)
    idx.write_text("0\t0\n0\t8\n")
    with pytest.raises(RecordIOError, match="key 0 appears twice"):
        RecordIOReader(rec, idx)
    idx.write_text("0\t0\n")
    rec.write_bytes(MAGIC_BYTES + struct.pack("<I", (2 << 29) | 4) + b"abcd")
    with pytest.raises(RecordIOError, match="continuation flag 2, expected 0 or 1"):
        RecordIOReader(rec, idx).read(0)
    with pytest.raises(RecordIOError, match="too short for the 24-byte IRHeader"):
        unpack(b"abc")


def test_header_record_announcing_missing_images(tmp_path):
    rec, idx, _ = write_rec(tmp_path, {0: pack([4, 5], b""), 1: pack(0, jpeg(1)), 2: pack(0, jpeg(2))})
    with pytest.raises(RecordIOError, match=r"announces images 1..3, but 1 have no index line \(first: 3\)"):
        RecordIOReader(rec, idx)


def test_recordio_source_acts_like_a_folder(tmp_path):
    labels = [3, 3, 1, 1, 1]
    records = insightface_records([0, 0, 0, 0, 0])
    for key, label in enumerate(labels, 1):  # relabel: classes need not be contiguous for the source
        records[key] = pack(label, jpeg(key), rid=key)
    rec, idx, _ = write_rec(tmp_path, records)
    source = RecordIOSource(rec, idx)
    items = source.items()
    assert [i.sample_id for i in items] == ["1/3", "1/4", "1/5", "3/1", "3/2"]
    assert source.identities() == ["1", "3"]
    assert [source.read(i) for i in items] == [jpeg(k) for k in (3, 4, 5, 1, 2)]
    assert [i.size for i in items] == [len(jpeg(k)) for k in (3, 4, 5, 1, 2)]
    assert len(source.fingerprint()) == 64 and source.fingerprint() == RecordIOSource(rec, idx).fingerprint()
    assert "5 images, 2 identities" in source.description
    # workers receive the source pickled and read by themselves
    clone = pickle.loads(pickle.dumps(source))
    assert clone.read(items[0]) == jpeg(3)
    # a record damaged after listing is a read failure of that item, not a crash
    raw = bytearray(rec.read_bytes())
    raw[source.reader.offsets[3]] ^= 0xFF
    rec.write_bytes(bytes(raw))
    with pytest.raises(ImageLoadError, match="bad magic") as info:
        pickle.loads(pickle.dumps(source)).read(items[0])
    assert info.value.stage == "read"
    with pytest.raises(SourceError, match="bad magic"):
        RecordIOSource(rec, idx)
