"""The 5 face landmarks an adapter hands to the occluders: given points, or an alignment
template's (for aligned crops); checked and rounded as the data contract stores them."""

from __future__ import annotations

import numpy as np

from occsynth import contract
from occsynth.faces.templates import get_template

NEEDED = (
    "the 5 face landmarks (left eye, right eye, nose, left and right mouth corners, x y in pixels) "
    "or template=NAME for aligned crops"
)


def template_points(template: str, height: int, width: int) -> np.ndarray:
    """The template's 5 points for an image of its size (a one-line error for another size)."""
    t = get_template(template)
    if (t.height, t.width) != (height, width):
        raise ValueError(
            f"template {t.name} is {t.height}x{t.width} (HxW) but the image is {height}x{width}; "
            "give the landmarks instead"
        )
    return contract.round_points(t.points)


def five_points(points, where: str) -> np.ndarray:
    """(5, 2) float64 rounded to 1/1000 px from any (5, >=2) array-like (extra columns, e.g.
    albumentations' angle and scale, are dropped)."""
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != 5 or array.shape[1] < 2:
        raise ValueError(f"{where}: expected {NEEDED}; got an array of shape {array.shape}")
    if not np.isfinite(array[:, :2]).all():
        raise ValueError(f"{where}: landmarks must be finite numbers")
    return contract.round_points(array[:, :2])
