"""Mesh and texture primitives for authoring occluder banks (trimesh; imported only by the
authoring code, never on the run-time path of a build)."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import cv2
import numpy as np
import trimesh
from scipy import ndimage
from scipy.spatial import Delaunay
from skimage import measure


def _trimesh():
    return trimesh


def euler_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3x3 rotation (degrees) in the y-up, z-toward-viewer frame: roll @ pitch @ yaw.
    yaw > 0 turns the front toward the viewer's right, pitch > 0 tilts the top toward the
    viewer, roll > 0 turns counter-clockwise on screen."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def rigid(rotation: np.ndarray, pivot: Sequence[float] = (0, 0, 0), shift: Sequence[float] = (0, 0, 0)) -> np.ndarray:
    """4x4 transform rotating about `pivot`, then translating by `shift`."""
    pivot = np.asarray(pivot, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = pivot - rotation @ pivot + np.asarray(shift, dtype=np.float64)
    return m


def grid_faces(nu: int, nv: int, wrap_u: bool = False) -> np.ndarray:
    """Triangles of a vertex grid indexed j * nu + i (i along u, j along v)."""
    cols = nu if wrap_u else nu - 1
    i, j = np.meshgrid(np.arange(cols), np.arange(nv - 1))
    i, j = i.ravel(), j.ravel()
    a = j * nu + i
    b = j * nu + (i + 1) % nu
    c = (j + 1) * nu + (i + 1) % nu
    d = (j + 1) * nu + i
    return np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])


def make_mesh(vertices: np.ndarray, faces: np.ndarray, face_viewer: bool = False):
    """A trimesh without processing (keeps vertex order for uv/colours); `face_viewer` turns
    every face toward +z, for open sheets seen from the front (pyrender lights one side only)."""
    trimesh = _trimesh()
    faces = np.asarray(faces, dtype=np.int64)
    if face_viewer:
        v = np.asarray(vertices)
        n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
        flip = n[:, 2] < 0
        faces = faces.copy()
        faces[flip] = faces[flip][:, ::-1]
    return trimesh.Trimesh(vertices=np.asarray(vertices, dtype=np.float64), faces=faces, process=False)


def tube(path: np.ndarray, radius: float | np.ndarray, sides: int = 12, caps: bool = True, closed: bool = False):
    """A tube swept along a 3D polyline with parallel-transported frames."""
    path = np.asarray(path, dtype=np.float64)
    n = len(path)
    radius = np.broadcast_to(np.asarray(radius, dtype=np.float64), (n,))
    tangent = np.gradient(path, axis=0)
    if closed:
        tangent = np.roll(path, -1, 0) - np.roll(path, 1, 0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-12
    ref = np.array([0.0, 0.0, 1.0]) if abs(tangent[0, 2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    normal = np.cross(tangent[0], ref)
    normal /= np.linalg.norm(normal)
    frames = []
    for t in tangent:
        normal = normal - t * np.dot(normal, t)
        normal /= np.linalg.norm(normal)
        frames.append((normal, np.cross(t, normal)))
    angles = np.linspace(0, 2 * np.pi, sides, endpoint=False)
    ring = np.array([[math.cos(a), math.sin(a)] for a in angles])
    verts = np.concatenate(
        [p + r * (ring[:, :1] * nrm + ring[:, 1:] * bin_) for p, r, (nrm, bin_) in zip(path, radius, frames)]
    )
    faces = grid_faces(sides, n, wrap_u=True)
    if closed:
        last = (n - 1) * sides
        extra = [[last + i, last + (i + 1) % sides, (i + 1) % sides] for i in range(sides)]
        extra += [[last + i, (i + 1) % sides, i] for i in range(sides)]
        faces = np.concatenate([faces, np.array(extra)])
    elif caps:
        c0, c1 = len(verts), len(verts) + 1
        verts = np.concatenate([verts, path[:1], path[-1:]])
        last = (n - 1) * sides
        cap = [[c0, (i + 1) % sides, i] for i in range(sides)]
        cap += [[c1, last + i, last + (i + 1) % sides] for i in range(sides)]
        faces = np.concatenate([faces, np.array(cap)])
    mesh = make_mesh(verts, faces)
    mesh.fix_normals()
    return mesh


def slab(outline: np.ndarray, thickness: float, bend: Callable[[np.ndarray], np.ndarray] | None = None):
    """Extrude a star-shaped 2D outline (counter-clockwise, around its centroid) along z.

    Returns (mesh, uv): front cap faces +z, uv is planar over the outline's bounding box.
    Caps and sides have separate vertices so caps shade flat and sides smooth."""
    outline = np.asarray(outline, dtype=np.float64)
    n = len(outline)
    centre = outline.mean(axis=0)
    half = thickness / 2.0
    lo, hi = outline.min(0), outline.max(0)

    def ring(z):
        return np.column_stack([outline, np.full(n, z)])

    front = np.concatenate([[[*centre, half]], ring(half)])
    back = np.concatenate([[[*centre, -half]], ring(-half)])
    side = np.concatenate([ring(half), ring(-half)])
    verts = np.concatenate([front, back, side])
    i = np.arange(n)
    f_front = np.stack([np.zeros(n, int), 1 + i, 1 + (i + 1) % n], 1)
    f_back = np.stack([np.zeros(n, int), 1 + (i + 1) % n, 1 + i], 1) + (n + 1)
    s0 = 2 * (n + 1)
    f_side = np.concatenate(
        [
            np.stack([s0 + i, s0 + n + i, s0 + n + (i + 1) % n], 1),
            np.stack([s0 + i, s0 + n + (i + 1) % n, s0 + (i + 1) % n], 1),
        ]
    )
    uv = (verts[:, :2] - lo) / np.maximum(hi - lo, 1e-9)
    if bend is not None:
        verts = bend(verts)
    mesh = make_mesh(verts, np.concatenate([f_front, f_back, f_side]))
    return mesh, uv


def sheet(nu: int, nv: int, surface: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    """A grid sheet over (u, v) in [0, 1]^2 (v = 1 at the top); returns (mesh, uv)."""
    u, v = np.meshgrid(np.linspace(0, 1, nu), np.linspace(0, 1, nv))
    verts = surface(u.ravel(), v.ravel())
    uv = np.column_stack([u.ravel(), v.ravel()])
    return make_mesh(verts, grid_faces(nu, nv), face_viewer=True), uv


def shape_sheet(shape: np.ndarray, surface: Callable[[np.ndarray, np.ndarray], np.ndarray], spacing: float = 6.0):
    """A sheet cut to a 2D shape (bool raster, row 0 = top = v 1) mapped by `surface(u, v)`.

    The outline follows the shape's sub-pixel contour (points every pixel), the inside is a
    grid `spacing` pixels apart, triangulated by Delaunay and kept where the triangle centre
    lies inside the shape. Returns (mesh, uv)."""

    h, w = shape.shape
    padded = np.pad(shape.astype(np.float64), 1)
    padded = ndimage.gaussian_filter(padded, 0.7)
    points = []
    for contour in measure.find_contours(padded, 0.5):
        seg = np.linalg.norm(np.diff(contour, axis=0), axis=1)
        dist = np.concatenate([[0], np.cumsum(seg)])
        count = max(int(dist[-1] / 1.5), 8)
        t = np.linspace(0, dist[-1], count, endpoint=False)
        points.append(np.column_stack([np.interp(t, dist, contour[:, 0]), np.interp(t, dist, contour[:, 1])]) - 1)
    inside = ndimage.distance_transform_edt(shape)
    gy, gx = np.mgrid[0:h:spacing, 0:w:spacing]
    keep = inside[gy.astype(int), gx.astype(int)] > spacing * 0.6
    points.append(np.column_stack([gy[keep], gx[keep]]).astype(np.float64))
    pts = np.concatenate(points)
    tri = Delaunay(pts[:, ::-1]).simplices
    centre = pts[tri].mean(axis=1)
    cy = np.clip(np.round(centre[:, 0]).astype(int), 0, h - 1)
    cx = np.clip(np.round(centre[:, 1]).astype(int), 0, w - 1)
    tri = tri[shape[cy, cx]]
    used = np.unique(tri)
    remap = np.full(len(pts), -1)
    remap[used] = np.arange(len(used))
    pts = pts[used]
    u = np.clip(pts[:, 1] / (w - 1), 0, 1)
    v = np.clip(1.0 - pts[:, 0] / (h - 1), 0, 1)
    return make_mesh(surface(u, v), remap[tri], face_viewer=True), np.column_stack([u, v])


def superellipse(n: int, a: float, b: float, power: float = 2.0) -> np.ndarray:
    """Counter-clockwise outline |x/a|^p + |y/b|^p = 1."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    e = 2.0 / power
    return np.column_stack([a * np.sign(c) * np.abs(c) ** e, b * np.sign(s) * np.abs(s) ** e])


