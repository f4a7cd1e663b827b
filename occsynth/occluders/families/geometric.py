"""Geometric occluders: blocks and simple shapes with exact area ratios (LFW_block / LFW_poly style).

Registered: block, rectangle, ellipse, polygon, blob, pieces. All are hard-edged: the painted
pixels are exactly the mask pixels (every changed pixel is in the mask, the fill never leaves it).
Landmarks are not used: positions are uniform over the image.

Area control. ellipse, polygon and blob are star-shaped sets U around an origin, described by
their gauge g(p) = min{s : p in s*U}; the shape at scale s is {g <= s}, and these sets are nested.
Taking s as the k-th smallest gauge over pixel centres (k = round(ratio*H*W)) gives a shape of
exactly k pixels (ties aside) with no search over the scale. rectangle and block use integer
sides (error under half a side in pixels); pieces splits k over its parts.

Fitting. A shape is rasterised around its origin, cropped to its tight box, and the box is placed
uniformly at random, so a shape that fits is wholly inside the image. When the box is larger than
the image (an ellipse at ratio 0.95: an inscribed ellipse covers at most pi/4 of a square), the
`overflow` parameter decides, and the record says `fits: false`:
  "clip" (default)  the shape is centred on the image and grown until exactly k image pixels are
                    covered: the ratio is met, the shape is cut by the image border;
  "shrink"          the whole shape is kept at the largest scale at which it stays inside the
                    image (same centring): the ratio falls short, and the record's `area` (added
                    by Occluder.__call__) is the achieved one.
rectangle and block turn into a full-width (or full-height) rectangle of the same area instead;
pieces skips a part that finds no free place (`placed` < `n` in the record).

Randomness. apply() draws exactly one uniform per declared parameter, whatever its form
(scalar, [lo, hi] or choice), then the geometry and fill from the same stream. Re-running with
the concrete (scalar) parameters of a record and its seed therefore re-creates the sample
exactly, which compose.replay relies on. (block predates this: it samples with
base.sample_value, which draws nothing for a scalar, so only its spec replays it.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np

from occsynth.occluders.base import Occluder, register_occluder, sample_value
from occsynth.occluders.params import integer, number, word

FILLS = ("black", "white", "noise", "mean", "texture")
OVERFLOW = ("clip", "shrink")
TEXTURE_CELLS = 4  # texture = bicubic upsampling of a 4x4 random colour grid over the shape's box
PIECE_ASPECT = (0.5, 2.0)
PIECES_ATTEMPTS = 4  # layouts tried (same pieces, new positions) before one with gaps is kept

# what the parameters accept (params.py), checked when a spec is compiled
RATIO = number(0.0, 1.0)
FILL = word(*FILLS)
ASPECT = number(0.0, lo_open=True)


# --------------------------------------------------------------------------- fills


def texture(height: int, width: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random colour noise of the given size (uint8)."""
    grid = rng.integers(0, 256, size=(TEXTURE_CELLS, TEXTURE_CELLS, channels), dtype=np.uint8)
    out = cv2.resize(grid, (max(width, 1), max(height, 1)), interpolation=cv2.INTER_CUBIC)
    return out.reshape(max(height, 1), max(width, 1), channels)[:height, :width]


def fill_pixels(image: np.ndarray, mask: np.ndarray, fill: str, rng: np.random.Generator) -> np.ndarray:
    """Paint the True pixels of `mask` with a fill mode; returns a new image."""
    return paint(image, mask, 0, 0, fill, rng)


def paint(image: np.ndarray, local: np.ndarray, x: int, y: int, fill: str, rng: np.random.Generator) -> np.ndarray:
    """A copy of `image` with the True pixels of `local` (placed with its top-left at x, y) filled.
    Only the window is touched, which keeps small shapes cheap."""
    out = image.copy()
    h, w = local.shape
    _pixels(out[y : y + h, x : x + w])[local] = _pixels(_fill_values(image, h, w, local, fill, rng))
    return out


