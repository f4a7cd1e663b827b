"""Running specs: `Composer(spec)` compiles a spec (spec.py) into occluders and applies it;
`occlude` is the one-call form and `replay` re-creates an occlusion from its records.

Records. Every occluder applied adds one record to Occlusion.records: base.Occluder's
{"family", "name", "params" (the concrete sampled values), "seed", "area"} plus "spec_params",
the occluder's full parameters as compiled (spec values and defaults) but for parameters added
later at the value that reproduces the earlier behaviour (Occluder.legacy: e.g. harmonize=false
is left out, so such a build writes the records it wrote before). `replay` re-creates an
occlusion from these records alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from occsynth.contract import MASK_OCCLUDED, MASK_VISIBLE, _jsonable, dumps
from occsynth.occluders.base import Occlusion, create_occluder, list_occluders
from occsynth.occluders.presets import get_preset
from occsynth.occluders.spec import Spec, compile_tree, load_spec
from occsynth.seeding import make_rng


class Composer:
    """A compiled spec: call with (image, landmarks, rng) to get an Occlusion."""

    def __init__(self, spec: Spec):
        self.spec = load_spec(spec)
        self._root = self._compile(self.spec)

    def _compile(self, spec: Spec):
        def leaf(name: str, params: dict):
            occluder = create_occluder(name, **params)
            return ("one", occluder, _spec_params_json(occluder.recorded_params()))

        return compile_tree(spec, leaf)

    def __call__(self, image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> Occlusion:
        mask = np.full(image.shape[:2], MASK_VISIBLE, dtype=np.uint8)
        result = Occlusion(image=image, mask=mask, records=[])
        self._run(self._root, result, landmarks, rng)
        return result

    def _run(self, node, result: Occlusion, landmarks, rng) -> None:
        kind = node[0]
        if kind == "clean":
            return
        if kind == "one":
            result.image, result.mask, record = node[1](result.image, result.mask, landmarks, rng)
            record["spec_params"] = json.loads(node[2])  # a fresh copy per record
            result.records.append(record)
        elif kind == "all":
            for child in node[1]:
                self._run(child, result, landmarks, rng)
        elif kind == "mix":
            choice = int(rng.choice(len(node[2]), p=node[1]))
            self._run(node[2][choice], result, landmarks, rng)


def _spec_params_json(params: dict) -> str:
    """An occluder's parameters as JSON, so records stay JSON (a Path given as a parameter is
    recorded as its string, which rebuilds the same occluder)."""
    return json.dumps(_jsonable(params), default=str, sort_keys=True)


def with_harmonize(spec: Spec, value) -> Spec:
    """The spec (data form) with `harmonize` set to `value` on every occluder that takes it,
    fit_area's inner occluder included; presets and CLI strings are expanded first. With
    value=False a build writes what it wrote before harmonisation (see Occluder.legacy): also
    fit_area's trial sizing, which came with it."""

    def walk(node):
        if isinstance(node, (str, Path)):
            return walk(load_spec(node))
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "all" in node:
            return {**node, "all": [walk(n) for n in node["all"]]}
        if "mix" in node:
            return {**node, "mix": [{**b, "spec": walk(b.get("spec"))} for b in node["mix"]]}
        if "preset" in node:
            return walk(get_preset(node["preset"]))
        if "name" in node:
            params = dict(node.get("params") or {})
            cls = list_occluders().get(node["name"])
            if cls is not None and "harmonize" in cls.defaults:
                params["harmonize"] = value
            if cls is not None and value is False and "sizing" in cls.defaults:
                params["sizing"] = "trials"  # fit_area's search as it was before alpha sizing
            if isinstance(params.get("occluder"), dict):
                params["occluder"] = walk(params["occluder"])
            return {**node, "params": params}
        return node

    return walk(spec)


def occlude(image: np.ndarray, landmarks: np.ndarray, spec: Spec, seed: int) -> Occlusion:
    """Occlude one aligned face. The same (image, landmarks, spec, seed) gives the same output."""
    return Composer(spec)(image, np.asarray(landmarks, dtype=np.float64), make_rng(seed))


def replay(image: np.ndarray, landmarks: np.ndarray, records: list[dict]) -> Occlusion:
    """Re-create an occlusion from a sample's `occluders` records (e.g. read back from its JSON).

    Each record's occluder is rebuilt from its "spec_params" (or, for records without them, from
    the concrete "params" that are constructor parameters, which replays exactly the families
    whose sampling draws as much for a scalar as for a range, e.g. all geometric ones but block)
    and run with its "seed", in order. Raises ValueError when a replayed occluder's concrete
    parameters differ from its record, i.e. the replay would not be the original."""
    lm = np.asarray(landmarks, dtype=np.float64)
    result = Occlusion(image=image, mask=np.full(image.shape[:2], MASK_VISIBLE, dtype=np.uint8), records=[])
    for i, record in enumerate(records):
        occluder = _rebuild(record)
        out, own, concrete = occluder.apply(result.image, lm, make_rng(int(record["seed"])))
        if dumps(concrete) != dumps(record["params"]):
            raise ValueError(
                f"replay of occluders[{i}] ({record['name']}, seed {record['seed']}) does not reproduce "
                f"its record: got params {dumps(concrete)}, recorded {dumps(record['params'])}"
            )
        result.image = out
        result.mask = result.mask.copy()
        result.mask[own] = MASK_OCCLUDED
        result.records.append(dict(record))
    return result


def _rebuild(record: dict):
    known = list_occluders()
    if record["name"] not in known:
        return create_occluder(record["name"])  # raises the registry's KeyError
    cls = known[record["name"]]
    if "fit_factor" in record and "spec_params" in record:  # a fit_area record: its inner occluder
        return known["fit_area"].fitted_occluder(record)
    if "spec_params" in record:
        return create_occluder(record["name"], **cls.replay_params(record["spec_params"]))
    defaults = cls.defaults
    return create_occluder(
        record["name"], **cls.replay_params({k: v for k, v in record["params"].items() if k in defaults})
    )
