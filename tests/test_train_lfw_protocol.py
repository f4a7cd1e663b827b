"""The LFW mini-protocol split (occsynth_train/PROTOCOL.md)."""

from __future__ import annotations

import pytest

from occsynth.benchmarks.protocols.lfw import read_lfw_pairs
from occsynth_train.data.lfw_protocol import write_split


def _fake_lfw(tmp_path):
    """Folder LFW with A (3 images), B (2), C (2), D (1), E (2); 2 folds of 1 matched + 1 mismatched."""
    root = tmp_path / "lfw"
    for name, n in {"A": 3, "B": 2, "C": 2, "D": 1, "E": 2}.items():
        (root / name).mkdir(parents=True)
        for i in range(1, n + 1):
            (root / name / f"{name}_{i:04d}.jpg").write_bytes(b"jpg")
    pairs = tmp_path / "pairs_small.txt"  # not an official name: any header is accepted
    pairs.write_text("2\t1\nA\t1\t2\nB\t1\tD\t1\nC\t1\t2\nA\t1\tE\t1\n")
    return root, pairs


def test_split_excludes_every_test_fold_person(tmp_path):
    root, pairs = _fake_lfw(tmp_path)
    summary = write_split(pairs, root, tmp_path / "out", test_fold=1, extract=True)
    # fold 1 uses A, B, D; D has one image anyway -> train on C and E
    assert summary == {"test_fold": 1, "test_pairs": 2, "test_people": 3, "train_identities": 2, "train_images": 4}
    assert (tmp_path / "out" / "train_identities.txt").read_text().split() == ["C", "E"]
    assert sorted(p.name for p in (tmp_path / "out" / "train").glob("*/*.jpg")) == [
        "C_0001.jpg",
        "C_0002.jpg",
        "E_0001.jpg",
        "E_0002.jpg",
    ]
    rows = read_lfw_pairs(tmp_path / "out" / "test_pairs.txt")
    assert [(p.a, p.b, p.issame) for p in rows] == [
        ("A/A_0001.jpg", "A/A_0002.jpg", True),
        ("B/B_0001.jpg", "D/D_0001.jpg", False),
    ]


@pytest.mark.lfw
def test_real_lfw_fold1_split(lfw_pairs, lfw_tgz, tmp_path):
    summary = write_split(lfw_pairs, lfw_tgz, tmp_path, test_fold=1, extract=False)
    assert summary["test_pairs"] == 600 and summary["test_people"] == 435
    assert summary["train_identities"] == 1505 and summary["train_images"] == 8243
    test_people = {sid.split("/")[0] for p in read_lfw_pairs(lfw_pairs)[:600] for sid in (p.a, p.b)}
    assert not test_people & set((tmp_path / "train_identities.txt").read_text().split())
