"""Photometric match of a pasted occluder to the face under it (kernels; no occluder state).

An occluder is rendered under its own light, at its own sharpness, without noise or
compression; the face is a photograph. `harmonized_paste` makes the occluder layer look taken
by the same camera in the same light, AFTER the geometry is fixed, so the mask (the warped
alpha >= 0.5) is exactly the mask of the un-harmonised paste:

1. light: the face's low-frequency luminance is fitted on its visible skin (log luma, a
   quadratic in face-frame coordinates, trimmed of eyes, brows and highlights) and multiplies
   the layer where it lies, so a side-lit face side-lights its sunglasses;
2. colour and contrast: the layer's range is mapped (through a highlight shoulder on luma,
   hue kept) onto the photo's black and white levels
   (0.5th / 99.5th luma percentiles, the white no more than a little above the face's own
   highlights: a hazy photo lifts the black of sunglasses, a dim one or a face in shade greys a
   white mask) and tinted by the photo's colour cast (its grey-world chromaticity against
   LFW's median, half strength);
3. contact shadow (optional): the layer's alpha, shifted away from the light the fit reads
   and blurred, darkens the face around the occluder (pixels outside the mask change);
4. image quality: noise at the face's level (Immerkaer's Laplacian estimate, robust median),
   a JPEG round trip at the face's estimated quality, and a Gaussian blur of the layer (colour
   and alpha together, as an out-of-focus edge) while its edges are crisper than the face's:
   `blur_scale` (the re-blur edge measure) of the occluder's body and outline against that of
   the visible face, matched to TOLERANCE up to MAX_BLUR px. The search (option `blur_search`)
   is "predict": edge widths add in quadrature, so the unblurred render's scale and the face's
   give the blur to try first (`predicted_blur`), and while a render misses, the next blur is
   interpolated between the renders too sharp and too soft (`predict_blur`); "bisect", the
   search before it, halves [0, MAX_BLUR] (`bisect_blur`) and is what a record without the
   option replays. On 224 LFW faces a harmonised paste took 2.0 to 4.0 renders by family (the
   unblurred one included) with "predict", 3.2 to 5.5 with "bisect", as close to the face. A
   layer as soft as the face or softer is left as it is (no step sharpens). `sharpness_ratio`
   is the measure; beside it `laplacian_ratio` (variance of the Laplacian) is reported, not
   matched: it also counts how many edges a region has, so a plain mask scores low against a
   face however sharp it is.

Every random draw (noise) comes from the occluder's rng, after all its geometric draws, so
`harmonize` never moves an occluder. The JPEG quality estimate is a "JPEG ghost" on the crop's
own 8x8 grid: recompressing at the original quality changes almost nothing. It sees the
quality of crops that kept their source grid (aligned inputs); after the resampling of
alignment the grid is gone and JPEG_FALLBACK is used (LFW's own quality).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np

from occsynth.faces.geometry import face_axes, inter_ocular

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Median over 400 LFW deep-funneled crops (arcface 112x112) of the crop's mean RGB / its mean luma.
GREY_WORLD_REF = np.array([1.193, 0.945, 0.788], dtype=np.float32)
CAST_STRENGTH = 0.5
CAST_LIMIT = 0.1  # at most +-10% per channel
FACE_ELLIPSE = (0.0, 0.4, 0.85, 1.0)  # face frame: centre (u, v), semi-axes; brow-to-chin, cheek-to-cheek
SHADE_LIMITS = (0.6, 1.5)
SHADE_BOX = ((-0.7, 0.7), (-0.4, 1.2))  # face-frame box the light field is read in (never extrapolated)
KNEE = 0.85  # the tone curve's shoulder starts here (fraction of the white level)
BLACK_MAX, WHITE_MIN = 60.0, 120.0
HIGHLIGHT_GAIN, HIGHLIGHT_LIFT = 1.1, 25.0  # white level at most this over the face's 99th percentile
MAX_BLUR = 4.0  # px, the largest Gaussian sigma the sharpness match may use
SEARCH_STEPS = 7
TOLERANCE = 0.05  # |log ratio| the sharpness search stops at
# The "predict" search's first blur: the kernel whose variance (`kernel_variance`: below ~0.6 px
# an OpenCV kernel blurs by less than sigma^2) is BLUR_GAIN x (F^2 - S0^2), F and S0 the
# `blur_scale` of the face and of the unblurred render. An edge of Gaussian width w reads about
# sqrt(c^2 + w^2) on a pixel grid (c from ~0.57 to 0.8 px with the edge's angle and position),
# so widths add in quadrature and c cancels; but a render gets its noise and JPEG after the
# blur and reads sharper than its edges: the kernel variance that matched was a median 1.5x
# F^2 - S0^2 (224 LFW fixture faces x object, fit_area LFW-OCC, mask3d, maskthefaces, ocfr2022;
# 1.40 to 1.68 by family).
BLUR_GAIN = 1.5
BLUR_DIGITS = 4  # the "predict" search's blurs are rounded to this many decimals (the record's)
JPEG_QUALITIES = tuple(range(30, 100, 5))
BLOCKY = 1.03  # blockiness above which the ghost search runs
JPEG_FALLBACK = 75  # LFW deep-funneled is JPEG quality 75 (standard tables scaled 50%)
SHADOW_OFFSET = 0.05  # shadow shift, inter-ocular distances
SHADOW_BLUR = 0.05  # shadow softness (Gaussian sigma), inter-ocular distances
MIN_PIXELS = 40
EDGE_GRADIENT = 4.0  # grey levels per pixel: the least gradient peak `blur_scale` measures
MIN_EDGES = 12  # gradient peaks needed to measure a region's blur
REBLUR = 1.0
SQUARE3 = np.ones((3, 3), np.uint8)

DEFAULTS = {"shadow": 0.3, "jpeg": "auto", "sharpness": True, "light": True, "blur_search": "predict"}
# Options added after harmonised samples were first recorded, at the value that reproduces them:
# a record leaves them out at that value and a replay puts it back (see `recorded`, `replayed`).
LEGACY_OPTIONS = {"blur_search": "bisect"}
BLUR_SEARCHES = ("predict", "bisect")
OPTION_NOTE = (
    "true, false, or {shadow: 0..1, jpeg: auto|1..100|null, sharpness: true|false, light: true|false, "
    "blur_search: predict|bisect}"
)


# ----------------------------------------------------------------------------- options


def options(value: Any) -> dict | None:
    """The harmonisation options of a `harmonize` parameter value (None: off)."""
    if value is False or value is None:
        return None
    if value is True:
        return dict(DEFAULTS)
    return {**DEFAULTS, **value}


def valid(value: Any) -> bool:
    """Whether a `harmonize` parameter value is allowed (see OPTION_NOTE)."""
    if isinstance(value, bool) or value is None:
        return True
    if not isinstance(value, dict) or set(value) - set(DEFAULTS):
        return False
    shadow = value.get("shadow", DEFAULTS["shadow"])
    jpeg = value.get("jpeg", DEFAULTS["jpeg"])
    return (
        isinstance(shadow, (int, float))
        and not isinstance(shadow, bool)
        and 0.0 <= shadow <= 1.0
        and (
            jpeg is None
            or jpeg == "auto"
            or (isinstance(jpeg, int) and not isinstance(jpeg, bool) and 1 <= jpeg <= 100)
        )
        and all(isinstance(value.get(k, True), bool) for k in ("sharpness", "light"))
        and value.get("blur_search", DEFAULTS["blur_search"]) in BLUR_SEARCHES
    )


def recorded(value: Any) -> Any:
    """The `harmonize` value a record holds: a LEGACY_OPTIONS option written out where the
    value leaves it at a default that is not its legacy value (true -> {blur_search: predict})
    and left out where it is at its legacy value, so a harmonised build that asks for the
    earlier behaviour records what the earlier builds recorded (true where nothing is left)."""
    if value is False or value is None:
        return value
    given = {} if value is True else dict(value)
    out = {k: v for k, v in given.items() if not (k in LEGACY_OPTIONS and v == LEGACY_OPTIONS[k])}
    for key, old in LEGACY_OPTIONS.items():
        if key not in given and DEFAULTS[key] != old:
            out[key] = DEFAULTS[key]
    return out or True


def replayed(value: Any) -> Any:
    """The `harmonize` value a recorded one rebuilds: absent LEGACY_OPTIONS options at their
    legacy value (the record predates them or left them out at that value)."""
    if value is False or value is None:
        return value
    return {**LEGACY_OPTIONS, **({} if value is True else value)}


# ----------------------------------------------------------------------------- measures


def _order_stats(values: np.ndarray, qs: tuple[float, ...]) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Per quantile q: (the two order statistics around the q-th percentile, its interpolation
    weight), as NumPy's 'linear' percentile finds them: index (n - 1) q / 100 in float64. One
    partition for all of them (each kth lands where a full sort would put it)."""
    n = values.size
    found = []
    for q in qs:
        index = (n - 1) * (q / 100)
        lo = min(max(math.floor(index), 0), n - 1)
        found.append((lo, min(lo + 1, n - 1), index - lo))
    part = np.partition(values, sorted({k for lo, hi, _ in found for k in (lo, hi)}))
    return [(part[lo], part[hi], t) for lo, hi, t in found]


