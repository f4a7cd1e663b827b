"""Similarity estimation, warping and alignment, checked by re-detecting faces on the aligned
crops; plus the batched MTCNN detector (occsynth.faces.detect) those checks rely on."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from skimage.transform import SimilarityTransform

from occsynth.contract import round_points
from occsynth.faces.align import (
    CHIP_CROP_FRACTION,
    CHIP_CROP_OFFSET,
    LFW_CROP_FRACTION,
    LFW_CROP_OFFSET,
    align_face,
    center_crop_landmarks,
    estimate_similarity,
    framing_of,
    transform_points,
    warp,
)
from occsynth.faces.detect import POLICIES, Face, FaceDetector, pad_canvas, pad_of, select_face, shift_faces
from occsynth.faces.templates import TEMPLATES

IMAGES_PER_IDENTITY = 3


@pytest.fixture(scope="module")
def lfw_images(lfw_subset_dir: Path) -> list[np.ndarray]:
    images = []
    for identity in sorted(p for p in lfw_subset_dir.iterdir() if p.is_dir()):
        for path in sorted(identity.glob("*.jpg"))[:IMAGES_PER_IDENTITY]:
            images.append(np.asarray(Image.open(path).convert("RGB")))
    return images


@pytest.fixture(scope="module")
def lfw_faces(detector, lfw_images) -> list[Face]:
    faces = [select_face(f, im.shape, "center") for f, im in zip(detector.detect(lfw_images), lfw_images)]
    assert all(f is not None for f in faces), "MTCNN missed a subject in the LFW subset"
    return faces


@pytest.fixture(scope="module")
def astronaut_face(detector):
    image = skimage.data.astronaut()
    faces = detector.detect([image])[0]
    assert len(faces) == 1
    return image, faces[0]


def _random_similarity(rng: np.random.Generator) -> np.ndarray:
    scale = math.exp(rng.uniform(math.log(0.1), math.log(10.0)))
    angle = rng.uniform(-math.pi, math.pi)
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, rng.uniform(-500, 500)], [s, c, rng.uniform(-500, 500)]])


def _residual(src, dst, m) -> float:
    return float(np.sum((transform_points(src, m) - dst) ** 2))


# --- estimate_similarity -------------------------------------------------------------------


def test_estimate_similarity_recovers_exact_transforms():
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = _random_similarity(rng)
        src = rng.uniform(-200, 200, size=(int(rng.integers(2, 12)), 2))
        got = estimate_similarity(src, transform_points(src, m))
        assert got.dtype == np.float64 and got.shape == (2, 3)
        np.testing.assert_allclose(got, m, rtol=1e-9, atol=1e-8)


def test_estimate_similarity_is_the_least_squares_solution_under_noise():
    rng = np.random.default_rng(1)
    for _ in range(100):
        src = rng.uniform(0, 250, size=(5, 2))
        dst = transform_points(src, _random_similarity(rng)) + rng.normal(0, 3.0, size=(5, 2))
        got = estimate_similarity(src, dst)
        # scikit-image's SimilarityTransform is an independent Umeyama implementation.
        np.testing.assert_allclose(got, SimilarityTransform.from_estimate(src, dst).params[:2], rtol=1e-7, atol=1e-7)
        # And no nearby similarity does better.
        best = _residual(src, dst, got)
        a, b = got[0, 0], got[1, 0]
        for da, db, tx, ty in rng.normal(0, 1e-3, size=(20, 4)):
            other = np.array([[a + da, -(b + db), got[0, 2] + tx], [b + db, a + da, got[1, 2] + ty]])
            assert _residual(src, dst, other) >= best


def test_estimate_similarity_never_reflects():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 100, size=(5, 2))
    mirrored = src * np.array([-1.0, 1.0])
    m = estimate_similarity(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0
    # A similarity's linear part is [[a, -b], [b, a]].
    assert m[0, 0] == m[1, 1] and m[0, 1] == -m[1, 0]


def test_estimate_similarity_is_deterministic():
    rng = np.random.default_rng(3)
    src, dst = rng.uniform(0, 250, size=(2, 5, 2))
    assert estimate_similarity(src, dst).tobytes() == estimate_similarity(src.copy(), dst.copy()).tobytes()


@pytest.mark.parametrize(
    "src, dst, message",
    [
        (np.ones((5, 2)) * 7.0, np.arange(10.0).reshape(5, 2), "src points coincide"),
        (np.arange(10.0).reshape(5, 2), np.ones((5, 2)), "dst points coincide"),
        (np.array([[0.0, 0.0], [np.nan, 1.0]]), np.zeros((2, 2)) + [[0, 0], [1, 1]], "NaN"),
        (np.arange(10.0).reshape(5, 2), np.arange(8.0).reshape(4, 2), "same shape"),
        (np.zeros((1, 2)), np.zeros((1, 2)), "at least 2"),
        (np.zeros((5, 3)), np.zeros((5, 3)), r"\(N, 2\)"),
    ],
)
def test_estimate_similarity_rejects_degenerate_input(src, dst, message):
    with pytest.raises(ValueError, match=message):
        estimate_similarity(src, dst)


# --- warp and align_face -------------------------------------------------------------------


def test_warp_translation_and_black_border():
    rng = np.random.default_rng(4)
    image = rng.integers(1, 256, size=(40, 60, 3), dtype=np.uint8)  # no zero pixels
    shift = np.array([[1.0, 0.0, 5.0], [0.0, 1.0, -3.0]])
    out = warp(image, shift, (70, 50))
    assert out.shape == (50, 70, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0:37, 5:65], image[3:40, 0:60])
    assert not out[:, :5].any() and not out[:, 65:].any() and not out[37:].any()
    # Half-pixel shift: bilinear, the mean of neighbours.
    half = warp(image.astype(np.float32), np.array([[1.0, 0, -0.5], [0, 1.0, 0]]), (59, 40))
    np.testing.assert_allclose(half, (image[:, :-1].astype(np.float32) + image[:, 1:]) / 2, atol=0.05)


def test_warp_rejects_bad_arguments():
    image = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="2x3"):
        warp(image, np.eye(3), (10, 10))
    with pytest.raises(ValueError, match="size"):
        warp(image, np.eye(2, 3), (10, 0))
    with pytest.raises(ValueError, match="2x3"):
        warp(image, np.full((2, 3), np.nan), (10, 10))


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_align_face_maps_landmarks_onto_template(name):
    template = TEMPLATES[name]
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, size=(300, 280, 3), dtype=np.uint8)
    inverse = _random_similarity(np.random.default_rng(6))
    inverse[:, :2] /= np.hypot(inverse[0, 0], inverse[1, 0])  # unit scale, placed in the image
    inverse[:, 2] = [140.0 - template.width / 2, 150.0 - template.height / 2]
    source = round_points(transform_points(template.points, inverse))
    aligned, matrix, landmarks = align_face(image, source, template)
    assert aligned.shape == (template.height, template.width, 3)
    np.testing.assert_array_equal(landmarks, round_points(transform_points(source, matrix)))
    # A face that is a similarity of the template lands exactly on it (up to the rounding).
    np.testing.assert_allclose(landmarks, template.points, atol=2e-3)
    np.testing.assert_array_equal(aligned, warp(image, matrix, template.size))


def test_align_face_rejects_bad_landmarks():
    template = TEMPLATES["arcface-112x112"]
    image = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="5x2"):
        align_face(image, np.zeros((4, 2)) + np.arange(4)[:, None], template)
    with pytest.raises(ValueError, match="NaN"):
        align_face(image, np.full((5, 2), np.nan), template)


# --- re-detection on aligned crops ---------------------------------------------------------
# Measured on 200 LFW images: re-detected landmarks lie 1.2-1.4 px (mean) from the aligned
# landmarks at 112 px (p95 2.0-2.4, worst 5.5-6.7), and 2.7-2.8 px from the template points,
# most of which is how far a real face's 5 points are from a similarity of the template
# (2.5 px mean). 224x224 doubles every number. facenet-pytorch crops a box that leaves the
# image without padding and stretches it to the ONet input, so a crop whose face touches the
# border is re-detected with a black margin (the warp's own border colour).


def _redetect(detector, aligned_images, template):
    pad = 28 * template.height // 112
    padded = [np.pad(im, ((pad, pad), (pad, pad), (0, 0))) for im in aligned_images]
    found = []
    for faces, image in zip(detector.detect(padded), padded):
        face = select_face(faces, image.shape, "center")
        assert face is not None, "no face re-detected on an aligned crop"
        found.append(face.landmarks - pad)
    return found


@pytest.mark.lfw
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_redetection_on_aligned_lfw_faces(detector, lfw_images, lfw_faces, name):
    template = TEMPLATES[name]
    unit = template.height / 112.0
    aligned = [align_face(im, f.landmarks, template) for im, f in zip(lfw_images, lfw_faces)]
    found = _redetect(detector, [a[0] for a in aligned], template)
    to_template = [np.linalg.norm(lm - template.points, axis=1).mean() for lm in found]
    to_aligned = [np.linalg.norm(lm - a[2], axis=1).mean() for lm, a in zip(found, aligned)]
    assert np.mean(to_template) <= 4.0 * unit, to_template
    assert np.mean(to_aligned) <= 2.0 * unit, to_aligned
    assert max(to_aligned) <= 8.0 * unit, to_aligned


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_redetection_on_aligned_astronaut(detector, astronaut_face, name):
    # Measured: 4.5-4.8 px (at 112) from the template, a turned head; 0.9-1.6 px from the
    # aligned landmarks.
    template = TEMPLATES[name]
    unit = template.height / 112.0
    image, face = astronaut_face
    aligned, _, landmarks = align_face(image, face.landmarks, template)
    (found,) = _redetect(detector, [aligned], template)
    assert np.linalg.norm(found - template.points, axis=1).mean() <= 6.0 * unit
    assert np.linalg.norm(found - landmarks, axis=1).mean() <= 2.5 * unit


# --- center_crop_landmarks -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_center_crop_landmarks_place_the_template_canvas_on_the_crop(name):
    template = TEMPLATES[name]
    points = center_crop_landmarks(250, 250, template, crop_fraction=0.5, crop_offset=(0.0, 0.0))
    assert points.shape == (5, 2)
    # The square canvas (side = the template's longer side) maps onto the central 125 px crop.
    _, matrix, aligned = align_face(np.zeros((250, 250, 3), np.uint8), points, template)
    side = max(template.width, template.height)
    np.testing.assert_allclose(aligned, template.points, atol=2e-3)
    np.testing.assert_allclose(np.hypot(matrix[0, 0], matrix[1, 0]), side / 125.0, rtol=1e-4)
    # Every template puts the face in the same place.
    reference = center_crop_landmarks(250, 250, TEMPLATES["arcface-112x112"], crop_fraction=0.5, crop_offset=(0.0, 0.0))
    np.testing.assert_allclose(points, reference, atol=2e-3)


def test_center_crop_landmarks_follow_the_short_side_and_offset():
    template = TEMPLATES["arcface-112x112"]
    square = center_crop_landmarks(200, 200, template, crop_fraction=0.5, crop_offset=(0.0, 0.0))
    wide = center_crop_landmarks(400, 200, template, crop_fraction=0.5, crop_offset=(0.0, 0.0))
    np.testing.assert_allclose(wide, square + [100.0, 0.0], atol=2e-3)
    moved = center_crop_landmarks(200, 200, template, crop_fraction=0.5, crop_offset=(0.1, -0.05))
    np.testing.assert_allclose(moved, square + [20.0, -10.0], atol=2e-3)
    with pytest.raises(ValueError, match="positive"):
        center_crop_landmarks(0, 200, template)
    with pytest.raises(ValueError, match="crop_fraction"):
        center_crop_landmarks(200, 200, template, crop_fraction=0.0)


@pytest.mark.lfw
def test_center_crop_landmarks_match_real_lfw_faces(lfw_faces):
    # Measured on 400 LFW images: median mean-point distance 3.7 px, 90th percentile 6.8 px.
    guess = center_crop_landmarks(250, 250, TEMPLATES["arcface-112x112"])
    errors = [np.linalg.norm(f.landmarks - guess, axis=1).mean() for f in lfw_faces]
    assert np.median(errors) <= 6.0, errors
    # The LFW defaults beat a plain half-image central crop.
    plain = center_crop_landmarks(250, 250, TEMPLATES["arcface-112x112"], crop_fraction=0.5, crop_offset=(0.0, 0.0))
    plain_errors = [np.linalg.norm(f.landmarks - plain, axis=1).mean() for f in lfw_faces]
    assert np.median(errors) < np.median(plain_errors)
    assert 0.45 < LFW_CROP_FRACTION < 0.6


# --- FaceDetector ---------------------------------------------------------------------------


def _assert_same_faces(a: list[list[Face]], b: list[list[Face]]) -> None:
    # Batching changes conv arithmetic by float rounding only: equal up to the 3rd decimal.
    assert [len(x) for x in a] == [len(x) for x in b]
    for fa, fb in zip(sum(a, []), sum(b, [])):
        np.testing.assert_allclose(fa.box, fb.box, atol=1e-3)
        np.testing.assert_allclose(fa.landmarks, fb.landmarks, atol=1.5e-3)
        assert abs(fa.score - fb.score) <= 1e-5


@pytest.mark.lfw
def test_detect_batched_equals_one_by_one(detector, lfw_images):
    # Two sizes, so two MTCNN groups; the odd one out sits between the others.
    images = lfw_images[:3] + [cv2.resize(lfw_images[3], (200, 180))] + lfw_images[4:7]
    batched = detector.detect(images)
    _assert_same_faces(batched, [detector.detect([im])[0] for im in images])
    assert detector.detect(images) == batched  # same input, same output
    for faces in batched:
        assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
        for f in faces:
            assert f.landmarks.shape == (5, 2)
            np.testing.assert_array_equal(f.landmarks, round_points(f.landmarks))
            x1, y1, x2, y2 = f.box
            # Left eye left of right eye, eyes above the mouth: the documented order.
            assert f.landmarks[0, 0] < f.landmarks[1, 0] and f.landmarks[3, 0] < f.landmarks[4, 0]
            assert f.landmarks[:2, 1].max() < f.landmarks[3:, 1].min()
            assert x1 <= f.landmarks[:, 0].min() and f.landmarks[:, 0].max() <= x2


@pytest.mark.lfw
def test_detect_downscales_large_images(detector, lfw_images, lfw_faces):
    factor = 5  # 1250 px > max_side 1024
    for image, face in list(zip(lfw_images, lfw_faces))[:1]:
        big = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
        found = select_face(detector.detect([big])[0], big.shape, "center")
        assert found is not None
        expected = (face.landmarks + 0.5) * factor - 0.5
        # Measured 0.6-3.1 px (original scale) on 12 images: a different pyramid, same face.
        assert np.linalg.norm(found.landmarks - expected, axis=1).mean() / factor <= 5.0
        # The coordinates are exactly those of detecting the downscaled image, mapped back.
        small = cv2.resize(big, (1024, 1024), interpolation=cv2.INTER_AREA)
        direct = select_face(detector.detect([small])[0], small.shape, "center")
        np.testing.assert_allclose(found.landmarks, (direct.landmarks + 0.5) * 1250 / 1024 - 0.5, atol=0.01)


@pytest.mark.lfw
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_detect_on_cuda_matches_cpu(detector, lfw_images):
    images = lfw_images[:4]
    on_gpu = FaceDetector(device="cuda").detect(images)
    on_cpu = detector.detect(images)
    assert [len(f) for f in on_gpu] == [len(f) for f in on_cpu]
    for fg, fc in zip(sum(on_gpu, []), sum(on_cpu, [])):
        np.testing.assert_allclose(fg.landmarks, fc.landmarks, atol=0.05)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_requested_without_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        FaceDetector(device="cuda")


def test_detect_finds_no_face_where_there_is_none(detector):
    cat = skimage.data.chelsea()
    gray = np.full((200, 300, 3), 128, np.uint8)
    tiny = np.zeros((detector.min_face_size - 1, 80, 3), np.uint8)  # no pyramid level fits
    assert detector.detect([cat, gray, tiny]) == [[], [], []]
    assert detector.detect([]) == []


def test_detect_rejects_bad_images(detector):
    with pytest.raises(ValueError, match="image 1: expected an RGB uint8"):
        detector.detect([np.zeros((50, 50, 3), np.uint8), np.zeros((50, 50), np.uint8)])
    with pytest.raises(ValueError, match="RGB uint8"):
        detector.detect([np.zeros((50, 50, 3), np.float32)])
    with pytest.raises(TypeError, match="numpy array"):
        detector.detect([Image.new("RGB", (50, 50))])
    with pytest.raises(ValueError, match="min_face_size"):
        FaceDetector(min_face_size=5)


# --- the padded re-detection: canvas and mapping back (hand-computed) -----------------------


def test_pad_canvas_places_the_image_in_the_middle_with_its_border_replicated():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)  # h=4, w=6
    assert pad_of(6, 4, 0.5) == 3 and pad_of(250, 250, 0.3) == 75 and pad_of(160, 120, 0.3) == 48
    canvas, pad = pad_canvas(image, 0.5)
    assert pad == 3 and canvas.shape == (4 + 6, 6 + 6, 3)
    np.testing.assert_array_equal(canvas[3:7, 3:9], image)  # image pixel (x, y) at (x + 3, y + 3)
    np.testing.assert_array_equal(canvas[0, 0], image[0, 0])  # corners replicate the corner pixel
    np.testing.assert_array_equal(canvas[9, 11], image[3, 5])
    np.testing.assert_array_equal(canvas[5, 0], image[2, 0])  # left border: row 2's first pixel
    np.testing.assert_array_equal(canvas[0, 7], image[0, 4])  # top border: column 4's top pixel
    with pytest.raises(ValueError, match="pad fraction"):
        pad_of(6, 4, 0.0)


def test_shift_faces_moves_boxes_and_landmarks_and_keeps_the_rest():
    lm = np.array([[40.5, 60.25], [70.0, 60.0], [55.0, 80.0], [45.0, 95.0], [68.0, 95.5]])
    (moved,) = shift_faces([Face((30.0, 40.0, 90.0, 120.0), 0.97, lm)], -75, -75)
    assert moved.box == (-45.0, -35.0, 15.0, 45.0) and moved.score == 0.97
    np.testing.assert_array_equal(
        moved.landmarks, [[-34.5, -14.75], [-5.0, -15.0], [-20.0, 5.0], [-30.0, 20.0], [-7.0, 20.5]]
    )
    assert shift_faces([], 3, 4) == []


def test_detect_padded_detects_on_the_canvas_and_maps_the_faces_back():
    """A stand-in for MTCNN that reports one face at fixed canvas pixels: detect_padded must
    hand it the padded canvas and return the face in the image's pixels."""
    seen = []

    class Stub(FaceDetector):
        def __init__(self):  # no MTCNN
            pass

        def detect(self, images):
            seen.extend(images)
            lm = np.array([[70.0, 80.0], [110.0, 80.0], [90.0, 100.0], [75.0, 120.0], [105.0, 120.0]])
            return [[Face((40.0, 50.0, 140.0, 150.0), 0.9, lm)] for _ in images]

    image = np.full((80, 100, 3), 7, np.uint8)  # w=100, h=80: pad round(0.3 * 100) = 30 each side
    (faces,) = Stub().detect_padded([image])
    assert len(seen) == 1 and seen[0].shape == (80 + 60, 100 + 60, 3)
    (face,) = faces
    assert face.box == (10.0, 20.0, 110.0, 120.0) and face.score == 0.9
    np.testing.assert_array_equal(face.landmarks, [[40, 50], [80, 50], [60, 70], [45, 90], [75, 90]])
    with pytest.raises(ValueError, match="RGB uint8"):
        Stub().detect_padded([np.zeros((50, 50), np.uint8)])


