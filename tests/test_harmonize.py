"""Harmonisation (occluders/harmonize.py): the photometric steps, the exact mask they keep, the
legacy switch that rebuilds earlier builds byte for byte, and the sharpness match on real LFW
faces."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from astronaut_face import aligned_astronaut

from occsynth import contract
from occsynth.assets.catalog import CATEGORIES
from occsynth.occluders import create_occluder, occlude, replay, with_harmonize
from occsynth.occluders import harmonize as hz
from occsynth.occluders.families.objects import blend_alpha
from occsynth.occluders.params import SpecError
from occsynth.seeding import make_rng

FACE, LANDMARKS = aligned_astronaut()
DATA = Path(__file__).resolve().parent / "data"
QUIET = {"shadow": 0.0, "jpeg": None, "sharpness": False, "light": False}  # only levels and colour cast


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _empty() -> np.ndarray:
    return np.zeros(FACE.shape[:2], np.uint8)


# ----------------------------------------------------------------------------- the mask


@pytest.mark.parametrize("name", [*CATEGORIES, "mask3d"])
def test_the_mask_is_the_same_with_and_without_harmonisation(name):
    for seed in range(3):
        plain = create_occluder(name, harmonize=False, version=2)(FACE, _empty(), LANDMARKS, make_rng(seed))
        harmonized = create_occluder(name, harmonize=True, version=2)(FACE, _empty(), LANDMARKS, make_rng(seed))
        assert np.array_equal(plain[1], harmonized[1])  # mask bytes
        assert not np.array_equal(plain[0], harmonized[0])  # the look did change
        # the same placement: the records differ by the harmonisation record only
        extra = harmonized[2]["params"].pop("harmonize")
        assert plain[2]["params"] == harmonized[2]["params"] and set(extra) >= {"levels", "blur", "jpeg"}


def test_fit_area_harmonises_once_at_the_size_it_found():
    inner = {"name": "object", "params": {"split": "eval", "version": 2}}
    spec = {"name": "fit_area", "params": {"ratio": 0.43, "occluder": inner}}
    for seed in range(3):
        plain = with_harmonize(spec, False)  # (which also restores the old trial sizing:
        plain["params"]["sizing"] = "alpha"  # the same search on both sides here)
        a = occlude(FACE, LANDMARKS, plain, seed)
        b = occlude(FACE, LANDMARKS, with_harmonize(spec, True), seed)
        assert np.array_equal(a.mask, b.mask) and a.records[0]["fit"] == b.records[0]["fit"]
        assert "harmonize" in b.records[0]["params"] and "harmonize" not in a.records[0]["params"]


# ----------------------------------------------------------------------------- legacy


def test_harmonize_false_rebuilds_the_previous_version_byte_for_byte():
    golden = json.loads((DATA / "legacy_occlusions.json").read_text())
    faces = {"astronaut": (FACE, LANDMARKS), "astronaut-roll12": aligned_astronaut(12.0)}
    for row in golden["samples"]:
        image, landmarks = faces[row["face"]]
        spec = with_harmonize(golden["specs"][row["case"]], False)
        occ = occlude(image, landmarks, spec, row["seed"])
        got = (_sha(occ.image), _sha(occ.mask), hashlib.sha256(contract.dumps(occ.records).encode()).hexdigest())
        assert got == (row["image_sha256"], row["mask_sha256"], row["records_sha256"]), row


def test_records_leave_out_legacy_values_and_replay_both_ways():
    off = occlude(FACE, LANDMARKS, "sunglasses(harmonize=false)", 3)
    on = occlude(FACE, LANDMARKS, "sunglasses", 3)
    assert "harmonize" not in off.records[0]["spec_params"] and "version" not in off.records[0]["spec_params"]
    # harmonised: the sharpness search added after the first harmonised builds is written out
    assert on.records[0]["spec_params"]["harmonize"] == {"blur_search": "predict"}
    for occ in (off, on):
        again = replay(FACE, LANDMARKS, json.loads(contract.dumps(occ.records)))
        assert np.array_equal(again.image, occ.image) and np.array_equal(again.mask, occ.mask)
    # a record without the key (made before harmonisation) replays un-harmonised
    assert "harmonize" not in replay(FACE, LANDMARKS, off.records).records[0]["params"]


def test_harmonize_values_record_the_blur_search_and_replay_old_records_with_bisection():
    assert hz.recorded(True) == {"blur_search": "predict"}  # the new default, written out
    assert hz.recorded({"shadow": 0.0}) == {"shadow": 0.0, "blur_search": "predict"}
    assert hz.recorded({"blur_search": "bisect"}) is True  # what records said before the option
    assert hz.recorded({"shadow": 0.0, "blur_search": "bisect"}) == {"shadow": 0.0}
    assert hz.recorded(False) is False and hz.replayed(False) is False
    assert hz.replayed(True) == {"blur_search": "bisect"}  # a record made before the option
    assert hz.replayed({"jpeg": 90}) == {"jpeg": 90, "blur_search": "bisect"}
    assert hz.replayed({"blur_search": "predict"}) == {"blur_search": "predict"}
    for value in (True, {"shadow": 0.0}, {"blur_search": "bisect"}, {"jpeg": 90, "blur_search": "predict"}):
        assert hz.options(hz.replayed(hz.recorded(value))) == hz.options(value)


def _count_searches(monkeypatch) -> list[str]:
    """The names of the sharpness searches harmonized_paste calls, in order."""
    used = []
    for name in ("predict_blur", "bisect_blur"):
        original = getattr(hz, name)

        def search(*args, _name=name, _original=original):
            used.append(_name)
            return _original(*args)

        monkeypatch.setattr(hz, name, search)
    return used


def test_records_made_before_blur_search_replay_with_the_bisection_byte_for_byte(monkeypatch):
    golden = json.loads((DATA / "bisect_occlusions.json").read_text())
    faces = {"astronaut": FACE, "astronaut-soft": cv2.GaussianBlur(FACE, (0, 0), 1.6)}
    used = _count_searches(monkeypatch)
    for row in golden["samples"]:
        image = faces[row["face"]]
        expected = (row["image_sha256"], row["mask_sha256"], contract.dumps(row["records"]))
        again = replay(image, LANDMARKS, row["records"])
        assert (_sha(again.image), _sha(again.mask), contract.dumps(again.records)) == expected, row["case"]
        # the spec with blur_search: bisect builds them again, records included
        spec = with_harmonize(golden["specs"][row["case"]], {"blur_search": "bisect"})
        occ = occlude(image, LANDMARKS, spec, row["seed"])
        assert (_sha(occ.image), _sha(occ.mask), contract.dumps(occ.records)) == expected, row["case"]
    assert set(used) == {"bisect_blur"}
    assert sum(r["records"][0]["params"]["harmonize"]["blur"] > 0 for r in golden["samples"]) >= 8  # searched
    # the default search (predict) is written out, replays as itself, and changes the output
    used.clear()
    spec = golden["specs"]["sunglasses"]
    occ = occlude(faces["astronaut-soft"], LANDMARKS, spec, 0)
    assert occ.records[0]["spec_params"]["harmonize"] == {"blur_search": "predict"} and used == ["predict_blur"]
    again = replay(faces["astronaut-soft"], LANDMARKS, json.loads(contract.dumps(occ.records)))
    assert np.array_equal(again.image, occ.image) and used == ["predict_blur"] * 2
    old = next(r for r in golden["samples"] if (r["case"], r["face"], r["seed"]) == ("sunglasses", "astronaut-soft", 0))
    assert np.array_equal(occ.mask > 0, again.mask > 0) and _sha(occ.image) != old["image_sha256"]


def test_with_harmonize_reaches_nested_and_preset_occluders():
    spec = with_harmonize("preset:pdsn-train-25", False)
    found = []

    def walk(node):
        if isinstance(node, dict):
            if "name" in node:
                found.append((node["name"], node["params"].get("harmonize", "absent")))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    assert ("object", False) in found  # fit_area's inner object
    assert all(h is False for name, h in found if name in ("object",)) and ("block", "absent") in found


def test_bad_harmonize_values_fail_when_the_spec_compiles():
    for value in ({"shadow": 2.0}, {"blur": 1.0}, "yes", {"jpeg": 0}, {"sharpness": "on"}, {"blur_search": "secant"}):
        with pytest.raises(SpecError, match="harmonize") as error:
            create_occluder("sunglasses", harmonize=value)
        assert "\n" not in str(error.value) and "blur_search: predict|bisect" in str(error.value)
    assert create_occluder("sunglasses", harmonize={"shadow": 0.0, "jpeg": 90}).params["harmonize"]["jpeg"] == 90


# ----------------------------------------------------------------------------- kernels


def test_face_coords_invert_the_face_frame():
    from occsynth.faces.geometry import face_point

    uv = hz.face_coords(FACE.shape[:2], LANDMARKS)
    for fx, fy in [(-0.5, 0.0), (0.5, 0.0), (0.0, 1.0), (0.2, 0.4)]:
        x, y = face_point(LANDMARKS, [(fx, fy)])[0]
        # bilinear read of the coordinate field at the point
        u = cv2.getRectSubPix(uv[..., 0], (1, 1), (x, y))[0, 0]
        v = cv2.getRectSubPix(uv[..., 1], (1, 1), (x, y))[0, 0]
        assert abs(u - fx) < 1e-3 and abs(v - fy) < 1e-3


def _layer(value: float, size: int = 24):
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = value
    rgba[..., 3] = 255
    return rgba


def test_levels_map_the_layer_onto_the_photos_black_and_white():
    # a grey photo whose 0.5th / 99.5th luma percentiles are 40 and 200 (a bright band on the face
    # too: the white level is capped a little above the face's own highlights), no noise
    image = np.full((112, 112, 3), 120, np.uint8)
    image[:10] = 40
    image[-10:] = 200
    image[40:44] = 200
    for value in (0, 255):
        rgba = _layer(value)
        weight = blend_alpha(rgba[..., 3], 0.0).astype(np.float32) / 255
        mask = np.zeros((112, 112), bool)
        mask[60:84, 44:68] = True
        out, record = hz.harmonized_paste(image, (rgba, 44, 60), weight, mask, LANDMARKS, make_rng(0), QUIET)
        assert record["levels"] == [40.0, 200.0] and record["noise"] == 0.0
        # a grey photo has the reference cast's opposite: the gains are (ref)^-1/2, clipped, luma-neutral
        gains = np.clip((1 / hz.GREY_WORLD_REF) ** hz.CAST_STRENGTH, 0.9, 1.1)
        gains /= gains @ hz.LUMA
        np.testing.assert_allclose(record["cast"], gains, atol=1e-4)
        # black + (white - black) x tone(layer x cast): the shoulder on luma, hue kept
        rgb = np.float32(value / 255) * gains.astype(np.float32)
        y = float(rgb @ hz.LUMA)
        toned = rgb * (hz.shoulder(np.float32(y)) / max(y, 1e-6))
        toned = toned / max(1.0, float(toned.max()))
        expected = np.round(40.0 + (200.0 - 40.0) * toned)
        np.testing.assert_array_equal(out[72, 56], expected)
        assert np.array_equal(out[~mask], image[~mask])  # nothing else changed (no shadow, no blur)


def test_the_shoulder_rolls_highlights_off_smoothly():
    v = np.linspace(0, 1.2, 121, dtype=np.float32)
    out = hz.shoulder(v)
    assert np.array_equal(out[v <= hz.KNEE], v[v <= hz.KNEE])  # the identity below the knee
    assert (np.diff(out) > 0).all() and out.max() < 1.0  # increasing, below the white level
    assert hz.shoulder(np.float32(5.0)) <= 1.0


def test_tone_keeps_the_hue_of_a_bright_colour():
    orange = np.array([[[1.3, 0.75, 0.3]]], np.float32)  # a lit orange, red past the white level
    out = hz._tone(orange)[0, 0]
    assert out.max() <= 1.0 and out[1] / out[0] == pytest.approx(0.75 / 1.3, rel=1e-5)


def test_shoulder_and_tone_are_their_plain_formulas_bit_for_bit():
    """`shoulder` takes tanh only above the knee and `_tone` divides only when a channel passes
    1: the same float32 values as the formulas written over every element (NaN included), for
    every length (NumPy's SIMD loops have tails) and for 0-d input."""
    rng = np.random.default_rng(3)
    top = np.float32(1.0 - hz.KNEE)

    def shoulder_plain(v):
        v = np.asarray(v, dtype=np.float32)
        return np.where(v <= hz.KNEE, v, hz.KNEE + top * np.tanh((v - hz.KNEE) / top)).astype(np.float32)

    def tone_plain(rgb):
        y = hz.luma(rgb)
        out = rgb * (shoulder_plain(y) / np.maximum(y, np.float32(1e-6)))[..., None]
        return np.clip(out / np.maximum(out.max(axis=-1), np.float32(1.0))[..., None], 0.0, 1.0)

    for n in [*range(0, 40), 255, 256, 257, 4099]:
        for scale in (0.8, 1.5, 3.0):
            v = (rng.random(n) * scale).astype(np.float32)
            if n > 5:
                v[::5] = np.nan
            got, ref = hz.shoulder(v), shoulder_plain(v)
            assert got.dtype == ref.dtype and got.tobytes() == ref.tobytes(), (n, scale)
            rgb = (rng.random((n + 1, 1, 3)) * scale).astype(np.float32)
            got, ref = hz._tone(rgb), tone_plain(rgb)
            assert got.dtype == ref.dtype and got.tobytes() == ref.tobytes(), (n, scale)
    # a channel just past 1 on a dark pixel (the shoulder leaves it): only the division brings it back
    for red in (1.0, 1.01, 1.05, 1.1, np.nan):
        rgb = np.array([[[red, 0.2, 0.1], [0.5, 0.5, 0.5]]], np.float32)
        got, ref = hz._tone(rgb), tone_plain(rgb)
        assert got.tobytes() == ref.tobytes(), red
    for x in (np.float32(0.3), np.float32(0.95), 5.0):
        got, ref = hz.shoulder(x), shoulder_plain(x)
        assert got.shape == ref.shape == () and got.tobytes() == ref.tobytes()


def test_the_light_fields_quadratic_is_the_design_matrix_product():
    """`_quadratic` sums the six terms in NumPy instead of `_design(u, v) @ coeffs` (a BLAS
    product whose summation order is the machine's): equal to a few float64 ulps, and the
    float32 light field `shading` keeps is the same but for a rare last-bit rounding."""
    rng = np.random.default_rng(4)
    for trial in range(50):
        coeffs = rng.normal(0, [1.0, 0.5, 0.5, 0.2, 0.2, 0.2])
        coeffs[0] = rng.uniform(3, 5.5)  # log luma of a face
        dtype = (np.float64, np.float32)[trial % 2]  # shading's clamped float64; the fit's float32 coordinates
        u = rng.uniform(-0.9, 0.9, 4000).astype(dtype)
        v = rng.uniform(-0.6, 1.4, 4000).astype(dtype)
        ref = hz._design(u, v).astype(np.float64) @ coeffs
        got = hz._quadratic(coeffs, u, v)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, ref, rtol=0, atol=16 * np.finfo(np.float64).eps * np.abs(ref).max())
        mean_log = float(ref.mean())
        field_ref = np.clip(np.exp(ref - mean_log), *hz.SHADE_LIMITS).astype(np.float32)
        field = np.clip(np.exp(got - mean_log), *hz.SHADE_LIMITS).astype(np.float32)
        differ = field != field_ref  # a float64 ulp flips a float32 rounding about once in 1e8
        assert differ.mean() < 1e-4
        assert np.array_equal(field[differ], np.nextafter(field_ref[differ], field[differ]))


