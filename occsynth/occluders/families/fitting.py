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

import math
from typing import Any

import numpy as np

from occsynth.occluders.base import (
    Occluder,
    create_occluder,
    list_occluders,
    register_occluder,
    sample_value,
)
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

    def _bisect(self, image, mask, landmarks, name, base_params, param, target, seed):
        def attempt(factor: float):
            occluder = create_occluder(name, **{**base_params, param: _scaled(base_params[param], factor)})
            out, new_mask, record = occluder(image, mask, landmarks, np.random.Generator(np.random.PCG64(seed)))
            record["fit_factor"] = factor
            return out, new_mask, record

        lo, hi = math.log(self.params["min_factor"]), math.log(self.params["max_factor"])
        current = best = attempt(1.0)
        for _ in range(16):
            area = current[2]["area"]
            if abs(area - target) <= self.params["tolerance"]:
                break
            here = math.log(current[2]["fit_factor"])
            if area < target:
                lo = here
            else:
                hi = here
            if hi - lo < 1e-4:
                break
            # Area grows about with the square of the size: jump there (secant step), and
            # fall back to bisection when the jump leaves the bracket (clipping, empty area).
            step = here + 0.5 * math.log(target / area) if area > 0 else math.inf
            current = attempt(math.exp(step if lo < step < hi else (lo + hi) / 2))
            if abs(current[2]["area"] - target) < abs(best[2]["area"] - target):
                best = current
        return best
