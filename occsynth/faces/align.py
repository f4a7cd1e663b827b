"""Similarity alignment of a face onto a 5-point template (occsynth.faces.templates).

The warp follows the insightface convention: least-squares similarity from the 5 detected
landmarks to the template points, cv2.warpAffine with bilinear sampling and a black border.
"""

from __future__ import annotations

import cv2
import numpy as np

from occsynth.contract import round_points
from occsynth.faces.geometry import similarity, transform_points  # noqa: F401 (transform_points: part of this module's API)
from occsynth.faces.templates import AlignTemplate

# Where the subject's face sits in LFW deep-funneled (250x250), measured on MTCNN detections
# ("center" policy) in 400 LFW images (every 33rd of the archive), fitting the ArcFace
# 112x112 template to each face's landmarks: the template's canvas covers a median square of
# side 0.519 * 250 = 130 px (5-95%: 0.477-0.579) centred (+0.004, -0.029) * 250 = (+1, -7) px
# from the image centre (5-95% in y: -0.040 to -0.013): LFW faces sit slightly high. With
# these numbers the guessed landmarks are a median 3.7 px (90th percentile 6.8 px) from the
# detected ones, against 7.7 px for a plain half-size central crop.
LFW_CROP_FRACTION = 0.519
LFW_CROP_OFFSET = (0.004, -0.029)
# Tight face chips (a detector's box grown by 10% of its side on each side, squared, e.g. the
# 160x160 chips of face-recognition datasets): measured on 4,890 LFW faces (the even half, by
# source name, of the single-face MTCNN detections of the LFW builds) cropped that way, fitting
# the ArcFace template to each face's landmarks: the canvas spans a median 0.874 of the chip,
# centred (+0.009, -0.061) of it from the chip's centre. On the odd half the fallback's eyes
# land a median 5.3 px (mean of both eyes, 112x112; 90th percentile 10.9 px, 57% within 6 px:
# the box moves with the head's yaw) from the detected alignment's, against 17.9 px with the
# LFW numbers above (benchmarks/realism.py framing). A build seldom needs the prior on such
# chips: MTCNN finds every one of those 4,889 chips, and where it finds none a build first
# detects again on a padded canvas (detect.FaceDetector.detect_padded, BuildConfig.redetect).
CHIP_CROP_FRACTION = 0.874
CHIP_CROP_OFFSET = (0.009, -0.061)
FRAMINGS = {
    "scene": (LFW_CROP_FRACTION, LFW_CROP_OFFSET),  # the face in a wider photo, as LFW's 250x250
    "chip": (CHIP_CROP_FRACTION, CHIP_CROP_OFFSET),  # a tight crop of the face
}
CHIP_MAX_SIDE = 200  # framing "auto": images whose shorter side is at most this are chips


def _points(name: str, value) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be an (N, 2) array of points, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    return arr


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; never a reflection)
    mapping ``src`` onto ``dst``, as a float64 (2, 3) matrix for cv2.warpAffine: the project's
    one fit (geometry.similarity), behind the checks a user's landmarks need."""
    src = _points("src", src)
    dst = _points("dst", dst)
    if src.shape != dst.shape:
        raise ValueError(f"src and dst must have the same shape, got {src.shape} and {dst.shape}")
    if len(src) < 2:
        raise ValueError(f"a similarity needs at least 2 point pairs, got {len(src)}")
    # Relative tests: coordinates of any magnitude, coincidence up to float noise.
    # (plain floats: at 5 points NumPy's per-call cost was a tenth of re-aligning an image)
    src_list, dst_list = src.tolist(), dst.tolist()
    for name, pts in (("src", src_list), ("dst", dst_list)):
        n = len(pts)
        mx, my = sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n
        spread = sum((x - mx) ** 2 + (y - my) ** 2 for x, y in pts)
        if spread <= 1e-18 * max(1.0, max(max(abs(x), abs(y)) for x, y in pts)) ** 2 * n:
            raise ValueError(
                "src points coincide: a similarity is not defined"
                if name == "src"
                else "dst points coincide: the similarity would collapse to a point"
            )
    m = np.array(similarity(src_list, dst_list), dtype=np.float64).reshape(2, 3)  # = similarity_matrix(src, dst)
    if m[0, 0] == 0.0 and m[1, 0] == 0.0:
        raise ValueError("src and dst are uncorrelated: the least-squares similarity has zero scale")
    return m