def test_shading_follows_the_light_on_the_face():
    # a face lit from the image left: luma falls by e^-1 per eye distance to the right
    uv = hz.face_coords((112, 112), LANDMARKS)
    lum = np.clip(120 * np.exp(-uv[..., 0]), 0, 255)
    image = np.repeat(np.round(lum)[..., None], 3, axis=2).astype(np.uint8)
    look = hz.estimate_look(image, LANDMARKS, np.zeros((112, 112), bool), uv, jpeg=None)
    field = hz.shading(look, np.array([[[-0.4, 0.5], [0.4, 0.5]]], np.float32))[0]
    assert math.isclose(field[0] / field[1], math.exp(0.8), rel_tol=0.05)
    assert look.light[0] < -0.9  # the light comes from the left


def _step_edges(sigma: float, contrast: float = 100.0, count: int = 1) -> np.ndarray:
    image = np.zeros((96, 96), np.float32)
    for k in range(count):
        image[:, 20 + 40 * k :] += contrast * (1 if k % 2 == 0 else -1)
    return cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0 else image


def test_blur_scale_reads_an_edges_blur_whatever_its_contrast_or_count():
    region = np.ones((96, 96), bool)
    region[:, :4] = region[:, -4:] = False
    previous = 0.0
    for sigma in (0.5, 1.0, 1.5, 2.0, 3.0):
        scale = hz.blur_scale(_step_edges(sigma), region)
        assert math.isclose(scale, math.hypot(0.8, sigma), rel_tol=0.12), (sigma, scale)
        assert scale > previous
        previous = scale
        assert math.isclose(hz.blur_scale(_step_edges(sigma, 60.0), region), scale, rel_tol=1e-3)
        assert math.isclose(hz.blur_scale(_step_edges(sigma, count=2), region), scale, rel_tol=0.02)
    assert hz.blur_scale(np.full((96, 96), 50, np.float32), region) is None  # no edge: nothing to measure