# --- Face and select_face -------------------------------------------------------------------


def _face(box, score=0.9):
    x1, y1, x2, y2 = box
    lm = [
        [x1 + 0.3 * (x2 - x1), y1 + 0.4 * (y2 - y1)],
        [x1 + 0.7 * (x2 - x1), y1 + 0.4 * (y2 - y1)],
        [(x1 + x2) / 2, y1 + 0.6 * (y2 - y1)],
        [x1 + 0.35 * (x2 - x1), y1 + 0.8 * (y2 - y1)],
        [x1 + 0.65 * (x2 - x1), y1 + 0.8 * (y2 - y1)],
    ]
    return Face(box, score, np.array(lm) + 1e-4)


def test_face_rounds_and_freezes_landmarks():
    face = _face((10.0, 20.0, 60.0, 80.0))
    np.testing.assert_array_equal(face.landmarks, round_points(face.landmarks))
    with pytest.raises(ValueError):
        face.landmarks[0, 0] = 1.0
    assert face == _face((10.0, 20.0, 60.0, 80.0)) and hash(face) == hash(_face((10.0, 20.0, 60.0, 80.0)))
    with pytest.raises(ValueError, match="5x2"):
        Face((0, 0, 1, 1), 0.9, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="box"):
        Face((0, 0, 1), 0.9, np.zeros((5, 2)))


