"""Occlusion specs: CLI grammar, JSON/YAML files, presets, mixing weights, sequences, replay."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from occsynth import contract
from occsynth.occluders import Composer, list_occluders, load_spec, occlude, parse_cli_spec
from occsynth.occluders.base import sample_value
from occsynth.occluders.compose import replay
from occsynth.occluders.presets import (
    FROM_BASE_SCALE,
    FROM_SIZE_FACTORS,
    PDSN_AREA,
    PDSN_SHAPES,
    get_preset,
    list_presets,
)
from occsynth.seeding import make_rng

LANDMARKS = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])
GEOMETRIC = ("block", "rectangle", "ellipse", "polygon", "blob", "pieces")


def _image(h=112, w=112):
    return np.random.default_rng(0).integers(1, 255, size=(h, w, 3), dtype=np.uint8)


def test_sample_value_draws_what_rng_uniform_draws():
    """A [lo, hi] value is drawn as lo + (hi - lo) * rng.random(), which is NumPy's uniform
    bit for bit and leaves the generator in the same state (builds' bytes depend on it)."""
    src = np.random.default_rng(3)
    ranges = [(0.9, 1.1), (-8.0, 8.0), (0.33, 0.53), (-15.0, 15), (0, 2)]
    ranges += [tuple(sorted(src.uniform(-1e3, 1e3, 2) * 10.0 ** src.integers(-6, 4))) for _ in range(40)]
    for i, (lo, hi) in enumerate(ranges):
        ours, numpys = np.random.default_rng(i), np.random.default_rng(i)
        for _ in range(500):
            value = sample_value([lo, hi], ours)
            assert type(value) is float and value == float(numpys.uniform(lo, hi)), (lo, hi)
        assert ours.bit_generator.state == numpys.bit_generator.state
    still = np.random.default_rng(0)
    assert sample_value([2.5, 2.5], still) == 2.5 and still.random() == np.random.default_rng(0).random()


# ------------------------------------------------------------------ parsing


def test_cli_grammar_to_data():
    spec = parse_cli_spec("0.5*clean | 0.5*block(ratio=0.2..0.4, fill=black) + ellipse")
    assert spec == {
        "mix": [
            {"p": 0.5, "spec": None},
            {
                "p": 0.5,
                "spec": {
                    "all": [
                        {"name": "block", "params": {"ratio": [0.2, 0.4], "fill": "black"}},
                        {"name": "ellipse", "params": {}},
                    ]
                },
            },
        ]
    }
    assert parse_cli_spec("polygon(vertices=5, spikiness=0.3)") == {
        "name": "polygon",
        "params": {"vertices": 5, "spikiness": 0.3},
    }
    assert parse_cli_spec("clean") is None


@pytest.mark.parametrize("bad", ["block(ratio)", "block +", "0.5*|block", "9x(y)"])
def test_cli_grammar_errors(bad):
    with pytest.raises(ValueError):
        parse_cli_spec(bad)


SPEC = {
    "mix": [
        {"p": 1, "spec": None},
        {
            "p": 3,
            "spec": {
                "all": [
                    {"name": "ellipse", "params": {"ratio": [0.1, 0.2], "fill": "noise"}},
                    {"name": "pieces", "params": {"ratio": 0.1, "n": 3}},
                ]
            },
        },
    ]
}


def test_json_and_yaml_files_are_specs(tmp_path):
    yaml = pytest.importorskip("yaml")
    paths = [tmp_path / "spec.json", tmp_path / "spec.yaml", tmp_path / "spec.yml"]
    paths[0].write_text(json.dumps(SPEC))
    paths[1].write_text(yaml.safe_dump(SPEC))
    paths[2].write_text(yaml.safe_dump(SPEC))
    image = _image()
    reference = occlude(image, LANDMARKS, SPEC, seed=3)
    for path in paths + [str(paths[0])]:
        assert load_spec(path) == SPEC
        again = occlude(image, LANDMARKS, path, seed=3)
        assert np.array_equal(again.image, reference.image) and again.records == reference.records


# ------------------------------------------------------------------ presets


def test_presets_resolve_by_name_prefix_atom_and_data():
    for name in list_presets():
        assert load_spec(name) == load_spec("preset:" + name) == get_preset(name)
    assert load_spec("lfw-block-30") == {"name": "block", "params": {"ratio": 0.3, "fill": "black"}}
    assert load_spec("lfw-block-0.25")["params"]["ratio"] == 0.25
    assert load_spec("lfw-block-7")["params"]["ratio"] == 0.07
    assert load_spec("block-0.3") == {"name": "block", "params": {"ratio": 0.3, "fill": "black"}}
    assert parse_cli_spec("0.5*clean | 0.5*preset:block-0.3")["mix"][1]["spec"] == get_preset("block-0.3")
    assert parse_cli_spec("clean | shapes")["mix"][1]["spec"] == get_preset("shapes")
    image = _image()
    a = occlude(image, LANDMARKS, {"preset": "block-0.3"}, seed=1)
    b = occlude(image, LANDMARKS, "block(ratio=0.3, fill=black)", seed=1)
    assert np.array_equal(a.image, b.image)
    with pytest.raises(KeyError):
        load_spec("preset:no-such-preset")
    with pytest.raises(ValueError):
        get_preset("lfw-block-0")


def test_presets_do_not_shadow_occluders_and_are_copies():
    assert not set(list_presets()) & set(list_occluders())
    get_preset("shapes")["mix"].clear()
    assert len(get_preset("shapes")["mix"]) == len(GEOMETRIC)


def test_shapes_preset_runs():
    composer = Composer("shapes")
    names = set()
    for seed in range(60):
        occ = composer(_image(), LANDMARKS, make_rng(seed))
        assert len(occ.records) == 1 and 0.05 < occ.ratio < 0.45
        names.add(occ.records[0]["name"])
    assert names == set(GEOMETRIC)


def _leaf_names(spec) -> set[str]:
    if spec is None:
        return set()
    if "name" in spec:
        return {spec["name"]}
    return set().union(*(_leaf_names(b["spec"]) for b in spec["mix"]))


def test_msml_train_weights_and_clear_error_for_missing_families():
    spec = get_preset("msml-train")
    weights = {}
    for branch in spec["mix"]:
        key = "clean" if branch["spec"] is None else ("mask3d" if branch["spec"].get("name") == "mask3d" else "other")
        weights[key] = weights.get(key, 0) + branch["p"]
    assert weights == pytest.approx({"mask3d": 0.2, "clean": 0.4, "other": 0.4})
    assert sum(b["p"] for b in spec["mix"]) == pytest.approx(1.0)
    missing = _leaf_names(spec) - set(list_occluders())
    if missing:
        with pytest.raises(KeyError) as err:
            Composer("msml-train")
        assert any(repr(name) in str(err.value) for name in missing)
    else:
        Composer("msml-train")


def test_from_train_reads_1_0p5_5_as_nine_factors():
    assert FROM_SIZE_FACTORS == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    spec = get_preset("from-train")
    assert [b["p"] for b in spec["mix"]] == [1.0, 2.0] and spec["mix"][0]["spec"] is None
    scales = spec["mix"][1]["spec"]["params"]["scale"]["choice"]
    assert scales == [round(FROM_BASE_SCALE * f, 3) for f in FROM_SIZE_FACTORS]  # 1:0.5:5 on a smaller base
    assert get_preset("from-occluder") == spec["mix"][1]["spec"]


def test_pdsn_train_25_covers_a_quarter_of_the_face_anywhere():
    assert PDSN_AREA == 0.25
    spec = get_preset("pdsn-train-25")
    assert [b["p"] for b in spec["mix"]] == [0.5, 0.5]
    composer = Composer("pdsn-train-25")
    image, n = _image(), 120
    names, centres = [], []
    for seed in range(n):
        occ = composer(image, LANDMARKS, make_rng(seed))
        (record,) = occ.records  # one occluder, never a clean sample
        names.append(record["name"])
        if record["family"] == "geometric":
            # exact pixel counts (ellipse, polygon, blob; block: a 56 px square is 3136 = 12544 / 4
            # pixels), rectangle within its integer sides
            assert abs(occ.ratio - 0.25) <= (0.003 if record["name"] == "rectangle" else 1e-9), record
            p = record["params"]
            assert 0 <= p["x"] and p["x"] + p["width"] <= 112 and 0 <= p["y"] and p["y"] + p["height"] <= 112
            assert p.get("fits", True)  # wholly inside the image, never cut by the border
            centres.append((p["x"] + p["width"] / 2, p["y"] + p["height"] / 2))
        else:
            assert record["name"] == "object" and record["params"]["split"] == "train"
            assert record["params"]["region"] == "random" and record["fit"]["target"] == 0.25
            assert abs(occ.ratio - 0.25) <= 0.002  # fit_area's tolerance
    objects = names.count("object")
    assert abs(objects - n / 2) < 4.5 * math.sqrt(n / 4)  # half objects, half shapes
    assert set(names) - {"object"} == set(PDSN_SHAPES)
    # shapes are placed anywhere: their centres reach every side of the 112 x 112 image
    xs, ys = np.array(centres).T
    assert xs.min() < 40 and xs.max() > 72 and ys.min() < 40 and ys.max() > 72


# ------------------------------------------------------------------ composition


def test_mix_hits_its_weights():
    weights = {"clean": 0.2, "block": 0.3, "ellipse": 0.5}
    composer = Composer("0.2*clean | 0.3*block(ratio=0.1) | 0.5*ellipse(ratio=0.1)")
    image = _image(32, 32)
    n = 3000
    counts = {k: 0 for k in weights}
    for seed in range(n):
        records = composer(image, LANDMARKS, make_rng(seed)).records
        counts[records[0]["name"] if records else "clean"] += 1
    for key, p in weights.items():
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts[key] - n * p) < 4.5 * sigma, (key, counts)