def _at_offset(array: np.ndarray, offset: int) -> np.ndarray:
    """A copy of `array` whose data starts `offset` bytes past a 64-byte boundary."""
    buf = np.zeros(array.nbytes + 128, np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    out = buf[start : start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


def test_gradient_does_not_depend_on_memory_alignment():
    # OpenCV's float32 Sobel/magnitude differ in the last bit with the data's alignment, which
    # moved gradient-peak ties and made a build's records differ between processes
    gray = cv2.GaussianBlur(hz.luma(FACE), (0, 0), 0.8)
    grads = [hz._gradient(_at_offset(gray, off)) for off in (0, 4, 8, 12, 16, 20, 24, 28)]
    assert all(np.array_equal(grads[0], g) for g in grads[1:])
    scales = {hz.blur_scale(_at_offset(gray, off), np.ones(gray.shape, bool)) for off in (0, 4, 8, 12)}
    assert len(scales) == 1
    # central differences, borders reflected as OpenCV does
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=1)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=1)
    np.testing.assert_allclose(grads[0], 0.5 * np.hypot(gx, gy), rtol=1e-5, atol=1e-4)


def test_noise_sigma_reads_white_noise_on_a_smooth_image():
    rng = np.random.default_rng(0)
    smooth = np.tile(np.linspace(40, 200, 112, dtype=np.float32), (112, 1))
    noisy = smooth + rng.normal(0, 3.0, smooth.shape).astype(np.float32)
    assert math.isclose(hz.noise_sigma(noisy, np.ones((112, 112), bool)), 3.0, rel_tol=0.1)
    assert hz.noise_sigma(smooth, np.ones((112, 112), bool)) < 0.05


