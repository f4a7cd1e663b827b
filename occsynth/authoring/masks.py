"""3D face masks as meshes (surgical, N95, KN95, cloth) and their pose-bank renders.

Masks are meshes in the model frame of faces/pose.py, cut from a 2D outline and shaped by a
depth function (pleats, a folded KN95 crease, an N95 dome), with ear loops or head straps. They
are rendered with pyrender (authoring/render.py) in "pixel space" (vertices = s R X + t), with
a head ellipsoid that hides what lies behind the head (the far loop) without being drawn.
`render_mask_bank` pre-renders a pose grid: the bank the mask3d occluder ships with.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from occsynth.assets.catalog import (
    MASK_COLORS as COLORS,
)
from occsynth.assets.catalog import (
    MASK_KINDS as KINDS,
)
from occsynth.assets.catalog import (
    MASK_PRINTS as PRINTS,
)
from occsynth.assets.catalog import (
    MASK_STYLES as DEFAULT_STYLES,
)
from occsynth.assets.catalog import (
    POSE_BANK_INDEX as BANK_INDEX,
)
from occsynth.assets.catalog import (
    default_pose_bank_dir,
)
from occsynth.authoring.meshes import (
    _fabric_texture,
    ellipsoid,
    shape_sheet,
    slab,
    superellipse,
    tex_noise,
    tube,
)
from occsynth.authoring.render import Light, Part, render_pixel_space
from occsynth.faces.pose import MODEL_POINTS, pose_matrix, project
from occsynth.io.atomic import write_text
from occsynth.seeding import derive_seed, make_rng

DEFAULT_YAWS = (-60.0, -40.0, -20.0, 0.0, 20.0, 40.0, 60.0)
DEFAULT_PITCHES = (-20.0, 0.0, 20.0)
HEAD = ((0.0, 35.0, 75.0), (72.0, 125.0, 87.0))  # head proxy ellipsoid: centre, radii (mm)
_RASTER = ((-80.0, 80.0), (-5.0, 135.0), 2.0)  # outline raster: x range, y range, px per mm


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
        return (
            (ax <= 67 - 3 * ((y - 60) / 60) ** 2)
            & (y >= 13 + 12 * (ax / 66) ** 1.6)
            & (y <= 126 - 30 * (ax / 66) ** 2.2)
        )
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
    outline = _outline(kind)
    h, w = outline.shape
    x, y = _raster_grid()
    edge = ndimage.distance_transform_edt(outline) / _RASTER[2]  # mm to the outline
    if style in PRINTS:
        fabric, _ = _fabric_texture(make_rng(derive_seed(int(rng.integers(1 << 62)), style)), 256)
        tex = (
            np.asarray(fabric, dtype=np.float64)[np.arange(h) * 256 // h % 256][:, np.arange(w) * 256 // w % 256]
            / 255.0
        )
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
            out.append(
                0.5
                * (
                    (2 * p[i])
                    + (-p[i - 1] + p[i + 1]) * t
                    + (2 * p[i - 1] - 5 * p[i] + 4 * p[i + 1] - p[i + 2]) * t2
                    + (-p[i - 1] + 3 * p[i] - 3 * p[i + 1] + p[i + 2]) * t3
                )
            )
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


def face_mask_parts(
    kind: str, rng: np.random.Generator, style: str | Sequence[float] | None = None, straps: str = "full"
):
    """Mesh parts (occsynth.authoring.render.Part, model frame) of one mask and its anchors (MODEL_POINTS).

    `style` is a colour name (COLORS), an RGB triple in 0..1, or a cloth print name (PRINTS);
    None draws one of DEFAULT_STYLES[kind] from `rng`. straps="front" keeps only the part of
    the loops/straps in front of the ears, for renders without the head proxy that hides the
    rest (the object template bank)."""
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
        valve, _ = slab(superellipse(40, 12, 11, 3.0), 6.0)
        valve.faces = valve.faces[:, ::-1]  # slab faces +z; the viewer is at -z here
        vx, vy = 22.0 * (1 if rng.random() < 0.5 else -1), 84.0
        valve.apply_translation([vx, vy, float(_depth(kind, np.array(vx), np.array(vy))) - 2.0])
        parts.append(Part(valve, color=(0.6, 0.6, 0.62), roughness=0.5, smooth=False))
    return parts, MODEL_POINTS.copy()


def model_to_face_cm() -> np.ndarray:
    """4x4 from the model frame (mm, y down, z away) to the face frame of occsynth.assets.catalog (cm, y up,
    z toward the viewer); both have their origin at the eye midpoint."""
    return np.diag([0.1, -0.1, -0.1, 1.0])


def head_proxy():
    """The head ellipsoid (model frame) that hides what lies behind the head."""
    (c, r) = HEAD
    return ellipsoid(r, c, subdivisions=3)


# ----------------------------------------------------------------------------- rendering


def _light(rng: np.random.Generator | None):
    if rng is None:
        return Light(direction=(-0.2, -0.35, -1.0), intensity=2.2, ambient=0.3)
    return Light(
        direction=(float(rng.uniform(-0.5, 0.5)), -float(rng.uniform(0.1, 0.6)), -1.0),
        intensity=float(rng.uniform(1.8, 2.6)),
        ambient=float(rng.uniform(0.25, 0.35)),
    )


def render_posed(
    parts,
    rotation: np.ndarray,
    scale: float,
    translation: Sequence[float],
    size: tuple[int, int],
    light=None,
    supersample: int = 2,
) -> np.ndarray:
    """Render model-frame parts at pixel positions s R X + t into a (W, H) RGBA image; the
    head proxy hides loops behind the head."""
    m = np.eye(4)
    m[:3, :3] = scale * np.asarray(rotation)
    m[:2, 3] = translation
    posed = [p.transformed(m) for p in parts]
    head = Part(head_proxy()).transformed(m).mesh
    rgba, _ = render_pixel_space(
        posed, int(size[0]), int(size[1]), occluders=[head], light=light, supersample=supersample
    )
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
    out = Path(out_dir) if out_dir is not None else default_pose_bank_dir()
    out.mkdir(parents=True, exist_ok=True)
    scale = float(size) / (MODEL_POINTS[1, 0] - MODEL_POINTS[0, 0])
    renders = []
    for kind in kinds:
        styles = (
            colors.get(kind, DEFAULT_STYLES[kind]) if isinstance(colors, dict) else (colors or DEFAULT_STYLES[kind])
        )
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
                        renders.append(
                            {
                                "file": name,
                                "kind": kind,
                                "style": style,
                                "yaw": float(yaw),
                                "pitch": float(pitch),
                                "roll": float(roll),
                                "anchors": np.round(pts, 3).tolist(),
                                "size": [int(rgba.shape[1]), int(rgba.shape[0])],
                            }
                        )
    index = {
        "format": 1,
        "seed": int(seed),
        "iod_px": float(size),
        "model_points": MODEL_POINTS.tolist(),
        "renders": renders,
    }
    write_text(out / BANK_INDEX, json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index
