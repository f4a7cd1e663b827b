"""Builds over a small fake LFW (smooth synthetic images, no real data needed): MSML's random-block
set (lfw-randblock) and lfw-masked's MaskTheFace style (ALOB's LFW-Masked).

The fake images hold no face, so every sample is centre-cropped (the benchmarks' default
--on-no-face center-crop) and its landmarks are the template's: enough to test what a build
draws, where and for which side of a pair, in seconds."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fake_lfw import PEOPLE, N
from PIL import Image

from occsynth.benchmarks import get_builder
from occsynth.cli import main
from occsynth.io.dataset import Dataset

SIZE = 112 * 112  # pixels of the arcface-112x112 crop


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def run(*args: str) -> str:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result.output


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


pytestmark = pytest.mark.usefixtures("private_cache")  # conftest: one detection cache per module


def _build(name: str, fake_lfw, out: Path, *extra: str) -> str:
    lfw, pairs = fake_lfw
    return run("build", name, "--lfw", str(lfw), "--pairs", str(pairs), "--out", str(out), "--quiet", *extra)


# ---------------------------------------------------------------- lfw-randblock (MSML)


def test_randblock_draws_whole_percentages_1_to_40_on_both_sides(fake_lfw, tmp_path):
    repeats = 4
    _build("lfw-randblock", fake_lfw, tmp_path / "rb", "--repeats", str(repeats), "--write-lock", str(tmp_path / "l"))
    table = rows(tmp_path / "rb" / "pairs.jsonl")
    assert len(table) == 2 * N * repeats and not any(r["flagged"] for r in table)
    assert sorted({r["repeat"] for r in table}) == list(range(repeats))
    index = {r["key"]: r for r in rows(tmp_path / "rb" / "index.jsonl")}
    assert {index[r[s]]["extra"]["side"] for r in table for s in "ab"} == {"a", "b"}  # both sides occluded
    drawn = []
    for r in table:
        for side in "ab":
            meta = index[r[side]]
            (record,) = meta["occluders"]
            assert record["name"] == "block" and record["params"]["fill"] == "black"
            ratio = record["params"]["ratio"]
            assert 1 <= round(ratio * 100) <= 40 and abs(ratio * 100 - round(ratio * 100)) < 1e-9
            side_px = round(math.sqrt(ratio * SIZE))  # the block occluder's integer square side
            assert record["params"]["width"] == record["params"]["height"] == side_px
            assert meta["occlusion_ratio"] == pytest.approx(side_px**2 / SIZE, abs=1e-6)
            x, y = record["params"]["x"], record["params"]["y"]
            assert 0 <= x <= 112 - side_px and 0 <= y <= 112 - side_px  # wholly inside the image
            drawn.append(ratio)
    # 80 draws from the 40 equally likely percentages: mean 20.5% (sd of one draw 11.5%, of the
    # mean 1.3%), and the draws reach both ends of the range
    assert len(drawn) == 2 * 2 * N * repeats
    assert abs(np.mean(drawn) - 0.205) < 0.05
    assert len(set(drawn)) >= 20 and min(drawn) <= 0.08 and max(drawn) >= 0.33
    # deterministic with the seed: the same build again is byte-identical, another seed is not
    _build("lfw-randblock", fake_lfw, tmp_path / "again", "--repeats", str(repeats), "--check", str(tmp_path / "l"))
    _build("lfw-randblock", fake_lfw, tmp_path / "seed1", "--repeats", str(repeats), "--seed", "1")
    other = {r["key"]: r["occluders"][0]["params"]["ratio"] for r in rows(tmp_path / "seed1" / "index.jsonl")}
    assert [other[k] for k in sorted(index)] != [index[k]["occluders"][0]["params"]["ratio"] for k in sorted(index)]


def test_randblock_uniform_draw_and_bad_range(fake_lfw, tmp_path):
    _build("lfw-randblock", fake_lfw, tmp_path / "u", "--draw", "uniform", "--range", "5,10", "--folds", "0")
    ratios = [r["occluders"][0]["params"]["ratio"] for r in rows(tmp_path / "u" / "index.jsonl")]
    assert len(ratios) == 4 * N and all(0.05 <= v <= 0.10 for v in ratios)
    assert any(abs(v * 100 - round(v * 100)) > 1e-6 for v in ratios)  # not whole percentages
    lfw, pairs = fake_lfw
    for bad in ("40,1", "0,40", "1.5,40"):
        result = invoke("build", "lfw-randblock", "--lfw", str(lfw), "--pairs", str(pairs), "--out",
                        str(tmp_path / "bad"), "--range", bad)  # fmt: skip
        assert result.exit_code != 0 and "--range" in result.output
    assert not (tmp_path / "bad").exists()  # refused before any work


# ---------------------------------------------------------------- lfw-masked --style maskthefaces (ALOB)


def test_lfw_masked_default_style_is_unchanged():
    builder = get_builder("lfw-masked")
    options = {"style": "mask3d", "maskthefaces_path": None, "mask_types": None, "masked_sides": "b"}
    assert builder.levels(options) == [("", builder.definition["occlusion"])]
    assert builder.sides(options) == ("b",) and builder.sides({**options, "masked_sides": "both"}) == ("a", "b")


def test_maskthefaces_style_without_the_folder_fails_in_one_line(fake_lfw, tmp_path):
    lfw, pairs = fake_lfw
    base = ["build", "lfw-masked", "--lfw", str(lfw), "--pairs", str(pairs), "--out", str(tmp_path / "o")]
    result = invoke(*base, "--style", "maskthefaces")
    assert result.exit_code != 0
    assert "--style maskthefaces needs --maskthefaces PATH" in result.output and "masks.cfg" in result.output
    empty = tmp_path / "not-maskthefaces"
    empty.mkdir()
    result = invoke(*base, "--style", "maskthefaces", "--maskthefaces", str(empty))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and "no MaskTheFace masks.cfg" in lines[0]
    result = invoke(*base, "--maskthefaces", str(empty))  # the folder without the style: refused, not ignored
    assert result.exit_code != 0 and "--style maskthefaces only" in result.output
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def mtf(third_party) -> Path:
    path = third_party / "maskthefaces"
    if not (path / "masks" / "masks.cfg").is_file():
        pytest.skip(f"MaskTheFace templates not found under {path}")
    return path


def _masks(out: Path) -> dict[str, np.ndarray]:
    found = {}
    for key, members in Dataset(out).iter_samples():
        if "mask.png" in members:
            found[key] = np.asarray(Image.open(io.BytesIO(members["mask.png"]))) > 0
    return found


def test_maskthefaces_style_masks_the_second_image_with_random_types(fake_lfw, mtf, tmp_path):
    _build("lfw-masked", fake_lfw, tmp_path / "m", "--style", "maskthefaces", "--maskthefaces", str(mtf))
    table = rows(tmp_path / "m" / "pairs.jsonl")
    assert len(table) == 2 * N and not any(r["flagged"] for r in table)
    index = {r["key"]: r for r in rows(tmp_path / "m" / "index.jsonl")}
    masks = _masks(tmp_path / "m")
    drawn = set()
    for r in table:
        assert not index[r["a"]]["occluders"] and index[r["a"]]["occlusion_ratio"] == 0  # clean side a
        meta = index[r["b"]]
        (record,) = meta["occluders"]
        assert record["name"] == "maskthefaces" and meta["align_mode"] == "center-crop"
        drawn.add(record["params"]["mask"])
        # the mask covers the mouth corners and the nose tip, and leaves the eyes visible
        (le, re, nose, ml, mr) = np.round(np.asarray(meta["landmarks"])).astype(int)
        mask = masks[r["b"]]
        assert all(mask[y, x] for x, y in (nose, ml, mr))
        assert not mask[le[1], le[0]] and not mask[re[1], re[0]]
        assert 0.1 < meta["occlusion_ratio"] < 0.6
    assert len(drawn) >= 3  # 10 draws over the frontal templates (MaskTheFace's random)
    frontal = {n for n in drawn if not n.endswith(("_left", "_right"))}
    assert frontal == drawn  # centre-cropped faces look straight ahead: no turned template


def test_maskthefaces_style_chosen_types_and_both_sides(fake_lfw, mtf, tmp_path):
    _build(
        "lfw-masked", fake_lfw, tmp_path / "s", "--style", "maskthefaces", "--maskthefaces", str(mtf),
        "--mask-types", "surgical,N95", "--masked-sides", "both",
    )  # fmt: skip
    index = rows(tmp_path / "s" / "index.jsonl")
    assert len(index) == 4 * N and {r["extra"]["side"] for r in index} == {"a", "b"}
    assert all(len(r["occluders"]) == 1 for r in index)
    assert {r["occluders"][0]["params"]["mask"] for r in index} == {"surgical", "N95"}
    lfw, pairs = fake_lfw
    result = invoke("build", "lfw-masked", "--lfw", str(lfw), "--pairs", str(pairs), "--out", str(tmp_path / "x"),
                    "--style", "maskthefaces", "--maskthefaces", str(mtf), "--mask-types", "surgical,bandana")  # fmt: skip
    assert result.exit_code != 0 and "bandana" in result.output and not (tmp_path / "x").exists()


# ---------------------------------------------------------------- --harmonize/--no-harmonize beyond LFW


def _harmonisation(index: list[dict]) -> set:
    """Per occluder record: whether it carries the harmonisation look (params), its spec value
    (spec_params; None when absent), walking fit_area's inner occluder too."""
    seen = set()
    for meta in index:
        for rec in meta["occluders"]:
            while rec is not None:
                seen.add(("harmonize" in rec["params"], json.dumps(rec["spec_params"].get("harmonize"))))
                rec = rec["params"].get("occluder") if isinstance(rec["params"].get("occluder"), dict) else None
    return seen