def test_jpeg_quality_is_read_off_an_intact_grid_only():
    from skimage import data

    gray = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY), (112, 112), interpolation=cv2.INTER_AREA)
    for quality in (40, 75, 85):
        assert hz.estimate_jpeg_quality(hz._jpeg(gray, quality)) == quality
    assert hz.estimate_jpeg_quality(gray) is None  # never compressed
    turned = cv2.warpAffine(hz._jpeg(gray, 75), cv2.getRotationMatrix2D((56, 56), 3, 0.87), (112, 112))
    assert hz.estimate_jpeg_quality(turned) is None  # resampled: the grid is gone


def test_a_crisp_layer_is_blurred_to_a_soft_face():
    soft = cv2.GaussianBlur(FACE, (0, 0), 1.6)
    occ = create_occluder("sunglasses", template="sunglasses_02.png", version=2, scale=1.0, rotation=0.0, jitter=0.0)
    plain = create_occluder("sunglasses", template="sunglasses_02.png", version=2, harmonize=False)
    before = plain(soft, _empty(), LANDMARKS, make_rng(0))
    assert hz.sharpness_ratio(before[0], before[1] > 0, LANDMARKS) > 1.5  # pasted as rendered: crisper
    blurs = []
    for face in (soft, FACE):
        out, mask, record = occ(face, _empty(), LANDMARKS, make_rng(0))
        ratio = hz.sharpness_ratio(out, mask > 0, LANDMARKS)
        assert 0.8 <= ratio <= 1.25 and ratio == pytest.approx(
            record["params"]["harmonize"]["sharpness_ratio"], rel=0.03
        )
        blurs.append(record["params"]["harmonize"]["blur"])
    assert blurs[0] > blurs[1]  # the softer face, the more blur