def paint_box(image: np.ndarray, x: int, y: int, w: int, h: int, fill: str, rng: np.random.Generator):
    """(`paint` of a w x h box of True at x, y, its full-frame bool mask): the same pixels and
    draws, written to the window directly (a block's paint by a mask cost ~3x this)."""
    out = image.copy()
    out[y : y + h, x : x + w] = _fill_values(image, h, w, None, fill, rng).reshape(h, w, image.shape[2])
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[y : y + h, x : x + w] = True
    return out, mask


def _fill_values(image: np.ndarray, h: int, w: int, local: np.ndarray | None, fill: str, rng) -> np.ndarray:
    """The values a fill lays on the True pixels of the h x w box `local` (None: every pixel of
    it), in row-major order, as (count, channels) uint8: noise drawn pixel after pixel, texture
    computed over the whole box."""
    channels = image.shape[2]
    count = h * w if local is None else int(np.count_nonzero(local))
    if fill == "black":
        return np.zeros((count, channels), dtype=np.uint8)
    if fill == "white":
        return np.full((count, channels), 255, dtype=np.uint8)
    if fill == "noise":
        return rng.integers(0, 256, size=(count, channels), dtype=np.uint8)
    if fill == "mean":
        colour = image.reshape(-1, channels).mean(axis=0).round().astype(np.uint8)
        return np.tile(colour, (count, 1))
    if fill == "texture":
        values = texture(h, w, channels, rng)
        return values.reshape(-1, channels) if local is None else values[local]
    raise ValueError(f"unknown fill {fill!r}; expected one of {FILLS}")


def _pixels(array: np.ndarray) -> np.ndarray:
    """View each pixel's channels as one opaque item (the last axis must be contiguous, which
    holds for windows of a C-ordered image): boolean indexing of H x W x 3 by an H x W mask is
    several times slower in NumPy than of H x W items."""
    return array.view(np.dtype((np.void, array.shape[-1] * array.itemsize)))[..., 0]


# --------------------------------------------------------------------------- sizes


def block_size(ratio: float, width: int, height: int) -> tuple[int, int]:
    """Side lengths (w, h) of the block covering `ratio` of the image: a square when it fits,
    else a full-width (or full-height) rectangle of the same area."""
    area = ratio * width * height
    side = int(round(math.sqrt(area)))
    if side <= min(width, height):
        return side, side
    if width <= height:
        return width, min(height, int(round(area / width)))
    return min(width, int(round(area / height))), height


def target_pixels(ratio: float, width: int, height: int) -> int:
    return int(round(ratio * width * height))


def rect_dims(pixels: int, aspect: float, width: int, height: int) -> tuple[int, int]:
    """(w, h) with w*h ~ pixels and w/h ~ aspect, clamped into the image (keeping the area)."""
    if pixels <= 0:
        return 0, 0
    h = max(1, int(round(math.sqrt(pixels / aspect))))
    w = max(1, int(round(pixels / h)))
    if w > width:
        w, h = width, min(height, max(1, int(round(pixels / width))))
    if h > height:
        h, w = height, min(width, max(1, int(round(pixels / height))))
    return w, h


def ellipse_box(pixels: int, aspect: float, width: int, height: int) -> tuple[int, int]:
    """Box (w, h) whose inscribed axis-aligned ellipse has about `pixels` pixels (pieces)."""
    box = 4.0 / math.pi * pixels
    w = min(width, max(1, int(math.ceil(math.sqrt(box * aspect)))))
    h = min(height, max(1, int(math.ceil(box / w))))
    return w, h


def ellipse_in_box(w: int, h: int, pixels: int) -> np.ndarray:
    """The `pixels` pixels of a w x h box closest (in ellipse gauge) to its centre."""
    dx = (np.arange(w, dtype=np.float32) + 0.5 - w / 2.0) / (w / 2.0)
    dy = (np.arange(h, dtype=np.float32) + 0.5 - h / 2.0) / (h / 2.0)
    g = dx[None, :] ** 2 + dy[:, None] ** 2
    k = min(pixels, w * h)
    if k <= 0:
        return np.zeros((h, w), dtype=bool)
    return g <= np.partition(g, k - 1, axis=None)[k - 1]


