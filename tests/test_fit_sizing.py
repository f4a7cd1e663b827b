"""fit_area's alpha sizing: the size solved on the template's own alpha (no rendering) is where
the exact trial search starts. The estimate is checked against hand-counted areas, the search
must still end inside its tolerance on the real mask, with fewer trials than from size 1, and
builds made before it (records without `sizing`, --no-harmonize) keep the trial search."""

from __future__ import annotations

import json

import numpy as np
import pytest

from occsynth import contract
from occsynth.occluders import create_occluder, occlude, replay, with_harmonize
from occsynth.occluders.families import objects
from occsynth.occluders.families.fitting import _general_area, alpha_points, estimated_area
from occsynth.occluders.families.objects import Template

LANDMARKS = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])


@pytest.fixture(scope="module")
def face():
    return np.random.default_rng(5).integers(0, 256, (112, 112, 3), dtype=np.uint8)


def _square_template(side: int, pad: int = 0) -> Template:
    rgba = np.zeros((side + 2 * pad, side + 2 * pad, 4), np.uint8)
    rgba[pad : pad + side, pad : pad + side] = 255
    return Template("square", rgba)


def test_alpha_points_cover_the_mask_with_their_weight():
    small = _square_template(40, pad=5)  # 1,600 mask pixels: every one a point
    points, weight = alpha_points(small)
    assert weight == 1.0 and len(points) == 1600
    assert points[:, 0].min() == 5 and points[:, 0].max() == 44
    big = _square_template(200)  # 40,000 pixels: a grid of step 4 (2,500 points of 16 pixels)
    points, weight = alpha_points(big)
    assert weight == 16.0 and len(points) == 2500 and len(points) * weight == 40000
    assert points[:, 0].min() == 1.5  # a 4x4 block's centre


def test_estimated_area_by_hand():
    points, weight = alpha_points(_square_template(20))  # 400 points, pixel centres 0..19
    shape = (100, 100)
    # identity map scaled about (50, 50): the square lies at 0..19 (inside), k = 1
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    area = estimated_area(points, weight, identity, np.array([50.0, 50.0]), shape)
    assert area(1.0) == pytest.approx(400 / 10000)
    # k = 2 about (50, 50): x -> 50 + 2 (x - 50) = 2x - 50, so only x >= 25 would be inside: none
    assert area(2.0) == 0.0
    # about (0, 0): x -> k x; k = 3 puts pixels 0..19 at 0..57: all inside, each 9 pixels
    area = estimated_area(points, weight, identity, np.array([0.0, 0.0]), shape)
    assert area(3.0) == pytest.approx(400 * 9 / 10000)
    # k = 6: x -> 6x lies inside (< 99.5) for x <= 16, i.e. 17 x 17 points of 36 pixels
    assert area(6.0) == pytest.approx(17 * 17 * 36 / 10000)
    # a map with det 0.25 (half size), pivot inside: 400 points of 0.25 pixels
    half = np.array([[0.5, 0.0, 10.0], [0.0, 0.5, 10.0]])
    area = estimated_area(points, weight, half, np.array([15.0, 15.0]), shape)
    assert area(1.0) == pytest.approx(100 / 10000)


def test_estimated_area_inside_pivot_path_counts_as_the_general_one():
    """With the pivot inside the frame estimated_area sorts the intervals' ends only; the
    general count (both ends) must give the same area at every k > 0, bit for bit, and the
    (2, N) product the (N, 2) one's (what the estimate was before: builds start there)."""
    rng = np.random.default_rng(11)
    points, weight = alpha_points(_square_template(150, pad=7))  # a grid of step 3
    shape = (112, 112)
    ks = np.exp(np.linspace(np.log(0.05), np.log(12.0), 2000))
    inside = 0
    for _ in range(60):
        angle, scale = rng.uniform(-0.5, 0.5), rng.uniform(0.1, 1.5)
        c, s = scale * np.cos(angle), scale * np.sin(angle)
        matrix = np.array([[c, -s, rng.uniform(-40, 100)], [s, c, rng.uniform(-40, 100)]])
        pivot = rng.uniform(-20, 130, size=2)  # inside the frame or not
        rel = np.ascontiguousarray(matrix[:, :2]) @ points.T + (matrix[:, 2] - pivot)[:, None]
        assert np.array_equal(rel.T, points @ matrix[:, :2].T + (matrix[:, 2] - pivot))
        det = matrix[0, 0] * matrix[1, 1] - matrix[0, 1] * matrix[1, 0]
        unit = abs(float(det)) * weight / (shape[0] * shape[1])
        fast = estimated_area(points, weight, matrix, pivot, shape)
        general = _general_area(rel, unit, tuple(pivot), shape)
        inside += fast.__name__ != general.__name__
        assert [fast(k) for k in ks] == [general(k) for k in ks]
    assert 10 <= inside <= 50  # both paths were taken


