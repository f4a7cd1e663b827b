"""3D face masks: parametric surgical / N95 / KN95 / cloth meshes fitted to the face pose.

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

Masks are meshes in the model frame (trimesh), cut from a 2D outline and shaped by a depth
function (pleats, a folded KN95 crease, an N95 dome), with ear loops or head straps. They are
rendered with pyrender through occsynth.render in "pixel space" (vertices = s R X + t), with a
head ellipsoid that hides what lies behind the head (the far loop) without being drawn. The
mask is exactly render alpha >= 0.5.

mode="bank" (default) uses pre-rendered poses (render_mask_bank, shipped in assets/mask3d):
the nearest (yaw, pitch) render is mapped onto the landmarks by the least-squares similarity
of its projected model points; no OpenGL needed. mode="direct" renders each image.
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from occsynth.bank import asset_dir, shape_sheet, tube
from occsynth.seeding import derive_seed, make_rng
from occsynth.occluders.base import Occluder, register_occluder, sample_value
from occsynth.faces.geometry import compose_fast, similarity
from occsynth.occluders.objects import _pad, load_rgba, make_template, paste, warp_roi

MODEL_POINTS = np.array(
    [
        [-31.5, 0.0, 0.0],   # left eye
        [31.5, 0.0, 0.0],    # right eye
        [0.1, 36.0, -24.0],  # nose tip
        [-25.7, 72.9, -3.0],  # left mouth corner
        [26.5, 72.6, -3.0],  # right mouth corner
    ]
)
KINDS = ("surgical", "n95", "kn95", "cloth")
COLORS = {
    "blue": (0.45, 0.68, 0.86), "white": (0.93, 0.93, 0.92), "black": (0.09, 0.09, 0.1),
    "green": (0.5, 0.78, 0.7), "pink": (0.94, 0.68, 0.76), "grey": (0.6, 0.6, 0.62), "navy": (0.12, 0.16, 0.32),
}
PRINTS = ("print1", "print2", "print3")  # cloth masks: fabric prints drawn from the seed
DEFAULT_STYLES = {"surgical": ("blue", "white", "black"), "n95": ("white",), "kn95": ("white", "black"), "cloth": ("print1", "print2")}
DEFAULT_YAWS = (-60.0, -40.0, -20.0, 0.0, 20.0, 40.0, 60.0)
DEFAULT_PITCHES = (-20.0, 0.0, 20.0)
BANK_INDEX = "index.json"
HEAD = ((0.0, 35.0, 75.0), (72.0, 125.0, 87.0))  # head proxy ellipsoid: centre, radii (mm)
_RASTER = ((-80.0, 80.0), (-5.0, 135.0), 2.0)  # outline raster: x range, y range, px per mm


# ----------------------------------------------------------------------------- pose

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
    translation = np.array([mx - scale * (r1[0] * cx + r1[1] * cy + r1[2] * cz),
                            my - scale * (r2[0] * cx + r2[1] * cy + r2[2] * cz)])
    return {"yaw": yaw, "pitch": pitch, "roll": roll, "scale": scale, "rotation": rotation, "translation": translation}


def project(points: np.ndarray, rotation: np.ndarray, scale: float, translation: Sequence[float]) -> np.ndarray:
    """Weak-perspective image coordinates of model points."""
    return scale * (np.asarray(points) @ np.asarray(rotation)[:2].T) + np.asarray(translation)


# ----------------------------------------------------------------------------- geometry

def head_depth(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Front surface depth of the head proxy ellipsoid (model frame)."""
    (cx, cy, cz), (ax, ay, az) = HEAD
    q = 1.0 - ((x - cx) / ax) ** 2 - ((y - cy) / ay) ** 2
    return cz - az * np.sqrt(np.clip(q, 0.0, None))


def _raster_grid():
    (x0, x1), (y0, y1), k = _RASTER
    w, h = int((x1 - x0) * k), int((y1 - y0) * k)
    yy, xx = np.mgrid[0:h, 0:w]
    return x0 + (xx + 0.5) / k, y0 + (yy + 0.5) / k


