"""A real aligned face for occluder tests: skimage's astronaut photo aligned to the ArcFace
112x112 template with the five landmarks facenet-pytorch's MTCNN (the project's detector)
found on it once (ASTRONAUT_LANDMARKS, in the original 512x512 image)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from occsynth.faces.geometry import similarity_matrix
from occsynth.faces.templates import get_template

ASTRONAUT_LANDMARKS = np.array(
    [[205.011, 101.727], [246.763, 103.714], [224.671, 128.965], [201.716, 139.246], [245.265, 141.857]]
)


def aligned_astronaut(roll_deg: float = 0.0):
    """(112x112 RGB face, its 5 landmarks); roll_deg turns the face about the image centre."""
    from skimage import data

    m = similarity_matrix(ASTRONAUT_LANDMARKS, get_template("arcface").points)
    if roll_deg:
        r = cv2.getRotationMatrix2D((55.5, 55.5), roll_deg, 1.0)
        m = (np.vstack([r, [0, 0, 1]]) @ np.vstack([m, [0, 0, 1]]))[:2]
    face = cv2.warpAffine(data.astronaut(), m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return face, ASTRONAUT_LANDMARKS @ m[:, :2].T + m[:, 2]


def centroid(mask: np.ndarray) -> np.ndarray:
    """(x, y) mean of the mask's pixels."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def covered(mask: np.ndarray, point) -> bool:
    """Whether the mask covers the pixel nearest to a landmark."""
    x, y = (int(round(v)) for v in point)
    return bool(mask[y, x])


def render_checked(occluder, face: np.ndarray, landmarks: np.ndarray, seed: int = 0):
    """occluder.render(...) for a template occluder, checked: the mask is exactly the warped
    alpha >= one half, and no pixel changed outside the mask grown by the feather radius (plus,
    when harmonised, the reach of its blur and contact shadow). Returns (image, mask, params)."""
    from occsynth.occluders.families.objects import ALPHA_HALF, full_alpha
    from occsynth.occluders.harmonize import reach
    from occsynth.seeding import make_rng

    out, mask, params, warped = occluder.render(face, landmarks, make_rng(seed))
    assert np.array_equal(mask, full_alpha(warped, face.shape[:2]) >= ALPHA_HALF)
    changed = np.any(out != face, axis=-1)
    r = int(math.ceil(params["feather"])) + (reach(params["harmonize"], landmarks) if "harmonize" in params else 0)
    allowed = cv2.dilate(mask.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)) > 0
    assert not np.any(changed & ~allowed)
    return out, mask, params