def rounded_rect(w: float, h: float, r: float, per_corner: int = 10) -> np.ndarray:
    r = min(r, w / 2, h / 2)
    pts = []
    for cx, cy, a0 in (
        (w / 2 - r, h / 2 - r, 0),
        (-w / 2 + r, h / 2 - r, 90),
        (-w / 2 + r, -h / 2 + r, 180),
        (w / 2 - r, -h / 2 + r, 270),
    ):
        for a in np.radians(np.linspace(a0, a0 + 90, per_corner)):
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return np.array(pts)


def revolve(profile: np.ndarray, sections: int = 64):
    """Revolve a (radius, y) polyline about the y axis; returns (mesh, (angle 0..1, index 0..1))."""
    profile = np.asarray(profile, dtype=np.float64)
    a = np.linspace(0, 2 * np.pi, sections, endpoint=False)
    r, y = profile[:, 0], profile[:, 1]
    verts = np.stack([np.outer(r, np.sin(a)).ravel(), np.repeat(y, sections), np.outer(r, np.cos(a)).ravel()], axis=1)
    faces = grid_faces(sections, len(profile), wrap_u=True)
    mesh = make_mesh(verts, faces[:, ::-1])
    param = np.column_stack(
        [np.tile(a / (2 * np.pi), len(profile)), np.repeat(np.linspace(0, 1, len(profile)), sections)]
    )
    return mesh, param


