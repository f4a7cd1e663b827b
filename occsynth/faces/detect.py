"""Batched face detection with facenet-pytorch's MTCNN: boxes, scores and 5 landmarks.

Landmark order: left eye, right eye, nose tip, left mouth corner, right mouth corner (left/right
as seen in the image), in source-image pixel coordinates, rounded with contract.round_points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from occsynth.contract import round_points

if TYPE_CHECKING:  # torch is imported only when a detector is built
    import torch

POLICIES = ("center", "largest")

# MTCNN's smallest findable face, in pixels of the image it runs on (after the max_side
# downscale). MTCNN's customary 20 adds the two finest pyramid levels, the most expensive
# ones: on 400 LFW images 40 found the same subjects (400/401 either way) in ~0.7x the CPU
# time (32 vs 45 ms per 250x250 image, one thread). LFW subjects' boxes are >= 71 px wide,
# and a face under 40 px would be upsampled ~3x into a 112 px template anyway.
DEFAULT_MIN_FACE_SIZE = 40

# The padded re-detection (FaceDetector.detect_padded), run by builds on images where detection
# found no face before they fall back to a centre crop: MTCNN misses faces that fill the whole
# frame (tight face chips, a face cut by the image's edge), and often finds them once the image
# sits in the middle of a larger canvas. Each side gets PAD_FRACTION of the image's longer side
# (a 1.6x canvas for a square image), its border replicated (cv2.BORDER_REPLICATE: no new edge
# at the frame); the faces found are mapped back to the image by subtracting the pad. Measured on
# the 4,889 odd-half LFW faces of benchmarks/realism.py framing cropped 10% inside the detector's
# box (112x112, the frame cuts the face): MTCNN missed 115; on the padded canvas it found 114 of
# them with the border replicated (eyes a median 2.3 px from the full photo's detection at
# 112x112, 92% within 6 px), 114 reflected (2.5 px, 90%), 99 black (2.4 px, 97%).
PAD_FRACTION = 0.3


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in source pixels
    score: float
    landmarks: np.ndarray  # (5, 2) x, y in source pixels, read-only

    def __post_init__(self) -> None:
        # plain floats for the scalar checks: a build makes one Face per stored detection
        box = tuple(float(v) for v in np.asarray(self.box, dtype=np.float64).reshape(-1).tolist())
        if len(box) != 4 or not all(map(math.isfinite, box)):
            raise ValueError(f"Face.box must be 4 finite numbers (x1, y1, x2, y2), got {self.box!r}")
        if not math.isfinite(float(self.score)):
            raise ValueError(f"Face.score must be finite, got {self.score!r}")
        landmarks = round_points(self.landmarks)
        if landmarks.shape != (5, 2) or not np.isfinite(landmarks).all():
            raise ValueError(f"Face.landmarks must be 5x2 finite numbers, got shape {landmarks.shape}")
        landmarks.setflags(write=False)  # frozen means the landmarks too
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "score", float(self.score))
        object.__setattr__(self, "landmarks", landmarks)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Face):
            return NotImplemented
        return self.box == other.box and self.score == other.score and np.array_equal(self.landmarks, other.landmarks)

    def __hash__(self) -> int:
        return hash((self.box, self.score, self.landmarks.tobytes()))

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2.0, (y1 + y2) / 2.0


def _check_image(image: np.ndarray, index: int) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image {index}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image {index}: expected an RGB uint8 array of shape (H, W, 3), "
            f"got dtype {image.dtype} and shape {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image {index}: empty image of shape {image.shape}")


class FaceDetector:
    """MTCNN (facenet-pytorch, weights shipped in its wheel) over batches of RGB uint8 images.

    Images of equal size after the ``max_side`` downscale are stacked into one MTCNN call of up
    to ``batch_size`` images. ``min_face_size`` is in pixels of the image MTCNN sees, i.e. after
    that downscale. On CPU, batches of 8 cost ~0.7x the time of single images (32 gains
    nothing more). Torch's thread count is left to the caller: one detector per worker
    process with ``torch.set_num_threads(1)`` is the fastest use of several cores.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        min_face_size: int = DEFAULT_MIN_FACE_SIZE,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        max_side: int = 1024,
        batch_size: int = 8,
    ) -> None:
        if min_face_size < 12:
            raise ValueError(f"min_face_size must be >= 12 (MTCNN's 12 px cell), got {min_face_size}")
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(f"thresholds must be three probabilities, got {thresholds!r}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if max_side < min_face_size:
            raise ValueError(f"max_side ({max_side}) must be >= min_face_size ({min_face_size})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # torch is imported here, not at module level: builds from stored landmarks use Face and
        # select_face only, and their workers then start without importing torch (~4 s each).
        import torch

        from occsynth.faces._torchvision_compat import load_mtcnn_class

        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available")
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.max_side = int(max_side)
        self.batch_size = int(batch_size)
        mtcnn_class = load_mtcnn_class()
        self._mtcnn = mtcnn_class(
            min_face_size=self.min_face_size,
            thresholds=list(self.thresholds),
            factor=self.factor,
            keep_all=True,
            select_largest=False,
            device=self.device,
        )
        self._mtcnn.eval()
        if self.device.type == "cpu":
            # Measured ~1.4x faster on CPU: max_pool2d is vectorised for channels-last tensors
            # only, and PNet pools its largest maps. Outputs move by float rounding only.
            self._mtcnn.to(memory_format=torch.channels_last)

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces per image, each list sorted by score (highest first); [] when none."""
        images = list(images)
        for i, image in enumerate(images):
            _check_image(image, i)
        results: list[list[Face]] = [[] for _ in images]

        # Group by detection size so that each MTCNN call gets one stacked batch.
        groups: dict[tuple[int, int], list[tuple[int, np.ndarray, tuple[float, float]]]] = {}
        for i, image in enumerate(images):
            small, scale_xy = self._downscale(image)
            if min(small.shape[:2]) < self.min_face_size:
                continue  # MTCNN's pyramid would be empty: no face of min_face_size fits
            groups.setdefault(small.shape[:2], []).append((i, small, scale_xy))

        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                batch = np.stack([small for _, small, _ in chunk])
                boxes, probs, points = self._mtcnn.detect(batch, landmarks=True)
                for k, (index, _, scale_xy) in enumerate(chunk):
                    results[index] = _faces_from_mtcnn(boxes[k], probs[k], points[k], scale_xy)
        return results

    def detect_one(self, image: np.ndarray) -> list[Face]:
        return self.detect([image])[0]

    def detect_padded(self, images: list[np.ndarray], fraction: float = PAD_FRACTION) -> list[list[Face]]:
        """`detect` on each image placed in the middle of a larger canvas (`pad_canvas`), the
        faces mapped back to the image's pixels (`shift_faces`): for images where `detect`
        found none. Boxes and landmarks may lie outside the image (a face cut by its edge)."""
        images = list(images)
        for i, image in enumerate(images):
            _check_image(image, i)
        canvases = [pad_canvas(image, fraction) for image in images]
        found = self.detect([canvas for canvas, _ in canvases])
        return [shift_faces(faces, -pad, -pad) for faces, (_, pad) in zip(found, canvases)]

    def _downscale(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        h, w = image.shape[:2]
        longest = max(h, w)
        if longest <= self.max_side:
            return image, (1.0, 1.0)
        scale = self.max_side / longest
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        small = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        return small, (w / new_w, h / new_h)


def pad_of(width: int, height: int, fraction: float = PAD_FRACTION) -> int:
    """The pad (px, each side) of `pad_canvas`: round(fraction * the longer side)."""
    if not 0.0 < fraction <= 2.0:
        raise ValueError(f"pad fraction must be in (0, 2], got {fraction}")
    return int(round(fraction * max(int(width), int(height))))


def pad_canvas(image: np.ndarray, fraction: float = PAD_FRACTION) -> tuple[np.ndarray, int]:
    """(canvas, pad): the image in the middle of a canvas `pad` px larger on each side (`pad_of`),
    its border replicated; the image's pixel (x, y) is the canvas's (x + pad, y + pad)."""
    pad = pad_of(image.shape[1], image.shape[0], fraction)
    return cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE), pad


def shift_faces(faces: list[Face], dx: float, dy: float) -> list[Face]:
    """The faces moved by (dx, dy) px: boxes and landmarks, score and order kept."""
    shift = np.array([dx, dy, dx, dy], dtype=np.float64)
    return [
        Face(tuple(np.asarray(f.box, dtype=np.float64) + shift), f.score, f.landmarks + np.array([dx, dy]))
        for f in faces
    ]


def _faces_from_mtcnn(boxes, probs, points, scale_xy: tuple[float, float]) -> list[Face]:
    if boxes is None:
        return []
    # Under NumPy 2, MTCNN.detect returns object arrays: cast before any arithmetic.
    boxes = np.asarray(boxes).astype(np.float64).reshape(-1, 4)
    probs = np.asarray(probs).astype(np.float64).reshape(-1)
    points = np.asarray(points).astype(np.float64).reshape(-1, 5, 2)
    if not (len(boxes) == len(probs) == len(points)):
        raise RuntimeError(
            f"MTCNN returned inconsistent counts: {len(boxes)} boxes, {len(probs)} scores, {len(points)} landmark sets"
        )
    sx, sy = scale_xy
    if (sx, sy) != (1.0, 1.0):
        # Pixel-centre mapping of cv2.resize: x_src + 0.5 = (x_small + 0.5) * sx.
        boxes[:, 0::2] = (boxes[:, 0::2] + 0.5) * sx - 0.5
        boxes[:, 1::2] = (boxes[:, 1::2] + 0.5) * sy - 0.5
        points[:, :, 0] = (points[:, :, 0] + 0.5) * sx - 0.5
        points[:, :, 1] = (points[:, :, 1] + 0.5) * sy - 0.5
    faces = [Face(tuple(b), p, lm) for b, p, lm in zip(boxes, probs, points)]
    # Score first; the box breaks exact ties so that the order never depends on MTCNN's.
    faces.sort(key=lambda f: (-f.score, f.box))
    return faces


def select_face(faces: list[Face], image_shape: tuple[int, ...], policy: str) -> Face | None:
    """The subject among detected faces, or None when there are none.

    "largest": largest box area. "center": box centre closest to the image centre (LFW's
    subject is centred by construction, and LFW images often contain other people). Exact ties
    go to the earlier face in the list (the higher score for detect's output).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown face selection policy {policy!r}; choose from {', '.join(POLICIES)}")
    if len(image_shape) < 2 or image_shape[0] <= 0 or image_shape[1] <= 0:
        raise ValueError(f"image_shape must start with (height, width), got {image_shape!r}")
    if not faces:
        return None
    if policy == "largest":
        return max(faces, key=lambda f: f.area)  # max keeps the first of equal keys
    h, w = image_shape[0], image_shape[1]
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    return min(faces, key=lambda f: (f.center[0] - cx) ** 2 + (f.center[1] - cy) ** 2)