def test_the_contact_shadow_only_darkens_around_the_occluder():
    rgba = _layer(128, 20)
    weight = blend_alpha(rgba[..., 3], 0.0).astype(np.float32) / 255
    mask = np.zeros((112, 112), bool)
    mask[50:70, 46:66] = True
    opts = {**QUIET, "shadow": 0.6}
    out, record = hz.harmonized_paste(FACE, (rgba, 46, 50), weight, mask, LANDMARKS, make_rng(0), opts)
    outside = ~mask
    delta = out.astype(int) - FACE.astype(int)
    assert (delta[outside] <= 0).all() and delta[outside].min() < -10  # darker, never lighter
    far = ~(cv2.dilate(mask.astype(np.uint8), np.ones((2 * hz.reach(record, LANDMARKS) + 1,) * 2, np.uint8)) > 0)
    assert (delta[far] == 0).all()


def test_same_seed_same_bytes_other_seed_other_noise():
    noisy = FACE.copy()
    noisy = np.clip(noisy + np.random.default_rng(1).normal(0, 4, noisy.shape), 0, 255).astype(np.uint8)
    occ = create_occluder("cup", template="cup_00.png")
    a, b, c = (occ(noisy, _empty(), LANDMARKS, make_rng(s)) for s in (5, 5, 6))
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]
    assert a[2]["params"]["harmonize"]["noise"] > 1.0
    # another seed draws another place too; compare the noise on the layer through the records
    assert not np.array_equal(a[0], c[0])


