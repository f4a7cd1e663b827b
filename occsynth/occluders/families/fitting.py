"""Size an occluder so that it covers a target fraction of the face.

Benchmarks such as LFW-OCC are defined by their MEAN occluded area (43.09%, 52.00%), not by
object sizes. `fit_area` wraps any occluder with a size parameter (objects: `scale`; imported
templates: `factor`) and searches the size multiplier by bisection with the occluder's own
seed held fixed, so every attempt places the same template at the same spot and only its
size changes. The record is the inner occluder's, plus what the fit aimed for and reached.

An inner occluder that harmonises (occluders/harmonize.py) is searched without it (same
version, so the same geometry and area: harmonisation never moves the mask) and harmonised
once, at the size found.
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
from occsynth.occluders.families.objects import TemplateOccluder
from occsynth.occluders.params import SpecError, anything, integer, number


def _scaled(value: Any, factor: float) -> Any:
    if isinstance(value, (list, tuple)):
        return [float(v) * factor for v in value]
    return float(value) * factor


@register_occluder
class FitArea(Occluder):
    """Params: occluder ({"name", "params"} of the inner occluder), ratio (target fraction of
    the image, scalar or [lo, hi]), param (the inner size parameter to scale), tolerance
    (accepted |achieved - target|), retries (new placements tried when a target is out of
    reach, e.g. an object clipped by the image border)."""

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
    }
    schema = {
        "occluder": anything("the inner occluder as {name, params}", nullable=False),
        "ratio": number(0.0, 1.0),
        "param": anything("the inner occluder's size parameter", nullable=False),
        "tolerance": number(0.0, lo_open=True, scalar=True),
        "retries": integer(0, scalar=True),
        "min_factor": number(0.0, lo_open=True, scalar=True),
        "max_factor": number(0.0, lo_open=True, scalar=True),
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
        out = dict(self.params)
        inner = self.params["occluder"]
        cls = list_occluders().get(inner["name"])
        if cls is None or not cls.legacy:
            return out
        given = dict(inner.get("params") or {})
        params = {k: v for k, v in given.items() if not (k in cls.legacy and v == cls.legacy[k])}
        for key, old in cls.legacy.items():
            if key not in given and cls.defaults.get(key) != old:
                params[key] = cls.defaults[key]
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

    def __call__(self, image, mask, landmarks, rng):
        target = float(sample_value(self.params["ratio"], rng))
        inner = self.params["occluder"]
        base_params = dict(inner.get("params", {}))
        param = self.params["param"]
        if param not in base_params:
            base_params[param] = create_occluder(inner["name"]).defaults[param]
        final_params = None
        probe = create_occluder(inner["name"], **base_params)
        if probe.params.get("harmonize") not in (None, False):
            # search without harmonising, at the same version (same geometry), harmonise once after
            final_params = base_params
            base_params = {**base_params, "harmonize": False}
            if "version" in probe.params:
                base_params["version"] = probe.version
        best = None
        for attempt in range(int(self.params["retries"]) + 1):
            seed = int(rng.integers(0, 2**63 - 1))
            result = self._bisect(image, mask, landmarks, inner["name"], base_params, param, target, seed)
            if best is None or abs(result[2]["area"] - target) < abs(best[2]["area"] - target):
                best, best_seed = result, seed
            if abs(best[2]["area"] - target) <= self.params["tolerance"]:
                break
        out, new_mask, record = best
        if final_params is not None:
            factor = record["fit_factor"]
            occluder = create_occluder(inner["name"], **{**final_params, param: _scaled(final_params[param], factor)})
            out, new_mask, record = occluder(image, mask, landmarks, np.random.Generator(np.random.PCG64(best_seed)))
            record["fit_factor"] = factor
        record["fit"] = {"target": target, "achieved": record["area"], "attempts": attempt + 1}
        return out, new_mask, record

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

    def _bisect(self, image, mask, landmarks, name, base_params, param, target, seed):
        points = np.asarray(landmarks, dtype=np.float64)
        proto = self._template_proto(name, image, points, base_params)

        def variant(factor: float) -> Occluder:
            value = _scaled(base_params[param], factor)
            if proto is None:
                return create_occluder(name, **{**base_params, param: value})
            occluder = copy.copy(proto)
            occluder.params = {**proto.params, param: value}
            return occluder

        done: dict[float, tuple] = {}  # full renders made while searching

        def attempt(factor: float):
            if factor not in done:
                occluder = variant(factor)
                out, new_mask, record = occluder(image, mask, landmarks, np.random.Generator(np.random.PCG64(seed)))
                record["fit_factor"] = factor
                done[factor] = (out, new_mask, record)
            return done[factor]

        if proto is not None:
            # Template occluders count their mask without compositing, drawing from the same
            # generators as a full attempt (Occluder.__call__: a seed from the attempt's
            # generator, then apply's generator from that seed, reset before each trial).
            inner = np.random.Generator(
                np.random.PCG64(int(np.random.Generator(np.random.PCG64(seed)).integers(0, 2**63 - 1)))
            )
            start = inner.bit_generator.state
            pixels = image.shape[0] * image.shape[1]

        def area(factor: float) -> float:
            """The area a full attempt's record would hold."""
            if proto is None:
                return attempt(factor)[2]["area"]
            inner.bit_generator.state = start
            return variant(factor).own_area(image, points, inner) / pixels

        lo, hi = math.log(self.params["min_factor"]), math.log(self.params["max_factor"])
        factor, current = 1.0, area(1.0)
        best = (factor, current)
        for _ in range(16):
            if abs(current - target) <= self.params["tolerance"]:
                break
            here = math.log(factor)
            if current < target:
                lo = here
            else:
                hi = here
            if hi - lo < 1e-4:
                break
            # Area grows about with the square of the size: jump there (secant step), and
            # fall back to bisection when the jump leaves the bracket (clipping, empty area).
            step = here + 0.5 * math.log(target / current) if current > 0 else math.inf
            factor = math.exp(step if lo < step < hi else (lo + hi) / 2)
            current = area(factor)
            if abs(current - target) < abs(best[1] - target):
                best = (factor, current)
        return attempt(best[0])  # a template occluder's one full render