def test_select_face_policies():
    shape = (250, 250, 3)
    centred_small = _face((100, 100, 150, 150), 0.80)  # centre (125, 125)
    off_centre_big = _face((0, 0, 120, 120), 0.99)  # larger, far from the centre
    near_centre = _face((90, 110, 150, 170), 0.95)  # centre (120, 140)
    faces = [off_centre_big, near_centre, centred_small]
    assert select_face(faces, shape, "largest") is off_centre_big
    assert select_face(faces, shape, "center") is centred_small
    # Equal keys: the earlier face (the higher score in detect's order) wins.
    twin = _face((100, 100, 150, 150), 0.70)
    assert select_face([centred_small, twin], shape, "center") is centred_small
    assert select_face([twin, centred_small], shape, "largest") is twin
    # The centre follows the image's own shape (height, width).
    wide_centre = _face((175, 25, 225, 75))  # centre (200, 50): the centre of a 400x100 image
    tall_centre = _face((25, 175, 75, 225))  # centre (50, 200): the centre of a 100x400 image
    assert select_face([tall_centre, wide_centre], (100, 400, 3), "center") is wide_centre
    assert select_face([wide_centre, tall_centre], (400, 100, 3), "center") is tall_centre
    for policy in POLICIES:
        assert select_face([], shape, policy) is None
    with pytest.raises(ValueError, match="unknown face selection policy"):
        select_face(faces, shape, "first")


