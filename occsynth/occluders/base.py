"""The occluder interface and the one registry of occluder families.

An occluder takes an aligned face and returns the occluded image AND its exact occlusion mask
together (the albumentations image+mask convention). The mask comes from the occluder's own
geometry or alpha, never from diffing pixels. Inputs are never modified in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np

from occsynth.contract import MASK_OCCLUDED, occlusion_ratio
from occsynth.occluders._registry import OCCLUDERS
from occsynth.occluders.params import Param, SpecError, check_params


@dataclass
class Occlusion:
    """An occluded face: RGB uint8 image, uint8 mask (255 = occluded), one record per occluder."""

    image: np.ndarray
    mask: np.ndarray
    records: list[dict] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return occlusion_ratio(self.mask)


class Occluder:
    """Base class. Subclasses set `family` and implement `apply`.

    `params` are the user-facing parameters (scalars, [lo, hi] ranges or {"choice": [...]});
    `apply` samples concrete values with the given rng and returns them in the record, so a
    sample can be re-created from its JSON (the record also holds the occluder's own seed).
    `schema` says what each parameter accepts (params.py); it is checked here, when a spec is
    compiled, so a bad value fails once before any work instead of on every sample.
    """

    family: ClassVar[str] = ""
    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    schema: ClassVar[dict[str, Param]] = {}
    # Parameters added after samples were first recorded, with the value that reproduces the
    # earlier behaviour: a record leaves them out at that value and a replay puts it back, so
    # an old build rebuilds byte for byte (records included) and an old record replays.
    legacy: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise SpecError(
                f"occluder {self.name!r} got unknown parameter(s) {unknown}; known: {sorted(self.defaults)}"
            )
        check_params(self.name, params, self.schema)
        self.params = {**self.defaults, **params}

    def apply(
        self, image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """Return (occluded image, this occluder's own binary mask as bool HxW, concrete params)."""
        raise NotImplementedError

    def recorded_params(self) -> dict:
        """The parameters a sample records ("spec_params"): all of them but the `legacy` ones
        at their legacy value, in `record_form`."""
        return self.record_form(
            {k: v for k, v in self.params.items() if not (k in self.legacy and v == self.legacy[k])}
        )

    @classmethod
    def record_form(cls, params: dict) -> dict:
        """Recorded parameters with their values as a record holds them: as given here; a
        family whose parameter value holds options added later writes those out where they
        are not at their legacy value (its `replay_params` puts that value back)."""
        return params

    @classmethod
    def replay_params(cls, recorded: dict) -> dict:
        """Constructor parameters from recorded ones: absent `legacy` parameters take their
        legacy value (the record predates them or left them out at that value)."""
        return {**cls.legacy, **recorded}

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        landmarks: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """Apply on top of an existing mask; the new mask is the union of both."""
        seed = int(rng.integers(0, 2**63 - 1))
        out, own, concrete = self.apply(
            image, np.asarray(landmarks, dtype=np.float64), np.random.Generator(np.random.PCG64(seed))
        )
        return self.result(image, mask, out, own, concrete, seed)

    def result(
        self, image: np.ndarray, mask: np.ndarray, out: np.ndarray, own: np.ndarray, concrete: dict, seed: int
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """What __call__ returns once apply() (its generator made from `seed`) gave (out, own,
        concrete): the image, the union of `mask` and `own`, and the record. fit_area calls it
        after rendering from its search's generator (the same draws as apply's)."""
        if own.shape != image.shape[:2] or own.dtype != np.bool_:
            raise TypeError(f"{self.name}: apply() must return a bool mask of shape {image.shape[:2]}")
        if mask.dtype == np.uint8 and MASK_OCCLUDED == 255:
            # where(own, 255, mask) for uint8: 255 where own (a bool's byte 1 negated), OR the
            # mask (x | 255 = 255, x | 0 = x); np.where with a scalar took ~8x as long
            new_mask = np.negative(own.view(np.uint8))
            new_mask |= mask
        else:
            new_mask = np.where(own, np.uint8(MASK_OCCLUDED), mask)
        record = {
            "family": self.family,
            "name": self.name,
            "params": concrete,
            "seed": seed,
            "area": np.count_nonzero(own) / own.size,
        }
        return out, new_mask, record


def register_occluder(cls: type[Occluder]) -> type[Occluder]:
    """Class decorator: make an occluder creatable by its `name`."""
    if not cls.name or not cls.family:
        raise ValueError(f"{cls.__name__} must set both `name` and `family`")
    return OCCLUDERS.register(cls.name)(cls)


def create_occluder(name: str, **params: Any) -> Occluder:
    """Build a registered occluder by name, e.g. create_occluder("block", ratio=0.3)."""
    return OCCLUDERS.get(name)(**params)


def list_occluders(family: str | None = None) -> dict[str, type[Occluder]]:
    return {n: c for n, c in OCCLUDERS.items() if family is None or c.family == family}


def sample_value(value: Any, rng: np.random.Generator) -> Any:
    """A concrete value from a parameter spec: [lo, hi] -> uniform, {"choice": [...]} -> one of."""
    if isinstance(value, dict) and "choice" in value:
        options = value["choice"]
        weights = value.get("p")
        index = int(rng.choice(len(options), p=None if weights is None else np.asarray(weights) / np.sum(weights)))
        return options[index]
    # the two items tested one by one: all() over a generator cost more than the draw (fit_area
    # places an object ~5 times per sample, three values each)
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and isinstance(value[0], (int, float))
        and isinstance(value[1], (int, float))
    ):
        lo, hi = float(value[0]), float(value[1])
        # rng.uniform(lo, hi)'s value and draw (NumPy: lo + (hi - lo) * next_double, unfused on
        # x86-64; tests/test_compose.py checks), at a third of its call's cost
        return lo + (hi - lo) * rng.random() if hi > lo else lo
    return value


OccluderFactory = Callable[..., Occluder]