def percentile32(values: np.ndarray, q: float) -> np.float32:
    """np.percentile(values, q) bit for bit for a float32 array and a scalar q (its float32
    arithmetic: the weight is a weak Python float), without its ~0.3 ms of overhead."""
    return percentiles32(values, (q,))[0]


def percentiles32(values: np.ndarray, qs: tuple[float, ...]) -> list[np.float32]:
    """[percentile32(values, q) for q in qs] from one partition."""
    out = []
    for a, b, t in _order_stats(np.ravel(values), qs):
        diff = b - a
        out.append(b - diff * np.float32(1 - t) if t >= 0.5 else a + diff * np.float32(t))
    return out


def percentiles64(values: np.ndarray, qs: tuple[float, ...]) -> list[np.float64]:
    """np.percentile(values, [q...]) bit for bit for a float32 array (a list of quantiles
    interpolates in float64: the weights are a float64 array). NumPy float64 scalars, not
    Python floats: compared with a float32 array a Python float is cast to float32 first
    (NEP 50), a float64 scalar is not, and the comparisons decide which pixels count."""
    out = []
    for a, b, t in _order_stats(np.ravel(values), qs):
        diff = float(b - a)  # the difference in float32, the rest in float64
        out.append(np.float64(float(b) - diff * (1 - t) if t >= 0.5 else float(a) + diff * t))
    return out