@pytest.mark.parametrize("builder", ["occ-train", "mf1-occ"])
def test_no_harmonize_reaches_the_occluders_of_the_other_builders(builder, fake_lfw, tmp_path):
    lfw, _ = fake_lfw
    if builder == "occ-train":  # aligned inputs: no detection, the fake images are the crops
        args = ["--src", str(lfw), "--aligned", "--ratio", "0:1"]
    else:  # the fake faces are centre-cropped (the benchmarks' --on-no-face center-crop)
        args = ["--probes", str(lfw), "--distractors", str(lfw / PEOPLE[0])]
    found = {}
    for flag in ("", "--no-harmonize"):
        out = tmp_path / (flag or "default")
        run("build", builder, *args, "--out", str(out), "--quiet", "--workers", "1", *([flag] if flag else []))
        index = rows(out / "index.jsonl")
        assert sum(bool(m["occluders"]) for m in index) >= 3  # occluded samples to look at
        found[flag] = _harmonisation(index)
    # harmonised by default: every occluder record has the look and says harmonize with the
    # current sharpness search ...
    assert found[""] == {(True, json.dumps({"blur_search": "predict"}))}
    # ... and --no-harmonize reached every occluder spec: records as written before harmonisation
    # existed (harmonize: false is a legacy value, left out of records: Occluder.legacy)
    assert found["--no-harmonize"] == {(False, "null")}