def warp(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp ``image`` by the (2, 3) ``matrix`` into a ``size`` = (width, height) canvas;
    bilinear, black outside the source (insightface's convention)."""
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"image must be a non-empty HxW or HxWxC array, got {getattr(image, 'shape', type(image))}")
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 3) or not np.isfinite(m).all():
        raise ValueError(f"matrix must be a finite 2x3 array, got shape {m.shape}")
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
        raise ValueError(f"size must be (width, height) of positive ints, got {size!r}")
    return cv2.warpAffine(
        image,
        m,
        (int(size[0]), int(size[1])),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def align_face(
    image: np.ndarray, landmarks: np.ndarray, template: AlignTemplate
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aligned image, the (2, 3) source->aligned matrix, and the landmarks in the aligned
    image (rounded with contract.round_points, so the stored values are the used ones)."""
    src = round_points(_points("landmarks", landmarks))
    if src.shape != (5, 2):
        raise ValueError(f"landmarks must be 5x2, got shape {src.shape}")
    matrix = estimate_similarity(src, template.points)
    aligned = warp(image, matrix, template.size)
    # transform_points without its checks (src is checked above, warp checked the matrix)
    return aligned, matrix, round_points(src @ matrix[:, :2].T + matrix[:, 2])


def framing_of(width: int, height: int) -> str:
    """The framing "auto" assumes: "chip" for images whose shorter side is at most
    CHIP_MAX_SIDE px (face chips are 112-200 px), else "scene" (LFW's 250x250 and larger)."""
    return "chip" if min(width, height) <= CHIP_MAX_SIDE else "scene"


def center_crop_landmarks(
    width: int,
    height: int,
    template: AlignTemplate,
    *,
    framing: str = "auto",
    crop_fraction: float | None = None,
    crop_offset: tuple[float, float] | None = None,
) -> np.ndarray:
    """Plausible source landmarks of a centred face, for images where detection found none.

    The template's canvas, centred in a square of side max(template width, height) so that
    every template places the face alike, is mapped onto a square crop of side
    ``crop_fraction * min(width, height)`` centred ``crop_offset * min(width, height)`` from
    the image centre. Both come from a face-size prior for the image's framing (FRAMINGS:
    "scene", measured on LFW deep-funneled, or "chip", measured on tight crops of detected LFW
    faces; "auto" picks by size, see `framing_of`) unless given.
    """
    if (
        not (isinstance(width, (int, np.integer)) and isinstance(height, (int, np.integer)))
        or width <= 0
        or height <= 0
    ):
        raise ValueError(f"width and height must be positive ints, got {width!r} x {height!r}")
    if framing == "auto":
        framing = framing_of(int(width), int(height))
    if framing not in FRAMINGS:
        raise ValueError(f"unknown framing {framing!r}; choose from auto, {', '.join(FRAMINGS)}")
    prior_fraction, prior_offset = FRAMINGS[framing]
    crop_fraction = prior_fraction if crop_fraction is None else crop_fraction
    crop_offset = prior_offset if crop_offset is None else crop_offset
    if not 0.0 < crop_fraction:
        raise ValueError(f"crop_fraction must be positive, got {crop_fraction}")
    side_t = float(max(template.width, template.height))
    pad = np.array([(side_t - template.width) / 2.0, (side_t - template.height) / 2.0])
    short = float(min(width, height))
    side = crop_fraction * short
    centre = np.array([width / 2.0, height / 2.0]) + np.asarray(crop_offset, dtype=np.float64) * short
    origin = centre - side / 2.0
    # Plain scaling, the convention the templates themselves are scaled by (templates.py), so
    # that every template yields the same source points.
    points = origin + (template.points + pad) * (side / side_t)
    return round_points(points)