# --------------------------------------------------------------------------- gauge shapes


@dataclass
class GaugeShape:
    """A star-shaped unit shape around the origin (x right, y down).

    gauge(dx, dy) takes broadcasting float32 arrays and returns g(p) ** power, where g is 1 on the
    unit boundary and the shape at scale s is {g <= s} (power 2 spares a square root); `area` is
    the unit shape's area; xmin..ymax bound it."""

    gauge: Callable[[np.ndarray, np.ndarray], np.ndarray]
    area: float
    xmin: float
    xmax: float
    ymin: float
    ymax: float
    power: int = 1


_TINY = np.float32(1e-20)


def pseudo_angle(dx, dy):
    """A cheap monotone stand-in for the polar angle, in [0, 4): 0 along +x, 1 along +y, 2 along
    -x, 3 along -y (arctan2 costs several times more)."""
    t = np.abs(dx) + np.abs(dy)
    t += _TINY  # the origin itself maps to 1 or 3 instead of NaN
    q = np.divide(dx, t, out=t)
    pa = np.subtract(1, q, out=q)  # 1 - q where dy >= 0; 3 + q = 4 - (1 - q) where dy < 0
    if dy.ndim == 2 and dy.shape[1] == 1 and dx.shape[0] == 1:
        # a grid (row of x, column of increasing y): the dy < 0 part is a block of top rows
        top = int(np.searchsorted(dy[:, 0], 0))
        np.subtract(4, pa[:top], out=pa[:top])
        return pa
    return np.where(dy >= 0, pa, 4 - pa)