def test_sequence_unites_masks_and_records_every_occluder():
    image = _image()
    occ = occlude(image, LANDMARKS, "rectangle(ratio=0.1) + ellipse(ratio=0.1, fill=white)", seed=4)
    assert [r["name"] for r in occ.records] == ["rectangle", "ellipse"]
    assert all({"family", "name", "params", "seed", "area", "spec_params"} <= set(r) for r in occ.records)
    assert occ.records[1]["spec_params"] == {
        "ratio": 0.1,
        "aspect": [0.5, 2.0],
        "angle": [0.0, 180.0],
        "fill": "white",
        "overflow": "clip",
    }
    assert max(r["area"] for r in occ.records) <= occ.ratio <= sum(r["area"] for r in occ.records) + 1e-9
    changed = (occ.image != image).any(axis=2)
    assert not (changed & (occ.mask == 0)).any()
    meta = json.loads(contract.dumps({"occluders": occ.records}))  # records are JSON as they are
    assert meta["occluders"] == json.loads(json.dumps(occ.records))


# ------------------------------------------------------------------ replay


def _roundtrip(records):
    return json.loads(contract.dumps(records))


def _same(a, b):
    return np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)


@pytest.mark.parametrize("name", GEOMETRIC)
def test_replay_recreates_each_geometric_occluder(name):
    image = _image()
    spec = {"name": name, "params": {"ratio": [0.1, 0.5], "fill": {"choice": ["noise", "texture", "mean"]}}}
    for seed in range(4):
        original = occlude(image, LANDMARKS, spec, seed=seed)
        records = _roundtrip(original.records)
        again = replay(image, LANDMARKS, records)
        assert _same(original, again) and again.records == records
        if name != "block":
            # the concrete params alone (no spec_params) also replay it
            bare = [{k: v for k, v in r.items() if k != "spec_params"} for r in records]
            assert _same(original, replay(image, LANDMARKS, bare))


