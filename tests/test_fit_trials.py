"""fit_area's trial sizes: a template occluder's trial counts its mask without compositing
(TemplateOccluder.own_area) and only the chosen size is rendered; an object's trials share the
draws made before the size (ObjectOccluder.sized). None may change anything: own_area is the
count of the mask apply() returns for the same generator, Sizes gives what copies of the
occluder at each size give, and fit_area with the shortcuts gives exactly what full renders of
every trial give."""

from __future__ import annotations

import numpy as np
import pytest

from occsynth.occluders import create_occluder, list_occluders, occlude
from occsynth.occluders.families import objects
from occsynth.occluders.families.fitting import FitArea
from occsynth.occluders.families.objects import TemplateOccluder

LANDMARKS = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])


@pytest.fixture(scope="module")
def face():
    return np.random.default_rng(5).integers(0, 256, (112, 112, 3), dtype=np.uint8)


def _full_render_count(self, image, landmarks, rng):
    """What own_area replaces: a whole apply(), then its mask counted."""
    return int(np.count_nonzero(self.apply(image, landmarks, rng)[1]))


def _template_occluders(third_party=None):
    params = {}
    if third_party is not None:
        params = {
            "template_folder": {"path": str(third_party / "ocfr2022" / "occluders"), "recursive": True},
            "ocfr2022": {"path": str(third_party / "ocfr2022")},
            "maskthefaces": {"path": str(third_party / "maskthefaces")},
        }
    return {
        name: create_occluder(name, **params.get(name, {}))
        for name, cls in list_occluders().items()
        if issubclass(cls, TemplateOccluder) and (cls.family != "importer" or name in params)
    }


def _check_own_area(occluders, face):
    for name, occluder in occluders.items():
        for seed in range(12):
            # scaled as fit_area scales them, so templates are clipped by the border too
            size = {"scale": [2.5 * seed / 11 + 0.2] * 2, "factor": [1.5 * seed / 11 + 0.1] * 2}
            variant = create_occluder(
                name, **{**occluder.params, **{k: v for k, v in size.items() if k in occluder.params}}
            )
            shifted = LANDMARKS + (seed % 5 - 2) * 7.0
            expected = _full_render_count(variant, face, shifted, np.random.default_rng(seed))
            assert variant.own_area(face, shifted, np.random.default_rng(seed)) == expected, (name, seed)


def test_own_area_counts_the_mask_apply_returns(face):
    occluders = _template_occluders()
    assert {"object", "cup", "sunglasses"} <= set(occluders)
    _check_own_area(occluders, face)


def test_own_area_of_imported_templates(face, third_party):
    occluders = {k: v for k, v in _template_occluders(third_party).items() if v.family == "importer"}
    assert len(occluders) == 3
    _check_own_area(occluders, face)


@pytest.mark.parametrize(
    "inner",
    [
        {"name": "object", "params": {"split": "eval", "category": "any"}},  # LFW-OCC's
        {"name": "hand", "params": {"region": "random", "rotation": [-40, 40]}},
    ],
)
def test_fit_area_with_trial_counts_equals_full_renders(face, inner, monkeypatch):
    spec = {"name": "fit_area", "params": {"ratio": [0.33, 0.53], "occluder": inner}}
    fast = [occlude(face, LANDMARKS + i % 3, spec, i) for i in range(25)]
    monkeypatch.setattr(objects.TemplateOccluder, "own_area", _full_render_count)
    monkeypatch.setattr(objects.ObjectOccluder, "size_param", None)  # each trial a copy, rendered
    for i, result in enumerate(fast):
        full = occlude(face, LANDMARKS + i % 3, spec, i)
        assert np.array_equal(result.image, full.image) and np.array_equal(result.mask, full.mask)
        assert result.records == full.records
    errors = [abs(r.records[0]["fit"]["achieved"] - r.records[0]["fit"]["target"]) for r in fast]
    assert np.median(errors) <= 0.002  # the search itself still reaches its targets


@pytest.mark.parametrize("harmonize", [True, False])
def test_fit_area_renders_its_inner_occluder_once(face, harmonize, monkeypatch):
    """The search counts sizes with own_area; the one composite is the result's, finished from
    the place the search made with its own generator (TemplateOccluder.finish): a harmonised
    inner occluder is not also rendered unharmonised at the size found, no generator is made
    again, and the result is what a full render of the size found gives (the previous path:
    the search's best rendered in full, then harmonised from a new generator)."""
    inner = {"name": "object", "params": {"harmonize": harmonize}}
    spec = {"name": "fit_area", "params": {"ratio": [0.33, 0.53], "occluder": inner}}
    renders = []
    original = objects.TemplateOccluder.finish
    search = FitArea._bisect

    def counted(self, *args):
        renders.append(self.params["harmonize"])
        return original(self, *args)

    monkeypatch.setattr(objects.TemplateOccluder, "finish", counted)
    for i in range(6):
        renders.clear()
        result = occlude(face, LANDMARKS + i % 3, spec, i)
        assert renders == [harmonize]
        assert result.records[0]["fit"]["achieved"] == result.records[0]["area"] == pytest.approx(result.ratio)
        with monkeypatch.context() as patch:
            patch.setattr(FitArea, "_bisect", lambda self, *args: search(self, *args[:8], True))
            before = occlude(face, LANDMARKS + i % 3, spec, i)
        assert np.array_equal(before.image, result.image) and np.array_equal(before.mask, result.mask)
        assert before.records == result.records


@pytest.mark.parametrize("name", ["object", "sunglasses", "hand", "surgical_mask"])
@pytest.mark.parametrize("harmonize", [False, True])  # version 1 (similarity) and 2 (posed) maps
def test_sizes_place_and_count_as_copies_at_each_size(face, name, harmonize):
    """Sizes.place / Sizes.area at a size: what a copy of the occluder with `scale` at that size
    gives from the same generator state (map, record, count) and the state it leaves, in any
    order of sizes, the same size twice included."""
    occluder = create_occluder(name, harmonize=harmonize, region="random" if name == "hand" else None)
    counts = []
    for seed in range(8):
        shifted = LANDMARKS + (seed % 5 - 2) * 7.0
        rng = np.random.default_rng(seed)
        sizes = occluder.sized(face, shifted, rng)
        for factor in (1.0, 2.7, 0.3, 1.0, 5.0):
            value = [0.9 * factor, 1.1 * factor]
            copy = create_occluder(name, **{**occluder.params, "scale": value})
            ref = np.random.default_rng(seed)
            template, matrix, concrete = copy.place(face, shifted, ref)
            got = sizes.place(value)
            assert got[0] is template and np.array_equal(np.asarray(got[1]), np.asarray(matrix)), (name, seed)
            assert got[2] == concrete
            assert rng.bit_generator.state == ref.bit_generator.state
            ref = np.random.default_rng(seed)
            expected = copy.own_area(face, shifted, ref)
            assert sizes.area(value) == expected, (name, seed, factor)
            assert rng.bit_generator.state == ref.bit_generator.state
            counts.append(expected)
    assert min(counts) < max(counts) and max(counts) > 0  # sizes that differ were counted
