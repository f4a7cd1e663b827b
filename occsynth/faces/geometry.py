"""Plane geometry of faces: the one similarity fit, point transforms and the face frame.

The face frame F(fx, fy) = E + fx * (right_eye - left_eye) + fy * (mouth_mid - E), E the eye
midpoint, places occluders relative to the 5 landmarks whatever the face's size and roll.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def face_axes(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eye midpoint E, x axis = right_eye - left_eye, y axis = mouth_mid - E)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    e = (lm[0] + lm[1]) * 0.5
    return e, lm[1] - lm[0], (lm[3] + lm[4]) * 0.5 - e


def face_point(landmarks: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Image coordinates of face-frame points (k, 2)."""
    e, ax, ay = face_axes(landmarks)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return e + pts[:, :1] * ax + pts[:, 1:] * ay


def inter_ocular(landmarks: np.ndarray) -> float:
    lm = np.asarray(landmarks, dtype=np.float64)
    return float(math.hypot(*(lm[1] - lm[0])))


def compose_about(
    m: np.ndarray, centre: np.ndarray, scale: float, angle_deg: float, shift: Sequence[float]
) -> np.ndarray:
    """Follow the 2x3 map `m` by a scale and rotation about `centre` and a shift (pixels);
    positive angles turn clockwise on screen (y points down)."""
    t = math.radians(angle_deg)
    r = scale * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    c = np.asarray(centre, dtype=np.float64)
    out = np.empty((2, 3))
    out[:, :2] = r @ m[:, :2]
    out[:, 2] = r @ (m[:, 2] - c) + c + np.asarray(shift, dtype=np.float64)
    return out


def similarity(src, dst) -> list[float]:
    """THE similarity fit of the project: least squares (Umeyama's closed form in 2-D: rotation,
    uniform scale, translation, never a reflection; exact for two points) mapping the points
    `src` onto `dst`, as the row-major 2x3 matrix [a, -b, tx, b, a, ty]. Plain floats: at 2-5
    points NumPy's per-call overhead would dominate (alignment and every template paste use it)."""
    n = len(src)
    msx = sum(p[0] for p in src) / n
    msy = sum(p[1] for p in src) / n
    mdx = sum(p[0] for p in dst) / n
    mdy = sum(p[1] for p in dst) / n
    a = b = norm = 0.0
    for (sx, sy), (dx, dy) in zip(src, dst):
        sx, sy, dx, dy = sx - msx, sy - msy, dx - mdx, dy - mdy
        a += sx * dx + sy * dy
        b += sx * dy - sy * dx
        norm += sx * sx + sy * sy
    if norm <= 1e-12:
        raise ValueError("similarity needs at least two distinct source points")
    a, b = a / norm, b / norm
    return [a, -b, mdx - a * msx + b * msy, b, a, mdy - b * msx - a * msy]


def face_points_fast(lm: list, points: list) -> list[tuple[float, float]]:
    """face_point in plain floats; `lm` is landmarks.tolist()."""
    (lx, ly), (rx, ry), _, (mlx, mly), (mrx, mry) = lm
    ex, ey = (lx + rx) * 0.5, (ly + ry) * 0.5
    ax, ay = rx - lx, ry - ly
    bx, by = (mlx + mrx) * 0.5 - ex, (mly + mry) * 0.5 - ey
    return [(ex + fx * ax + fy * bx, ey + fx * ay + fy * by) for fx, fy in points]


def compose_fast(
    m: list[float], cx: float, cy: float, scale: float, angle_deg: float, sx: float, sy: float
) -> np.ndarray:
    """compose_about in plain floats, returning the 2x3 numpy matrix."""
    t = math.radians(angle_deg)
    c, s = scale * math.cos(t), scale * math.sin(t)
    a, b, tx, d, e, ty = m
    return np.array(
        [
            [c * a - s * d, c * b - s * e, c * (tx - cx) - s * (ty - cy) + cx + sx],
            [s * a + c * d, s * b + c * e, s * (tx - cx) + c * (ty - cy) + cy + sy],
        ]
    )


def similarity_matrix(src, dst) -> np.ndarray:
    """similarity() as a float64 (2, 3) NumPy matrix (for cv2.warpAffine)."""
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2).tolist()
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2).tolist()
    return np.array(similarity(src, dst), dtype=np.float64).reshape(2, 3)


def transform_points(points, matrix) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (N, 2) points."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
        raise ValueError(f"points must be a finite (N, 2) array, got shape {pts.shape}")
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 3):
        raise ValueError(f"matrix must be 2x3, got shape {m.shape}")
    return pts @ m[:, :2].T + m[:, 2]