def test_replay_recreates_mixes_and_sequences():
    image = _image()
    spec = {
        "mix": [
            {"p": 1, "spec": None},
            {"p": 1, "spec": "shapes"},
            {
                "p": 2,
                "spec": {
                    "all": ["block(ratio=0.1..0.2, fill=noise)", "blob(fill=texture)", {"preset": "lfw-block-10"}]
                },
            },
        ]
    }
    for seed in range(12):
        original = occlude(image, LANDMARKS, spec, seed=seed)
        again = replay(image, LANDMARKS, _roundtrip(original.records))
        assert _same(original, again) and again.records == _roundtrip(original.records)


def test_replay_detects_a_record_it_cannot_reproduce():
    image = _image()
    original = occlude(image, LANDMARKS, "block(ratio=0.2..0.4, fill=noise)", seed=2)
    records = _roundtrip(original.records)
    # block samples a range with a draw and a scalar without: its concrete params are not enough
    del records[0]["spec_params"]
    with pytest.raises(ValueError, match="does not reproduce"):
        replay(image, LANDMARKS, records)
    records = _roundtrip(original.records)
    records[0]["params"]["x"] += 1
    with pytest.raises(ValueError, match="does not reproduce"):
        replay(image, LANDMARKS, records)


def test_training_presets_never_draw_evaluation_templates():
    """MF1_occ-style evaluation needs occluders unseen in training."""
    from occsynth.occluders import occlude

    face = np.full((112, 112, 3), 120, np.uint8)
    landmarks = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])
    seen = set()
    for preset in ("msml-train", "from-train", "pdsn-train-25"):
        for seed in range(150):
            for record in occlude(face, landmarks, f"preset:{preset}", seed).records:
                if record["family"] == "object":
                    seen.add(record["params"]["split"])
    assert seen == {"train"}
