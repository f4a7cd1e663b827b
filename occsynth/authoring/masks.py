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

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data as skdata  # real-photo textures shipped inside scikit-image

from occsynth.assets.catalog import (
    MASK_COLORS as COLORS,
)
from occsynth.assets.catalog import (
    MASK_KINDS as KINDS,
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
    FABRIC,
    _fabric_texture,
    _jitter_color,
    _pick,
    ellipsoid,
    shape_sheet,
    slab,
    superellipse,
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


def face_depth(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The face a mask rests on (model frame, mm): the head ellipsoid with a nose ridge that
    reaches the mean face's nose tip (MODEL_POINTS: 24 mm in front of the eyes at y = 36) and a
    chin that stands a little forward of the ellipsoid."""
    nose_height = np.interp(y, [4.0, 14.0, 30.0, 37.0, 44.0, 50.0], [0.0, 3.5, 9.0, 12.5, 6.0, 0.0])
    nose = nose_height * np.exp(-0.5 * (x / (9.0 + 0.12 * np.clip(y - 10.0, 0, None))) ** 2)
    chin = np.interp(y, [85.0, 108.0, 125.0], [0.0, 5.0, 0.0]) * np.exp(-0.5 * (x / 26.0) ** 2)
    return head_depth(x, y) - nose - chin


def drape(depth: np.ndarray, slope: float, step: float) -> np.ndarray:
    """The lowest surface in front of `depth` (a raster, one value per `step` mm) whose slope
    stays under `slope`: cloth stretched over the nose and chin instead of following every
    hollow. Two-pass lower envelopes of L1 cones, along rows then columns."""
    out = np.array(depth, dtype=np.float64)
    rise = slope * step
    for axis in (1, 0):
        out = np.moveaxis(out, axis, 0)
        for i in range(1, out.shape[0]):
            np.minimum(out[i], out[i - 1] + rise, out=out[i])
        for i in range(out.shape[0] - 2, -1, -1):
            np.minimum(out[i], out[i + 1] + rise, out=out[i])
        out = np.moveaxis(out, 0, axis)
    return out


def _raster_grid():
    (x0, x1), (y0, y1), k = _RASTER
    w, h = int((x1 - x0) * k), int((y1 - y0) * k)
    yy, xx = np.mgrid[0:h, 0:w]
    return x0 + (xx + 0.5) / k, y0 + (yy + 0.5) / k


def _uv_to_xy(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    (x0, x1), (y0, y1), _ = _RASTER
    return x0 + (x1 - x0) * u, y0 + (y1 - y0) * (1.0 - v)


def _edges(kind: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(top edge y, bottom edge y, half width) of a mask as seen from the front, by column."""
    ax = np.abs(x)
    if kind == "surgical":  # nose wire over the bridge, under the chin, pleats drawn in at the sides
        return 15.0 + 11.0 * (ax / 72) ** 1.6, 130.0 - 34.0 * (ax / 72) ** 2.0, 72.0
    if kind == "n95":  # a cup from the nose bridge to under the chin
        half = 61.0
        t = np.clip(ax / half, 0, 1)
        return 13.0 + 30.0 * (1 - np.sqrt(1 - t**2)) + 8.0 * t, 120.0 - 46.0 * (1 - np.sqrt(1 - t**2)), half
    if kind == "kn95":  # two panels folded along the vertical centre line
        return 13.0 + 24.0 * (ax / 66) ** 1.15, 127.0 - 36.0 * (ax / 66) ** 1.5, 66.0
    if kind == "cloth":  # two contoured panels sewn along the centre
        return 14.0 + 27.0 * (ax / 66) ** 1.3, 128.0 - 40.0 * (ax / 66) ** 1.8, 66.0
    raise ValueError(f"unknown mask kind {kind!r}; choose from {', '.join(KINDS)}")


def _outline(kind: str) -> np.ndarray:
    """Bool raster of the mask's outline as seen from the front."""
    x, y = _raster_grid()
    top, bottom, half = _edges(kind, x)
    return (np.abs(x) <= half) & (y >= top) & (y <= bottom)


def _height_fraction(kind: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    top, bottom, _ = _edges(kind, x)
    return (y - top) / np.maximum(bottom - top, 1e-6)


def _rest(face: np.ndarray, slope: float, gap: float, step: float) -> np.ndarray:
    """Where a mask rests: draped over the nose and chin (`drape`) but never more than `gap` mm
    off the face, since its loops pull its sides back onto the cheeks."""
    return np.maximum(drape(face, slope, step), face - gap)


SURGICAL_FOLDS = (0.3, 0.47, 0.64)
VALVE = "_valve"  # an N95 style with this suffix has an exhalation valve  # pleat fold lines, as fractions of the local height


def _depth_raster(kind: str) -> np.ndarray:
    """Depth (z, mm) of the mask surface over the outline raster."""
    x, y = _raster_grid()
    ax = np.abs(x)
    step = 1.0 / _RASTER[2]
    face = face_depth(x, y)
    if kind == "n95":  # stiff: a cup standing well off the face, its rim sealed on the face
        rest = _rest(face, 0.9, 12.0, step) - 3.0
        _, _, half = _edges(kind, x)
        t = _height_fraction(kind, x, y)
        r = np.clip((ax / half) ** 2 + ((t - 0.52) / 0.52) ** 2, 0, 1)
        return rest - 14.0 * (1.0 - r) ** 0.35  # a flat-fronted cup, steep at the rim
    if kind == "kn95":  # a stiff fold: a crease at x = 0, flat panels to the cheeks
        rest = _rest(face, 0.45, 12.0, step) - 2.5
        t = _height_fraction(kind, x, y)
        ridge = 9.0 * np.clip(1 - ax / 60.0, 0, 1) ** 1.4 * np.clip(np.sin(np.pi * np.clip(t, 0, 1)), 0, 1) ** 0.5
        return rest - ridge
    if kind == "cloth":  # soft: drapes, a seam ridge at the centre, wrinkles toward the loops
        rest = _rest(face, 0.3, 8.0, step) - 2.0
        t = _height_fraction(kind, x, y)
        seam = 2.2 * np.exp(-0.5 * (x / 2.5) ** 2)
        wrinkle = 0.9 * np.sin(2 * np.pi * (t * 3.2 + 0.15 * np.sign(x))) * np.clip((ax - 25) / 40, 0, 1)
        return rest - seam - wrinkle
    # surgical: pleats; each fold line steps the surface back, the folds open over the mouth
    rest = _rest(face, 0.35, 10.0, step) - 1.5
    t = _height_fraction(kind, x, y)
    open_ = 1.0 - np.clip(ax / 72.0, 0, 1) ** 3
    pleats = np.zeros_like(x)
    for fold in SURGICAL_FOLDS:
        pleats += np.clip((t - fold) / 0.17, 0, 1) * (t < fold + 0.17)  # a sawtooth per pleat
    return rest - 3.0 * open_ * pleats + 1.5 * open_ * np.clip(t - 0.3, 0, 0.51)


# ----------------------------------------------------------------------------- textures

FIBRE_PX = 1.0  # nonwoven / weave noise scale, raster pixels (0.5 mm)


def _noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return n / (n.std() + 1e-9)


def _photo_texture(name: str, shape, rng: np.random.Generator, colors) -> np.ndarray:
    """A real-photo texture shipped inside scikit-image (brick, grass, gravel), tiled at a
    fabric-print scale and printed in two colours (dark, light)."""
    photo = getattr(skdata, name)().astype(np.float64)
    photo = (photo - photo.min()) / max(photo.max() - photo.min(), 1e-9)
    scale = float(rng.uniform(0.35, 0.5))
    small = (
        np.asarray(
            Image.fromarray(np.round(photo * 255).astype(np.uint8)).resize(
                (max(8, int(photo.shape[1] * scale)), max(8, int(photo.shape[0] * scale))), Image.BILINEAR
            ),
            dtype=np.float64,
        )
        / 255.0
    )
    h, w = shape
    oy, ox = int(rng.integers(small.shape[0])), int(rng.integers(small.shape[1]))
    tiled = np.take(np.take(small, (np.arange(h) + oy) % small.shape[0], 0), (np.arange(w) + ox) % small.shape[1], 1)
    dark, light = (np.asarray(c, dtype=np.float64) for c in colors)
    return dark + (light - dark) * tiled[..., None]


def _motif_texture(shape, rng: np.random.Generator, base, ink) -> np.ndarray:
    """Printed motifs (stars, hearts or dots) on a half-drop grid, each turned at random."""
    h, w = shape
    img = np.zeros((h, w, 3), np.float64) + np.asarray(base, dtype=np.float64)
    ink = np.asarray(ink, dtype=np.float64)
    kind = _pick(rng, ["star", "heart", "dot", "flower"])
    pitch = float(rng.uniform(22, 34))
    size = pitch * float(rng.uniform(0.25, 0.35))
    layer = np.zeros((h, w), np.uint8)
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    for row, cy in enumerate(np.arange(-pitch, h + pitch, pitch)):
        for cx in np.arange(-pitch, w + pitch, pitch) + (pitch / 2 if row % 2 else 0):
            a = float(rng.uniform(0, 2 * np.pi))
            if kind == "star":
                r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
                ang = np.linspace(0, 2 * np.pi, 10, endpoint=False) + a
                px, py = r * np.sin(ang), -r * np.cos(ang)
            elif kind == "heart":
                px = 16 * np.sin(t) ** 3 / 16
                py = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) / 16
                px, py = px * np.cos(a * 0.2) - py * np.sin(a * 0.2), px * np.sin(a * 0.2) + py * np.cos(a * 0.2)
            elif kind == "flower":
                r = 0.6 + 0.4 * np.cos(5 * (t + a))
                px, py = r * np.cos(t), r * np.sin(t)
            else:
                px, py = 0.7 * np.cos(t), 0.7 * np.sin(t)
            pts = np.round(np.column_stack([cx + size * px, cy + size * py]) * 4).astype(np.int32)
            cv2.fillPoly(layer, [pts], 255, lineType=cv2.LINE_AA, shift=2)
    cover = layer.astype(np.float64)[..., None] / 255.0
    return img * (1 - cover) + ink * cover


def _sequin_texture(shape, rng: np.random.Generator, base) -> np.ndarray:
    """Sequins: overlapping metallic discs on a hexagonal grid, each tilted to the light at
    random (dull to flashing white)."""
    h, w = shape
    pitch = 6.0  # 3 mm at 2 px/mm
    img = np.zeros((h, w, 3), np.float64) + 0.25 * np.asarray(base)
    base = np.asarray(base, dtype=np.float64)
    for row, cy in enumerate(np.arange(0, h + pitch, pitch * 0.87)):
        for cx in np.arange(0, w + pitch, pitch) + (pitch / 2 if row % 2 else 0):
            glint = float(rng.uniform(0.45, 1.5))
            colour = np.clip(base * glint, 0, 1)
            if rng.random() < 0.08:
                colour = np.array([1.0, 1.0, 0.97])
            cv2.circle(
                img,
                (int(round(cx * 4)), int(round(cy * 4))),
                int(pitch * 0.55 * 4),
                colour.tolist(),
                -1,
                lineType=cv2.LINE_AA,
                shift=2,
            )
    return img


MASK_PATTERNS = ("print1", "print2", "print3", "brick", "grass", "gravel", "motif", "sequin")


def _pattern(style: str, shape, rng: np.random.Generator) -> np.ndarray:
    """A textile texture (float RGB in 0..1) over a raster of `shape` (2 px/mm)."""
    h, w = shape
    if style in ("print1", "print2", "print3"):
        fabric, _ = _fabric_texture(rng, 256)
        reps = float(rng.uniform(1.2, 2.0))

        def mirrored(n):  # tiled back and forth, so that no tile edge shows
            t = (np.arange(n) * 256 * reps / n).astype(int) % 512
            return np.minimum(t, 511 - t)

        return np.asarray(fabric, dtype=np.float64)[mirrored(h)][:, mirrored(w)] / 255.0
    if style in ("brick", "grass", "gravel"):
        palettes = {
            "brick": [((0.35, 0.1, 0.08), (0.85, 0.45, 0.35)), ((0.1, 0.12, 0.25), (0.7, 0.72, 0.8))],
            "grass": [((0.05, 0.2, 0.08), (0.55, 0.8, 0.45)), ((0.2, 0.15, 0.05), (0.9, 0.8, 0.5))],
            "gravel": [((0.15, 0.15, 0.16), (0.8, 0.78, 0.74)), ((0.2, 0.1, 0.18), (0.85, 0.7, 0.8))],
        }
        return _photo_texture(style, shape, rng, _pick(rng, palettes[style]))
    if style == "motif":
        c0, c1 = (_jitter_color(rng, FABRIC[int(i)]) for i in rng.choice(len(FABRIC), 2, replace=False))
        return _motif_texture(shape, rng, c0, c1)
    if style == "sequin":
        base = _pick(rng, [(0.85, 0.7, 0.35), (0.75, 0.75, 0.8), (0.85, 0.35, 0.55), (0.2, 0.3, 0.75)])
        return _sequin_texture(shape, rng, base)
    raise ValueError(f"unknown mask pattern {style!r}")


def _texture(kind: str, style, rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Texture over the outline raster (rows = y down, 2 px/mm) and the loop colour."""
    outline = _outline(kind)
    h, w = outline.shape
    x, y = _raster_grid()
    edge = ndimage.distance_transform_edt(outline) / _RASTER[2]  # mm to the outline
    trng = make_rng(derive_seed(int(rng.integers(1 << 62)), "texture", str(style)))
    if isinstance(style, str) and style in MASK_PATTERNS:
        tex = _pattern(style, (h, w), trng)
        base = tuple(float(c) for c in tex[outline].mean(0))
    else:
        base = COLORS[style.removesuffix(VALVE)] if isinstance(style, str) else tuple(style)
        tex = np.zeros((h, w, 3)) + np.asarray(base, dtype=np.float64)
    fibre = _noise(trng, (h, w), FIBRE_PX)[..., None]
    t = _height_fraction(kind, x, y)
    if kind == "surgical":  # nonwoven fibres, bound edges with their stitching, darker fold lines
        tex = tex * (1 + 0.015 * fibre)
        side = np.abs(x) > 64
        tex = np.where(((edge < 4) | side)[..., None], tex * 0.96 + 0.03, tex)
        tex = np.where(
            (((edge > 4.2) & (edge < 4.8)) | ((np.abs(x) > 63.4) & (np.abs(x) < 64)))[..., None], tex * 0.82, tex
        )
        for fold in SURGICAL_FOLDS:
            line = np.exp(-0.5 * ((t - fold - 0.17) / 0.012) ** 2)
            tex = tex * (1 - 0.18 * line[..., None])
    elif kind == "n95":  # felted fibres, a welded rim, a printed rating
        tex = tex * (1 + 0.025 * fibre)
        tex = np.where((edge < 3.5)[..., None], tex * 0.93, tex)
        tex = np.where(((edge > 3.5) & (edge < 4.2))[..., None], tex * 0.85, tex)
        ink = np.zeros((h, w), np.uint8)
        side = 1 if trng.random() < 0.5 else -1
        org = (int((side * 22 - 10 - _RASTER[0][0]) * _RASTER[2]), int((94 - _RASTER[1][0]) * _RASTER[2]))
        cv2.putText(ink, "N95", org, cv2.FONT_HERSHEY_SIMPLEX, 0.55, 255, 2, cv2.LINE_AA)
        tex = tex * (1 - 0.45 * ink[..., None] / 255.0)
    elif kind == "kn95":  # welded dots along the edges, the centre crease, fine fibres
        tex = tex * (1 + 0.015 * fibre)
        dots = (edge < 4) & ((np.floor(x * 1.2) + np.floor(y * 1.2)) % 2 == 0)
        tex = np.where(dots[..., None], tex * 0.85, tex)
        tex = np.where((np.abs(x) < 0.8)[..., None], tex * 0.88, tex)
    else:  # cloth: weave, a hem with its stitches, the centre seam stitched
        weave = np.sin(np.pi * x * 2.0) * np.sin(np.pi * y * 2.0)
        tex = tex * (1 + 0.03 * fibre + 0.04 * weave[..., None])
        hem = edge < 5
        tex = np.where(hem[..., None], tex * 0.9, tex)
        stitch = ((edge > 5.3) & (edge < 5.9) & (np.floor(np.arctan2(y - 70, x) * 60) % 2 == 0)) | (
            (np.abs(x - 1.2) < 0.3) & (np.floor(y / 1.5) % 2 == 0)
        )
        tex = np.where(stitch[..., None], tex * 0.7, tex)
        tex = np.where((np.abs(x) < 0.6)[..., None], tex * 0.6, tex)  # the seam's groove
    tex = np.clip(np.round(np.clip(tex, 0, 1) * 255), 0, 255).astype(np.uint8)
    if kind == "n95":
        loop = _pick(trng, [(0.95, 0.85, 0.3), (0.95, 0.95, 0.93), (0.3, 0.45, 0.8)])
    elif kind == "cloth":
        loop = base
    else:
        loop = (0.93, 0.93, 0.92) if sum(base) > 1.2 else base
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
    return np.array([float(x[row, col]), float(y[row, col]), float(_depth_raster(kind)[row, col])])


def face_mask_parts(
    kind: str, rng: np.random.Generator, style: str | Sequence[float] | None = None, straps: str = "full"
):
    """Mesh parts (occsynth.authoring.render.Part, model frame) of one mask and its anchors (MODEL_POINTS).

    `style` is a colour name (COLORS; N95s also "<colour>_valve", with an exhalation valve), an
    RGB triple in 0..1, or a pattern (MASK_PATTERNS: procedural prints, scikit-image's
    brick/grass/gravel photos, printed motifs, sequins);
    None draws one of DEFAULT_STYLES[kind] from `rng`. straps="front" keeps only the part of
    the loops/straps in front of the ears, for renders without the head proxy that hides the
    rest (the object template bank)."""
    if kind not in KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; choose from {', '.join(KINDS)}")
    if style is None:
        options = DEFAULT_STYLES[kind]
        style = options[int(rng.integers(len(options)))]
    texture, loop_color = _texture(kind, style, rng)
    depth = _depth_raster(kind)
    (x0, x1), (y0, y1), k = _RASTER

    def surface(u, v):
        x, y = _uv_to_xy(u, v)
        z = ndimage.map_coordinates(depth, [(y - y0) * k - 0.5, (x - x0) * k - 0.5], order=1, mode="nearest")
        return np.column_stack([x, y, z])

    mesh, uv = shape_sheet(_outline(kind), surface, spacing=5 if kind == "surgical" else 6)
    # shape_sheet turns faces toward +z (its "viewer"); here the viewer looks along +z
    mesh.faces = mesh.faces[:, ::-1]
    rough = 0.85 if kind in ("cloth", "surgical") else 0.7
    parts = [Part(mesh, color=(1, 1, 1), roughness=rough, texture=texture, uv=uv)]
    for side in (-1, 1):
        a, b = _edge_point(kind, side, True), _edge_point(kind, side, False)

        # waypoints never in front of the mask's edge: straps and loops run back from it
        def back(start, x, y, z):
            return [side * max(x, abs(start[0]) + 3.0), y, max(z, start[2] + 6.0)]

        if kind == "n95":  # two elastic head straps, above and below the ears, round the back
            for start, mid, end in ((a, (74, 12, 50), (60, -8, 140)), (b, (72, 78, 55), (55, 92, 140))):
                path = _catmull([start, back(start, *mid), [side * end[0], end[1], end[2]]])
                parts.append(Part(tube(_front(path, straps), 1.6, sides=8), color=loop_color, roughness=0.8))
        else:  # an ear loop along the cheek, around the back of the ear
            path = _catmull([a, back(a, 74, 18, 40), [side * 80, 30, 72], back(b, 76, 54, 58), b])
            if straps == "front":  # two stubs running back toward the ear
                top, bottom = path[: len(path) // 2], path[len(path) // 2 :]
                for piece in (top, bottom[::-1]):
                    parts.append(Part(tube(_front(piece, straps), 1.1, sides=8), color=loop_color, roughness=0.8))
            else:
                parts.append(Part(tube(path, 1.1, sides=8), color=loop_color, roughness=0.8))
    if kind == "n95" and isinstance(style, str) and style.endswith(VALVE):  # an exhalation valve
        valve, _ = slab(superellipse(40, 11, 11, 2.2), 5.0)
        valve.faces = valve.faces[:, ::-1]  # slab faces +z; the viewer is at -z here
        vx, vy = 22.0 * (1 if rng.random() < 0.5 else -1), 84.0  # on the left or right cheek
        (x0, _), (y0, _), k = _RASTER
        vz = float(_depth_raster(kind)[int((vy - y0) * k), int((vx - x0) * k)])
        valve.apply_translation([vx, vy, vz - 2.0])
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
