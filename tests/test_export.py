"""Exports of a tiny hand-built dataset, read back: the insightface .bin the way arcface_torch's
load_bin reads it, the folder layout, and parquet."""

from __future__ import annotations

import json
import pickle

import cv2
import numpy as np
import pytest
from tiny_dataset import SAMPLES, build_tiny_dataset, sample_id

from occsynth.io.export import BIN_PICKLE_PROTOCOL, export, iter_samples
from occsynth.io.images import decode_image, decode_mask


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "ds"
    return root, build_tiny_dataset(root)


def test_iter_samples_follows_manifest_order(tiny):
    root, built = tiny
    assert [key for key, _, _ in iter_samples(root)] == [m["key"] for m in built["metas"]]


def test_insightface_bin_matches_load_bin_expectations(tiny, tmp_path):
    root, built = tiny
    out = tmp_path / "tiny.bin"
    summary = export(root, out, "insightface-bin")
    raw = out.read_bytes()
    assert raw[:2] == b"\x80" + bytes([BIN_PICKLE_PROTOCOL])
    with open(out, "rb") as f:  # as load_bin does (py3 branch)
        bins, issame_list = pickle.load(f)
    usable = [r for r in built["rows"] if not r["flagged"]]
    assert len(bins) == 2 * len(issame_list) == 2 * len(usable) == 14
    assert issame_list == [r["issame"] for r in usable] == [True, True, False, True, True, False, False]
    assert all(type(b) is bytes for b in bins) and all(type(s) is bool for s in issame_list)
    for i, row in enumerate(usable):
        for j, side in enumerate(("a", "b")):
            # mx.image.imdecode is OpenCV underneath: decode the same way, RGB, 112x112
            bgr = cv2.imdecode(np.frombuffer(bins[2 * i + j], np.uint8), cv2.IMREAD_COLOR)
            assert bgr.shape == (112, 112, 3)
            assert np.array_equal(bgr[:, :, ::-1], decode_image(built["images"][row[side]]))
    # the order is pair order, a then b: pair 0 = (Alice 1, Alice 2) = keys 000000, 000001
    assert bins[0] == built["images"]["000000"] and bins[1] == built["images"]["000001"]
    sidecar = json.loads((tmp_path / "tiny.bin.json").read_text())
    assert sidecar == json.loads(json.dumps(summary))
    assert sidecar["excluded"] == [{"pair": 3, "fold": 0, "reason": "b=Dave/Dave_0001.jpg: detect: no face detected"}]
    assert "10-fold" in sidecar["warnings"][0] and sidecar["image_size"] == [112, 112]
    with pytest.raises(FileExistsError):
        export(root, out, "insightface-bin")


def test_bin_needs_pairs(tmp_path):
    root = tmp_path / "nopairs"
    build_tiny_dataset(root, with_pairs=False)
    with pytest.raises(FileNotFoundError, match="needs verification pairs"):
        export(root, tmp_path / "x.bin", "insightface-bin")
    with pytest.raises(ValueError, match="unknown export format"):
        export(root, tmp_path / "x", "tfrecord")


def test_folder_export(tiny, tmp_path):
    root, built = tiny
    out = tmp_path / "folder"
    summary = export(root, out, "folder")
    assert summary["samples"] == len(SAMPLES) and summary["identities"] == 3
    for meta in built["metas"]:
        key, identity = meta["key"], meta["identity"]
        assert (out / "images" / identity / f"{key}.png").read_bytes() == built["images"][key]
        mask = decode_mask((out / "masks" / identity / f"{key}.png").read_bytes())
        assert np.array_equal(mask, built["masks"][key])
    lines = (out / "metadata.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == built["metas"]
    assert (out / "pairs.jsonl").read_text() == (root / "pairs.jsonl").read_text()
    # official text layout, fold blocks of matched then mismatched, the flagged pair included
    assert summary["pairs_txt_layout"] == "lfw"
    assert (out / "pairs.txt").read_text().splitlines() == [
        "2\t2",
        "Alice\t1\t2",
        "Carol\t1\t3",
        "Alice\t3\tBob\t1",
        "Bob\t2\tDave\t1",
        "Bob\t1\t2",
        "Carol\t2\t3",
        "Carol\t2\tAlice\t1",
        "Bob\t1\tCarol\t1",
    ]
    assert not list(tmp_path.glob("*.tmp"))


def test_folder_pairs_txt_reads_back_as_the_protocol(tiny, tmp_path):
    from occsynth.benchmarks.protocols.lfw import read_lfw_pairs

    root, built = tiny
    export(root, tmp_path / "f", "folder")
    assert read_lfw_pairs(tmp_path / "f" / "pairs.txt", expect=(2, 2)) == built["pairs"]


def test_parquet_export(tiny, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    root, built = tiny
    out = tmp_path / "tiny.parquet"
    summary = export(root, out, "parquet")
    table = pq.read_table(out)
    assert table.num_rows == summary["rows"] == len(SAMPLES)
    rows = table.to_pylist()
    for row, meta in zip(rows, built["metas"]):
        assert row["key"] == meta["key"] and row["identity"] == meta["identity"]
        assert (row["image_width"], row["image_height"]) == tuple(meta["image_size"])
        assert row["landmarks"] == [v for p in meta["landmarks"] for v in p] and len(row["landmarks"]) == 10
        assert row["occlusion_ratio"] == meta["occlusion_ratio"]
        assert row["occluder_names"] == [o["name"] for o in meta["occluders"]]
        assert json.loads(row["metadata_json"]) == meta
        assert row["image"] == built["images"][meta["key"]] and row["image_format"] == "png"
        assert np.array_equal(decode_mask(row["mask"]), built["masks"][meta["key"]])
        assert np.array_equal(decode_image(row["clean"]), built["cleans"][meta["key"]])
    assert rows[2]["occluder_families"] == ["glasses"] and rows[0]["occluder_names"] == []
    assert sample_id("Alice", 3) == rows[2]["sample_id"]


def test_jpeg_datasets_keep_their_bytes_and_extension(tmp_path):
    root = tmp_path / "jpg"
    built = build_tiny_dataset(root, image_format="jpg")
    export(root, tmp_path / "f", "folder")
    meta = built["metas"][3]
    path = tmp_path / "f" / "images" / meta["identity"] / f"{meta['key']}.jpg"
    assert path.read_bytes() == built["images"][meta["key"]] and path.read_bytes()[:2] == b"\xff\xd8"
    export(root, tmp_path / "j.bin", "insightface-bin")
    with open(tmp_path / "j.bin", "rb") as f:
        bins, _ = pickle.load(f)
    assert bins[0][:2] == b"\xff\xd8"