def pseudo_angle_inverse(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit-L1 direction (x, y) with pseudo_angle(x, y) == a."""
    a = np.asarray(a, dtype=np.float64)
    upper = a < 2
    q = np.where(upper, 1 - a, a - 3)
    return q, np.where(upper, 1 - np.abs(q), -(1 - np.abs(q)))


def ellipse_shape(aspect: float, angle_deg: float) -> GaugeShape:
    a, b = math.sqrt(aspect), 1.0 / math.sqrt(aspect)  # unit area pi
    t = math.radians(angle_deg)
    ca, sa = np.float32(math.cos(t) / a), np.float32(math.sin(t) / a)
    cb, sb = np.float32(math.cos(t) / b), np.float32(math.sin(t) / b)

    def gauge(dx, dy):
        u = dx * ca + dy * sa
        v = dy * cb - dx * sb
        return u * u + v * v

    ex = math.sqrt((a * math.cos(t)) ** 2 + (b * math.sin(t)) ** 2)
    ey = math.sqrt((a * math.sin(t)) ** 2 + (b * math.cos(t)) ** 2)
    return GaugeShape(gauge, math.pi, -ex, ex, -ey, ey, power=2)


POLYGON_MAX_GAP = 0.9 * math.pi


def polygon_vertices(n: int, spikiness: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Angles (increasing from a random phase) and radii of a random star-shaped polygon.
    Angular gaps stay below 0.9*pi so the origin is strictly inside and every edge faces it."""
    while True:
        gaps = rng.uniform(0.5, 1.5, size=n)
        gaps = gaps / gaps.sum() * (2.0 * math.pi)
        if gaps.max() < POLYGON_MAX_GAP:
            break
    phase = rng.uniform(0.0, 2.0 * math.pi)
    angles = phase + np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    radii = 1.0 - spikiness * rng.random(n)
    return angles, radii


def polygon_shape(angles: np.ndarray, radii: np.ndarray) -> GaugeShape:
    px, py = radii * np.cos(angles), radii * np.sin(angles)
    following = np.arange(1, len(px) + 1) % len(px)
    qx, qy = px[following], py[following]
    d = px * qy - py * qx  # cross(P_i, P_i+1) > 0 since every gap < pi
    # in edge i's sector the gauge is (n_i . p) / d_i, n_i = (qy - py, px - qx) its outward normal
    pa = pseudo_angle(px, py)
    order = np.argsort(pa, kind="stable")
    bounds = pa[order].astype(np.float32)
    coef_x = ((qy - py) / d)[order].astype(np.float32)
    coef_y = ((px - qx) / d)[order].astype(np.float32)

    def gauge(dx, dy):
        # index -1 (before the first vertex) is the wrap-around sector of the last one
        idx = np.searchsorted(bounds, pseudo_angle(dx, dy), side="right") - 1
        return dx * coef_x[idx] + dy * coef_y[idx]

    area = 0.5 * float(d.sum())
    return GaugeShape(gauge, area, float(px.min()), float(px.max()), float(py.min()), float(py.max()))


BLOB_BINS = 256
BLOB_MAX_HARMONICS = 16
# bin centres in pseudo-angle space and their directions: fixed, so computed once
_BLOB_X, _BLOB_Y = pseudo_angle_inverse((np.arange(BLOB_BINS) + 0.5) * (4.0 / BLOB_BINS))
_BLOB_THETA = np.arctan2(_BLOB_Y, _BLOB_X)
_BLOB_COS_DIR, _BLOB_SIN_DIR = np.cos(_BLOB_THETA), np.sin(_BLOB_THETA)
_BLOB_K = np.arange(1, BLOB_MAX_HARMONICS + 1)
_BLOB_COS = np.cos(_BLOB_K[:, None] * _BLOB_THETA[None, :])
_BLOB_SIN = np.sin(_BLOB_K[:, None] * _BLOB_THETA[None, :])


def blob_radius(harmonics: int, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Radius r(theta) of a smooth random closed contour at the BLOB_BINS bin directions:
    exp of a Fourier series whose k-th term has size ~ amplitude/k (smooth, always > 0)."""
    if not 1 <= harmonics <= BLOB_MAX_HARMONICS:
        raise ValueError(f"blob harmonics must be in [1, {BLOB_MAX_HARMONICS}], got {harmonics}")
    z = rng.standard_normal(harmonics)
    phases = rng.uniform(0.0, 2.0 * math.pi, size=harmonics)
    size = amplitude * z / _BLOB_K[:harmonics]
    # cos(k t + phi) = cos(k t) cos(phi) - sin(k t) sin(phi)
    log_r = (size * np.cos(phases)) @ _BLOB_COS[:harmonics] - (size * np.sin(phases)) @ _BLOB_SIN[:harmonics]
    return np.exp(log_r)


def blob_shape(radius: np.ndarray) -> GaugeShape:
    inv_sq = (1.0 / radius**2).astype(np.float32)
    n = len(radius)
    scale = np.float32(n / 4.0)

    def gauge(dx, dy):
        idx = (pseudo_angle(dx, dy) * scale).astype(np.int32)
        np.minimum(idx, n - 1, out=idx)
        return (dx * dx + dy * dy) * inv_sq[idx]

    # extents at the bin centres: a bin's edges reach past them by a factor 1/cos(bin width) ~ 1.0003,
    # well inside rasterise's margin and its 2-pixel border
    xs, ys = radius * _BLOB_COS_DIR, radius * _BLOB_SIN_DIR
    # area: r^2/2 integrated over each bin's angular width
    edges = np.arctan2(*pseudo_angle_inverse(np.arange(n + 1) * (4.0 / n))[::-1])
    widths = np.mod(np.diff(edges), 2.0 * math.pi)
    area = 0.5 * float(np.sum(radius**2 * widths))
    return GaugeShape(gauge, area, xs.min(), xs.max(), ys.min(), ys.max(), power=2)


def _kth(g: np.ndarray, k: int) -> float:
    return float(np.partition(g, k - 1, axis=None)[k - 1])


def rasterise(
    shape: GaugeShape, pixels: int, width: int, height: int, overflow: str, rng: np.random.Generator
) -> tuple[np.ndarray, int, int, bool]:
    """(local mask cropped to its tight box, x, y, fits) for `pixels` pixels of `shape`.
    See the module doc for what happens when the shape does not fit."""
    if overflow not in OVERFLOW:
        raise ValueError(f"unknown overflow {overflow!r}; expected one of {OVERFLOW}")
    if pixels <= 0:
        return np.zeros((0, 0), dtype=bool), 0, 0, True
    s0 = math.sqrt(pixels / shape.area)
    ox, oy = rng.random(2)  # sub-pixel origin, so pixel-grid symmetry adds no ties or bias
    margin = 1.15
    while True:
        s = s0 * margin
        cx, cy = 2.0 + ox - s * shape.xmin, 2.0 + oy - s * shape.ymin
        nw = int(math.ceil(cx + s * shape.xmax + 2.0))
        nh = int(math.ceil(cy + s * shape.ymax + 2.0))
        dx = np.arange(nw, dtype=np.float32) + np.float32(0.5 - cx)
        dy = np.arange(nh, dtype=np.float32) + np.float32(0.5 - cy)
        g = shape.gauge(dx[None, :], dy[:, None])
        thr = _kth(g, pixels)
        if thr <= s**shape.power:  # every pixel with gauge <= thr lies in the window: exact count
            break
        margin *= 1.5
    local, _, _ = _crop(g <= thr)
    bh, bw = local.shape
    if bw <= width and bh <= height:
        x = int(rng.integers(0, width - bw + 1))
        y = int(rng.integers(0, height - bh + 1))
        return local, x, y, True
    return (*_overflow(shape, pixels, width, height, overflow, s0), False)


def overflow_origin(shape: GaugeShape, width: int, height: int, s0: float) -> tuple[float, float]:
    """Origin that centres the unit box at scale s0 on the image (fixed while the scale varies,
    so the clipped sets stay nested and their pixel count grows with the scale)."""
    return (width / 2.0 - s0 * (shape.xmin + shape.xmax) / 2.0, height / 2.0 - s0 * (shape.ymin + shape.ymax) / 2.0)


def _overflow(shape, pixels, width, height, overflow, s0):
    cx, cy = overflow_origin(shape, width, height, s0)
    if overflow == "clip":
        dx = np.arange(width, dtype=np.float32) + np.float32(0.5 - cx)
        dy = np.arange(height, dtype=np.float32) + np.float32(0.5 - cy)
        g = shape.gauge(dx[None, :], dy[:, None])
        full = g <= _kth(g, min(pixels, g.size))
    else:
        # a one-pixel ring outside the image: the shape stays inside while no ring pixel is in it
        dx = np.arange(-1, width + 1, dtype=np.float32) + np.float32(0.5 - cx)
        dy = np.arange(-1, height + 1, dtype=np.float32) + np.float32(0.5 - cy)
        g = shape.gauge(dx[None, :], dy[:, None])
        ring = min(g[0].min(), g[-1].min(), g[:, 0].min(), g[:, -1].min())
        inner = g[1:-1, 1:-1]
        full = (inner <= _kth(inner, min(pixels, inner.size))) & (inner < ring)
    return _crop(full)


def _crop(full: np.ndarray) -> tuple[np.ndarray, int, int]:
    rows, cols = np.flatnonzero(full.any(axis=1)), np.flatnonzero(full.any(axis=0))
    if len(rows) == 0:
        return np.zeros((0, 0), dtype=bool), 0, 0
    return full[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], int(cols[0]), int(rows[0])


# --------------------------------------------------------------------------- parameters


def draw_param(value: Any, u: float) -> Any:
    """A concrete value from a parameter spec, given one uniform u in [0, 1): the semantics of
    base.sample_value ([lo, hi] uniform, {"choice": [...], "p": [...]}, else the value itself),
    but every form uses exactly one draw, so a concrete value replays like its spec."""
    if isinstance(value, dict) and "choice" in value:
        options = value["choice"]
        weights = value.get("p")
        if weights is None:
            index = int(u * len(options))
        else:
            cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
            index = int(np.searchsorted(cdf / cdf[-1], u, side="right"))
        return options[min(index, len(options) - 1)]
    if _is_range(value):
        lo, hi = float(value[0]), float(value[1])
        return lo + (hi - lo) * u if hi > lo else lo
    return value


def draw_int(value: Any, u: float) -> int:
    """Integer parameter: n, [lo, hi] (inclusive, uniform) or {"choice": [...]}."""
    if _is_range(value):
        lo, hi = int(value[0]), int(value[1])
        return lo + min(int(u * (hi - lo + 1)), hi - lo) if hi > lo else lo
    return int(draw_param(value, u))


def _is_range(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def _check(c: dict, name: str) -> dict:
    if "ratio" in c and not 0.0 <= c["ratio"] <= 1.0:
        raise ValueError(f"{name} ratio must be in [0, 1], got {c['ratio']}")
    if "fill" in c and c["fill"] not in FILLS:
        raise ValueError(f"unknown fill {c['fill']!r}; expected one of {FILLS}")
    if "overflow" in c and c["overflow"] not in OVERFLOW:
        raise ValueError(f"unknown overflow {c['overflow']!r}; expected one of {OVERFLOW}")
    return c


class _Shape(Occluder):
    """Shared sampling: one uniform per declared parameter (in `defaults` order), then geometry
    and fill from the same stream. `INTS` names the integer parameters."""

    family = "geometric"
    INTS: tuple[str, ...] = ()

    def sample(self, rng: np.random.Generator) -> dict:
        u = rng.random(len(self.defaults))
        c = {}
        for (key, value), ui in zip(self.params.items(), u):
            if key in self.INTS:
                c[key] = draw_int(value, float(ui))
            else:
                v = draw_param(value, float(ui))
                c[key] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        return _check(c, self.name)

    def apply(self, image, landmarks, rng):
        concrete = self.sample(rng)
        h, w = image.shape[:2]
        return self.draw(image, w, h, concrete, rng)

    def draw(self, image, width, height, concrete, rng) -> tuple[np.ndarray, np.ndarray, dict]:
        raise NotImplementedError


def _place(image, local, x, y, fill, rng):
    h, w = image.shape[:2]
    mask = np.zeros((h, w), dtype=bool)
    lh, lw = local.shape
    mask[y : y + lh, x : x + lw] = local
    return paint(image, local, x, y, fill, rng), mask


# --------------------------------------------------------------------------- occluders


@register_occluder
class Block(Occluder):
    """A square block of area ratio * W * H at a uniformly random position (LFW_block, MSML)."""

    family = "geometric"
    name = "block"
    defaults = {"ratio": 0.3, "fill": "black"}
    schema = {"ratio": RATIO, "fill": FILL}

    def apply(self, image, landmarks, rng):
        h, w = image.shape[:2]
        ratio = float(sample_value(self.params["ratio"], rng))
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"block ratio must be in [0, 1], got {ratio}")
        fill = sample_value(self.params["fill"], rng)
        bw, bh = block_size(ratio, w, h)
        x = int(rng.integers(0, w - bw + 1))
        y = int(rng.integers(0, h - bh + 1))
        # painting the block's window gives the same pixels (and noise order) as the whole mask
        out, mask = paint_box(image, x, y, bw, bh, fill, rng)
        return out, mask, {"ratio": ratio, "fill": fill, "x": x, "y": y, "width": bw, "height": bh}


@register_occluder
class Rectangle(_Shape):
    """An axis-aligned rectangle of area ratio * W * H, aspect (w/h) drawn from `aspect`."""

    name = "rectangle"
    defaults = {"ratio": 0.3, "aspect": [0.5, 2.0], "fill": "black"}
    schema = {"ratio": RATIO, "aspect": ASPECT, "fill": FILL}

    def draw(self, image, width, height, c, rng):
        bw, bh = rect_dims(target_pixels(c["ratio"], width, height), c["aspect"], width, height)
        x = int(rng.integers(0, width - bw + 1))
        y = int(rng.integers(0, height - bh + 1))
        out, mask = paint_box(image, x, y, bw, bh, c["fill"], rng)
        return out, mask, {**c, "x": x, "y": y, "width": bw, "height": bh}


class _GaugeOccluder(_Shape):
    def shape(self, c: dict, rng: np.random.Generator) -> GaugeShape:
        raise NotImplementedError

    def draw(self, image, width, height, c, rng):
        shape = self.shape(c, rng)
        local, x, y, fits = rasterise(
            shape, target_pixels(c["ratio"], width, height), width, height, c["overflow"], rng
        )
        out, mask = _place(image, local, x, y, c["fill"], rng)
        bh, bw = local.shape
        return out, mask, {**c, "x": x, "y": y, "width": bw, "height": bh, "fits": fits}


@register_occluder
class Ellipse(_GaugeOccluder):
    """An ellipse of area ratio * W * H; `aspect` is its width/height before rotation by `angle`
    degrees."""

    name = "ellipse"
    defaults = {"ratio": 0.3, "aspect": [0.5, 2.0], "angle": [0.0, 180.0], "fill": "black", "overflow": "clip"}
    schema = {"ratio": RATIO, "aspect": ASPECT, "angle": number(), "fill": FILL, "overflow": word(*OVERFLOW)}

    def shape(self, c, rng):
        return ellipse_shape(c["aspect"], c["angle"])


@register_occluder
class Polygon(_GaugeOccluder):
    """A random star-shaped (hence simple and connected) polygon of area ratio * W * H (LFW_poly
    style): `vertices` corners at jittered angles, radii 1 - spikiness * U(0, 1)."""

    name = "polygon"
    defaults = {"ratio": 0.3, "vertices": [5, 10], "spikiness": [0.0, 0.6], "fill": "black", "overflow": "clip"}
    schema = {
        "ratio": RATIO,
        "vertices": integer(3),
        "spikiness": number(0.0, 1.0, hi_open=True),
        "fill": FILL,
        "overflow": word(*OVERFLOW),
    }
    INTS = ("vertices",)

    def shape(self, c, rng):
        if c["vertices"] < 3 or not 0.0 <= c["spikiness"] < 1.0:
            raise ValueError(f"polygon needs vertices >= 3 and spikiness in [0, 1): {c}")
        return polygon_shape(*polygon_vertices(c["vertices"], c["spikiness"], rng))


@register_occluder
class Blob(_GaugeOccluder):
    """A smooth random blob of area ratio * W * H: a closed contour r(theta) = exp(Fourier series
    with `harmonics` terms of size ~ amplitude / k)."""

    name = "blob"
    defaults = {"ratio": 0.3, "harmonics": [2, 5], "amplitude": [0.2, 0.5], "fill": "black", "overflow": "clip"}
    schema = {
        "ratio": RATIO,
        "harmonics": integer(1, BLOB_MAX_HARMONICS),
        "amplitude": number(0.0),
        "fill": FILL,
        "overflow": word(*OVERFLOW),
    }
    INTS = ("harmonics",)

    def shape(self, c, rng):
        if c["amplitude"] < 0:
            raise ValueError(f"blob needs amplitude >= 0: {c}")
        return blob_shape(blob_radius(c["harmonics"], c["amplitude"], rng))


def split_pixels(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to weights summing to `total` (largest remainder)."""
    share = weights / weights.sum() * total
    base = np.floor(share).astype(np.int64)
    rest = total - int(base.sum())
    order = np.argsort(-(share - base), kind="stable")
    base[order[:rest]] += 1
    return base


@register_occluder
class Pieces(_Shape):
    """`n` disjoint pieces (rectangles and/or ellipses) whose union covers ratio * W * H.

    The area is split with Dirichlet(2, ..., 2) shares; pieces are placed largest first, each at a
    uniformly random position among those where its box keeps a one-pixel gap from the boxes
    already placed (so pieces neither overlap nor touch). Up to PIECES_ATTEMPTS layouts of the
    same pieces are tried; if none places them all, the fullest is kept and the pieces without a
    free position are skipped: `placed` < `n` and the achieved area falls short (the record's
    `area`). On 112x112 all pieces find room in >99% of draws up to ratio 0.3, ~97% at 0.4,
    ~70% at 0.5: use pieces for small and moderate ratios."""

    name = "pieces"
    defaults = {"ratio": 0.3, "n": [2, 5], "shape": "mixed", "fill": "black"}
    INTS = ("n",)
    SHAPES = ("rectangle", "ellipse", "mixed")
    schema = {"ratio": RATIO, "n": integer(1), "shape": word(*SHAPES), "fill": FILL}

    def draw(self, image, width, height, c, rng):
        n = c["n"]
        if n < 1 or c["shape"] not in self.SHAPES:
            raise ValueError(f"pieces needs n >= 1 and shape in {self.SHAPES}: {c}")
        # Gamma(2) as a sum of two exponentials: the torch path draws it the same way
        weights = -np.log1p(-rng.random(n)) - np.log1p(-rng.random(n))
        counts = split_pixels(target_pixels(c["ratio"], width, height), weights)
        kinds = rng.random(n) < 0.5 if c["shape"] == "mixed" else np.full(n, c["shape"] == "ellipse")
        aspects = rng.uniform(*PIECE_ASPECT, size=n)
        order = np.argsort(-counts, kind="stable")
        shapes = []
        for j in order:
            k = int(counts[j])
            if k <= 0:
                continue
            if kinds[j]:
                bw, bh = ellipse_box(k, float(aspects[j]), width, height)
                shapes.append(("ellipse", ellipse_in_box(bw, bh, k)))
            else:
                bw, bh = rect_dims(k, float(aspects[j]), width, height)
                shapes.append(("rectangle", np.ones((bh, bw), dtype=bool)))
        best = None
        for _ in range(PIECES_ATTEMPTS):
            layout = _layout(shapes, width, height, rng)
            if best is None or layout[0] > best[0]:
                best = layout
            if best[0] == len(shapes):
                break
        _, mask, pieces = best
        local, x, y = _crop(mask)  # texture spans the pieces' common box, as in the torch path
        out = paint(image, local, x, y, c["fill"], rng)
        return out, mask, {**c, "placed": best[0], "pieces": pieces}


def _layout(shapes, width, height, rng):
    """Place the pieces in order, each uniformly among the top-left positions where its box keeps
    a one-pixel gap from the boxes already placed; (number placed, mask, records)."""
    mask = np.zeros((height, width), dtype=bool)
    boxes: list[tuple[int, int, int, int]] = []
    pieces = []
    for kind, local in shapes:
        bh, bw = local.shape
        valid = np.ones((height - bh + 1, width - bw + 1), dtype=bool)
        for px, py, pw, ph in boxes:
            valid[max(0, py - bh) : py + ph + 1, max(0, px - bw) : px + pw + 1] = False
        free = np.flatnonzero(valid)
        piece = {"shape": kind, "width": bw, "height": bh, "pixels": int(np.count_nonzero(local))}
        if len(free) == 0:
            pieces.append({**piece, "placed": False})
            continue
        y, x = divmod(int(free[rng.integers(len(free))]), width - bw + 1)
        boxes.append((x, y, bw, bh))
        mask[y : y + bh, x : x + bw] = local
        pieces.append({**piece, "placed": True, "x": x, "y": y})
    return len(boxes), mask, pieces
