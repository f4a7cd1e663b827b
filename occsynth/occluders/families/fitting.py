"""Size an occluder so that it covers a target fraction of the face.

Benchmarks such as LFW-OCC are defined by their MEAN occluded area (43.09%, 52.00%), not by
object sizes. `fit_area` wraps any occluder with a size parameter (objects: `scale`; imported
templates: `factor`) and searches the size multiplier by bisection with the occluder's own
seed held fixed, so every attempt places the same template at the same spot and only its
size changes. The record is the inner occluder's, plus what the fit aimed for and reached.

Sizing (`sizing`): "alpha" (the default) first solves the size on the template's own alpha:
the occluder is placed twice (two sizes, same draws) to read the point the size scales about,
the template's mask pixels (alpha >= 0.5, on a grid of at most ALPHA_POINTS) are sent through
the map, and the size whose points, each worth |det| image pixels, inside the image make the
target area is found without rendering; the exact trial search (below) then starts there and
usually stops after one trial. "trials" (what builds before it did, their records replay with
it) starts the trial search at size 1: each trial warps the template's alpha and counts it.
Both end on the same exact test (|achieved - target| <= tolerance on the real mask), so they
differ only in which size within the tolerance they stop at. Occluders that are not 2-D
templates under an affine map (shapes, perspective templates) always use trials.

An inner occluder that harmonises (occluders/harmonize.py) is searched without it (same
version, so the same geometry and area: harmonisation never moves the mask) and rendered once,
harmonised, at the size found (the search counts that size's mask with own_area; it used to
render it unharmonised too, which changed nothing but the time).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from occsynth.occluders._registry import OCCLUDERS
from occsynth.occluders.base import (
    Occluder,
    create_occluder,
    list_occluders,
    register_occluder,
    sample_value,
)
from occsynth.occluders.families.objects import ALPHA_HALF, TemplateOccluder
from occsynth.occluders.params import SpecError, anything, integer, number, word

ALPHA_POINTS = 4096  # mask pixels of a template the alpha sizing sends through the map (at most)
_ALPHA_GRIDS: dict[int, tuple] = {}  # id(template) -> (template, points, weight)


def alpha_points(template) -> tuple[np.ndarray, float]:
    """A template's mask pixels (alpha >= 0.5) on a regular grid of at most ALPHA_POINTS, as
    (N, 2) float64 (x, y), and the template pixels each stands for (the grid's step squared)."""
    hit = _ALPHA_GRIDS.get(id(template))
    if hit is not None and hit[0] is template:
        return hit[1], hit[2]
    on = template.rgba[..., 3] >= ALPHA_HALF
    step = max(1, math.ceil(math.sqrt(int(np.count_nonzero(on)) / ALPHA_POINTS)))
    ys, xs = np.nonzero(on[::step, ::step])
    points = np.column_stack([xs * step + (step - 1) / 2, ys * step + (step - 1) / 2]).astype(np.float64)
    _ALPHA_GRIDS[id(template)] = (template, points, float(step * step))
    return points, float(step * step)


def estimated_area(points: np.ndarray, weight: float, matrix: np.ndarray, pivot: np.ndarray, shape):
    """area(k): the image fraction the template covers under the map p -> pivot + k (matrix p -
    pivot), i.e. `matrix` scaled by k about `pivot`: its mask points inside the frame (pixel
    centres at integers, a pixel spans +-0.5) times |det| k^2 image pixels each. Each point is
    inside for k in one interval (the frame is convex, k scales along a ray), so after one
    sort an evaluation is a binary search or two."""
    h, w = shape
    m = np.asarray(matrix, dtype=np.float64)
    # (2, N): each axis contiguous. The product is the (N, 2) one's, bit for bit (checked in
    # tests/test_fit_sizing.py); NumPy multiplies a transposed view ~3x slower than a copy.
    rel = np.ascontiguousarray(m[:, :2]) @ points.T
    rel += (m[:, 2] - pivot)[:, None]
    unit = abs(float(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0])) * weight / (h * w)
    cx, cy = float(pivot[0]), float(pivot[1])
    if -0.5 <= cx <= w - 0.5 and -0.5 <= cy <= h - 0.5 and rel[0].all() and rel[1].all():
        # The pivot inside the frame (fit_area's usual case: the object's anchor on the face):
        # every interval starts at k <= 0, so for k > 0 a point is inside while k <= its end;
        # the general count below gives the same for every k > 0, with one sort instead of two.
        with np.errstate(divide="ignore"):
            ends = np.maximum((-0.5 - cx) / rel[0], (w - 0.5 - cx) / rel[0])
            np.minimum(ends, np.maximum((-0.5 - cy) / rel[1], (h - 0.5 - cy) / rel[1]), out=ends)
        ends.sort()
        before, total = ends.searchsorted, len(ends)  # the method: np.searchsorted's wrapper costs more

        def inside_area(k: float) -> float:
            return (total - int(before(k, "left"))) * unit * k * k

        return inside_area
    return _general_area(rel, unit, (cx, cy), shape)