# ----------------------------------------------------------------------------- the sharpness search

SQUARE_REGION = np.zeros((96, 96), bool)
SQUARE_REGION[8:-8, 8:-8] = True


def _square(sigma: float = 0.0) -> np.ndarray:
    """A bright square with sides off the pixel grid on a dark ground (area-sampled 8x8),
    blurred by cv2.GaussianBlur(sigma)."""
    ss = 8
    y, x = (np.mgrid[0 : 96 * ss, 0 : 96 * ss] + 0.5) / ss
    inside = (x > 24.3) & (x < 72.6) & (y > 24.7) & (y < 72.2)
    image = (40 + 180 * inside.reshape(96, ss, 96, ss).mean(axis=(1, 3))).astype(np.float32)
    return cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0 else image


def test_kernel_variance_is_opencvs_and_kernel_sigma_inverts_it():
    delta = np.zeros((41, 41), np.float32)
    delta[20, 20] = 1.0
    x = np.arange(41) - 20.0
    for sigma in (0.3, 0.45, 0.6, 1.0, 2.5, 4.0):
        row = cv2.GaussianBlur(delta, (0, 0), sigma)[20].astype(np.float64)  # the kernel, scaled
        variance = float((row * x * x).sum() / row.sum())
        assert hz.kernel_variance(sigma) == pytest.approx(variance, rel=1e-5, abs=1e-7)
        assert hz.kernel_sigma(variance) == pytest.approx(sigma, abs=1e-4)
    assert hz.kernel_variance(0.0) == 0.0
    assert hz.kernel_variance(0.45) < 0.75 * 0.45**2  # a small sigma blurs by much less than sigma^2


def test_the_predicted_blur_of_a_crisp_square_is_the_blur_that_made_the_face():
    layer = hz.blur_scale(_square(), SQUARE_REGION)
    for sigma in (0.5, 0.8, 1.2, 1.8, 2.5, 3.5):
        face = hz.blur_scale(_square(sigma), SQUARE_REGION)
        # widths add in quadrature (the grid term cancels); gain 1: edges blurred by the kernel alone
        assert hz.predicted_blur(face, layer, gain=1.0) == pytest.approx(sigma, rel=0.12), sigma
    # sqrt(F^2 - S0^2) itself is 24% short at 0.5 px: OpenCV's kernel there has variance 0.215, not 0.25
    face = hz.blur_scale(_square(0.5), SQUARE_REGION)
    assert math.sqrt(face**2 - layer**2) < 0.8 * 0.5
    # the default gain asks for 1.5x the variance (renders get noise and JPEG after the blur)
    assert hz.predicted_blur(1.5, 0.8) == pytest.approx(hz.kernel_sigma(1.5 * (1.5**2 - 0.8**2)))


