"""Benchmark builders on a real LFW subset: the protocol facts (pairs, folds, occluded side,
achieved ratios), flagged pairs, locks, training sets and identification layouts."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from occsynth.benchmarks.protocols.lfw import read_lfw_pairs
from occsynth.cli import main

N = 20  # matched and mismatched pairs taken from fold 0


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


pytestmark = pytest.mark.usefixtures("private_cache")  # conftest: one detection cache per module


@pytest.fixture(scope="module")
def mini_lfw(lfw_tgz, lfw_pairs, tmp_path_factory) -> tuple[Path, Path]:
    """A real LFW folder holding the images of N matched + N mismatched fold-0 pairs, and a
    pairs file for them in the official layout (1 fold of N + N)."""
    pairs = read_lfw_pairs(lfw_pairs)
    chosen = [p for p in pairs if p.fold == 0 and p.issame][:N] + [p for p in pairs if p.fold == 0 and not p.issame][:N]
    wanted = {sid for p in chosen for sid in (p.a, p.b)}
    root = tmp_path_factory.mktemp("mini_lfw")
    with tarfile.open(lfw_tgz) as archive:
        for member in archive:
            rel = member.name.partition("/")[2]
            if member.isfile() and rel in wanted:
                (root / "lfw" / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / "lfw" / rel).write_bytes(archive.extractfile(member).read())
    lines = [f"{N}"]
    for p in chosen:
        (na, ia), (nb, ib) = [(s.split("/")[0], int(s.rsplit("_", 1)[1].split(".")[0])) for s in (p.a, p.b)]
        lines.append(f"{na}\t{ia}\t{ib}" if p.issame else f"{na}\t{ia}\t{nb}\t{ib}")
    (root / "pairs_mini.txt").write_text("\n".join(lines) + "\n")
    return root / "lfw", root / "pairs_mini.txt"


def test_lfw_occ_keeps_the_protocol_and_hits_the_mean_ratio(mini_lfw, tmp_path):
    lfw, pairs = mini_lfw
    out = tmp_path / "occ"
    run(
        "build",
        "lfw-occ",
        "--lfw",
        str(lfw),
        "--pairs",
        str(pairs),
        "--out",
        str(out),
        "--ratio",
        "0.43",
        "--spread",
        "0.03",
        "--workers",
        "2",
        "--quiet",
        "--write-lock",
        str(tmp_path / "lock.json"),
    )
    table = rows(out / "pairs.jsonl")
    assert len(table) == 2 * N and sum(r["issame"] for r in table) == N
    assert not any(r["flagged"] for r in table)
    index = {r["key"]: r for r in rows(out / "index.jsonl")}
    assert all(not index[r["a"]]["occluders"] for r in table)  # the protocol's clean side
    b_ratios = [index[r["b"]]["occlusion_ratio"] for r in table]
    assert all(index[r["b"]]["occluders"][0]["params"]["split"] == "eval" for r in table)
    assert abs(np.mean(b_ratios) - 0.4309) <= 0.005  # LFW-OCC-2.0's 43.09 % (+- 0.5 pp)
    assert (out / "card.md").exists() and (out / "card_occlusion_ratio.png").exists()
    # a rebuild (detections now come from the cache) matches the lock byte for byte
    run(
        "build",
        "lfw-occ",
        "--lfw",
        str(lfw),
        "--pairs",
        str(pairs),
        "--out",
        str(tmp_path / "again"),
        "--ratio",
        "0.43",
        "--spread",
        "0.03",
        "--workers",
        "1",
        "--quiet",
        "--check",
        str(tmp_path / "lock.json"),
    )


def test_a_missing_image_flags_its_pair_and_keeps_it(mini_lfw, tmp_path):
    lfw, pairs = mini_lfw
    copy = tmp_path / "lfw"
    shutil.copytree(lfw, copy)
    victim = read_lfw_pairs(pairs, expect=None)[3].b
    (copy / victim).unlink()
    run(
        "build",
        "lfw-occ-sunglasses",
        "--lfw",
        str(copy),
        "--pairs",
        str(pairs),
        "--out",
        str(tmp_path / "o"),
        "--quiet",
    )
    table = rows(tmp_path / "o" / "pairs.jsonl")
    assert len(table) == 2 * N
    flagged = [r for r in table if r["flagged"]]
    assert flagged and all(victim in r["reason"] and "missing" in r["reason"] for r in flagged)
    index = rows(tmp_path / "o" / "index.jsonl")
    assert {o["params"]["category"] for r in index for o in r["occluders"]} == {"sunglasses"}


def test_lfw_block_occludes_both_sides_per_level_and_repeat(mini_lfw, tmp_path):
    lfw, pairs = mini_lfw
    run(
        "build",
        "lfw-block",
        "--lfw",
        str(lfw),
        "--pairs",
        str(pairs),
        "--out",
        str(tmp_path / "blk"),
        "--levels",
        "0,30",
        "--repeats",
        "2",
        "--quiet",
    )
    clean = rows(tmp_path / "blk" / "level-00" / "index.jsonl")
    assert len(clean) == 2 * 2 * 2 * N and all(r["occlusion_ratio"] == 0 for r in clean)
    level = rows(tmp_path / "blk" / "level-30" / "index.jsonl")
    assert all(abs(r["occlusion_ratio"] - 0.30) <= 0.01 for r in level)
    assert {r["extra"]["side"] for r in level} == {"a", "b"}
    table = rows(tmp_path / "blk" / "level-30" / "pairs.jsonl")
    assert len(table) == 2 * 2 * N and {r["repeat"] for r in table} == {0, 1}
    by_key = {r["key"]: r for r in level}
    first = [by_key[r["b"]]["occluders"][0]["params"]["x"] for r in table if r["repeat"] == 0]
    second = [by_key[r["b"]]["occluders"][0]["params"]["x"] for r in table if r["repeat"] == 1]
    assert first != second  # repeats draw their own block positions


def test_training_sets_pair_clean_and_occluded_samples(mini_lfw, tmp_path):
    lfw, _ = mini_lfw
    some = tmp_path / "src"
    for person in sorted(p for p in lfw.iterdir())[:3]:
        shutil.copytree(person, some / person.name)
    images = sum(1 for _ in some.rglob("*.jpg"))
    run(
        "build",
        "occ-train",
        "--src",
        str(some),
        "--out",
        str(tmp_path / "train"),
        "--occlude",
        "block(ratio=0.2..0.4)",
        "--keep-clean",
        "--quiet",
    )
    index = rows(tmp_path / "train" / "index.jsonl")
    assert len(index) == 3 * images
    for group in {r["extra"]["group"] for r in index}:
        members = [r for r in index if r["extra"]["group"] == group]
        assert [r["extra"]["clean"] for r in members] == [True, False, False]
        assert len({r["source"] for r in members}) == 1
    run("build", "pdsn-pairs", "--src", str(some), "--out", str(tmp_path / "pdsn"), "--cells", "central", "--quiet")
    pdsn = [r for r in rows(tmp_path / "pdsn" / "index.jsonl") if r["occluders"]]
    assert len(pdsn) == images
    assert {r["occluders"][0]["params"]["cell"] for r in pdsn} <= {6, 7, 8, 11, 12, 13, 16, 17, 18}
    assert all(abs(r["occlusion_ratio"] - 1 / 25) < 0.01 for r in pdsn)


def test_ar_protocols_from_the_real_naming(mini_lfw, tmp_path):
    lfw, _ = mini_lfw
    people = [p for p in sorted(lfw.iterdir()) if len(list(p.iterdir())) >= 2][:2]
    ar = tmp_path / "AR"
    ar.mkdir()
    for n, person in enumerate(people, 1):
        photos = sorted(person.iterdir())
        for number in (1, 2, 8, 11, 14, 21, 24):  # neutral, expression, sunglasses, scarf, session 2
            Image.open(photos[number % len(photos)]).save(ar / f"m-{n:03d}-{number:02d}.bmp")
    run("build", "ar", "--ar", str(ar), "--out", str(tmp_path / "ar"), "--quiet")
    p2 = json.loads((tmp_path / "ar" / "protocol-2" / "protocol.json").read_text())
    assert len(p2["gallery"]) == 2  # image 1 of each person
    assert {"sunglasses", "scarf"} <= set(p2["probes"])
    assert all(not r["occluders"] for r in rows(tmp_path / "ar" / "protocol-2" / "index.jsonl"))
    p1 = json.loads((tmp_path / "ar" / "protocol-1" / "protocol.json").read_text())
    assert len(p1["gallery"]) == 4  # images 1 and 2 (non-occluded, session 1) of each person


def test_mf1_occ_occludes_probes_only(mini_lfw, tmp_path):
    lfw, _ = mini_lfw
    probes, distractors = tmp_path / "probes", tmp_path / "distractors"
    people = sorted(lfw.iterdir())
    for person in people[:2]:
        shutil.copytree(person, probes / person.name)
    for person in people[2:5]:
        shutil.copytree(person, distractors / person.name)
    run(
        "build",
        "mf1-occ",
        "--probes",
        str(probes),
        "--distractors",
        str(distractors),
        "--out",
        str(tmp_path / "mf1"),
        "--quiet",
    )
    index = rows(tmp_path / "mf1" / "index.jsonl")
    for r in index:
        assert bool(r["occluders"]) == r["source"].startswith("probes/")
    protocol = json.loads((tmp_path / "mf1" / "protocol.json").read_text())
    assert protocol["distractors"] and protocol["gallery"] is not None


def test_lfw_builds_harmonise_by_default_and_no_harmonize_builds_as_before(mini_lfw, tmp_path):
    lfw, pairs = mini_lfw
    index, locks = {}, {}
    for flag in ("--harmonize", "--no-harmonize"):
        out = tmp_path / flag
        lock = tmp_path / f"{flag}.json"
        args = ["--lfw", str(lfw), "--pairs", str(pairs), "--out", str(out), "--quiet", "--write-lock", str(lock)]
        run("build", "lfw-occ-sunglasses", flag, "--workers", "1", *args)
        index[flag] = {r["key"]: r for r in rows(out / "index.jsonl")}
        locks[flag] = json.loads(lock.read_text())
    occluded = [r for r in index["--harmonize"].values() if r["occluders"]]
    assert occluded and all("harmonize" in r["occluders"][0]["params"] for r in occluded)  # its look record
    assert all(r["occluders"][0]["spec_params"]["harmonize"] == {"blur_search": "predict"} for r in occluded)
    for key, old in index["--no-harmonize"].items():  # records as written before harmonisation existed
        for rec in old["occluders"]:
            assert "harmonize" not in rec["params"] and not {"harmonize", "version"} & set(rec["spec_params"])
        assert bool(old["occluders"]) == bool(index["--harmonize"][key]["occluders"])  # the same protocol side
    assert locks["--harmonize"]["options"]["harmonize"] is True
    assert locks["--no-harmonize"]["options"]["harmonize"] is False