def _uv_to_xy(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    (x0, x1), (y0, y1), _ = _RASTER
    return x0 + (x1 - x0) * u, y0 + (y1 - y0) * (1.0 - v)


def _outline(kind: str) -> np.ndarray:
    """Bool raster of the mask's unfolded outline as seen from the front."""
    x, y = _raster_grid()
    ax = np.abs(x)
    if kind == "surgical":
        return (ax <= 67 - 3 * ((y - 60) / 60) ** 2) & (y >= 13 + 12 * (ax / 66) ** 1.6) & (y <= 126 - 30 * (ax / 66) ** 2.2)
    if kind == "cloth":
        return (ax <= 64) & (y >= 8 + 26 * (ax / 63) ** 1.3) & (y <= 128 - 42 * (ax / 63) ** 1.8)
    if kind == "kn95":
        return (ax <= 65) & (y >= 6 + 26 * (ax / 64) ** 1.1) & (y <= 124 - 34 * (ax / 64) ** 1.5)
    if kind == "n95":
        return ((x / 59) ** 2 + ((y - 70) / 58) ** 2 <= 1.0) & (y >= 14)
    raise ValueError(f"unknown mask kind {kind!r}; choose from {', '.join(KINDS)}")


def _depth(kind: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Depth (z) of the mask surface: tented over the nose and mouth, wrapping back to the cheeks."""
    ax = np.abs(x)
    if kind == "n95":
        r2 = (x / 59) ** 2 + ((y - 70) / 58) ** 2
        return head_depth(x, y) - 2.0 - 40.0 * np.clip(1.0 - r2, 0, 1) ** 0.55
    if kind == "kn95":
        front = np.interp(y, [-5, 6, 36, 70, 100, 124, 135], [-5, -16, -36, -42, -32, -8, 0])
        return front + (26.0 - front) * np.clip(ax / 68, 0, 1) ** 1.1  # nearly linear: a crease at x = 0
    if kind == "cloth":
        front = np.interp(y, [-5, 8, 36, 65, 95, 120, 135], [-4, -13, -30, -30, -24, -10, 0])
    else:
        front = np.interp(y, [-5, 13, 36, 60, 85, 110, 126, 135], [-6, -14, -28, -26, -22, -14, -4, 2])
    power = np.interp(y, [10, 40, 130], [1.5, 2.0, 2.3])
    z = front + (26.0 - front) * np.clip(ax / 70, 0, 1) ** power
    if kind == "surgical":  # three pleats: the surface steps back at each fold line
        phase = (y - 40.0) / 17.0
        pleat = 3.5 * ((phase % 1.0) - 0.5) * ((y > 40) & (y < 108)) * (1 - np.clip(ax / 70, 0, 1) ** 6)
        z = z + pleat
    return z


def _texture(kind: str, style: str, rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Texture over the outline raster (rows = y down) and the loop colour."""
    from scipy import ndimage

    from occsynth.bank import _fabric_texture, tex_noise

    outline = _outline(kind)
    h, w = outline.shape
    x, y = _raster_grid()
    edge = ndimage.distance_transform_edt(outline) / _RASTER[2]  # mm to the outline
    if style in PRINTS:
        fabric, _ = _fabric_texture(make_rng(derive_seed(int(rng.integers(1 << 62)), style)), 256)
        tex = np.asarray(fabric, dtype=np.float64)[np.arange(h) * 256 // h % 256][:, np.arange(w) * 256 // w % 256] / 255.0
        base = tuple(float(c) for c in tex.reshape(-1, 3).mean(0))
    else:
        base = COLORS[style] if isinstance(style, str) else tuple(style)
        tex = tex_noise(rng, max(h, w), base, 0.05)[:h, :w].astype(np.float64) / 255.0
    if kind == "surgical":
        tex = np.where((edge < 5)[..., None], tex * 1.06 + 0.02, tex)  # bound edges
        tex = np.where(((edge > 5.5) & (edge < 6.2))[..., None], tex * 0.85, tex)  # stitching
    elif kind == "kn95":
        dots = (edge < 4) & ((np.floor(x * 1.2) + np.floor(y * 1.2)) % 2 == 0)
        tex = np.where(dots[..., None], tex * 0.85, tex)
        tex = np.where((np.abs(x) < 0.8)[..., None], tex * 0.9, tex)
    elif kind == "cloth":
        tex = np.where((np.abs(x) < 0.6)[..., None], tex * 0.7, tex)  # centre seam
    elif kind == "n95":
        tex = np.where((edge < 3.5)[..., None], tex * 0.92, tex)
    tex = np.clip(np.round(tex * 255), 0, 255).astype(np.uint8)[::2, ::2]
    loop = base if kind != "n95" else (0.95, 0.85, 0.3)
    return np.ascontiguousarray(tex), loop


def _catmull(points: np.ndarray, per: int = 8) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    p = np.vstack([p[0], p, p[-1]])
    out = []
    for i in range(1, len(p) - 2):
        for t in np.linspace(0, 1, per, endpoint=False):
            t2, t3 = t * t, t * t * t
            out.append(0.5 * ((2 * p[i]) + (-p[i - 1] + p[i + 1]) * t + (2 * p[i - 1] - 5 * p[i] + 4 * p[i + 1] - p[i + 2]) * t2
                              + (-p[i - 1] + 3 * p[i] - 3 * p[i + 1] + p[i + 2]) * t3))
    out.append(p[-2])
    return np.array(out)


def _front(path: np.ndarray, straps: str, max_depth: float = 45.0) -> np.ndarray:
    """The leading part of a strap path that stays in front of the ears (z < max_depth)."""
    if straps == "full":
        return path
    behind = np.nonzero(path[:, 2] >= max_depth)[0]
    return path[: max(int(behind[0]) if behind.size else len(path), 2)]


def _edge_point(kind: str, side: int, top: bool) -> np.ndarray:
    """A point just inside the outline's side, near its top or bottom corner."""
    outline = _outline(kind)
    x, y = _raster_grid()
    cols = np.nonzero(outline.any(axis=0))[0]
    col = cols[-4] if side > 0 else cols[3]
    rows = np.nonzero(outline[:, col])[0]
    row = rows[min(6, len(rows) - 1)] if top else rows[max(-7, -len(rows))]
    px, py = float(x[row, col]), float(y[row, col])
    return np.array([px, py, float(_depth(kind, np.array(px), np.array(py)))])


def face_mask_parts(kind: str, rng: np.random.Generator, style: str | Sequence[float] | None = None,
                    straps: str = "full"):
    """Mesh parts (occsynth.render.Part, model frame) of one mask and its anchors (MODEL_POINTS).

    `style` is a colour name (COLORS), an RGB triple in 0..1, or a cloth print name (PRINTS);
    None draws one of DEFAULT_STYLES[kind] from `rng`. straps="front" keeps only the part of
    the loops/straps in front of the ears, for renders without the head proxy that hides the
    rest (the object template bank)."""
    from occsynth.render import Part

    if kind not in KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; choose from {', '.join(KINDS)}")
    if style is None:
        options = DEFAULT_STYLES[kind]
        style = options[int(rng.integers(len(options)))]
    texture, loop_color = _texture(kind, style, rng)

    def surface(u, v):
        x, y = _uv_to_xy(u, v)
        return np.column_stack([x, y, _depth(kind, x, y)])

    mesh, uv = shape_sheet(_outline(kind), surface, spacing=7)
    # shape_sheet turns faces toward +z (its "viewer"); here the viewer looks along +z
    mesh.faces = mesh.faces[:, ::-1]
    rough = 0.85 if kind in ("cloth", "surgical") else 0.7
    parts = [Part(mesh, color=(1, 1, 1), roughness=rough, texture=texture, uv=uv)]
    for side in (-1, 1):
        a, b = _edge_point(kind, side, True), _edge_point(kind, side, False)
        if kind == "n95":  # two elastic head straps, above and below the ears, round the back
            for start, mid, end in ((a, (74, 12, 50), (60, -8, 140)), (b, (72, 78, 55), (55, 92, 140))):
                path = _catmull([start, [side * mid[0], mid[1], mid[2]], [side * end[0], end[1], end[2]]])
                parts.append(Part(tube(_front(path, straps), 1.6, sides=8), color=loop_color, roughness=0.8))
        else:  # an ear loop along the cheek, around the back of the ear
            path = _catmull([a, [side * 74, 18, 40], [side * 80, 30, 72], [side * 76, 54, 58], b])
            if straps == "front":  # two stubs running back toward the ear
                top, bottom = path[: len(path) // 2], path[len(path) // 2 :]
                for piece in (top, bottom[::-1]):
                    parts.append(Part(tube(_front(piece, straps), 1.1, sides=8), color=loop_color, roughness=0.8))
            else:
                parts.append(Part(tube(path, 1.1, sides=8), color=loop_color, roughness=0.8))
    if kind == "n95" and rng.random() < 0.4:  # an exhalation valve
        from occsynth.bank import slab, superellipse

        valve, _ = slab(superellipse(40, 12, 11, 3.0), 6.0)
        valve.faces = valve.faces[:, ::-1]  # slab faces +z; the viewer is at -z here
        vx, vy = 22.0 * (1 if rng.random() < 0.5 else -1), 84.0
        valve.apply_translation([vx, vy, float(_depth(kind, np.array(vx), np.array(vy))) - 2.0])
        parts.append(Part(valve, color=(0.6, 0.6, 0.62), roughness=0.5, smooth=False))
    return parts, MODEL_POINTS.copy()


def model_to_face_cm() -> np.ndarray:
    """4x4 from the model frame (mm, y down, z away) to occsynth.bank's face frame (cm, y up,
    z toward the viewer); both have their origin at the eye midpoint."""
    return np.diag([0.1, -0.1, -0.1, 1.0])


def head_proxy():
    """The head ellipsoid (model frame) that hides what lies behind the head."""
    from occsynth.bank import ellipsoid

    (c, r) = HEAD
    return ellipsoid(r, c, subdivisions=3)


# ----------------------------------------------------------------------------- rendering

def _light(rng: np.random.Generator | None):
    from occsynth.render import Light

    if rng is None:
        return Light(direction=(-0.2, -0.35, -1.0), intensity=2.2, ambient=0.3)
    return Light(direction=(float(rng.uniform(-0.5, 0.5)), -float(rng.uniform(0.1, 0.6)), -1.0),
                 intensity=float(rng.uniform(1.8, 2.6)), ambient=float(rng.uniform(0.25, 0.35)))


def render_posed(parts, rotation: np.ndarray, scale: float, translation: Sequence[float],
                 size: tuple[int, int], light=None, supersample: int = 2) -> np.ndarray:
    """Render model-frame parts at pixel positions s R X + t into a (W, H) RGBA image; the
    head proxy hides loops behind the head."""
    from occsynth.render import Part, render_pixel_space

    m = np.eye(4)
    m[:3, :3] = scale * np.asarray(rotation)
    m[:2, 3] = translation
    posed = [p.transformed(m) for p in parts]
    head = Part(head_proxy()).transformed(m).mesh
    rgba, _ = render_pixel_space(posed, int(size[0]), int(size[1]), occluders=[head], light=light, supersample=supersample)
    return rgba


def _projected_box(parts, rotation, scale, translation) -> tuple[np.ndarray, np.ndarray]:
    verts = np.concatenate([np.asarray(p.mesh.vertices) for p in parts])
    xy = project(verts, rotation, scale, translation)
    return xy.min(0), xy.max(0)


def render_mask_bank(
    out_dir: str | Path | None = None,
    kinds: Sequence[str] = KINDS,
    yaws: Sequence[float] = DEFAULT_YAWS,
    pitches: Sequence[float] = DEFAULT_PITCHES,
    rolls: Sequence[float] = (0.0,),
    colors: dict[str, Sequence[str]] | Sequence[str] | None = None,
    size: float = 56.0,
    seed: int = 0,
    supersample: int = 3,
) -> dict:
    """Pre-render masks over a pose grid into `out_dir` (default assets/mask3d).

    `colors`: styles per kind ({kind: [names]}) or one list for all kinds (default
    DEFAULT_STYLES); `size` is the inter-ocular distance in pixels of every render (masks are
    then about 2.4x that wide). Each render is an RGBA PNG cropped to its alpha; index.json lists
    file, kind, style, yaw, pitch, roll and the projected MODEL_POINTS ("anchors") in its pixels.
    The same seed gives the same files."""
    from PIL import Image

    out = Path(out_dir) if out_dir is not None else asset_dir("mask3d")
    out.mkdir(parents=True, exist_ok=True)
    scale = float(size) / (MODEL_POINTS[1, 0] - MODEL_POINTS[0, 0])
    renders = []
    for kind in kinds:
        styles = colors.get(kind, DEFAULT_STYLES[kind]) if isinstance(colors, dict) else (colors or DEFAULT_STYLES[kind])
        for style in styles:
            parts, anchors = face_mask_parts(kind, make_rng(derive_seed(seed, "mask3d", kind, style)), style)
            for yaw in yaws:
                for pitch in pitches:
                    for roll in rolls:
                        r = pose_matrix(yaw, pitch, roll)
                        lo, hi = _projected_box(parts, r, scale, (0.0, 0.0))
                        pad = 3
                        t = -lo + pad
                        w, h = int(math.ceil(hi[0] - lo[0])) + 2 * pad, int(math.ceil(hi[1] - lo[1])) + 2 * pad
                        light = _light(make_rng(derive_seed(seed, "mask3d-light", kind, style, yaw, pitch, roll)))
                        rgba = render_posed(parts, r, scale, t, (w, h), light, supersample)
                        ys, xs = np.nonzero(rgba[..., 3])
                        y0, x0 = int(ys.min()), int(xs.min())
                        rgba = rgba[y0 : ys.max() + 1, x0 : xs.max() + 1]
                        pts = project(anchors, r, scale, t) - [x0, y0]
                        name = f"{kind}_{style}_y{int(round(yaw)):+03d}_p{int(round(pitch)):+03d}_r{int(round(roll)):+03d}.png"
                        Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(out / name, optimize=True)
                        renders.append({
                            "file": name, "kind": kind, "style": style,
                            "yaw": float(yaw), "pitch": float(pitch), "roll": float(roll),
                            "anchors": np.round(pts, 3).tolist(),
                            "size": [int(rgba.shape[1]), int(rgba.shape[0])],
                        })
    index = {"format": 1, "seed": int(seed), "iod_px": float(size), "model_points": MODEL_POINTS.tolist(), "renders": renders}
    (out / BANK_INDEX).write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


class PoseBank:
    """A decoded pose bank with a per-(kind, style) lookup table of poses."""

    def __init__(self, root: Path, index: dict):
        self.root = root
        self.renders = index["renders"]
        self.templates = [make_template(r["file"], load_rgba(root / r["file"]), r) for r in self.renders]
        self.poses = np.array([[r["yaw"], r["pitch"], r["roll"]] for r in self.renders], dtype=np.float64)
        self.anchors = [np.asarray(r["anchors"], dtype=np.float64) for r in self.renders]
        self.anchor_lists = [r["anchors"] for r in self.renders]
        self.pose_lists = self.poses.tolist()
        self._groups: dict = {}

    def candidates(self, kind: str, style: str | None) -> np.ndarray:
        key = (kind, style)
        if key not in self._groups:
            self._groups[key] = np.array(
                [i for i, r in enumerate(self.renders) if r["kind"] == kind and (style is None or r["style"] == style)], dtype=np.int64
            )
        return self._groups[key]

    def styles(self, kind: str) -> list[str]:
        if ("styles", kind) not in self._groups:
            self._groups[("styles", kind)] = sorted({r["style"] for r in self.renders if r["kind"] == kind})
        return self._groups[("styles", kind)]

    def nearest(self, candidates: np.ndarray, yaw: float, pitch: float, roll: float = 0.0) -> int:
        """The candidate render whose (yaw, pitch) is nearest; roll only breaks ties, since the
        2D similarity absorbs it."""
        best, best_cost = -1, math.inf
        for i in candidates.tolist():
            py, pp, pr = self.pose_lists[i]
            cost = (py - yaw) ** 2 + (pp - pitch) ** 2 + 1e-3 * (pr - roll) ** 2
            if cost < best_cost:
                best, best_cost = i, cost
        return best


@functools.lru_cache(maxsize=4)
def _load_pose_bank(root: str) -> PoseBank:
    path = Path(root) / BANK_INDEX
    if not path.exists():
        raise FileNotFoundError(f"no 3D mask pose bank at {root} ({BANK_INDEX} missing); build it with "
                                "`occsynth render-masks` or occsynth.occluders.mask3d.render_mask_bank()")
    return PoseBank(Path(root), json.loads(path.read_text()))


def load_pose_bank(bank_dir: str | Path | None = None) -> PoseBank:
    root = Path(bank_dir) if bank_dir is not None else asset_dir("mask3d")
    return _load_pose_bank(str(root.resolve()))


@functools.lru_cache(maxsize=64)
def _direct_parts(kind: str, style: Any, seed: int):
    return face_mask_parts(kind, make_rng(seed), style)[0]


# ----------------------------------------------------------------------------- occluder

@register_occluder
class FaceMask3D(Occluder):
    """A 3D face mask fitted to the face pose.

    Params: kind ("surgical" | "n95" | "kn95" | "cloth", a list or {"choice": [...]}),
    mode ("bank" | "direct"), bank_dir (None = the package's assets/mask3d), color (None = any
    style; a name from COLORS / PRINTS; direct mode also takes [r, g, b] in 0..1), scale
    (multiplier, [lo, hi]), feather (px), supersample (direct mode)."""

    family = "mask3d"
    name = "mask3d"
    defaults = {
        "kind": {"choice": list(KINDS)},
        "mode": "bank",
        "bank_dir": None,
        "color": None,
        "scale": [0.98, 1.04],
        "feather": 1.0,
        "supersample": 2,
    }

    def __init__(self, **params: Any):
        super().__init__(**params)
        if self.params["mode"] not in ("bank", "direct"):
            raise ValueError(f"mask3d mode must be 'bank' or 'direct', got {self.params['mode']!r}")

    def render(self, image, landmarks, rng):
        kind = sample_value(self.params["kind"], rng)
        if isinstance(kind, (list, tuple)):
            kind = kind[int(rng.integers(len(kind)))]
        if kind not in KINDS:
            raise ValueError(f"unknown mask kind {kind!r}; choose from {', '.join(KINDS)}")
        color = sample_value(self.params["color"], rng) if isinstance(self.params["color"], dict) else self.params["color"]
        scale = float(sample_value(self.params["scale"], rng))
        feather = float(sample_value(self.params["feather"], rng))
        pose = estimate_pose(landmarks)
        concrete = {"kind": kind, "mode": self.params["mode"], "scale": scale, "feather": feather,
                    "pose": {k: round(float(pose[k]), 3) for k in ("yaw", "pitch", "roll")}}
        if self.params["mode"] == "bank":
            if getattr(self, "_bank_cache", None) is None:  # path resolution costs more than a composite
                self._bank_cache = load_pose_bank(self.params["bank_dir"])
            bank = self._bank_cache
            style = color
            if style is None:
                styles = bank.styles(kind)
                if not styles:
                    raise ValueError(f"the pose bank at {bank.root} has no {kind!r} masks")
                style = styles[int(rng.integers(len(styles)))]
            candidates = bank.candidates(kind, style)
            if len(candidates) == 0:
                raise ValueError(f"the pose bank at {bank.root} has no {kind!r} mask in style {style!r}")
            index = bank.nearest(candidates, pose["yaw"], pose["pitch"], pose["roll"])
            lm = np.asarray(landmarks, dtype=np.float64).tolist()
            base = similarity(bank.anchor_lists[index], lm)
            cx, cy = (lm[2][0] + lm[3][0] + lm[4][0]) / 3.0, (lm[2][1] + lm[3][1] + lm[4][1]) / 3.0
            matrix = compose_fast(base, cx, cy, scale, 0.0, 0.0, 0.0)
            warped = warp_roi(bank.templates[index].rgba, matrix, image.shape[:2], margin=_pad(feather))
            concrete.update(style=style, render=bank.renders[index]["file"], matrix=matrix.ravel().tolist(),
                            bank_dir=None if self.params["bank_dir"] is None else str(self.params["bank_dir"]))
        else:
            style = color if color is not None else DEFAULT_STYLES[kind][int(rng.integers(len(DEFAULT_STYLES[kind])))]
            style_key = tuple(style) if isinstance(style, (list, tuple)) else style
            parts = _direct_parts(kind, style_key, derive_seed(0, "mask3d-direct", kind, str(style_key)))
            warped = self._render_direct(parts, pose, scale, image.shape[:2], landmarks, rng)
            concrete.update(style=list(style_key) if isinstance(style_key, tuple) else style_key)
        out, mask = paste(image, warped, feather)
        return out, mask, concrete, warped

    def _render_direct(self, parts, pose, scale, shape, landmarks, rng):
        s = pose["scale"] * scale
        centre = np.asarray(landmarks, dtype=np.float64)[2:].mean(0)
        t = (pose["translation"] - centre) * scale + centre
        lo, hi = _projected_box(parts, pose["rotation"], s, t)
        h_img, w_img = shape
        x0, y0 = max(int(math.floor(lo[0])) - 2, 0), max(int(math.floor(lo[1])) - 2, 0)
        x1, y1 = min(int(math.ceil(hi[0])) + 3, w_img), min(int(math.ceil(hi[1])) + 3, h_img)
        if x1 <= x0 or y1 <= y0:
            return None
        rgba = render_posed(parts, pose["rotation"], s, t - [x0, y0], (x1 - x0, y1 - y0), _light(rng),
                            int(self.params["supersample"]))
        return rgba, x0, y0

    def apply(self, image, landmarks, rng):
        out, mask, concrete, _ = self.render(image, landmarks, rng)
        return out, mask, concrete