# --- framings of the centre-crop fallback ---------------------------------------------------


def test_auto_framing_keeps_lfw_scenes_and_reads_small_images_as_chips():
    template = TEMPLATES["arcface-112x112"]
    lfw = center_crop_landmarks(250, 250, template, crop_fraction=LFW_CROP_FRACTION, crop_offset=LFW_CROP_OFFSET)
    np.testing.assert_array_equal(center_crop_landmarks(250, 250, template), lfw)  # LFW builds unchanged
    chip = center_crop_landmarks(160, 160, template, crop_fraction=CHIP_CROP_FRACTION, crop_offset=CHIP_CROP_OFFSET)
    np.testing.assert_array_equal(center_crop_landmarks(160, 160, template), chip)
    np.testing.assert_array_equal(center_crop_landmarks(160, 160, template, framing="chip"), chip)
    assert framing_of(200, 300) == "chip" and framing_of(201, 300) == "scene"
    # a chip's face fills it: the eyes of the chip guess are about 1.7 times as far apart
    iod = lambda p: np.linalg.norm(p[1] - p[0])  # noqa: E731
    scene = center_crop_landmarks(160, 160, template, framing="scene")
    assert iod(chip) / iod(scene) == pytest.approx(CHIP_CROP_FRACTION / LFW_CROP_FRACTION, rel=1e-3)
    with pytest.raises(ValueError, match="framing"):
        center_crop_landmarks(160, 160, template, framing="portrait")


