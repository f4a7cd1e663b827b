"""Object occluders from the project's own template bank: exact masks, placement, splits.

Real face: skimage's astronaut photo aligned to the ArcFace 112x112 template with the five
landmarks that facenet-pytorch's MTCNN (the project's detector) found on it once:
ASTRONAUT_LANDMARKS below, in the original 512x512 image.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from astronaut_face import aligned_astronaut, centroid, covered, render_checked

from occsynth.assets import catalog as bank
from occsynth.authoring import objects as authoring
from occsynth.occluders import create_occluder, list_occluders
from occsynth.occluders.families.objects import ALPHA_HALF, full_alpha, load_bank, warp_roi
from occsynth.seeding import make_rng

FACE, LANDMARKS = aligned_astronaut()
IOD = float(np.hypot(*(LANDMARKS[1] - LANDMARKS[0])))
STILL = dict(scale=1.0, rotation=0.0, jitter=0.0)


def test_registry_has_object_family_and_aliases():
    names = set(list_occluders())
    assert {"object", *bank.CATEGORIES} <= names
    for category in bank.CATEGORIES:
        occ = create_occluder(category)
        assert occ.params["category"] == category and occ.family == "object"


def test_committed_bank_index_is_complete():
    root = bank.default_bank_dir()
    index = json.loads((root / bank.BANK_FILE).read_text())
    by_cat: dict[str, list] = {}
    for t in index["templates"]:
        by_cat.setdefault(t["category"], []).append(t)
        assert (root / t["file"]).is_file()
        assert t["region"] in bank.REGIONS and t["split"] in ("train", "eval")
        assert max(t["size"]) <= 256
        pts, faces = np.asarray(t["anchor"]["points"]), np.asarray(t["anchor"]["face_points"])
        assert pts.shape == faces.shape and pts.shape[0] >= 2 and np.isfinite(pts).all()
    assert set(by_cat) == set(bank.CATEGORIES)
    for cat, items in by_cat.items():
        n_eval = sum(t["split"] == "eval" for t in items)
        assert len(items) >= 8 and 0 < n_eval < len(items), cat
        assert n_eval == round(len(items) * authoring.EVAL_FRACTION)
    total = sum(f.stat().st_size for f in root.iterdir())
    assert total < 8 * 2**20


@pytest.mark.parametrize("category", bank.CATEGORIES)
@pytest.mark.parametrize("feather", [0.0, 1.5])
def test_mask_is_exactly_the_warped_alpha(category, feather):
    occ = create_occluder(category, feather=feather)
    for seed in range(3):
        out, mask, params = render_checked(occ, FACE, LANDMARKS, seed)
        assert mask.any()
        # the recorded params re-create the same warp
        template = next(t for t in load_bank().templates if t.name == params["template"])
        again = warp_roi(template.rgba, np.reshape(params["matrix"], (2, 3)), FACE.shape[:2], margin=2)
        assert np.array_equal(full_alpha(again, FACE.shape[:2]) >= ALPHA_HALF, mask)


def _each_template(category):
    return [t.name for t in load_bank().templates if t.meta["category"] == category]


LE, RE, NOSE, ML, MR = LANDMARKS
MOUTH = (ML + MR) / 2


def _mask_of(category, name, **params):
    occ = create_occluder(category, template=name, **{**STILL, **params})
    return occ(FACE, np.zeros((112, 112), np.uint8), LANDMARKS, make_rng(0))[1] > 0


def test_sunglasses_sit_on_the_eyes():
    for name in _each_template("sunglasses"):
        mask = _mask_of("sunglasses", name)
        assert covered(mask, LE) and covered(mask, RE), name
        assert abs(centroid(mask)[1] - LE[1]) < 0.3 * IOD, name
        assert not covered(mask, MOUTH), name


def test_clear_eyeglasses_leave_the_eyes_visible():
    for name in _each_template("eyeglasses"):
        mask = _mask_of("eyeglasses", name)
        ys, xs = np.nonzero(mask)
        near = np.hypot(xs - LE[0], ys - LE[1]).min(), np.hypot(xs - RE[0], ys - RE[1]).min()
        assert max(near) < 0.7 * IOD, name  # the frame surrounds both eyes
        assert not covered(mask, LE) and not covered(mask, RE), name  # the lenses are not occlusion


def test_eye_masks_cover_the_eye_area_with_holes():
    for name in _each_template("eye_mask"):
        mask = _mask_of("eye_mask", name)
        bridge = (LE + RE) / 2 + [0, -0.1 * IOD]
        assert covered(mask, bridge), name
        assert not covered(mask, LE) and not covered(mask, RE), name  # eye holes
        assert not covered(mask, MOUTH), name


@pytest.mark.parametrize("category", ["scarf", "surgical_mask"])
def test_face_coverings_cover_mouth_not_eyes(category):
    for name in _each_template(category):
        mask = _mask_of(category, name)
        assert covered(mask, ML) and covered(mask, MR) and covered(mask, MOUTH), name
        assert not covered(mask, LE) and not covered(mask, RE), name
    if category == "surgical_mask":
        assert all(covered(_mask_of(category, n), NOSE) for n in _each_template(category))


def test_hats_sit_above_the_eyes():
    for name in _each_template("hat"):
        mask = _mask_of("hat", name)
        assert centroid(mask)[1] < LE[1] - 0.6 * IOD, name
        assert not covered(mask, LE) and not covered(mask, RE), name
        assert covered(mask, (LE + RE) / 2 - [0, 1.0 * IOD]), name  # the forehead


@pytest.mark.parametrize("category", ["cup", "phone", "book", "microphone", "hand"])
def test_held_objects_land_in_their_region(category):
    for name in _each_template(category):
        meta = next(t.meta for t in load_bank().templates if t.name == name)
        mask = _mask_of(category, name)
        c = centroid(mask)
        if meta["region"] == "eyes":
            assert covered(mask, LE) or covered(mask, RE), name
        else:
            assert c[1] > NOSE[1] - 0.2 * IOD, name
            assert not (covered(mask, LE) and covered(mask, RE)), name
        assert abs(c[0] - NOSE[0]) < 1.2 * IOD, name


def test_region_override_moves_the_object():
    name = _each_template("sunglasses")[0]
    mask = _mask_of("sunglasses", name, region="mouth")
    assert abs(centroid(mask)[1] - MOUTH[1]) < 0.3 * IOD
    assert not covered(mask, LE)


def test_placement_follows_face_roll():
    face, lm = aligned_astronaut(roll_deg=25)
    for name in _each_template("sunglasses")[:3]:
        occ = create_occluder("sunglasses", template=name, **STILL)
        mask = occ(face, np.zeros((112, 112), np.uint8), lm, make_rng(0))[1] > 0
        assert covered(mask, lm[0]) and covered(mask, lm[1])


def test_same_seed_same_output_and_record():
    occ = create_occluder("object", category={"choice": ["cup", "hat", "hand"]}, split="train")
    a = occ(FACE, np.zeros((112, 112), np.uint8), LANDMARKS, make_rng(7))
    b = occ(FACE, np.zeros((112, 112), np.uint8), LANDMARKS, make_rng(7))
    c = occ(FACE, np.zeros((112, 112), np.uint8), LANDMARKS, make_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])
    json.dumps(a[2])  # the record is plain JSON
    # and the record re-creates the sample
    p = a[2]["params"]
    again = create_occluder(
        "object",
        template=p["template"],
        region=p["region"],
        scale=p["scale"],
        rotation=p["rotation"],
        jitter=0.0,
        feather=p["feather"],
    )
    _, mask2, rec2 = again.apply(FACE, LANDMARKS, make_rng(0))
    shifted = np.reshape(rec2["matrix"], (2, 3))
    shifted[:, 2] += p["shift"]
    assert np.allclose(shifted.ravel(), p["matrix"])


@pytest.mark.parametrize("split", ["train", "eval"])
def test_split_filters_templates(split):
    occ = create_occluder("object", split=split)
    seen = {occ.apply(FACE, LANDMARKS, make_rng(s))[2]["template"] for s in range(60)}
    metas = {t.name: t.meta for t in load_bank().templates}
    assert seen and all(metas[n]["split"] == split for n in seen)


def test_splits_are_disjoint_per_category():
    for category in bank.CATEGORIES:
        train = set(load_bank().select((category,), "train"))
        evals = set(load_bank().select((category,), "eval"))
        assert train and evals and not train & evals


def test_unknown_category_and_split_are_refused():
    with pytest.raises(ValueError):
        create_occluder("object", split="test")
    with pytest.raises(ValueError):
        create_occluder("object", category="umbrella").apply(FACE, LANDMARKS, make_rng(0))


def test_bank_regeneration_is_byte_identical(tmp_path):
    from occsynth.authoring.render import render_available

    if not render_available():
        pytest.skip("no EGL offscreen rendering here")
    cats = ["eyeglasses", "cup"]
    index = authoring.build_template_bank(tmp_path, seed=0, variants=1, categories=cats)
    committed = {t["file"]: t for t in json.loads((bank.default_bank_dir() / bank.BANK_FILE).read_text())["templates"]}
    for t in index["templates"]:
        assert (tmp_path / t["file"]).read_bytes() == (bank.default_bank_dir() / t["file"]).read_bytes()
        assert t["anchor"] == committed[t["file"]]["anchor"]


def test_default_bank_dir_is_inside_the_package():
    assert bank.default_bank_dir() == Path(__file__).resolve().parents[1] / "occsynth" / "assets" / "templates"


# ----------------------------------------------------------------------------- head pose (version 2)


def _turned(yaw, pitch=0.0, roll=0.0, scale=0.56, centre=(56.0, 51.6)):
    from occsynth.faces import pose as posing

    return posing.project(posing.MODEL_POINTS, posing.pose_matrix(yaw, pitch, roll), scale, centre)


def _still_mask(category, name, landmarks, version=2):
    occ = create_occluder(category, template=name, version=version, harmonize=False, **STILL)
    return occ(FACE, np.zeros((112, 112), np.uint8), landmarks, make_rng(0))[1] > 0


def _extent(mask):
    ys, xs = np.nonzero(mask)
    return xs.max() - xs.min() + 1, ys.max() - ys.min() + 1


def test_worn_glasses_are_foreshortened_on_a_turned_head():
    front, side = _turned(0), _turned(40)
    for name in _each_template("sunglasses"):
        w0, h0 = _extent(_still_mask("sunglasses", name, front))
        w1, h1 = _extent(_still_mask("sunglasses", name, side))
        # a flat frame turned by 40 degrees: cos 40 = 0.77 as wide, as high
        assert 0.72 < w1 / w0 < 0.82 and 0.93 < h1 / h0 < 1.07, (name, w1 / w0, h1 / h0)
        mask = _still_mask("sunglasses", name, side)
        assert covered(mask, side[0]) and covered(mask, side[1]), name  # a lens on each eye
        # version 1 (a similarity on the two eyes) shrinks the whole frame instead
        _, h_old = _extent(_still_mask("sunglasses", name, side, version=1))
        _, h_old_front = _extent(_still_mask("sunglasses", name, front, version=1))
        assert h_old / h_old_front < 0.85, name


def test_round_worn_objects_keep_their_width_on_a_turned_head():
    front, side = _turned(0), _turned(40)
    for name in _each_template("hat"):
        w0, _ = _extent(_still_mask("hat", name, front))
        w1, _ = _extent(_still_mask("hat", name, side))
        assert 0.9 < w1 / w0 < 1.1, (name, w1 / w0)


def test_frontal_faces_are_placed_as_before():
    # on a frontal face the pose map and version 1's similarity agree to within a pixel or two
    for category in ("sunglasses", "eye_mask", "hat", "scarf"):
        for name in _each_template(category)[:3]:
            a = _still_mask(category, name, _turned(0))
            b = _still_mask(category, name, _turned(0), version=1)
            assert np.abs(centroid(a) - centroid(b)).max() < 2.5, (category, name)


def _lens_centres(mask, eyes):
    """The centroid of the mask's pixels nearer each eye than the other, after a 3x3 opening
    (which drops the thin bridge and temples): one lens centre per eye, even where foreshortened
    lenses touch (a split into connected blobs would then find one)."""
    opened = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    ys, xs = np.nonzero(opened)
    points = np.stack([xs, ys], axis=1).astype(np.float64)
    side = np.linalg.norm(points[:, None] - np.asarray(eyes)[None], axis=2).argmin(axis=1)
    return np.array([points[side == k].mean(axis=0) for k in (0, 1)])


@pytest.mark.lfw
def test_lfw_faces_turned_the_most_get_a_lens_on_each_eye(lfw_fixture_faces):
    turned = [f for f in lfw_fixture_faces if f["set"] == "yaw"]
    assert min(abs(f["yaw"]) for f in turned) > 40
    worst, heights = [], []
    for i, face in enumerate(turned):
        eyes = face["aligned"][:2]
        masks = {}
        for version in (1, 2):  # 1: a similarity on the landmarks; 2: the head pose
            occ = create_occluder("sunglasses", harmonize=False, version=version, **STILL)
            masks[version] = occ(face["crop"], np.zeros((112, 112), np.uint8), face["aligned"], make_rng(i))[1] > 0
        centres = _lens_centres(masks[2], eyes)
        worst.append(np.linalg.norm(centres - eyes, axis=1).max())
        assert covered(masks[2], eyes[0]) and covered(masks[2], eyes[1]), face["source"]
        heights.append(_extent(masks[2])[1] / _extent(masks[1])[1])
    # the lens centres lie on the eyes (LFW's most turned faces: estimated |yaw| 55-70 degrees)
    assert np.median(worst) <= 3.0 and max(worst) <= 5.0, worst
    # foreshortened, not shrunk: version 1 scales the whole frame with the eye distance (cos yaw),
    # the pose keeps its height (measured: 1.35-2.5 times version 1's)
    assert min(heights) > 1.2, heights


# ----------------------------------------------------------------------------- banks of both versions


def test_version_1_bank_is_the_previous_bank():
    old, new = load_bank(version=1), load_bank()
    assert len(old.templates) == 110 and len(new.templates) == 120
    index = json.loads((bank.default_bank_dir(1) / bank.BANK_FILE).read_text())
    for t in old.templates:  # every file, here or shared with the current bank, is the one it was made with
        assert t.meta["file"] in index["sha256"]
    shared = [t for t in index["templates"] if not (bank.default_bank_dir(1) / t["file"]).exists()]
    assert shared and all((bank.default_bank_dir() / t["file"]).exists() for t in shared)


def test_a_changed_shared_template_is_refused(tmp_path):
    import shutil

    from occsynth.occluders.families.objects import _load_bank_cached

    v1, current = tmp_path / "v1", tmp_path / "current"
    shutil.copytree(bank.default_bank_dir(1), v1)
    shutil.copytree(bank.default_bank_dir(), current)
    index = json.loads((v1 / bank.BANK_FILE).read_text())
    index["files_from"] = "../current"
    (v1 / bank.BANK_FILE).write_text(json.dumps(index))
    assert len(load_bank(v1).templates) == 110
    _load_bank_cached.cache_clear()
    (current / "cup_00.png").write_bytes((current / "cup_01.png").read_bytes())
    with pytest.raises(ValueError, match="sha256"):
        load_bank(v1)
    _load_bank_cached.cache_clear()