def _general_area(rel: np.ndarray, unit: float, pivot: tuple[float, float], shape):
    """estimated_area for any pivot and map: each point's interval [lo, hi] of k, both ends."""
    h, w = shape
    lo = np.zeros(rel.shape[1])
    hi = np.full(rel.shape[1], np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for d, c, size in ((rel[0], pivot[0], w), (rel[1], pivot[1], h)):
            a, b = -0.5 - c, size - 0.5 - c  # pivot + k d must lie in [a, b] relative to the pivot
            k1, k2 = a / d, b / d
            moving = d != 0
            lo = np.where(moving, np.maximum(lo, np.minimum(k1, k2)), np.where(a <= 0 <= b, lo, np.inf))
            hi = np.where(moving, np.minimum(hi, np.maximum(k1, k2)), hi)
    keep = lo <= hi
    starts, ends = np.sort(lo[keep]), np.sort(hi[keep])
    after, before = starts.searchsorted, ends.searchsorted

    def area(k: float) -> float:
        count = int(after(k, "right")) - int(before(k, "left"))
        return count * unit * k * k

    return area


def secant_search(area, target, factor, current, lo, hi, tolerance, steps, gap) -> tuple[float, float]:
    """fit_area's search for the size factor whose `area` is `target`, from `factor` (whose
    area is `current`) within the log-size bracket [lo, hi]: (the best factor seen, the last
    one). Area grows about with the square of the size: each step jumps there (secant step in
    log size) and falls back to bisection when the jump leaves the bracket (clipping, empty
    area); it stops within `tolerance`, after `steps` or when the bracket is under `gap`."""
    best = (factor, current)
    for _ in range(steps):
        if abs(current - target) <= tolerance:
            break
        here = math.log(factor)
        if current < target:
            lo = here
        else:
            hi = here
        if hi - lo < gap:
            break
        step = here + 0.5 * math.log(target / current) if current > 0 else math.inf
        factor = math.exp(step if lo < step < hi else (lo + hi) / 2)
        current = area(factor)
        if abs(current - target) < abs(best[1] - target):
            best = (factor, current)
    return best[0], factor


def inner_generator(seed: int) -> tuple[int, np.random.Generator]:
    """(the seed, the generator) Occluder.__call__ gives the inner occluder's apply() when
    called with Generator(PCG64(seed)): what a full attempt from `seed` renders with."""
    inner_seed = int(np.random.Generator(np.random.PCG64(seed)).integers(0, 2**63 - 1))
    return inner_seed, np.random.Generator(np.random.PCG64(inner_seed))


def _base_params(inner: dict, param: str) -> dict:
    """The inner occluder's parameters with its size parameter made explicit (its default when
    not given): what fit_area scales, when searching and when replaying."""
    params = dict(inner.get("params") or {})
    if param not in params:
        params[param] = create_occluder(inner["name"]).defaults[param]
    return params


def _scaled(value: Any, factor: float) -> Any:
    if isinstance(value, (list, tuple)):
        return [float(v) * factor for v in value]
    return float(value) * factor


def _sized_copy(proto: TemplateOccluder | None, name: str, params: dict, param: str, factor: float) -> Occluder:
    """The occluder `name` with `params` and `param` scaled by `factor`: a copy of `proto` (the
    instance made with `params`, see FitArea._template_proto) with that parameter changed, or
    a new occluder when there is none."""
    value = _scaled(params[param], factor)
    if proto is None:
        return create_occluder(name, **{**params, param: value})
    occluder = copy.copy(proto)
    occluder.params = {**proto.params, param: value}
    return occluder


@register_occluder
class FitArea(Occluder):
    """Params: occluder ({"name", "params"} of the inner occluder), ratio (target fraction of
    the image, scalar or [lo, hi]), param (the inner size parameter to scale), tolerance
    (accepted |achieved - target|), retries (new placements tried when a target is out of
    reach, e.g. an object clipped by the image border), sizing ("alpha": start the search at
    the size solved on the template's alpha; "trials": start at size 1, as builds before it)."""

    family = "fit"
    name = "fit_area"
    defaults = {
        "occluder": {"name": "object", "params": {}},
        "ratio": 0.43,
        "param": "scale",
        "tolerance": 0.002,
        "retries": 4,
        "min_factor": 0.05,
        "max_factor": 12.0,
        "sizing": "alpha",
    }
    legacy = {"sizing": "trials"}
    schema = {
        "occluder": anything("the inner occluder as {name, params}", nullable=False),
        "ratio": number(0.0, 1.0),
        "param": anything("the inner occluder's size parameter", nullable=False),
        "tolerance": number(0.0, lo_open=True, scalar=True),
        "retries": integer(0, scalar=True),
        "min_factor": number(0.0, lo_open=True, scalar=True),
        "max_factor": number(0.0, lo_open=True, scalar=True),
        "sizing": word("alpha", "trials"),
    }

    def __init__(self, **params: Any):
        super().__init__(**params)
        inner = self.params["occluder"]
        if not (isinstance(inner, dict) and isinstance(inner.get("name"), str)):
            raise SpecError(f"occluder 'fit_area' parameter 'occluder': got {inner!r}; expected {{name, params}}")
        # the inner occluder's own parameters are checked now, not on every sample
        defaults = create_occluder(inner["name"], **dict(inner.get("params") or {})).defaults
        if self.params["param"] not in defaults:
            raise SpecError(
                f"occluder 'fit_area' parameter 'param': {inner['name']!r} has no parameter "
                f"{self.params['param']!r}; expected one of {', '.join(sorted(defaults))}"
            )
        if not self.params["min_factor"] < self.params["max_factor"]:
            raise SpecError("occluder 'fit_area': min_factor must be below max_factor")

    def recorded_params(self) -> dict:
        """The inner occluder's parameters as given, with its `legacy` ones made explicit where
        they are not at their legacy value (so a replay, which fills the legacy values in, runs
        the same inner occluder) and left out where they are."""
        out = super().recorded_params()
        inner = self.params["occluder"]
        cls = list_occluders().get(inner["name"])
        if cls is None or not cls.legacy:
            return out
        given = dict(inner.get("params") or {})
        params = {k: v for k, v in given.items() if not (k in cls.legacy and v == cls.legacy[k])}
        for key, old in cls.legacy.items():
            if key not in given and cls.defaults.get(key) != old:
                params[key] = cls.defaults[key]
        params = cls.record_form(params)
        if params != given or "params" in inner:
            out["occluder"] = {**inner, "params": params}
        return out

    @classmethod
    def replay_params(cls, recorded: dict) -> dict:
        out = super().replay_params(recorded)
        inner = out.get("occluder")
        if isinstance(inner, dict) and inner.get("name") in list_occluders():
            inner_cls = list_occluders()[inner["name"]]
            out["occluder"] = {**inner, "params": inner_cls.replay_params(dict(inner.get("params") or {}))}
        return out

    @classmethod
    def fitted_occluder(cls, record: dict) -> Occluder:
        """The inner occluder a fit_area record was rendered with (for replay): the recorded
        fit_area parameters' inner occluder at the size found (`fit_factor`)."""
        params = cls.replay_params(record["spec_params"])
        inner, param = params["occluder"], params["param"]
        inner_params = _base_params(inner, param)
        inner_params[param] = _scaled(inner_params[param], float(record["fit_factor"]))
        return create_occluder(inner["name"], **inner_params)

    def __call__(self, image, mask, landmarks, rng):
        target = float(sample_value(self.params["ratio"], rng))
        inner = self.params["occluder"]
        param = self.params["param"]
        base_params, final_params = self._search_params()
        best = None
        for attempt in range(int(self.params["retries"]) + 1):
            seed = int(rng.integers(0, 2**63 - 1))
            # a template occluder's search counts the sizes it tries (own_area, the mask a render
            # will have) and renders nothing: only the best attempt's size is rendered, below
            result = self._bisect(image, mask, landmarks, inner["name"], base_params, param, target, seed, False)
            if best is None or abs(result[2]["area"] - target) < abs(best[2]["area"] - target):
                best, best_seed = result, seed
            if abs(best[2]["area"] - target) <= self.params["tolerance"]:
                break
        out, new_mask, record, finish = best
        factor = record["fit_factor"]
        params = base_params if final_params is None else final_params
        if finish is not None:  # a template occluder: its one render, from the search's generator
            out, new_mask, record = finish(params)
            record["fit_factor"] = factor
        elif final_params is not None:  # rendered unharmonised by the search: once more, harmonised
            occluder = self._variant(inner["name"], image, landmarks, params, param, factor)
            out, new_mask, record = occluder(image, mask, landmarks, np.random.Generator(np.random.PCG64(best_seed)))
            record["fit_factor"] = factor
        record["fit"] = {"target": target, "achieved": record["area"], "attempts": attempt + 1}
        return out, new_mask, record

    def _search_params(self) -> tuple[dict, dict | None]:
        """(the inner parameters the search runs with, the ones the found size is rendered with
        when they differ: an inner occluder that harmonises is searched without it, at the same
        version, so the same geometry and area); worked out once per instance."""
        cached = self.__dict__.get("_search")
        if cached is None:
            inner = self.params["occluder"]
            base_params = _base_params(inner, self.params["param"])
            final_params = None
            probe = create_occluder(inner["name"], **base_params)
            if probe.params.get("harmonize") not in (None, False):
                final_params = base_params
                base_params = {**base_params, "harmonize": False}
                if "version" in probe.params:
                    base_params["version"] = probe.version
            cached = self._search = (base_params, final_params)
        return cached

    def _template_proto(self, name, image, landmarks, base_params: dict) -> TemplateOccluder | None:
        """One instance of a template inner occluder per inner spec, copied for each size
        (None for other occluders: their __init__ may derive state from the size, so each size
        is created afresh). A copy with only the size parameter changed has the params
        create_occluder would give, and keeps what the instance loads once (the bank, the
        template files)."""
        if not issubclass(OCCLUDERS.get(name), TemplateOccluder):
            return None
        key = (name, repr(sorted(base_params.items())))
        protos = self.__dict__.setdefault("_protos", {})
        if key not in protos:
            proto = create_occluder(name, **base_params)
            # one trial now loads what the occluder keeps into the instance copied from
            proto.own_area(image, landmarks, np.random.Generator(np.random.PCG64(0)))
            protos[key] = proto
        return protos[key]

    def _variant(self, name, image, landmarks, params: dict, param: str, factor: float) -> Occluder:
        """The inner occluder with `params` and its size parameter scaled by `factor`: a copy of
        the spec's template instance (_template_proto), or a new occluder of another family."""
        proto = self._template_proto(name, image, np.asarray(landmarks, dtype=np.float64), params)
        return _sized_copy(proto, name, params, param, factor)

    def _bisect(self, image, mask, landmarks, name, base_params, param, target, seed, render=True):
        """The search from one seed: (image, mask, record, None) of the size found, fully
        rendered; with render=False a template occluder's is not rendered: only the record's
        fit_factor and area are real, the image and mask are None, and the last item renders
        it (`finish(params)`: the caller renders the best attempt's size once). Other occluders
        are rendered to be measured: theirs come rendered."""
        points = np.asarray(landmarks, dtype=np.float64)
        proto = self._template_proto(name, image, points, base_params)

        def variant(factor: float) -> Occluder:
            return _sized_copy(proto, name, base_params, param, factor)

        done: dict[float, tuple] = {}  # full renders made while searching
        counted: dict[float, float] = {}  # template occluders' areas counted without rendering

        def attempt(factor: float):
            if factor not in done:
                occluder = variant(factor)
                out, new_mask, record = occluder(image, mask, landmarks, np.random.Generator(np.random.PCG64(seed)))
                record["fit_factor"] = factor
                done[factor] = (out, new_mask, record)
            return done[factor]

        sizes = None
        if proto is not None:
            # Template occluders count their mask without compositing, drawing from the same
            # generators as a full attempt (Occluder.__call__: a seed from the attempt's
            # generator, then apply's generator from that seed, reset before each trial).
            inner_seed, inner = inner_generator(seed)
            start = inner.bit_generator.state
            pixels = image.shape[0] * image.shape[1]
            if param == proto.size_param:  # the draws before the size made once, not per trial
                sizes = proto.sized(image, points, inner)

        def place(factor: float):
            """The inner occluder's place() at this size, from the attempt's generator."""
            if sizes is not None:
                return sizes.place(_scaled(base_params[param], factor))
            inner.bit_generator.state = start
            return variant(factor).place(image, points, inner)

        def area(factor: float) -> float:
            """The area a full attempt's record would hold."""
            if proto is None:
                return attempt(factor)[2]["area"]
            if factor in done:
                return done[factor][2]["area"]
            if factor not in counted:
                if sizes is not None:
                    counted[factor] = sizes.area(_scaled(base_params[param], factor)) / pixels
                else:
                    inner.bit_generator.state = start
                    counted[factor] = variant(factor).own_area(image, points, inner) / pixels
            return counted[factor]

        lo, hi = math.log(self.params["min_factor"]), math.log(self.params["max_factor"])
        tolerance = self.params["tolerance"]
        factor = 1.0
        if proto is not None and self.params["sizing"] == "alpha" and not proto.perspective:
            factor, estimate = self._alpha_factor(image, place, target)
            current = area(factor)
            if estimate is not None and current > 0 and abs(current - target) > tolerance:
                # one more solve on the estimate scaled to agree with the real area found (the
                # estimate's error is mostly a proportion: the outline's share of the area)
                gain = current / max(estimate(factor), 1e-12)
                factor = self._solve(lambda k: estimate(k) * gain, target, factor)
                current = area(factor)
        else:
            current = area(factor)
        factor, _ = secant_search(area, target, factor, current, lo, hi, tolerance, 16, 1e-4)
        if render or proto is None:
            return (*attempt(factor), None)  # a template occluder's one full render

        finish = self._finisher(image, mask, landmarks, name, param, factor, place, inner, inner_seed)
        return None, None, {"fit_factor": factor, "area": area(factor)}, finish

    def _finisher(self, image, mask, landmarks, name, param, factor, place, inner, inner_seed):
        """`finish(params)`: the render a full attempt at `factor` makes, with the inner `params`
        (the search's or the harmonising ones: same geometry), without making its generator
        again: place() (`place(factor)`, from the search's generator `inner`, made from
        `inner_seed`) leaves it where apply()'s is after its place()."""
        points = np.asarray(landmarks, dtype=np.float64)

        def finish(params: dict):
            template, matrix, concrete = place(factor)
            occluder = self._variant(name, image, landmarks, params, param, factor)
            out, own, concrete, _ = occluder.finish(image, points, inner, template, matrix, concrete)
            return occluder.result(image, mask, out, own, concrete, inner_seed)

        return finish

    def _alpha_factor(self, image, place, target):
        """(the size factor whose estimated area (`estimated_area`) is the target, the
        estimate as a function of the factor); (1.0, None) when the size does not scale the
        map about a fixed point. `place(factor)`: the inner occluder's place() at that size."""
        maps = []
        for factor in (1.0, 2.0):
            template, matrix, _ = place(factor)
            maps.append(np.asarray(matrix, dtype=np.float64))
        m1, m2 = maps
        # in Python floats: the same IEEE operations as on the arrays, a sixth of the time
        (a1, b1, c1), (d1, e1, f1) = m1.tolist()
        (a2, b2, c2), (d2, e2, f2) = m2.tolist()
        k = math.sqrt(abs(a2 * e2 - b2 * d2) / max(abs(a1 * e1 - b1 * d1), 1e-300))
        scale = max(abs(a1), abs(b1), abs(d1), abs(e1))
        off = max(abs(a2 - k * a1), abs(b2 - k * b1), abs(d2 - k * d1), abs(e2 - k * e1))
        if not (k > 1.0 + 1e-6 and off <= 1e-9 * k * scale):
            return 1.0, None  # not a scaling about a fixed point: the trial search from size 1
        pivot = np.array([(c2 - k * c1) / (1.0 - k), (f2 - k * f1) / (1.0 - k)])
        estimate = estimated_area(*alpha_points(template), m1, pivot, image.shape[:2])
        return self._solve(estimate, target, 1.0), estimate

    def _solve(self, area, target: float, factor: float) -> float:
        """The factor whose `area` (an estimate: no rendering) is the target, by the trial
        search's secant/bisection in log size, from `factor`, within [min_factor, max_factor]."""
        lo, hi = math.log(self.params["min_factor"]), math.log(self.params["max_factor"])
        _, factor = secant_search(area, target, factor, area(factor), lo, hi, 0.25 * self.params["tolerance"], 40, 1e-6)
        return factor
