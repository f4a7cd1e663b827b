"""Importers of third-party template sets, tested against the real files in
../shared/data/third_party (skipped when absent). The face is skimage's astronaut aligned
to ArcFace 112x112 with landmarks measured once by MTCNN (see test_objects.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astronaut_face import aligned_astronaut, centroid, covered, render_checked

from occsynth.faces.templates import get_template
from occsynth.occluders import create_occluder
from occsynth.occluders.families.importers import (
    FACE_WIDTH_IOD,
    OCFR_REGIONS,
    folder_templates,
    load_maskthefaces,
    load_ocfr,
    maskthefaces_face_points,
)
from occsynth.occluders.families.objects import ALPHA_HALF, full_alpha
from occsynth.seeding import make_rng

FACE, LANDMARKS = aligned_astronaut()
LE, RE, NOSE, ML, MR = LANDMARKS
IOD = float(np.hypot(*(RE - LE)))
EMPTY = np.zeros((112, 112), np.uint8)


@pytest.fixture(scope="module")
def ocfr(third_party):
    return third_party / "ocfr2022"


@pytest.fixture(scope="module")
def mtf(third_party):
    return third_party / "maskthefaces"


def test_ocfr_csv_parses_every_row(ocfr):
    entries = load_ocfr(str(ocfr))
    rows = [r for r in (ocfr / "occluders" / "occlusions.csv").read_text().splitlines() if r.strip()]
    assert len(entries) == len(rows)
    for e in entries:
        assert e.region in OCFR_REGIONS
        assert sorted(e.points) == list(OCFR_REGIONS[e.region])
        assert e.template.rgba.shape[2] == 4 and e.template.rgba[..., 3].max() > 0
    assert any(e.disabled for e in entries) and any(not e.disabled for e in entries)


def test_ocfr_disabled_rows_are_skipped_by_default(ocfr):
    occ = create_occluder("ocfr2022", path=str(ocfr))
    names = {occ.apply(FACE, LANDMARKS, make_rng(s))[2]["template"] for s in range(80)}
    disabled = {e.file for e in load_ocfr(str(ocfr)) if e.disabled}
    assert names and not names & disabled


def test_every_ocfr_template_lands_where_it_belongs(ocfr):
    for e in load_ocfr(str(ocfr)):
        occ = create_occluder("ocfr2022", path=str(ocfr), template=e.file, anchor_jitter=0.0)
        _, mask, params = render_checked(occ, FACE, LANDMARKS)
        assert mask.any(), e.file
        c = centroid(mask)
        if e.region == "eye":  # sunglasses: on the eye line, over both eyes
            assert abs(c[1] - LE[1]) < 0.25 * IOD, e.file
            assert covered(mask, LE) and covered(mask, RE), e.file
        elif e.region == "upper_face":  # carnival masks: around the eyes
            assert abs(c[1] - LE[1]) < 0.6 * IOD, e.file
        elif e.region == "top_face":  # hats: above the eyes
            assert c[1] < LE[1] - 0.4 * IOD, e.file
            assert not (covered(mask, LE) or covered(mask, RE)), e.file
        else:  # lower face: below the eyes, on the nose-mouth area
            assert c[1] > LE[1] + 0.5 * IOD, e.file
            assert not (covered(mask, LE) and covered(mask, RE)), e.file


def test_ocfr_same_seed_same_output(ocfr):
    occ = create_occluder("ocfr2022", path=str(ocfr))
    a, b = (occ(FACE, EMPTY, LANDMARKS, make_rng(3)) for _ in range(2))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_maskthefaces_cfg_parses_every_template(mtf):
    entries = load_maskthefaces(str(mtf))
    declared, section = set(), None
    for line in (mtf / "masks" / "masks.cfg").read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line[1:-1]
        elif line.startswith("template") and section:
            declared.add(section)  # commented-out (";") sections never get here
    assert set(entries) == declared
    for e in entries.values():
        assert e.points.shape == (6, 2)
        assert e.template.rgba[..., 3].max() > 0


def _turned(yaw):
    """Landmarks of the mean 3D face turned by `yaw`, ArcFace-sized."""
    from occsynth.faces.pose import MODEL_POINTS, pose_matrix, project

    return project(MODEL_POINTS, pose_matrix(yaw, 0, 0), 0.56, (56, 51.6))


def test_maskthefaces_masks_cover_nose_and_mouth_not_eyes(mtf):
    for name in load_maskthefaces(str(mtf)):
        # turned templates are meant for turned faces (MaskTheFace picks them by head angle)
        lm = _turned(30) if name.endswith("_right") else _turned(-30) if name.endswith("_left") else LANDMARKS
        occ = create_occluder("maskthefaces", path=str(mtf), mask=name, pose_variants=False)
        out, mask, params, warped = occ.render(FACE, lm, make_rng(0))
        assert np.array_equal(mask, full_alpha(warped, FACE.shape[:2]) >= ALPHA_HALF)
        assert params["mask"] == name and params["fit"] == "homography"
        le, re, nose, ml, mr = lm
        assert covered(mask, nose) and covered(mask, ml) and covered(mask, mr), name
        assert not covered(mask, le) and not covered(mask, re), name
    _, mask, _ = render_checked(create_occluder("maskthefaces", path=str(mtf), feather=2.0), FACE, LANDMARKS)
    assert mask.any()


def test_maskthefaces_forced_mismatch_falls_back_to_affine(mtf):
    occ = create_occluder("maskthefaces", path=str(mtf), mask="surgical_left", pose_variants=False)
    _, mask, params = render_checked(occ, FACE, LANDMARKS)
    assert mask.any() and params["fit"] in ("homography", "affine")


def test_maskthefaces_turned_faces_use_turned_templates(mtf):
    for yaw, suffix in ((35.0, "_right"), (-35.0, "_left"), (0.0, "")):
        lm = _turned(yaw)
        occ = create_occluder("maskthefaces", path=str(mtf), mask="surgical")
        params = occ.apply(FACE, lm, make_rng(0))[2]
        assert params["mask"] == "surgical" + suffix


def test_maskthefaces_face_points_geometry():
    pts = maskthefaces_face_points(get_template("arcface").points)
    a, b, c, d, e, f = pts
    nose = get_template("arcface").points[2]
    assert a[0] < nose[0] < c[0] and d[0] < nose[0] < f[0]
    assert b[1] < nose[1] < d[1] < e[1]  # bridge above the nose tip, lip line, then chin
    assert abs(a[1] - nose[1]) < 1.0 and abs(e[0] - nose[0]) < 1.0


def test_template_folder_size_factor(ocfr):
    folder = ocfr / "occluders" / "lower_face"
    templates = folder_templates(str(folder))
    assert len(templates) == len(list(folder.glob("*.png")))
    occ = create_occluder("template_folder", path=str(folder), factor=[0.4, 0.4], rotation=0.0)
    for seed in range(5):
        _, mask, params = render_checked(occ, FACE, LANDMARKS, seed)
        m = np.reshape(params["matrix"], (2, 3))
        width = next(t for t in templates if t.name == params["template"]).size[0]
        assert math.isclose(math.hypot(m[0, 0], m[1, 0]) * width, 0.4 * FACE_WIDTH_IOD * IOD, rel_tol=1e-9)


def test_importers_need_a_path():
    for name in ("template_folder", "ocfr2022", "maskthefaces"):
        with pytest.raises(ValueError):
            create_occluder(name).apply(FACE, LANDMARKS, make_rng(0))