def _rendered(sigma: float) -> np.ndarray:
    """The square as a paste is rendered: blurred, then noise, rounding and a JPEG round trip."""
    noise = np.random.default_rng(0).standard_normal((96, 96)).astype(np.float32) * 2.0
    image = np.clip(np.round(_square(sigma) + noise), 0, 255).astype(np.uint8)
    return hz._jpeg(image, 75).astype(np.float32)


def test_the_predicted_search_matches_in_fewer_renders_than_the_bisection():
    renders = {"predict": 0, "bisect": 0}
    for true in (0.6, 0.9, 1.3, 2.6):
        face = hz.blur_scale(_rendered(true), SQUARE_REGION)

        def ratio(image, face=face):
            scale = hz.blur_scale(image, SQUARE_REGION)
            return face / scale if scale else None

        unblurred = _rendered(0.0)
        start = ratio(unblurred)
        assert math.log(start) > hz.TOLERANCE  # crisper than the "face": a search runs
        for search in renders:
            calls = []

            def render(sigma, calls=calls):
                calls.append(sigma)
                return _rendered(sigma)

            if search == "predict":
                blur, out, achieved = hz.predict_blur(render, ratio, face, unblurred, start)
            else:
                blur, out, achieved = hz.bisect_blur(render, ratio, unblurred, start)
            assert abs(math.log(achieved)) <= hz.TOLERANCE, (true, search)
            assert np.array_equal(out, _rendered(blur)) and all(0 < s <= hz.MAX_BLUR for s in calls)
            renders[search] += len(calls)
    assert renders["predict"] <= renders["bisect"] / 2, renders


def _model_curve(face: float, layer: float, gain: float, edges_until: float = math.inf):
    """render/ratio where a render is its blur and reads sqrt(layer^2 + kernel_variance / gain)
    (no edges left past `edges_until`), with the list of blurs rendered."""
    calls = []

    def render(sigma):
        calls.append(sigma)
        return np.float64(sigma)

    def ratio(sigma):
        if sigma > edges_until:
            return None
        return face / math.sqrt(layer**2 + hz.kernel_variance(float(sigma)) / gain)

    return render, ratio, calls


def test_the_predicted_search_on_its_model_and_at_its_limits():
    # on the model's own curve the predicted blur is the match
    render, ratio, calls = _model_curve(1.0, 0.5, hz.BLUR_GAIN)
    blur, _, achieved = hz.predict_blur(render, ratio, 1.0, np.float64(0.0), ratio(0.0))
    assert calls == [blur] and abs(math.log(achieved)) < 1e-3
    # off it (the layer reads softer per unit of blur), the renders so far find the match
    render, ratio, calls = _model_curve(1.0, 0.5, 3.0)
    blur, out, achieved = hz.predict_blur(render, ratio, 1.0, np.float64(0.0), ratio(0.0))
    assert abs(math.log(achieved)) <= hz.TOLERANCE and len(calls) <= 3 and out == blur
    # out of reach: too sharp even at MAX_BLUR, which is rendered once and kept
    render, ratio, calls = _model_curve(10.0, 0.5, 1.0)
    blur, _, achieved = hz.predict_blur(render, ratio, 10.0, np.float64(0.0), ratio(0.0))
    assert calls == [hz.MAX_BLUR] and blur == hz.MAX_BLUR and achieved == ratio(hz.MAX_BLUR)
    # edges gone before the match (ratio None): an upper end; the closest render with edges is kept
    render, ratio, calls = _model_curve(1.0, 0.5, 1.0, edges_until=0.6)
    blur, _, achieved = hz.predict_blur(render, ratio, 1.0, np.float64(0.0), ratio(0.0))
    assert len(calls) == hz.SEARCH_STEPS and blur == max(s for s in calls if s <= 0.6)
    assert achieved == ratio(blur) > 1.0


# ----------------------------------------------------------------------------- real faces

SHARPNESS_FAMILIES = ("sunglasses", "eye_mask", "hat", "scarf", "surgical_mask", "cup", "phone", "hand", "mask3d")


