"""Protocol files: LFW View 1/2 against the official files, MFR2, AR and MegaFace-style
identification against tiny fixtures laid out with the real naming."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from occsynth.benchmarks.protocols import ar, lfw, mf1, mfr2
from occsynth.benchmarks.protocols.identification import write_protocol_json
from occsynth.benchmarks.protocols.pairs import (
    Pair,
    check_pairs_against,
    read_pairs_jsonl,
    split_sample_id,
    write_pairs_jsonl,
    write_pairs_txt,
)
from occsynth.sources.folder import FolderSource


# ------------------------------------------------------------------ LFW, real files
@pytest.mark.lfw
def test_view2_has_ten_folds_of_300_plus_300(lfw_pairs):
    pairs = lfw.read_lfw_pairs(lfw_pairs)
    assert len(pairs) == 6000
    assert [p.index for p in pairs] == list(range(6000))
    assert sum(p.issame for p in pairs) == 3000
    folds = Counter(p.fold for p in pairs)
    assert folds == {f: 600 for f in range(10)}
    for f in range(10):
        block = [p for p in pairs if p.fold == f]
        assert [p.issame for p in block] == [True] * 300 + [False] * 300
    # first lines of the official file: "Abel_Pacheco 1 4", then "Akhmed_Zakayev 1 3"
    assert pairs[0] == lfw.Pair(0, 0, True, "Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg")
    assert pairs[1].a == "Akhmed_Zakayev/Akhmed_Zakayev_0001.jpg"
    assert pairs[300].issame is False and pairs[300].fold == 0
    assert all(p.a.split("/")[0] == p.b.split("/")[0] for p in pairs if p.issame)
    assert all(p.a.split("/")[0] != p.b.split("/")[0] for p in pairs if not p.issame)


@pytest.mark.lfw
@pytest.mark.parametrize("name, total", [("pairsDevTrain.txt", 2200), ("pairsDevTest.txt", 1000)])
def test_view1_files_are_one_fold(lfw_pairs, name, total):
    pairs = lfw.read_lfw_pairs(lfw_pairs.parent / name)
    assert len(pairs) == total
    assert {p.fold for p in pairs} == {0}
    assert [p.issame for p in pairs] == [True] * (total // 2) + [False] * (total // 2)


@pytest.mark.lfw
@pytest.mark.parametrize("name", ["pairs.txt", "pairsDevTrain.txt", "pairsDevTest.txt"])
def test_official_files_round_trip_byte_for_byte(lfw_pairs, tmp_path, name):
    src = lfw_pairs.parent / name
    assert write_pairs_txt(tmp_path / name, lfw.read_lfw_pairs(src)) == "lfw"
    assert (tmp_path / name).read_bytes() == src.read_bytes()


@pytest.mark.lfw
def test_every_view2_image_exists_in_the_archive(lfw_pairs, lfw_tgz):
    with tarfile.open(lfw_tgz) as archive:
        ids = {m.name.split("/", 1)[1] for m in archive if m.isfile()}
    pairs = lfw.read_lfw_pairs(lfw_pairs)
    assert check_pairs_against(pairs, ids) == []
    # drop one image: both pairs naming it are reported, none disappears
    victim = pairs[0].a
    missing = check_pairs_against(pairs, ids - {victim})
    naming = [(p.index, side) for p in pairs for side, sid in (("a", p.a), ("b", p.b)) if sid == victim]
    assert [(m.pair, m.side) for m in missing] == naming and naming


# ------------------------------------------------------------------ LFW, strict parsing
def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _tiny_view2(folds=2, n=2) -> str:
    lines = [f"{folds}\t{n}"]
    for f in range(folds):
        lines += [f"P{f}_{k}\t1\t2" for k in range(n)]
        lines += [f"P{f}_{k}\t1\tQ{f}_{k}\t3" for k in range(n)]
    return "\n".join(lines) + "\n"


def test_tiny_view2_parses_with_folds(tmp_path):
    pairs = lfw.read_lfw_pairs(_write(tmp_path / "p.txt", _tiny_view2()))
    assert [(p.fold, p.issame) for p in pairs] == [(0, True)] * 2 + [(0, False)] * 2 + [(1, True)] * 2 + [
        (1, False)
    ] * 2
    assert pairs[2].b == "Q0_0/Q0_0_0003.jpg"


@pytest.mark.parametrize(
    "text, where, words",
    [
        ("10 300x\nA 1 2\n", ":1:", "not an LFW header"),
        ("2\t2\nA\t1\t2\nB\t1\t2\nA\t1\tB\t1\nA\t1\tB\t2\n", ":6:", "fold 2 is incomplete"),
        ("1\t1\nA\t1\t2\nA\t1\tB\t2\nC\t1\t2\n", ":4:", "extra line"),
        ("1\t2\nA\t1\t2\nB\t1\tC\t2\nA\t1\tB\t1\nA\t1\tB\t2\n", ":3:", "got a mismatched pair"),
        ("1\t2\nA\t1\t2\nB\t1\t2\nA\t1\t2\nA\t1\tB\t2\n", ":4:", "got a matched pair"),
        ("1\t2\nA\t1\t2\nB\t1\t2\nA\t1\tA\t3\nA\t1\tB\t2\n", ":4:", "matched pair (A twice) in the mismatched block"),
        ("1\t2\nA\t1\t2\nB\t0\t2\nA\t1\tC\t3\nA\t1\tB\t2\n", ":3:", "positive integer"),
        ("1\t2\nA\t1\t2\nB\tx\t2\nA\t1\tC\t3\nA\t1\tB\t2\n", ":3:", "positive integer"),
        ("1\t2\nA\t1\t2\n\nA\t1\tC\t3\nA\t1\tB\t2\n", ":3:", "0 fields"),
        ("1\t2\nA\t2\t2\nB\t1\t2\nA\t1\tC\t3\nA\t1\tB\t2\n", ":2:", "with itself"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, text, where, words):
    path = _write(tmp_path / "bad.txt", text)
    with pytest.raises(ValueError) as info:
        lfw.read_lfw_pairs(path)
    assert f"bad.txt{where}" in str(info.value)
    assert words in str(info.value)


def test_official_name_enforces_official_header(tmp_path):
    path = _write(tmp_path / "pairs.txt", _tiny_view2())
    with pytest.raises(ValueError, match=r"pairs.txt:1: header announces 2 fold\(s\) x 2 pairs, expected 10 x 300"):
        lfw.read_lfw_pairs(path)
    assert len(lfw.read_lfw_pairs(path, expect=None)) == 8


# ------------------------------------------------------------------ pairs.jsonl / pairs.txt
def test_pairs_jsonl_flags_missing_images_and_keeps_every_pair(tmp_path):
    pairs = lfw.read_lfw_pairs(_write(tmp_path / "p.txt", _tiny_view2()))
    ids = sorted({sid for p in pairs for sid in (p.a, p.b)})
    keys = {sid: f"{i:06d}" for i, sid in enumerate(ids)}
    gone = pairs[2].b
    del keys[gone]
    rows = write_pairs_jsonl(tmp_path / "pairs.jsonl", pairs, keys, problems={gone: "not in the source"})
    back = read_pairs_jsonl(tmp_path / "pairs.jsonl")
    assert back == rows and len(back) == len(pairs)
    assert [r["pair"] for r in back] == [p.index for p in pairs]
    flagged = [r for r in back if r["flagged"]]
    assert [r["pair"] for r in flagged] == [p.index for p in pairs if gone in (p.a, p.b)]
    assert flagged[0]["b"] is None and flagged[0]["reason"] == f"b={gone}: not in the source"
    ok = back[0]
    assert (ok["a"], ok["b"], ok["issame"], ok["fold"]) == (keys[pairs[0].a], keys[pairs[0].b], True, 0)
    assert set(ok) == {"pair", "fold", "issame", "a", "b", "a_id", "b_id", "flagged", "reason"}


def test_pairs_txt_plain_layout_for_unblocked_pairs(tmp_path):
    pairs = [Pair(0, 0, False, "A/A_0001.png", "B/B_0002.png"), Pair(1, 0, True, "A/A_0001.png", "A/A_0003.png")]
    assert write_pairs_txt(tmp_path / "p.txt", pairs) == "plain"
    assert (tmp_path / "p.txt").read_text() == "A\t1\tB\t2\nA\t1\t3\n"
    with pytest.raises(ValueError, match="LFW layout"):
        write_pairs_txt(tmp_path / "q.txt", pairs, layout="lfw")
    assert split_sample_id("A_B/A_B_0012.jpg") == ("A_B", 12, ".jpg")
    with pytest.raises(ValueError):
        split_sample_id("A/B_0001.jpg")


# ------------------------------------------------------------------ MFR2
def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def _mfr2_folder(root: Path) -> Path:
    for name, count in (("AdrianDunbar", 3), ("Aishwarya_Rai", 2), ("Bono", 1)):
        for k in range(1, count + 1):
            _png(root / name / f"{name}_{k:04d}.png", 10 * k)
    return root


def test_mfr2_pairs_without_header_and_interleaved(tmp_path):
    root = _mfr2_folder(tmp_path / "mfr2")
    text = "AdrianDunbar 1 2\nAdrianDunbar 1 Aishwarya_Rai 2\nAishwarya_Rai 1 2\nBono 1 AdrianDunbar 3\n"
    path = _write(tmp_path / "pairs.txt", text)
    ids = [item.sample_id for item in FolderSource(root).items()]
    pairs = mfr2.read_mfr2_pairs(path, ids)
    assert [(p.index, p.fold, p.issame) for p in pairs] == [(0, 0, True), (1, 0, False), (2, 0, True), (3, 0, False)]
    assert pairs[1].b == "Aishwarya_Rai/Aishwarya_Rai_0002.png"
    assert check_pairs_against(pairs, ids) == []
    assert write_pairs_txt(tmp_path / "out.txt", pairs) == "plain"
    assert mfr2.read_mfr2_pairs(tmp_path / "out.txt", ids) == pairs


def test_mfr2_resolves_other_extensions_and_flags_missing(tmp_path):
    root = tmp_path / "mfr2"
    _png(root / "Bono" / "Bono_0001.png")
    (root / "Bono" / "Bono_0002.jpg").write_bytes((root / "Bono" / "Bono_0001.png").read_bytes())
    path = _write(tmp_path / "pairs.txt", "Bono 1 2\nBono 1 3\n")
    ids = [item.sample_id for item in FolderSource(root).items()]
    pairs = mfr2.read_mfr2_pairs(path, ids)
    assert pairs[0].b == "Bono/Bono_0002.jpg"
    missing = check_pairs_against(pairs, ids)
    assert [(m.pair, m.side, m.sample_id) for m in missing] == [(1, "b", "Bono/Bono_0003.png")]


def test_mfr2_with_lfw_header_uses_lfw_layout(tmp_path):
    path = _write(tmp_path / "pairs.txt", "1\t1\nA\t1\t2\nA\t1\tB\t1\n")
    pairs = mfr2.read_mfr2_pairs(path)
    assert [(p.issame, p.a) for p in pairs] == [(True, "A/A_0001.png"), (False, "A/A_0001.png")]


@pytest.mark.parametrize("text, where", [("A 1\n", ":1:"), ("A 1 2\nA 1 A 2\n", ":2:"), ("A 1 2\nB 1 x\n", ":2:")])
def test_mfr2_malformed_lines(tmp_path, text, where):
    path = _write(tmp_path / "pairs.txt", text)
    with pytest.raises(ValueError, match=f"pairs.txt{where}"):
        mfr2.read_mfr2_pairs(path)


# ------------------------------------------------------------------ AR
def _ar_folder(root: Path) -> list[str]:
    """Three people in the real naming: m-001 complete (26 images), w-002 complete in the
    cropped-release spelling (W-002-NN.bmp), m-003 without session 1 (images 14-26)."""
    ids = []
    for prefix, person, numbers, ext in (
        ("m", "001", range(1, 27), "bmp"),
        ("W", "002", range(1, 27), "bmp"),
        ("m", "003", range(14, 27), "bmp"),
    ):
        for n in numbers:
            name = f"{prefix}-{person}-{n:02d}.{ext}"
            _png(root / name, n)  # PNG bytes are fine: the protocol reads names only
            ids.append(name)
    (root / "README.txt").write_text("not an image")
    return ids + ["README.txt"]


def test_ar_names_parse_with_sessions_and_conditions():
    img = ar.parse_ar_name("AR/m-001-21.raw")
    assert (img.identity, img.session, img.condition) == ("m-001", 2, "sunglasses")
    assert ar.parse_ar_name("F-12-8.bmp").identity == "w-012"
    assert ar.parse_ar_name("m-001-27.bmp") is None
    assert ar.parse_ar_name("m-001.bmp") is None


def test_ar_protocol_1_and_2(tmp_path):
    root = tmp_path / "AR"
    _ar_folder(root)
    ids = [item.sample_id for item in FolderSource(root).items()]

    p1 = ar.ar_protocol(ids, 1)
    assert p1.gallery == [f"m-001-{n:02d}.bmp" for n in range(1, 8)] + [f"W-002-{n:02d}.bmp" for n in range(1, 8)]
    assert p1.probes["sunglasses"] == [f"m-001-{n:02d}.bmp" for n in (8, 9, 10, 21, 22, 23)] + [
        f"W-002-{n:02d}.bmp" for n in (8, 9, 10, 21, 22, 23)
    ]
    assert p1.probes["scarf_s2"] == [
        "m-001-24.bmp",
        "m-001-25.bmp",
        "m-001-26.bmp",
        "W-002-24.bmp",
        "W-002-25.bmp",
        "W-002-26.bmp",
    ]
    assert p1.identity["W-002-11.bmp"] == "w-002"
    # m-003 has no session-1 image: its probes are excluded with the reason, not dropped
    excluded = {e["sample_id"]: e["reason"] for e in p1.excluded}
    assert "README.txt" in excluded and "not an AR file name" in excluded["README.txt"]
    m3 = [f"m-003-{n:02d}.bmp" for n in (21, 22, 23, 24, 25, 26)]
    assert all("m-003 has no gallery image" in excluded[s] for s in m3)
    # every input id is accounted for
    listed = set(p1.sample_ids()) | set(excluded)
    assert len(listed) + p1.info["unused"] == len(ids)

    p2 = ar.ar_protocol(ids, 2)
    assert p2.gallery == ["m-001-01.bmp", "W-002-01.bmp"]
    assert p2.probes == p1.probes
    assert p2.info["gallery_images"] == [1] and p2.info["probe_sets"]["scarf"] == [11, 12, 13, 24, 25, 26]
    assert "PDSN" in p2.info["source"] and "FROM" in p2.info["source"]


def test_ar_duplicate_images_are_an_error():
    with pytest.raises(ValueError, match="m-001 image 1 appears twice"):
        ar.ar_protocol(["m-001-01.bmp", "m-001-01.raw"])


def test_protocol_json_maps_keys_and_flags_unbuilt(tmp_path):
    ids = _ar_folder(tmp_path / "AR")
    p = ar.ar_protocol(ids, 2)
    keys = {sid: f"{i:06d}" for i, sid in enumerate(p.sample_ids())}
    dropped = p.probes["scarf"][0]
    keys.pop(dropped)
    doc = write_protocol_json(tmp_path / "protocol.json", p, keys, {dropped: "detect: no face detected"})
    assert json.loads((tmp_path / "protocol.json").read_text()) == doc
    assert doc["gallery"] == [keys[s] for s in p.gallery]
    assert len(doc["probes"]["scarf"]) == len(p.probes["scarf"]) - 1
    assert {"sample_id": dropped, "role": "probe:scarf", "reason": "detect: no face detected"} in doc["flagged"]
    assert doc["identity"][keys["W-002-01.bmp"]] == "w-002"
    assert doc["excluded"] == p.excluded


# ------------------------------------------------------------------ MegaFace challenge 1 style
def test_mf1_rotate_and_first(tmp_path):
    probes = tmp_path / "facescrub"
    for name, count in (("Adam_Brody", 3), ("Alyssa_Milano", 2), ("Solo", 1)):
        for k in range(count):
            _png(probes / name / f"{name}_{k}.jpg", k)
    distractors = tmp_path / "megaface"
    for sub, k in (("001", 0), ("001", 1), ("002", 0)):
        _png(distractors / sub / f"{k}.jpg", k)
    probe_ids = [i.sample_id for i in FolderSource(probes).items()]
    distractor_ids = [f"megaface/{i.sample_id}" for i in FolderSource(distractors).items()]

    rot = mf1.mf1_protocol(probe_ids, distractor_ids)
    assert (
        rot.gallery
        == rot.probes["probes"]
        == [
            "Adam_Brody/Adam_Brody_0.jpg",
            "Adam_Brody/Adam_Brody_1.jpg",
            "Adam_Brody/Adam_Brody_2.jpg",
            "Alyssa_Milano/Alyssa_Milano_0.jpg",
            "Alyssa_Milano/Alyssa_Milano_1.jpg",
        ]
    )
    assert rot.distractors == sorted(distractor_ids) and len(rot.distractors) == 3
    assert rot.excluded == [
        {
            "sample_id": "Solo/Solo_0.jpg",
            "reason": "identity Solo has a single image: no probe is left once it is the gallery",
        }
    ]
    tests = list(mf1.rotations(rot))
    assert len(tests) == 5 and sum(len(p) for _, p in tests) == 3 * 2 + 2 * 1
    assert tests[0] == ("Adam_Brody/Adam_Brody_0.jpg", ["Adam_Brody/Adam_Brody_1.jpg", "Adam_Brody/Adam_Brody_2.jpg"])

    first = mf1.mf1_protocol(probe_ids, distractor_ids, gallery_mode="first")
    assert first.gallery == ["Adam_Brody/Adam_Brody_0.jpg", "Alyssa_Milano/Alyssa_Milano_0.jpg"]
    assert set(first.gallery).isdisjoint(first.probes["probes"]) and len(first.probes["probes"]) == 3
    assert [len(p) for _, p in mf1.rotations(first)] == [2, 1]

    keys = {sid: f"k{i}" for i, sid in enumerate(first.sample_ids())}
    doc = write_protocol_json(tmp_path / "protocol.json", first, keys)
    assert doc["distractors"] == [keys[s] for s in first.distractors] and doc["flagged"] == []
    with pytest.raises(ValueError, match="both probe and distractor"):
        mf1.mf1_protocol(["A/1.jpg", "A/2.jpg"], ["A/1.jpg"])
