"""3D face masks: pose from 5 landmarks, the pose bank, exact masks, placement.

The real face is skimage's astronaut aligned to ArcFace 112x112 with landmarks measured once
by MTCNN (see test_objects.py); turned faces are the mean 3D face model projected at known
poses (landmarks only: placement is checked on the landmarks, pixels on the real face)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from astronaut_face import aligned_astronaut, covered, render_checked

from occsynth.assets import asset_dir
from occsynth.authoring import masks as authoring_masks
from occsynth.faces import pose as posing
from occsynth.faces.templates import get_template
from occsynth.occluders import create_occluder
from occsynth.occluders.families import mask3d as m3d
from occsynth.seeding import make_rng

FACE, LANDMARKS = aligned_astronaut()


def turned(yaw, pitch=0.0, roll=0.0, scale=0.56, centre=(56.0, 51.6)):
    return posing.project(posing.MODEL_POINTS, posing.pose_matrix(yaw, pitch, roll), scale, centre)


POSES = [(0, 0, 0), (30, 0, 0), (-45, 10, 0), (20, -15, 10), (-10, 25, -20), (55, 5, 30)]


@pytest.mark.parametrize("pose", POSES)
def test_pose_matrix_round_trip(pose):
    assert np.allclose(posing.pose_angles(posing.pose_matrix(*pose)), pose, atol=1e-9)


@pytest.mark.parametrize("pose", POSES)
def test_pose_recovered_from_weak_perspective_landmarks(pose):
    est = posing.estimate_pose(turned(*pose, scale=0.7, centre=(60, 40)))
    assert np.allclose([est["yaw"], est["pitch"], est["roll"]], pose, atol=1e-6)
    assert math.isclose(est["scale"], 0.7, rel_tol=1e-9)


@pytest.mark.parametrize("pose", POSES)
def test_pose_recovered_from_perspective_landmarks(pose):
    """A real camera is perspective: a face 1 m away (the weak-perspective estimate is biased
    by the nose's nearness: about 2 degrees of pitch here, more closer up)."""
    r = posing.pose_matrix(*pose)
    cam = posing.MODEL_POINTS @ r.T + [0, 0, 1000.0]
    lm = 600.0 * cam[:, :2] / cam[:, 2:] + [56, 52]
    est = posing.estimate_pose(lm)
    assert np.allclose([est["yaw"], est["pitch"], est["roll"]], pose, atol=3.5)


def test_arcface_reference_is_frontal():
    est = posing.estimate_pose(get_template("arcface").points)
    assert max(abs(est["yaw"]), abs(est["pitch"]), abs(est["roll"])) < 1.0
    assert math.isclose(est["scale"], 35.24 / 63.0, rel_tol=0.01)


def test_sign_conventions():
    nose_right = turned(20)[2, 0] > turned(0)[2, 0]
    nose_up = turned(0, 20)[2, 1] < turned(0)[2, 1]
    right_eye_down = turned(0, 0, 20)[1, 1] > turned(0)[1, 1]
    assert nose_right and nose_up and right_eye_down


def test_committed_pose_bank_is_consistent():
    root = asset_dir("mask3d")
    index = json.loads((root / m3d.BANK_INDEX).read_text())
    assert {r["kind"] for r in index["renders"]} == set(m3d.KINDS)
    for r in index["renders"]:
        assert (root / r["file"]).is_file()
        # the stored anchors are the model projected at the stored pose
        est = posing.estimate_pose(np.asarray(r["anchors"]))
        assert np.allclose([est["yaw"], est["pitch"], est["roll"]], [r["yaw"], r["pitch"], r["roll"]], atol=0.05)
    assert sum(f.stat().st_size for f in root.iterdir()) < 8 * 2**20


def test_bank_lookup_picks_the_nearest_pose():
    bank = m3d.load_pose_bank()
    cands = bank.candidates("surgical", None)
    assert len(cands) > 0
    for yaw, pitch in [(33, -8), (-52, 14), (2, 3), (-90, -40)]:
        best = bank.nearest(cands, yaw, pitch)
        d = np.hypot(bank.poses[cands, 0] - yaw, bank.poses[cands, 1] - pitch)
        assert math.isclose(math.hypot(bank.poses[best, 0] - yaw, bank.poses[best, 1] - pitch), d.min())
    # through the occluder: a face turned by 33 degrees gets the 40-degree render
    occ = create_occluder("mask3d", kind="kn95", color="white")
    params = occ.apply(FACE, turned(33, -4), make_rng(0))[2]
    entry = next(r for r in bank.renders if r["file"] == params["render"])
    assert (entry["yaw"], entry["pitch"]) == (40.0, 0.0)


@pytest.mark.parametrize("kind", m3d.KINDS)
def test_bank_mode_covers_nose_and_mouth_not_eyes(kind):
    occ = create_occluder("mask3d", kind=kind)
    for lm in [LANDMARKS, turned(25), turned(-40, 10), turned(10, -15, 15)]:
        for seed in range(2):
            _, mask, params = render_checked(occ, FACE, lm, seed)
            le, re, nose, ml, mr = lm
            assert covered(mask, nose) and covered(mask, ml) and covered(mask, mr), params
            assert not covered(mask, le) and not covered(mask, re), params


def test_same_seed_same_mask():
    occ = create_occluder("mask3d")
    a, b = (occ(FACE, np.zeros((112, 112), np.uint8), LANDMARKS, make_rng(4)) for _ in range(2))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_unknown_kind_or_mode_is_refused():
    with pytest.raises(ValueError):
        create_occluder("mask3d", mode="raytrace")
    with pytest.raises(ValueError):
        create_occluder("mask3d", kind="gas").apply(FACE, LANDMARKS, make_rng(0))


@pytest.fixture(scope="module")
def egl():
    from occsynth.authoring.render import render_available

    if not render_available():
        pytest.skip("no EGL offscreen rendering here")


@pytest.mark.parametrize("kind", m3d.KINDS)
def test_direct_mode_renders_an_exact_mask(egl, kind):
    occ = create_occluder("mask3d", kind=kind, mode="direct", color="white" if kind != "cloth" else "print1")
    for lm in [LANDMARKS, turned(35, 5)]:
        _, mask, params = render_checked(occ, FACE, lm)
        le, re, nose, ml, mr = lm
        assert covered(mask, nose) and covered(mask, ml) and covered(mask, mr)
        assert not covered(mask, le) and not covered(mask, re)


def test_far_ear_loop_is_hidden_behind_the_head(egl):
    parts, _ = authoring_masks.face_mask_parts("surgical", make_rng(0), "black")
    loops_only = parts[1:]
    r = posing.pose_matrix(60, 0, 0)  # nose to the image right: the right loop is behind the head
    rgba = authoring_masks.render_posed(loops_only, r, 1.0, (100, 20), (200, 200), supersample=1)
    nose_x = posing.project(posing.MODEL_POINTS, r, 1.0, (100, 20))[2, 0]
    ys, xs = np.nonzero(rgba[..., 3])
    assert xs.size and xs.max() < nose_x  # only the near (left) loop shows


def test_pose_bank_rendering_is_reproducible(egl, tmp_path):
    args = dict(kinds=["kn95"], yaws=[20.0], pitches=[0.0], colors={"kn95": ["black"]}, seed=0)
    index = authoring_masks.render_mask_bank(tmp_path, **args)
    name = index["renders"][0]["file"]
    assert (tmp_path / name).read_bytes() == (asset_dir("mask3d") / name).read_bytes()


# ----------------------------------------------------------------------------- real mask shapes


CHIN = (0.0, 1.55)  # face frame: the chin (menton), as MaskTheFace's point e (importers.py)


def _hit(mask: np.ndarray, point) -> bool:
    x, y = (int(round(v)) for v in point)
    return bool(mask[min(max(y, 0), mask.shape[0] - 1), min(max(x, 0), mask.shape[1] - 1)])


@pytest.mark.lfw
@pytest.mark.parametrize(
    "spec",
    [("mask3d", {}), ("surgical_mask", {"split": "eval"}), ("surgical_mask", {"split": "train"})],
    ids=["mask3d", "surgical_mask-eval", "surgical_mask-train"],
)
def test_lfw_masks_cover_nose_tip_and_chin_never_the_eyes(lfw_fixture_faces, spec):
    from occsynth.faces.geometry import face_point

    name, params = spec
    faces = [f for f in lfw_fixture_faces if f["set"] == "sample"]
    occ = create_occluder(name, harmonize=False, version=2, **params)  # the mask does not depend on harmonize
    nose = chin = eyes = 0
    for i, face in enumerate(faces):
        lm = face["aligned"]
        mask = occ(face["crop"], np.zeros((112, 112), np.uint8), lm, make_rng(i))[1] > 0
        nose += _hit(mask, lm[2])
        chin += _hit(mask, face_point(lm, [CHIN])[0])  # below the crop: the mask reaching the bottom edge
        eyes += _hit(mask, lm[0]) or _hit(mask, lm[1])
    assert nose >= 0.95 * len(faces) and chin >= 0.95 * len(faces) and eyes == 0, (nose, chin, eyes)


def test_bank_has_the_real_mask_styles():
    from occsynth.assets.catalog import MASK_STYLES

    bank = m3d.load_pose_bank()
    for kind, styles in MASK_STYLES.items():
        assert bank.styles(kind) == sorted(styles)
    assert {"brick", "grass", "gravel", "motif", "sequin"} <= set(bank.styles("cloth"))
    # version 1 keeps the bank from before (builds made then rebuild byte for byte)
    old = m3d.load_pose_bank(version=1)
    assert len(old.renders) == 168 and old.styles("cloth") == ["print1", "print2"]


def test_photo_textures_are_scikit_images_own():
    from skimage import data

    rng = make_rng(3)
    tex = authoring_masks._photo_texture("brick", (40, 60), rng, ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    photo = data.brick().astype(np.float64)
    photo = (photo - photo.min()) / (photo.max() - photo.min())
    # a grey print of the photo, resized: its tone distribution is the photo's
    assert tex.shape == (40, 60, 3) and np.allclose(tex[..., 0], tex[..., 1])
    assert abs(tex.mean() - photo.mean()) < 0.08 and tex.std() > 0.5 * photo.std()


@pytest.mark.parametrize("kind", m3d.KINDS)
def test_masks_rest_on_the_face_and_cover_the_nose(kind):
    # the surface lies in front of the face model (nose ridge included) everywhere it is drawn
    outline = authoring_masks._outline(kind)
    x, y = authoring_masks._raster_grid()
    depth = authoring_masks._depth_raster(kind)
    face = authoring_masks.face_depth(x, y)
    assert (depth[outline] < face[outline]).all()
    # the nose tip (MODEL_POINTS[2], 24 mm in front of the eyes) is under the mask, which stands off it
    (x0, _), (y0, _), k = authoring_masks._RASTER
    tip = posing.MODEL_POINTS[2]
    row, col = int((tip[1] - y0) * k), int((tip[0] - x0) * k)
    assert outline[row, col] and depth[row, col] < tip[2] - 1.0