@pytest.mark.lfw
def test_lfw_occluders_are_as_sharp_as_their_faces(lfw_fixture_faces):
    faces = [f for f in lfw_fixture_faces if f["set"] == "sample"][:30]
    result = {}
    for harmonize in (False, True):
        ratios = []
        for name in SHARPNESS_FAMILIES:
            occ = create_occluder(name, harmonize=harmonize, version=2)
            for i, face in enumerate(faces):
                out, mask, _ = occ(face["crop"], _empty(), face["aligned"], make_rng(i))
                r = hz.sharpness_ratio(out, mask > 0, face["aligned"])
                if r is not None:
                    ratios.append(r)
        ratios = np.array(ratios)
        result[harmonize] = float(np.mean((ratios >= 0.7) & (ratios <= 1.3)))
        assert len(ratios) >= 0.8 * len(faces) * len(SHARPNESS_FAMILIES)
    assert result[True] >= 0.9, result
    assert result[False] < 0.5, result  # as rendered they were crisper than the photos


def test_gradient_at_points_and_fast_mean_are_the_same_numbers():
    """The shortcuts of blur_scale and estimate_look give bit-identical values: the gradient
    computed only at chosen pixels, and the exact integer colour sums of a uint8 image."""
    gray = hz.luma(FACE)
    rows, cols = np.nonzero(np.random.default_rng(0).random(gray.shape) < 0.2)
    rows = np.concatenate([rows, [0, gray.shape[0] - 1]])  # the reflected borders too
    cols = np.concatenate([cols, [gray.shape[1] - 1, 0]])
    assert np.array_equal(hz._gradient_at(gray, rows, cols), hz._gradient(gray)[rows, cols])
    padded = np.pad(np.asarray(gray, np.float32), 1, mode="reflect")
    reference = np.sqrt(
        (padded[1:-1, 2:] - padded[1:-1, :-2]) ** 2 + (padded[2:, 1:-1] - padded[:-2, 1:-1]) ** 2
    ) * np.float32(0.5)
    assert np.array_equal(hz._gradient(gray), reference)


def test_blockiness_of_a_uint8_image_is_the_float32_computation_bit_for_bit():
    """blockiness takes exact integer sums for small uint8 images; the same float as the
    float32 means it computes for any other input (here: the image as float32)."""
    rng = np.random.default_rng(2)
    gray = cv2.cvtColor(FACE, cv2.COLOR_RGB2GRAY)
    images = [gray, hz._jpeg(gray, 60), gray[3:50, 5:90], gray[:8, :30], np.full((20, 20), 7, np.uint8)]
    images += [rng.integers(0, 256, tuple(rng.integers(2, 170, 2)), dtype=np.uint8) for _ in range(40)]
    for image in images:
        assert hz.blockiness(image) == hz.blockiness(image.astype(np.float32)), image.shape


def test_fast_percentiles_and_median_are_numpys_bit_for_bit():
    """percentile32 / percentiles64 / median32 replace np.percentile and np.median (their
    per-call overhead was a fifth of a paste): same dtype, same bits, on float32 arrays of every
    size parity, with ties, for the quantiles harmonize uses and the edges."""
    rng = np.random.default_rng(1)
    for trial in range(600):
        n = int(rng.integers(1, 2000))
        x = [
            (rng.random(n) * 255).astype(np.float32),
            rng.integers(0, 6, n).astype(np.float32),
            (rng.standard_normal(n) * 40 + 100).astype(np.float32),
        ][trial % 3]
        qs = (0.5, 99.5, 99.0, 0.0, 100.0, float(rng.uniform(0, 100)))
        for q in qs:
            ref, got = np.percentile(x, q), hz.percentile32(x, q)
            assert ref.dtype == got.dtype and ref.tobytes() == got.tobytes(), (n, q)
        # several quantiles from one partition: each the single one's bits
        for ref, got in zip([np.percentile(x, q) for q in qs], hz.percentiles32(x, qs)):
            assert ref.dtype == got.dtype and ref.tobytes() == got.tobytes(), (n, qs)
        ref, got = np.percentile(x, [15.0, 97.0]), hz.percentiles64(x, (15.0, 97.0))
        assert list(ref) == got and all(type(v) is np.float64 for v in got)  # the type decides comparisons
        # ... with a float32 array: a Python float would be rounded to float32 first (NEP 50)
        assert np.array_equal(x >= ref[0], x >= got[0]) and np.array_equal(x <= ref[1], x <= got[1])
        ref, got = np.median(x), hz.median32(x)
        assert ref.dtype == got.dtype and ref.tobytes() == got.tobytes(), n
