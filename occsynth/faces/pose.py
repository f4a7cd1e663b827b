"""Head pose from 5 landmarks: a mean 3D face and its weak-perspective fit.

Model frame: millimetres, x to the image right, y down, z away from the viewer, origin at the
eye midpoint. MODEL_POINTS is a mean 5-point face whose frontal projection is exactly the
ArcFace reference (scaled to a 63 mm inter-ocular distance); depths are anthropometric means
(nose tip 24 mm in front of the eyes, mouth corners 3 mm).

Pose from 5 landmarks (weak perspective): with centred model points X and image points x,
the affine camera A (2x3) = x^T X (X^T X)^-1 is fitted by least squares (exact for a
weak-perspective projection of the model); its nearest scaled rotation s * [r1; r2] comes from
the SVD (s = mean singular value), r3 = r1 x r2, and the rotation is read as
R = Rz(roll) Rx(pitch) Ry(yaw): yaw > 0 turns the nose toward the image right, pitch > 0
lifts it (face looking up), roll > 0 turns the face clockwise on screen. The estimate is a few
microseconds, so it runs per image.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

MODEL_POINTS = np.array(
    [
        [-31.5, 0.0, 0.0],  # left eye
        [31.5, 0.0, 0.0],  # right eye
        [0.1, 36.0, -24.0],  # nose tip
        [-25.7, 72.9, -3.0],  # left mouth corner
        [26.5, 72.6, -3.0],  # right mouth corner
    ]
)


def pose_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation (degrees) in the model frame: Rz(roll) @ Rx(pitch) @ Ry(yaw), see module doc."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[math.cos(y), 0, -math.sin(y)], [0, 1, 0], [math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), math.sin(p)], [0, -math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def pose_angles(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a rotation built by pose_matrix."""
    r = np.asarray(rotation).tolist()
    pitch = math.asin(min(1.0, max(-1.0, -r[2][1])))
    yaw = math.atan2(r[2][0], r[2][2])
    roll = math.atan2(-r[0][1], r[1][1])
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


_MODEL_CENTRED = MODEL_POINTS - MODEL_POINTS.mean(axis=0)
_MODEL_PINV = np.linalg.inv(_MODEL_CENTRED.T @ _MODEL_CENTRED) @ _MODEL_CENTRED.T  # 3x5


_PINV_ROWS = _MODEL_PINV.tolist()
_MODEL_MEAN = MODEL_POINTS.mean(axis=0).tolist()


def estimate_pose(landmarks: np.ndarray) -> dict:
    """Weak-perspective pose of the mean face from 5 image landmarks.

    Returns {"yaw", "pitch", "roll" (degrees), "scale" (pixels per mm), "rotation" (3x3),
    "translation" (2,: image position of the model origin)}. Written in plain floats with the
    2x2 closed forms of the SVD step (it runs once per image, where numpy's call overhead would
    cost more than the arithmetic)."""
    pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2).tolist()
    mx = sum(p[0] for p in pts) / 5.0
    my = sum(p[1] for p in pts) / 5.0
    # affine camera rows a (x) and b (y): centred image points times the model pseudo-inverse
    a = [sum((p[0] - mx) * w for p, w in zip(pts, row)) for row in _PINV_ROWS]
    b = [sum((p[1] - my) * w for p, w in zip(pts, row)) for row in _PINV_ROWS]
    # nearest scaled rotation rows: (A A^T)^(-1/2) A; scale = mean singular value
    p_, q_, r_ = sum(v * v for v in a), sum(u * v for u, v in zip(a, b)), sum(v * v for v in b)
    det = max(p_ * r_ - q_ * q_, 1e-18)
    d = math.sqrt(det)
    t = math.sqrt(p_ + r_ + 2.0 * d)
    s11, s12, s22 = (p_ + d) / t, q_ / t, (r_ + d) / t  # S = sqrt(A A^T)
    sdet = s11 * s22 - s12 * s12
    i11, i12, i22 = s22 / sdet, -s12 / sdet, s11 / sdet
    r1 = [i11 * u + i12 * v for u, v in zip(a, b)]
    r2 = [i12 * u + i22 * v for u, v in zip(a, b)]
    r3 = [r1[1] * r2[2] - r1[2] * r2[1], r1[2] * r2[0] - r1[0] * r2[2], r1[0] * r2[1] - r1[1] * r2[0]]
    scale = t / 2.0
    rotation = np.array([r1, r2, r3])
    yaw, pitch, roll = pose_angles(rotation)
    cx, cy, cz = _MODEL_MEAN
    translation = np.array(
        [mx - scale * (r1[0] * cx + r1[1] * cy + r1[2] * cz), my - scale * (r2[0] * cx + r2[1] * cy + r2[2] * cz)]
    )
    return {"yaw": yaw, "pitch": pitch, "roll": roll, "scale": scale, "rotation": rotation, "translation": translation}


def project(points: np.ndarray, rotation: np.ndarray, scale: float, translation: Sequence[float]) -> np.ndarray:
    """Weak-perspective image coordinates of model points."""
    return scale * (np.asarray(points) @ np.asarray(rotation)[:2].T) + np.asarray(translation)