def _tight_chip(face: dict, margin: float = 0.1, size: int = 160) -> np.ndarray:
    """The face's landmarks in a square crop of its detector box grown by `margin` of its side on
    each side, resized to size x size (a face chip)."""
    x0, y0, x1, y1 = face["box"]
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    corner = np.array([(x0 + x1) / 2 - side / 2, (y0 + y1) / 2 - side / 2])
    return (np.asarray(face["landmarks"]) - corner) * (size / side)


def test_chip_fallback_keeps_the_face_scale_on_tight_lfw_crops():
    # LFW faces detected by MTCNN (tests/data/lfw_faces.json; not the faces the prior was measured
    # on), cropped tightly: where does the fallback put their eyes, against the detected alignment?
    faces = json.loads((Path(__file__).resolve().parent / "data" / "lfw_faces.json").read_text())["faces"]
    template = TEMPLATES["arcface-112x112"]

    def eye_error(landmarks, guess):
        m = estimate_similarity(guess, template.points)
        eyes = transform_points(landmarks[:2], m)
        return float(np.linalg.norm(eyes - template.points[:2], axis=1).mean())

    chip_errors, scene_errors, scales = [], [], []
    for face in (f for f in faces if f["set"] == "sample"):
        lm = _tight_chip(face)
        guess = center_crop_landmarks(160, 160, template)  # auto: a 160x160 image is a chip
        chip_errors.append(eye_error(lm, guess))
        scene_errors.append(eye_error(lm, center_crop_landmarks(160, 160, template, framing="scene")))
        m = estimate_similarity(guess, template.points)
        scales.append(np.linalg.norm(transform_points(lm[:2], m)[1] - transform_points(lm[:2], m)[0]))
    assert np.median(chip_errors) <= 6.0, np.median(chip_errors)
    assert np.median(chip_errors) < np.median(scene_errors) / 2.5  # the LFW prior zooms far in on chips
    # the face keeps its scale: aligned eye distance within 15% of the template's for 90% of faces
    template_iod = np.linalg.norm(template.points[1] - template.points[0])
    assert np.mean(np.abs(np.array(scales) / template_iod - 1) < 0.15) >= 0.9