def median32(values: np.ndarray) -> np.float32:
    """np.median(values) bit for bit for a float32 array without NaN (the mean of the two
    middle values in float32 for an even count)."""
    flat = np.ravel(values)
    n = flat.size
    if n % 2:
        return np.partition(flat, n // 2)[n // 2]
    part = np.partition(flat, (n // 2 - 1, n // 2))
    return (part[n // 2 - 1] + part[n // 2]) / np.float32(2)


def luma(image: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an RGB image, float32."""
    out = cv2.transform(np.asarray(image, dtype=np.float32), LUMA.reshape(1, 3))
    return out if out.ndim == 2 else out[..., 0]


def face_coords(shape: tuple[int, int], landmarks: np.ndarray) -> np.ndarray:
    """Face-frame coordinates (u, v) of every pixel (HxWx2): p = E + u (right_eye - left_eye) +
    v (mouth_mid - E)."""
    e, ax, ay = face_axes(landmarks)
    inv = np.linalg.inv(np.column_stack([ax, ay])).astype(np.float32)
    h, w = shape
    xs = np.arange(w, dtype=np.float32) - np.float32(e[0])
    ys = np.arange(h, dtype=np.float32) - np.float32(e[1])
    u = inv[0, 0] * xs[None, :] + inv[0, 1] * ys[:, None]
    v = inv[1, 0] * xs[None, :] + inv[1, 1] * ys[:, None]
    return np.stack([u, v], axis=-1)


def face_region(shape: tuple[int, int], landmarks: np.ndarray, coords: np.ndarray | None = None) -> np.ndarray:
    """Bool mask of the face ellipse (FACE_ELLIPSE in the face frame: brows to chin, cheek to cheek)."""
    uv = face_coords(shape, landmarks) if coords is None else coords
    cu, cv, au, av = FACE_ELLIPSE
    return ((uv[..., 0] - cu) / au) ** 2 + ((uv[..., 1] - cv) / av) ** 2 <= 1.0


def _regions(mask: np.ndarray, face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(occluder interior: the mask eroded by 2 px; visible face: the face minus the mask grown
    by 2 px), both without the image's outer 2 px."""
    m = mask.astype(np.uint8)
    inner = cv2.erode(m, np.ones((3, 3), np.uint8), iterations=2) > 0
    grown = cv2.dilate(m, np.ones((5, 5), np.uint8)) > 0
    border = np.zeros(mask.shape, bool)
    border[2:-2, 2:-2] = True
    return inner & border, face & ~grown & border


def laplacian(gray: np.ndarray) -> np.ndarray:
    return cv2.Laplacian(gray, cv2.CV_32F, ksize=1)


def _var(values: np.ndarray) -> float:
    return float(np.var(values, dtype=np.float64))


def _gradient(gray: np.ndarray) -> np.ndarray:
    """Gradient magnitude by central differences (borders reflected as OpenCV's default),
    element-wise in NumPy: OpenCV's Sobel/magnitude on float32 differ in the last bit with the
    array's memory alignment, which changes which pixels tie as gradient peaks and so a build's
    bytes from one process to the next. (The border is a copy, so OpenCV may add it: the same
    values as np.pad(mode="reflect"), ten times faster.)"""
    g = cv2.copyMakeBorder(np.asarray(gray, dtype=np.float32), 1, 1, 1, 1, cv2.BORDER_REFLECT_101)
    gx = g[1:-1, 2:] - g[1:-1, :-2]
    gy = g[2:, 1:-1] - g[:-2, 1:-1]
    return np.sqrt(gx * gx + gy * gy) * np.float32(0.5)


def _gradient_at(gray: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """`_gradient(gray)[rows, cols]`, computed only there: the same float32 operations on the
    same values, element by element, so the same numbers."""
    return _gradient_flat(gray, rows * gray.shape[1] + cols)


def _gradient_flat(gray: np.ndarray, index: np.ndarray) -> np.ndarray:
    """`_gradient(gray).ravel()[index]` (flat indices), computed only there, as `_gradient_at`
    (one-dimensional gathers are faster than pairs of row and column indices)."""
    g = cv2.copyMakeBorder(np.asarray(gray, dtype=np.float32), 1, 1, 1, 1, cv2.BORDER_REFLECT_101).ravel()
    w = gray.shape[1]
    p = index + 2 * (index // w) + (w + 3)  # the same pixel in the bordered image: row + 1, column + 1
    gx = g[p + 1] - g[p - 1]
    gy = g[p + (w + 2)] - g[p - (w + 2)]
    return np.sqrt(gx * gx + gy * gy) * np.float32(0.5)


def blur_scale(gray: np.ndarray, region: np.ndarray) -> float | None:
    """How blurred a region's edges are, whatever their contrast or number (re-blur method):
    at the gradient peaks (3x3 maxima of at least EDGE_GRADIENT grey levels per pixel), the
    median ratio R of the gradient after a further Gaussian blur of REBLUR px to the gradient
    before; a step edge blurred by s gives R = s / sqrt(s^2 + REBLUR^2), read back as
    s = REBLUR R / sqrt(1 - R^2) (about sqrt(c^2 + s^2) px on a pixel grid: c = 0.8 for an
    edge between two pixel columns, ~0.57 over edges at any angle and offset). None below
    MIN_EDGES peaks (nothing to measure)."""
    m0 = _gradient(gray)
    peaks = region & (m0 >= EDGE_GRADIENT) & (m0 >= cv2.dilate(m0, SQUARE3))
    index = np.flatnonzero(peaks)  # row by row, as np.nonzero
    if index.size < MIN_EDGES:
        return None
    m1 = _gradient_flat(cv2.GaussianBlur(gray, (0, 0), REBLUR), index)
    r = float(median32(np.clip(m1 / m0.ravel()[index], 0.0, 0.999)))
    return REBLUR * r / math.sqrt(1.0 - r * r)


def _occluder_regions(mask: np.ndarray, face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the occluder's body and its outline: the mask opened by 3x3, which drops thin parts
    such as ear loops, temples and rims, whose lines read sharper than edges at any blur, then
    grown by 1 px; the visible face: the face ellipse minus the mask grown by 3 px), both
    without the image's outer 2 px."""
    m = mask.astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    occluder = cv2.dilate(cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel), kernel) > 0
    grown = cv2.dilate(m, np.ones((7, 7), np.uint8)) > 0
    border = np.zeros(mask.shape, bool)
    border[2:-2, 2:-2] = True
    return occluder & border, face & ~grown & border


def sharpness_ratio(image: np.ndarray, mask: np.ndarray, landmarks: np.ndarray) -> float | None:
    """The occluder's sharpness over the face's: `blur_scale` of the visible face over that of
    the occluder with its outline (> 1: the occluder is crisper than the face); None when
    either has too few edges to measure (a plain patch, clear eyeglasses)."""
    mask = np.asarray(mask) > 0
    occluder, visible = _occluder_regions(mask, face_region(mask.shape, landmarks))
    gray = luma(image)
    face, occ = blur_scale(gray, visible), blur_scale(gray, occluder)
    return face / occ if face and occ else None


def _ratio(image: np.ndarray, mask: np.ndarray, landmarks: np.ndarray, measure) -> float | None:
    inner, visible = _regions(np.asarray(mask) > 0, face_region(mask.shape, landmarks))
    if inner.sum() < MIN_PIXELS or visible.sum() < MIN_PIXELS:
        return None
    gray = luma(image)
    face, occluder = measure(gray, visible), measure(gray, inner)
    return occluder / face if face and occluder is not None else None


def laplacian_ratio(image: np.ndarray, mask: np.ndarray, landmarks: np.ndarray) -> float | None:
    """The variance of the Laplacian (luma) inside the occluder (its mask eroded by 2 px) over
    that of the visible face (the face ellipse minus the mask grown by 2 px). Reported beside
    `sharpness_ratio`, not matched: it also counts how many edges a region has (a plain mask
    has few, a face has eyes, brows and a mouth), so it is small for plain occluders however
    sharp they are."""
    return _ratio(image, mask, landmarks, lambda gray, region: _var(laplacian(gray)[region]))


def noise_sigma(gray: np.ndarray, region: np.ndarray) -> float:
    """Noise standard deviation (Immerkaer 1996): the [1 -2 1]x[1 -2 1] kernel cancels smooth
    content and scales white noise by 6; the median of its magnitude (robust to edges)."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    response = np.abs(cv2.filter2D(gray, cv2.CV_32F, kernel))[region]
    if response.size < MIN_PIXELS:
        return 0.0
    return float(median32(response)) * 1.4826 / 6.0


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def blockiness(gray: np.ndarray) -> float:
    """Mean absolute step across the 8x8 grid's lines over the mean step elsewhere (1: no grid)."""
    if isinstance(gray, np.ndarray) and gray.dtype == np.uint8 and gray.ndim == 2 and gray.size * 510 < 2**24:
        return _blockiness_u8(gray)
    g = np.asarray(gray, dtype=np.float32)
    dx = np.abs(np.diff(g, axis=1))
    dy = np.abs(np.diff(g, axis=0))
    on = np.concatenate([dx[:, 7::8].ravel(), dy[7::8, :].ravel()])
    off_x = np.delete(dx, np.s_[7::8], axis=1).ravel()
    off_y = np.delete(dy, np.s_[7::8], axis=0).ravel()
    off = np.concatenate([off_x, off_y])
    return float(on.mean() / max(off.mean(), 1e-6)) if on.size and off.size else 1.0


def _blockiness_u8(gray: np.ndarray) -> float:
    """`blockiness` of a small uint8 image from integer sums: its float32 steps are integers
    whose every partial sum stays below 2**24 (size x 510), so NumPy's float32 means are the
    exact sums over the counts (in float64, then float32), which these are: the same number."""
    h, w = gray.shape
    g = gray.astype(np.int16)
    dx = np.abs(np.diff(g, axis=1))
    dy = np.abs(np.diff(g, axis=0))
    on_sum = int(dx[:, 7::8].sum()) + int(dy[7::8, :].sum())
    on_n = h * len(range(7, w - 1, 8)) + len(range(7, h - 1, 8)) * w
    off_n = dx.size + dy.size - on_n
    if not on_n or not off_n:
        return 1.0
    on = np.float32(on_sum / on_n)
    off = np.float32((int(dx.sum()) + int(dy.sum()) - on_sum) / off_n)
    return float(on / max(off, 1e-6))


def estimate_jpeg_quality(gray_u8: np.ndarray) -> int | None:
    """The JPEG quality an image was last saved at, when its 8x8 grid is intact ("JPEG ghost":
    recompressing at that quality changes it about 10x less than 5 points below); None when
    no quality stands out (never compressed, or resampled since). Images without a visible
    grid (blockiness < BLOCKY) are not searched."""
    y = np.ascontiguousarray(gray_u8)
    if blockiness(y) < BLOCKY:
        return None
    ref = y.astype(np.float32)
    errors = [float(np.mean((ref - _jpeg(y, q)) ** 2)) for q in JPEG_QUALITIES]
    best, best_ratio = None, 0.1
    for i in range(1, len(errors)):
        ratio = errors[i] / max(errors[i - 1], 1e-9)
        if errors[i - 1] > 0.5 and ratio < best_ratio:
            best, best_ratio = JPEG_QUALITIES[i], ratio
    return best


# ----------------------------------------------------------------------------- the face's look


@dataclass
class Look:
    """What the photo says about light and image quality, for one occluder paste."""

    coeffs: np.ndarray  # log-luma quadratic in (u, v): 1, u, v, u^2, uv, v^2 (zeros: flat)
    mean_log: float  # its mean over the visible face (the reference level)
    black: float
    white: float
    cast: np.ndarray  # RGB gains, luma-neutral
    sharpness: float | None  # `blur_scale` of the visible face
    noise: float
    jpeg: int | None
    light: np.ndarray  # unit image direction the light comes from


def _design(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=-1)


def _quadratic(coeffs: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """`_design(u, v).astype(np.float64) @ coeffs`, term by term in NumPy: the terms as
    `_design` makes them (the products in the inputs' dtype: float32 coordinates give float32
    squares), then c0 + c1 u + c2 v + c3 u^2 + c4 uv + c5 v^2 in float64, left to right. The
    matrix product went through the BLAS kernel of the machine (its summation order and fused
    multiply-adds are the kernel's) after building an Nx6 array, 4x slower; the two sums differ
    by a few float64 ulps, below what survives the float32 light field (the locks rebuild
    identical)."""
    c0, c1, c2, c3, c4, c5 = (float(c) for c in coeffs)
    out = np.asarray(u, dtype=np.float64) * c1
    out += c0
    out += np.asarray(v, dtype=np.float64) * c2
    for c, term in ((c3, u * u), (c4, u * v), (c5, v * v)):
        term = term.astype(np.float64, copy=False)
        term *= c
        out += term
    return out


def estimate_look(
    image: np.ndarray,
    landmarks: np.ndarray,
    covered: np.ndarray,
    coords: np.ndarray,
    jpeg: Any = "auto",
    face: np.ndarray | None = None,
) -> Look:
    """The photo's `Look` around a layer covering `covered` (bool); `face`: the face region
    (`face_region`) when the caller has it."""
    gray = luma(image)
    face = face_region(gray.shape, landmarks, coords) if face is None else face
    _, visible = _regions(covered, face)
    flat = np.zeros(6, np.float64)
    coeffs, mean_log = flat, 0.0
    light = np.array([0.0, -1.0])
    if visible.sum() >= MIN_PIXELS:
        values = gray[visible]
        lo, hi = percentiles64(values, (15.0, 97.0))
        keep = visible & (gray >= lo) & (gray <= hi)
        if keep.sum() >= MIN_PIXELS:
            uv = coords[keep]
            design = _design(uv[:, 0], uv[:, 1]).astype(np.float64)
            target = np.log(gray[keep].astype(np.float64) + 1.0)
            coeffs = np.linalg.solve(design.T @ design + 1e-9 * np.eye(6), design.T @ target)
            at = coords[visible]
            fitted = _quadratic(coeffs, at[:, 0], at[:, 1])
            mean_log = float(fitted.mean())
            # the light comes from the brighter side: the fit's gradient at the face centre, in image terms
            _, ax, ay = face_axes(landmarks)
            cu, cv = FACE_ELLIPSE[:2]
            du = coeffs[1] + 2 * coeffs[3] * cu + coeffs[4] * cv
            dv = coeffs[2] + coeffs[4] * cu + 2 * coeffs[5] * cv
            inv = np.linalg.inv(np.column_stack([ax, ay]))
            grad = inv.T @ np.array([du, dv])  # d log-luma / d (x, y)
            iod = inter_ocular(landmarks)
            strength = float(np.hypot(*grad)) * iod  # log-luma change per inter-ocular distance
            above = np.array([0.0, -1.0])
            if strength > 1e-6:
                w = min(1.0, strength / 0.3)
                d = w * grad / np.hypot(*grad) + (1 - w) * above
                d[1] = min(d[1], -0.3)  # light from below is rare: keep it above the horizon
                light = d / max(np.hypot(*d), 1e-9)
    black, white = percentiles32(gray, (0.5, 99.5))
    black, white = float(min(black, BLACK_MAX)), float(white)
    if visible.sum() >= MIN_PIXELS:  # the light on the face: its highlights (a face in shade
        # before a bright background must not get a white occluder at the background's white)
        white = min(white, HIGHLIGHT_GAIN * float(percentile32(gray[visible], 99.0)) + HIGHLIGHT_LIFT)
    white = max(white, WHITE_MIN)
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        # exact integer sums (any order gives the same float64 below 2**53): NumPy's mean, faster
        mean_rgb = np.asarray(cv2.sumElems(np.ascontiguousarray(image))[:3], dtype=np.float64) / (image.size // 3)
    else:
        mean_rgb = image.reshape(-1, 3).mean(axis=0, dtype=np.float64)
    mean_y = float(mean_rgb @ LUMA)
    cast = np.ones(3, np.float32)
    if mean_y > 1.0:
        chroma = mean_rgb / mean_y / GREY_WORLD_REF
        cast = np.clip(chroma**CAST_STRENGTH, 1 - CAST_LIMIT, 1 + CAST_LIMIT).astype(np.float32)
        cast /= float(cast @ LUMA)
    _, face_visible = _occluder_regions(covered, face)
    sharp = blur_scale(gray, face_visible)
    noise = noise_sigma(gray, visible) if visible.sum() >= MIN_PIXELS else 0.0
    if jpeg == "auto":
        quality = estimate_jpeg_quality(np.clip(np.round(gray), 0, 255).astype(np.uint8)) or JPEG_FALLBACK
    else:
        quality = None if jpeg is None else int(jpeg)
    return Look(coeffs, mean_log, black, white, cast, sharp, noise, quality, light)


def _channels(plane: np.ndarray) -> np.ndarray:
    """A float32 HxW plane as HxWx3 (the same value in each channel): the array that
    `plane[..., None]` broadcasts to, made, because NumPy's arithmetic broadcasting a last axis
    of 1 against 3 runs several times slower than on arrays of the same shape (same values)."""
    return cv2.merge([plane, plane, plane])


def shoulder(value: np.ndarray) -> np.ndarray:
    """Highlights rolled off as a camera's tone curve does: the identity up to KNEE, then a
    tanh shoulder toward 1, so a lit white layer keeps its folds instead of clipping flat."""
    v = np.asarray(value, dtype=np.float32)
    top = np.float32(1.0 - KNEE)
    out = v.copy()
    high = ~(v <= KNEE)  # NaN too, as np.where(v <= KNEE, v, ...) had it
    if high.any():  # the shoulder only where it applies (tanh is element-wise: the same values)
        rolled = v[high] - KNEE
        rolled /= top
        out[high] = KNEE + top * np.tanh(rolled)
    return out


def _tone(rgb: np.ndarray) -> np.ndarray:
    """`shoulder` on luma with the hue kept: every channel scaled alike, and a pixel whose
    brightest channel would pass 1 scaled down whole (clipping channels one by one would turn
    a lit orange yellow)."""
    y = luma(rgb)
    gain = shoulder(y)
    gain /= np.maximum(y, np.float32(1e-6))
    out = rgb * _channels(gain)
    top = np.maximum(np.maximum(out[..., 0], out[..., 1]), out[..., 2])  # out.max(axis=-1), faster
    if not (top <= 1.0).all():  # else every divisor is 1 and x / 1 is x (NaN: divide, as before)
        out /= _channels(np.maximum(top, np.float32(1.0)))
    return np.clip(out, 0.0, 1.0, out=out)


def shading(look: Look, coords: np.ndarray) -> np.ndarray:
    """Multiplicative light field at face-frame coordinates, 1 at the face's mean level;
    coordinates are clamped to SHADE_BOX (inside the fitted face) so the quadratic is never
    extrapolated, and the field to SHADE_LIMITS."""
    (u0, u1), (v0, v1) = SHADE_BOX
    u = np.clip(coords[..., 0], u0, u1).astype(np.float64)
    v = np.clip(coords[..., 1], v0, v1).astype(np.float64)
    log = _quadratic(look.coeffs, u, v)
    log -= look.mean_log
    return np.clip(np.exp(log, out=log), *SHADE_LIMITS).astype(np.float32)


# ----------------------------------------------------------------------------- the paste


def bisect_blur(
    render: Callable[[float], np.ndarray],
    ratio: Callable[[np.ndarray], float | None],
    out: np.ndarray,
    achieved: float,
) -> tuple[float, np.ndarray, float]:
    """The sharpness match by bisection on the log ratio (which falls as the blur grows) over
    [0, MAX_BLUR], SEARCH_STEPS renders at most: (blur, image, ratio) of the render closest to
    ratio 1 (`out`, `achieved`: the unblurred render and its ratio). A ratio of None (blurred
    past having edges) moves the upper end down."""
    lo, hi = 0.0, MAX_BLUR
    best = (math.log(achieved), 0.0, out, achieved)
    for _ in range(SEARCH_STEPS):
        mid = 0.5 * (lo + hi)
        candidate = render(mid)
        r = ratio(candidate)
        if r is None:  # blurred past having edges
            hi = mid
            continue
        err = abs(math.log(r))
        if err < best[0]:
            best = (err, mid, candidate, r)
        if err <= TOLERANCE:
            break
        if r > 1.0:
            lo = mid
        else:
            hi = mid
    _, blur, out, achieved = best
    return blur, out, achieved


@functools.cache
def _kernel_variances() -> tuple[np.ndarray, np.ndarray]:
    """(sigma, the variance of the kernel cv2.GaussianBlur uses at that sigma on a float image)
    over [0.25, MAX_BLUR] in steps of 0.001 px: round(8 sigma + 1) | 1 taps of exp(-x^2 / 2
    sigma^2), normalised, so a sigma below ~0.6 px blurs by less than sigma^2 and one below
    ~0.3 px hardly at all."""
    sigma = np.linspace(0.25, MAX_BLUR, int(round((MAX_BLUR - 0.25) * 1000)) + 1)
    radius = (np.round(8 * sigma + 1).astype(np.int64) | 1) // 2
    x = np.arange(int(radius.max()) + 1, dtype=np.float64)
    weight = np.exp(-(x[None, :] ** 2) / (2 * sigma[:, None] ** 2)) * (x[None, :] <= radius[:, None])
    weight[:, 1:] *= 2  # both sides
    return sigma, (weight * x**2).sum(axis=1) / weight.sum(axis=1)


def kernel_variance(sigma: float) -> float:
    """The variance of cv2.GaussianBlur's kernel at `sigma` (0 for no blur)."""
    sigmas, variances = _kernel_variances()
    return float(np.interp(sigma, sigmas, variances)) if sigma > 0 else 0.0


def kernel_sigma(variance: float) -> float:
    """The sigma whose cv2.GaussianBlur kernel has this variance (at least 0.25, at most MAX_BLUR)."""
    sigmas, variances = _kernel_variances()
    return float(np.interp(variance, variances, sigmas))


def predicted_blur(face: float, layer: float, gain: float = BLUR_GAIN) -> float:
    """The blur (px) predicted to bring a layer whose edges read `layer` (`blur_scale`) to
    those of a face reading `face`: the kernel of variance gain x (face^2 - layer^2) (gain 1:
    edges blurred by the kernel alone; BLUR_GAIN: a render, noise and JPEG added after it)."""
    return kernel_sigma(gain * (face * face - layer * layer))


def predict_blur(
    render: Callable[[float], np.ndarray],
    ratio: Callable[[np.ndarray], float | None],
    face: float,
    out: np.ndarray,
    achieved: float,
) -> tuple[float, np.ndarray, float]:
    """The sharpness match from a prediction: the first blur is `predicted_blur` from the
    face's scale and the unblurred render's (`out`, its ratio `achieved`: scale face /
    achieved); while a render is off by more than TOLERANCE the next blur comes from the
    renders so far, taking the squared scale as linear in the kernel variance (the model
    above): between the closest render still too sharp (the unblurred one at first) and the
    closest too soft, its interpolation kept inside the middle 80% of the bracket (the middle
    when the softer one has no edges left); with none too soft yet, the line through the
    unblurred render and the last one, extended. At most SEARCH_STEPS renders, none past
    MAX_BLUR; (blur, image, ratio) of the render closest to ratio 1, as `bisect_blur`."""
    target = face * face
    start = (face / achieved) ** 2
    best = (math.log(achieved), 0.0, out, achieved)
    lo: tuple[float, float] = (0.0, start)  # (blur, squared scale) of the closest render too sharp
    hi: tuple[float, float | None] | None = None  # the closest too soft (None: no edges left)
    sigma = predicted_blur(face, face / achieved)
    for _ in range(SEARCH_STEPS):
        sigma = round(min(sigma, MAX_BLUR), BLUR_DIGITS)
        if sigma <= lo[0] or (hi is not None and sigma >= hi[0]):
            break  # nothing left to try between them
        candidate = render(sigma)
        r = ratio(candidate)
        if r is None:  # blurred past having edges
            hi = (sigma, None)
        else:
            err = abs(math.log(r))
            if err < best[0]:
                best = (err, sigma, candidate, r)
            if err <= TOLERANCE:
                break
            if r > 1.0:
                lo = (sigma, (face / r) ** 2)
            else:
                hi = (sigma, (face / r) ** 2)
        if hi is None:
            grown = lo[1] - start
            if lo[0] == 0.0 or grown <= 0.0:
                sigma = 2.0 * max(lo[0], sigma)
            else:
                sigma = kernel_sigma(kernel_variance(lo[0]) * (target - start) / grown)
        elif hi[1] is None or hi[1] <= lo[1]:
            sigma = 0.5 * (lo[0] + hi[0])
        else:
            t = min(max((target - lo[1]) / (hi[1] - lo[1]), 0.1), 0.9)
            v_lo, v_hi = kernel_variance(lo[0]), kernel_variance(hi[0])
            sigma = kernel_sigma(v_lo + t * (v_hi - v_lo))
    _, blur, out, achieved = best
    return blur, out, achieved


def _full(shape, box: np.ndarray, x0: int, y0: int) -> np.ndarray:
    out = np.zeros(shape + box.shape[2:], dtype=np.float32)
    h, w = box.shape[:2]
    out[y0 : y0 + h, x0 : x0 + w] = box
    return out


def reach(record: dict, landmarks: np.ndarray) -> int:
    """How far (px, chessboard) beyond the feathered layer a harmonised paste may change pixels:
    the sharpness blur's kernel (OpenCV: 4 sigma) and the shadow's offset and kernel."""
    iod = inter_ocular(np.asarray(landmarks, dtype=np.float64))
    shadow = SHADOW_OFFSET * iod + 4 * max(0.5, SHADOW_BLUR * iod) if record.get("shadow", 0) > 0 else 0.0
    return int(math.ceil(4 * float(record.get("blur", 0.0)) + shadow)) + 1


def _work_box(weight: np.ndarray, x0: int, y0: int, shape, pad: int) -> tuple[int, int, int, int]:
    """The processing window: the layer's box grown by `pad`, its origin on the 8x8 JPEG grid."""
    ys, xs = np.nonzero(weight > 0)
    h, w = shape
    bx0 = max(int(xs.min()) + x0 - pad, 0) // 8 * 8
    by0 = max(int(ys.min()) + y0 - pad, 0) // 8 * 8
    bx1 = min(int(xs.max()) + x0 + pad + 1, w)
    by1 = min(int(ys.max()) + y0 + pad + 1, h)
    return bx0, by0, bx1, by1


def harmonized_paste(
    image: np.ndarray,
    warped: tuple[np.ndarray, int, int] | None,
    weight_box: np.ndarray | None,
    mask: np.ndarray,
    landmarks: np.ndarray,
    rng: np.random.Generator,
    opts: dict,
) -> tuple[np.ndarray, dict]:
    """Blend a warped RGBA layer into the image with the photometric steps above.

    `weight_box` is the layer's blend weight in [0, 1] over the warped box (the feathered hard
    alpha), `mask` the occluder's exact bool mask (full frame). Returns (image, record)."""
    if warped is None or not mask.any() or not (weight_box > 0).any():
        return image.copy(), {}
    rgba, x0, y0 = warped
    shape = image.shape[:2]
    lm = np.asarray(landmarks, dtype=np.float64)
    coords = face_coords(shape, lm)
    covered = np.zeros(shape, bool)
    covered[y0 : y0 + rgba.shape[0], x0 : x0 + rgba.shape[1]] = rgba[..., 3] > 0
    face = face_region(shape, lm, coords)
    look = estimate_look(image, lm, covered, coords, opts["jpeg"], face)
    outline_full, _ = _occluder_regions(mask, face)
    iod = inter_ocular(lm)
    shadow_strength = float(opts["shadow"])
    shadow_reach = SHADOW_OFFSET * iod + 3 * max(0.5, SHADOW_BLUR * iod) if shadow_strength > 0 else 0.0
    pad = int(math.ceil(3 * MAX_BLUR + shadow_reach)) + 1
    bx0, by0, bx1, by1 = _work_box(weight_box, x0, y0, shape, pad)
    box_shape = (by1 - by0, bx1 - bx0)

    def window(full_box: np.ndarray) -> np.ndarray:
        out = np.zeros(box_shape + full_box.shape[2:], dtype=np.float32)
        # the warped box and the window overlap (the window grows the layer's own support)
        sx0, sy0 = max(x0, bx0), max(y0, by0)
        sx1, sy1 = min(x0 + full_box.shape[1], bx1), min(y0 + full_box.shape[0], by1)
        out[sy0 - by0 : sy1 - by0, sx0 - bx0 : sx1 - bx0] = full_box[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
        return out

    base = image[by0:by1, bx0:bx1].astype(np.float32)
    box_coords = coords[by0:by1, bx0:bx1]
    outline = outline_full[by0:by1, bx0:bx1]

    # 1-2. light, levels and colour cast on the layer's colours
    colour = window(rgba[..., :3].astype(np.float32) * np.float32(1 / 255))
    if opts["light"]:
        colour *= _channels(shading(look, box_coords))
    colour = look.black + (look.white - look.black) * _tone(colour * look.cast)
    weight = window(weight_box.astype(np.float32))

    # 3. contact shadow from the alpha, offset away from the light
    if shadow_strength > 0:
        dx, dy = (-look.light * SHADOW_OFFSET * iod).tolist()
        moved = cv2.warpAffine(
            weight, np.float32([[1, 0, dx], [0, 1, dy]]), (box_shape[1], box_shape[0]), flags=cv2.INTER_LINEAR
        )
        shadow = cv2.GaussianBlur(moved, (0, 0), max(0.5, SHADOW_BLUR * iod)) * np.float32(shadow_strength)
        base = base * _channels(1.0 - shadow)

    # 4. image quality: draws after every geometric draw of the occluder
    shared = _channels(rng.standard_normal(box_shape, dtype=np.float32))
    noise = rng.standard_normal(box_shape + (3,), dtype=np.float32)
    noise *= 0.3  # in place, the same values as `shared + 0.3 * noise` (+ and x commute)
    noise += shared
    noise *= np.float32(look.noise)
    weight3 = _channels(weight)
    premultiplied = colour * weight3

    def render(sigma: float) -> np.ndarray:
        if sigma > 0:  # out of focus: colour and alpha blurred together
            premult = cv2.GaussianBlur(premultiplied, (0, 0), sigma)
            w = cv2.GaussianBlur(weight, (0, 0), sigma)
            layer = premult / _channels(np.maximum(w, 1e-4))
            layer += noise
            w3 = _channels(w)
        else:
            layer, w3 = colour + noise, weight3
        # base (1 - w) + layer w (the layer with its noise added), then the JPEG round trip
        # blended back by w: the same float32 operations as written out, in place
        rest = 1.0 - w3
        comp = base * rest
        layer *= w3
        comp += layer
        if look.jpeg is not None:
            rgb = np.clip(np.round(comp), 0, 255).astype(np.uint8)
            decoded = cv2.cvtColor(_jpeg(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), look.jpeg), cv2.COLOR_BGR2RGB)
            comp *= rest
            comp += decoded * w3  # uint8 x float32 computes in float32, as .astype(float32) did
        np.round(comp, out=comp)
        return np.clip(comp, 0, 255, out=comp).astype(np.uint8)

    def ratio(out: np.ndarray) -> float | None:
        value = blur_scale(luma(out), outline)
        return None if not value else look.sharpness / value

    # 5. sharpness: blur while the layer's edges are sharper than the face's; a layer as soft
    # or softer is left as it is
    blur, out = 0.0, render(0.0)
    achieved = ratio(out) if opts["sharpness"] and look.sharpness else None
    if achieved is not None and math.log(achieved) > TOLERANCE:
        if opts["blur_search"] == "bisect":
            blur, out, achieved = bisect_blur(render, ratio, out, achieved)
        else:
            blur, out, achieved = predict_blur(render, ratio, look.sharpness, out, achieved)
    result = image.copy()
    result[by0:by1, bx0:bx1] = out
    out = result
    record = {
        "levels": [round(look.black, 2), round(look.white, 2)],
        "cast": [round(float(c), 4) for c in look.cast],
        "light": [round(float(c), 3) for c in look.light],
        "shadow": shadow_strength,
        "noise": round(look.noise, 3),
        "jpeg": look.jpeg,
        "blur": round(blur, BLUR_DIGITS),
        "sharpness_ratio": None if achieved is None else round(achieved, 4),
    }
    return out, record