def ellipsoid(radii: Sequence[float], centre: Sequence[float] = (0, 0, 0), subdivisions: int = 3):
    trimesh = _trimesh()
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions)
    mesh.vertices = mesh.vertices * np.asarray(radii) + np.asarray(centre)
    return mesh


def capsule(p0: Sequence[float], p1: Sequence[float], radius: float):
    trimesh = _trimesh()
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    axis = p1 - p0
    length = float(np.linalg.norm(axis))
    mesh = trimesh.creation.capsule(height=length, radius=radius, count=[16, 16])
    mesh.apply_transform(trimesh.geometry.align_vectors([0, 0, 1], axis / length))
    mesh.apply_translation((p0 + p1) / 2)
    return mesh


# ----------------------------------------------------------------------------- textures


def _rgb(color) -> np.ndarray:
    return np.asarray(color, dtype=np.float64).reshape(1, 1, 3)


def tex_noise(rng: np.random.Generator, size: int, color, amount: float = 0.08, scale: int = 4) -> np.ndarray:
    """Colour with soft multi-scale noise (felt, fabric, paper)."""

    acc = np.zeros((size, size))
    for octave in range(3):
        cells = scale * 2**octave
        small = rng.standard_normal((cells, cells))
        acc += cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC) / 2**octave
    acc /= np.abs(acc).max() + 1e-9
    img = _rgb(color) * (1.0 + amount * acc[..., None])
    return _to_u8(img)