def _count_trials(monkeypatch) -> list:
    calls = []
    original = objects.TemplateOccluder.count  # a trial's count (own_area and Sizes.area)

    def counted(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(objects.TemplateOccluder, "count", counted)
    return calls


@pytest.mark.parametrize(
    "inner",
    [
        {"name": "object", "params": {"split": "eval", "category": "any", "harmonize": False}},  # LFW-OCC's
        {"name": "hand", "params": {"region": "random", "rotation": [-40, 40], "harmonize": False}},
    ],
)
def test_alpha_sizing_reaches_the_targets_with_fewer_trials(face, inner, monkeypatch):
    calls = _count_trials(monkeypatch)
    results, trials = {}, {}
    for sizing in ("alpha", "trials"):
        spec = {"name": "fit_area", "params": {"ratio": [0.33, 0.53], "occluder": inner, "sizing": sizing}}
        calls.clear()
        results[sizing] = [occlude(face, LANDMARKS + i % 3, spec, i) for i in range(30)]
        trials[sizing] = len(calls)
    for sizing, found in results.items():
        errors = [abs(r.records[0]["fit"]["achieved"] - r.records[0]["fit"]["target"]) for r in found]
        assert np.median(errors) <= 0.002, sizing
        for r in found:  # the record's area is the mask's
            assert r.records[0]["area"] == pytest.approx(r.ratio)
    assert trials["alpha"] < 0.5 * trials["trials"], trials
    # the same targets (drawn before the search), each reached within tolerance or retried alike
    assert [r.records[0]["fit"]["target"] for r in results["alpha"]] == [
        r.records[0]["fit"]["target"] for r in results["trials"]
    ]


@pytest.mark.parametrize("harmonize", [False, True])
def test_fit_records_say_their_sizing_and_replay(face, harmonize):
    """A fit_area record (named after its inner occluder) replays that occluder at the size
    found; before, replay rebuilt the inner occluder from fit_area's own parameters and failed."""
    inner = {"name": "object", "params": {"harmonize": harmonize}}
    spec = {"name": "fit_area", "params": {"ratio": 0.43, "occluder": inner}}
    new = occlude(face, LANDMARKS, spec, 7)
    old = occlude(face, LANDMARKS, {**spec, "params": {**spec["params"], "sizing": "trials"}}, 7)
    fit_new = [r for r in new.records if "fit" in r][0]
    fit_old = [r for r in old.records if "fit" in r][0]
    assert fit_new["spec_params"]["sizing"] == "alpha" and "sizing" not in fit_old["spec_params"]
    for occ in (new, old):  # each replays as it was built, through JSON
        again = replay(face, LANDMARKS, json.loads(contract.dumps(occ.records)))
        assert np.array_equal(again.image, occ.image) and np.array_equal(again.mask, occ.mask)


def test_no_harmonize_also_restores_trial_sizing():
    spec = with_harmonize({"name": "fit_area", "params": {"occluder": {"name": "object", "params": {}}}}, False)
    assert spec["params"]["sizing"] == "trials" and spec["params"]["occluder"]["params"]["harmonize"] is False
    on = with_harmonize({"name": "fit_area", "params": {"occluder": {"name": "object", "params": {}}}}, True)
    assert "sizing" not in on["params"]  # the default (alpha) stays


def test_bad_sizing_is_refused():
    with pytest.raises(Exception, match="sizing"):
        create_occluder("fit_area", sizing="analytic")


def test_pose_placement_is_the_same_from_its_cache(face):
    """ObjectOccluder keeps the solved pose map per (template, face): a second placement on the
    same instance (from the cache) equals a fresh instance's."""
    landmarks = LANDMARKS + np.array([[3.0, 0.0], [3.0, 1.0], [6.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    for seed in range(6):
        cached = create_occluder("sunglasses", harmonize=True)
        first = cached.place(face, landmarks, np.random.default_rng(seed))
        again = cached.place(face, landmarks, np.random.default_rng(seed))
        fresh = create_occluder("sunglasses", harmonize=True).place(face, landmarks, np.random.default_rng(seed))
        assert cached.__dict__.get("_posed_maps")  # the cache was used
        for other in (again, fresh):
            assert np.array_equal(first[1], other[1]) and first[2] == other[2]