def tex_stripes(rng, size, colors, count=8, angle=0.0, soft=0.15) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = (xx * math.sin(angle) + yy * math.cos(angle)) * count
    idx = np.floor(t).astype(int) % len(colors)
    img = np.asarray(colors, dtype=np.float64)[idx]
    return _to_u8(img * (1 - soft * 0.5 + soft * rng.random((size, size, 1)) * 0.2))


def tex_checks(rng, size, colors, count=8) -> np.ndarray:
    """Gingham/plaid: two stripe sets multiplied, the crossings darker."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    a = (np.floor(xx * count) % 2)[..., None]
    b = (np.floor(yy * count) % 2)[..., None]
    c0, c1 = _rgb(colors[0]), _rgb(colors[1])
    img = c0 * (1 - a) * (1 - b) + (c0 + c1) / 2 * (a + b - 2 * a * b) + c1 * a * b
    if len(colors) > 2:  # a thin accent line of a third colour
        line = ((xx * count * 2) % 2 < 0.12) | ((yy * count * 2) % 2 < 0.12)
        img = np.where(line[..., None], _rgb(colors[2]), img)
    return _to_u8(img * (0.95 + 0.1 * rng.random((size, size, 1))))


def tex_dots(rng, size, base, dot, count=6, radius=0.22) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size * count
    shift = (np.floor(yy) % 2) * 0.5
    d = np.hypot((xx + shift) % 1 - 0.5, yy % 1 - 0.5)
    img = np.where((d < radius)[..., None], _rgb(dot), _rgb(base))
    return _to_u8(img)


def tex_knit(rng, size, color, ribs=24) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    v = 0.82 + 0.18 * np.abs(np.sin(np.pi * xx * ribs)) * (0.8 + 0.2 * np.sin(np.pi * yy * ribs * 2.5) ** 2)
    return _to_u8(_rgb(color) * v[..., None] * (0.96 + 0.08 * rng.random((size, size, 1))))


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(img) * 255.0), 0, 255).astype(np.uint8)


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _jitter_color(rng, color, amount=0.06):
    return tuple(float(np.clip(c + rng.uniform(-amount, amount), 0, 1)) for c in color)


FABRIC = [
    (0.75, 0.1, 0.12),
    (0.1, 0.2, 0.5),
    (0.15, 0.4, 0.2),
    (0.85, 0.75, 0.55),
    (0.3, 0.3, 0.32),
    (0.9, 0.9, 0.88),
    (0.55, 0.25, 0.55),
    (0.95, 0.55, 0.15),
    (0.2, 0.55, 0.65),
    (0.45, 0.3, 0.2),
]
SKIN = [
    (0.96, 0.80, 0.69),
    (0.92, 0.72, 0.58),
    (0.85, 0.64, 0.50),
    (0.76, 0.57, 0.42),
    (0.63, 0.45, 0.32),
    (0.50, 0.35, 0.24),
    (0.38, 0.26, 0.18),
    (0.28, 0.19, 0.13),
]


def _fabric_texture(rng, size=256):
    kind = _pick(rng, ["solid", "stripes", "checks", "dots", "knit", "plaid"])
    c0, c1, c2 = (_jitter_color(rng, FABRIC[int(i)]) for i in rng.choice(len(FABRIC), 3, replace=False))
    if kind == "solid":
        return tex_noise(rng, size, c0, 0.12), kind
    if kind == "stripes":
        return tex_stripes(
            rng,
            size,
            [c0, c1] if rng.random() < 0.5 else [c0, c1, c0, c2],
            count=int(rng.integers(6, 14)),
            angle=float(rng.choice([0, 0, math.pi / 4])),
        ), kind
    if kind == "checks":
        return tex_checks(rng, size, [c0, c1], count=int(rng.integers(6, 12))), kind
    if kind == "plaid":
        return tex_checks(rng, size, [c0, c1, c2], count=int(rng.integers(4, 8))), kind
    if kind == "dots":
        return tex_dots(rng, size, c0, c1, count=int(rng.integers(5, 10))), kind
    return tex_knit(rng, size, c0, ribs=int(rng.integers(16, 32))), kind
