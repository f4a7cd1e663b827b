"""decode_image / load_image / encoders: every input kind is generated here with Pillow or
OpenCV, so the expected pixels are known exactly."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from occsynth.contract import SampleError
from occsynth.io.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    apply_orientation,
    decode_image,
    decode_mask,
    decode_png_rgb,
    encode_image,
    encode_mask,
    load_image,
)
from occsynth.io.images import _plain_jpeg_size as plain_jpeg_size


def _pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _cv2_png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def _pattern(h: int = 24, w: int = 32) -> np.ndarray:
    """Every pixel different, so any flip, rotation or channel swap shows."""
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([x * 7 % 256, y * 11 % 256, (x * 3 + y * 5) % 256]).astype(np.uint8)


def _quadrants(h: int = 64, w: int = 96) -> np.ndarray:
    """Flat quadrants (red, green / blue, white): survive JPEG, show orientation."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (255, 0, 0)
    img[: h // 2, w // 2 :] = (0, 255, 0)
    img[h // 2 :, : w // 2] = (0, 0, 255)
    img[h // 2 :, w // 2 :] = (255, 255, 255)
    return img


def _check_output(arr: np.ndarray) -> None:
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    assert arr.flags.c_contiguous


def _error(data: bytes, **kw) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        decode_image(data, **kw)
    return info.value


# ------------------------------------------------------------------------------ formats


@pytest.mark.parametrize(
    "fmt, kw",
    [
        ("PNG", {}),
        ("BMP", {}),
        ("TIFF", {}),
        ("WEBP", {"lossless": True}),
        ("PPM", {}),
    ],
)
def test_lossless_formats_decode_exactly(fmt, kw):
    rgb = _pattern()
    out = decode_image(_pil_bytes(Image.fromarray(rgb), fmt, **kw))
    _check_output(out)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_lossy_formats_decode_close(fmt):
    rgb = _quadrants()
    out = decode_image(_pil_bytes(Image.fromarray(rgb), fmt, quality=95))
    _check_output(out)
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb).mean() < 4


def _photo(h: int, w: int) -> np.ndarray:
    """Smooth gradients plus noise: every chroma subsampling and IDCT detail shows."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.dstack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 127 // max(h + w - 2, 1)])
    noise = np.random.default_rng(h * w).integers(-40, 41, (h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _cv2_jpeg(rgb: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90, *params])
    assert ok
    return buf.tobytes()


PLAIN_JPEGS = {
    "4:2:0 odd size": lambda: _pil_bytes(Image.fromarray(_photo(53, 37)), "JPEG", quality=90, subsampling=2),
    "4:2:2": lambda: _pil_bytes(Image.fromarray(_photo(64, 80)), "JPEG", quality=90, subsampling=1),
    "4:4:4": lambda: _pil_bytes(Image.fromarray(_photo(48, 40)), "JPEG", quality=95, subsampling=0),
    "progressive": lambda: _pil_bytes(Image.fromarray(_photo(70, 90)), "JPEG", quality=85, progressive=True),
    "grey": lambda: _pil_bytes(Image.fromarray(_photo(33, 47)[:, :, 0]), "JPEG", quality=90),
    "restart intervals (OpenCV encoder)": lambda: _cv2_jpeg(_photo(61, 75), cv2.IMWRITE_JPEG_RST_INTERVAL, 2),
}


@pytest.mark.parametrize("name", sorted(PLAIN_JPEGS))
def test_plain_jpegs_take_opencv_and_match_pillow(name):
    # Plain JPEGs are decoded by OpenCV (speed): the pixels must be exactly Pillow's
    data = PLAIN_JPEGS[name]()
    assert plain_jpeg_size(data) is not None
    out = decode_image(data)
    _check_output(out)
    np.testing.assert_array_equal(out, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


@pytest.mark.skipif(not hasattr(cv2, "IMREAD_COLOR_RGB"), reason="OpenCV before 4.10 has no RGB decode")
@pytest.mark.parametrize("name", sorted(PLAIN_JPEGS))
def test_rgb_decode_is_the_bgr_decode_swapped(name):
    # decode_image asks libjpeg-turbo for RGB directly; older OpenCV decodes BGR and swaps
    buf = np.frombuffer(PLAIN_JPEGS[name](), np.uint8)
    rgb = cv2.imdecode(buf, cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    np.testing.assert_array_equal(rgb, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def test_jpegs_that_are_not_plain_take_pillows_path():
    rgb = _photo(40, 56)
    data = _pil_bytes(Image.fromarray(rgb), "JPEG", quality=90)
    assert plain_jpeg_size(data) == (56, 40)
    assert plain_jpeg_size(data[:-2]) is None  # no EOI at the end: cut, Pillow says so
    assert plain_jpeg_size(data + b"junk") is None  # bytes after EOI
    assert plain_jpeg_size(_with_orientation(rgb, "JPEG", 6)) is None  # Exif orientation
    assert plain_jpeg_size(_pil_bytes(Image.new("CMYK", (8, 8)), "JPEG")) is None  # Adobe, 4 components
    assert plain_jpeg_size(b"\xff\xd8\xff\xe0" + bytes(300) + b"\xff\xd9") is None  # no frame header
    assert decode_image(data + b"junk").shape == (40, 56, 3)  # Pillow reads it, as before
    # the size limit is checked before OpenCV decodes anything
    assert "too large" in _error(data, max_pixels=56 * 40 - 1).reason


def test_gif_uses_first_frame():
    frames = [Image.new("RGB", (16, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    data = _pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = decode_image(data)
    _check_output(out)
    assert (out == (255, 0, 0)).all()


def test_grayscale_becomes_three_equal_channels():
    grey = _pattern()[:, :, 0]
    for data in (_pil_bytes(Image.fromarray(grey, "L"), "PNG"), _cv2_png(grey)):
        out = decode_image(data)
        _check_output(out)
        for c in range(3):
            np.testing.assert_array_equal(out[:, :, c], grey)


def test_bilevel_mode_1_maps_to_0_and_255():
    bits = np.zeros((8, 8), bool)
    bits[:, 4:] = True
    out = decode_image(_pil_bytes(Image.fromarray(bits), "PNG"))
    assert set(np.unique(out)) == {0, 255}
    assert (out[:, 4:] == 255).all() and (out[:, :4] == 0).all()


def test_cmyk_jpeg_matches_an_independent_decoder():
    # Pillow writes CMYK JPEGs Adobe-style (inverted, with an APP14 marker), like Photoshop.
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    data = _pil_bytes(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data)
    _check_output(out)
    assert np.abs(out.astype(int) - (255, 0, 0)).max() <= 3
    # libjpeg via OpenCV handles the Adobe inversion on its own: both must agree
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(out.astype(int) - bgr[:, :, ::-1]).max() <= 3


def test_16bit_grey_png_scales_by_rounding():
    values = np.array([[0, 257, 32896, 65280, 65535]], np.uint16)
    for data in (_cv2_png(values), _pil_bytes(Image.fromarray(values), "PNG")):
        assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
        out = decode_image(data)
        np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 254, 255])
        np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


def test_16bit_rgb_png_keeps_low_byte():
    # 65280 = 0xFF00 -> 254 and 255 = 0x00FF -> 1 when rounded; dropping the low byte (what
    # Pillow alone does) would give 255 and 0.
    rgb16 = np.array([[[65535, 32896, 255], [65280, 0, 257]]], np.uint16)
    data = _cv2_png(rgb16[:, :, ::-1])
    assert Image.open(io.BytesIO(data)).mode == "RGB"  # Pillow would make it 8-bit itself
    out = decode_image(data)
    _check_output(out)
    np.testing.assert_array_equal(out, [[[255, 128, 1], [254, 0, 1]]])


def test_16bit_rgba_png_is_composited():
    rgba16 = np.zeros((2, 2, 4), np.uint16)
    rgba16[..., 0] = 65535  # red
    rgba16[0, :, 3] = 65535  # opaque row
    rgba16[1, :, 3] = 0  # transparent row
    out = decode_image(_cv2_png(rgba16[:, :, [2, 1, 0, 3]]), background=(0, 0, 200))
    np.testing.assert_array_equal(out[0], [[255, 0, 0]] * 2)
    np.testing.assert_array_equal(out[1], [[0, 0, 200]] * 2)


def test_palette_png_with_transparency():
    pal = Image.new("P", (4, 2))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((0, 0), 1)
    data = _pil_bytes(pal, "PNG", transparency=0)  # index 0 transparent
    assert "transparency" in Image.open(io.BytesIO(data)).info
    out = decode_image(data, background=(7, 8, 9))
    np.testing.assert_array_equal(out[0, 0], (10, 200, 30))
    assert (out.reshape(-1, 3)[1:] == (7, 8, 9)).all()


def test_rgba_is_composited_over_background():
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, :, :3] = (200, 100, 0)
    rgba[0, :, 3] = (255, 0, 128)
    data = _pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG")
    white = decode_image(data)
    np.testing.assert_array_equal(white[0, 0], (200, 100, 0))
    np.testing.assert_array_equal(white[0, 1], (255, 255, 255))
    expected = (np.array([200, 100, 0]) * 128 + 255 * 127) / 255
    assert np.abs(white[0, 2] - expected).max() <= 1
    black = decode_image(data, background=(0, 0, 0))
    np.testing.assert_array_equal(black[0, 1], (0, 0, 0))


def test_grey_alpha_la():
    la = np.dstack([np.full((2, 2), 90, np.uint8), np.array([[255, 0], [255, 0]], np.uint8)])
    out = decode_image(_pil_bytes(Image.fromarray(la, "LA"), "PNG"), background=(1, 2, 3))
    np.testing.assert_array_equal(out[:, 0], [[90, 90, 90]] * 2)
    np.testing.assert_array_equal(out[:, 1], [[1, 2, 3]] * 2)


def test_float_tiff_in_unit_range():
    values = np.array([[0.0, 0.5, 1.0]], np.float32)
    out = decode_image(_pil_bytes(Image.fromarray(values, "F"), "TIFF"))
    np.testing.assert_array_equal(out[0, :, 1], [0, 128, 255])


def test_float_tiff_out_of_range_is_refused():
    values = np.array([[0.0, 300.0]], np.float32)
    err = _error(_pil_bytes(Image.fromarray(values, "F"), "TIFF"))
    assert err.stage == "decode" and "outside [0, 1]" in err.reason


def test_background_must_be_valid():
    data = _pil_bytes(Image.fromarray(_pattern()), "PNG")
    with pytest.raises(ValueError):
        decode_image(data, background=(0, 0, 256))
    with pytest.raises(ValueError):
        decode_image(data, background=(0, 0))


# ------------------------------------------------------------------------------ orientation


def _with_orientation(rgb: np.ndarray, fmt: str, orientation: int) -> bytes:
    im = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = orientation
    kw = {"quality": 95} if fmt == "JPEG" else {}
    return _pil_bytes(im, fmt, exif=exif.tobytes(), **kw)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_exif_orientations_match_pillow(orientation):
    rgb = _pattern()
    data = _with_orientation(rgb, "PNG", orientation)
    reference = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    out = decode_image(data)
    _check_output(out)
    np.testing.assert_array_equal(out, reference)
    if orientation >= 5:
        assert out.shape[:2] == rgb.shape[1::-1]  # width and height swapped


def test_jpeg_orientation_6_turns_clockwise():
    rgb = _quadrants()  # red top-left, green top-right, blue bottom-left, white bottom-right
    out = decode_image(_with_orientation(rgb, "JPEG", 6))
    h, w = out.shape[:2]
    assert (h, w) == (96, 64)
    # turned 90 degrees clockwise: blue top-left, red top-right, white bottom-left, green bottom-right
    top, bottom, left, right = h // 4, 3 * h // 4, w // 4, 3 * w // 4
    corners = [out[top, left], out[top, right], out[bottom, left], out[bottom, right]]
    for got, want in zip(corners, [(0, 0, 255), (255, 0, 0), (255, 255, 255), (0, 255, 0)]):
        assert np.abs(got.astype(int) - want).max() < 20


def test_jpeg_orientation_3_is_upside_down():
    rgb = _quadrants()
    out = decode_image(_with_orientation(rgb, "JPEG", 3))
    assert out.shape == rgb.shape
    # rotated 180: white top-left, red bottom-right
    assert np.abs(out[8, 8].astype(int) - (255, 255, 255)).max() < 20
    assert np.abs(out[-8, -8].astype(int) - (255, 0, 0)).max() < 20


def test_apply_orientation_inverts_with_its_counterpart():
    rgb = _pattern()
    inverse = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}
    for o, back in inverse.items():
        np.testing.assert_array_equal(apply_orientation(apply_orientation(rgb, o), back), rgb)


# ------------------------------------------------------------------------------ failures


def test_error_is_a_sample_error_with_a_known_stage():
    err = ImageLoadError("decode", "x")
    assert isinstance(err, SampleError) and err.stage == "decode" and err.reason == "x"
    with pytest.raises(ValueError):
        ImageLoadError("align", "x")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.stage == "read" and info.value.reason == "empty file (0 bytes)"


def test_missing_file_and_folder_are_read_errors(tmp_path):
    for path in (tmp_path / "nope.jpg", tmp_path):
        with pytest.raises(ImageLoadError) as info:
            load_image(path)
        assert info.value.stage == "read" and str(path) in info.value.reason


def test_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes\n")
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.stage == "decode" and info.value.reason.startswith("not an image")


def test_random_bytes_are_not_an_image():
    err = _error(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    assert err.stage == "decode" and "unrecognised format" in err.reason


def test_truncated_jpeg():
    data = _pil_bytes(Image.fromarray(_quadrants(256, 256)), "JPEG", quality=95)
    err = _error(data[: len(data) // 2])
    assert err.stage == "decode" and "truncated" in err.reason and "JPEG" in err.reason


def test_truncated_png():
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _pil_bytes(Image.fromarray(noise), "PNG")
    err = _error(data[: len(data) // 2])
    assert err.stage == "decode" and "PNG" in err.reason


def test_corrupt_png_data():
    data = bytearray(_pil_bytes(Image.fromarray(_pattern(64, 64)), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 10 : start + 200] = bytes(190)  # garble the compressed pixels
    err = _error(bytes(data))
    assert err.stage == "decode" and "corrupt" in err.reason


def test_corrupt_header_names_the_format():
    data = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    err = _error(data)
    assert err.stage == "decode" and "PNG" in err.reason


def _png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_from_the_header():
    data = _png_declaring(40000, 40000)
    assert len(data) < 100
    tracemalloc.start()
    try:
        err = _error(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.stage == "decode"
    assert "40000x40000" in err.reason and "1600.0 MP" in err.reason
    assert f"{DEFAULT_MAX_PIXELS / 1e6:.1f} MP limit" in err.reason
    assert peak < 5_000_000  # nothing near 40000*40000*3 bytes was allocated


def test_max_pixels_is_the_callers_limit_not_pillows(monkeypatch):
    data = _pil_bytes(Image.fromarray(_pattern(100, 100)), "PNG")
    err = _error(data, max_pixels=9_999)
    assert "100x100" in err.reason and "9,999 pixels limit" in err.reason
    assert decode_image(data, max_pixels=10_000).shape == (100, 100, 3)
    # Pillow's process-wide limit (which would refuse this 10,000-pixel image) is not consulted
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    assert decode_image(data).shape == (100, 100, 3)


def test_max_pixels_must_be_positive():
    with pytest.raises(ValueError):
        decode_image(b"x", max_pixels=0)


# ------------------------------------------------------------------------------ encoding


def test_png_round_trip_is_exact_and_deterministic():
    rgb = _pattern(57, 41)
    data = encode_image(rgb)
    assert data == encode_image(rgb.copy())
    assert data.startswith(b"\x89PNG")
    np.testing.assert_array_equal(decode_png_rgb(data), rgb)
    np.testing.assert_array_equal(decode_image(data), rgb)  # channel order agrees with Pillow


def test_png_encoder_accepts_non_contiguous_views():
    rgb = _pattern(40, 60)
    view = rgb[::2, ::-1]
    np.testing.assert_array_equal(decode_png_rgb(encode_image(view)), view)


def test_jpeg_round_trip_and_quality():
    rgb = _quadrants()
    hi, lo = encode_image(rgb, "jpg", quality=95), encode_image(rgb, "jpeg", quality=20)
    assert hi == encode_image(rgb, "jpg", quality=95)
    assert hi.startswith(b"\xff\xd8") and len(lo) < len(hi)
    assert np.abs(decode_image(hi).astype(int) - rgb).mean() < 4


def test_mask_round_trip_is_single_channel():
    mask = np.zeros((30, 20), np.uint8)
    mask[5:15, 3:9] = 255
    data = encode_mask(mask)
    assert data == encode_mask(mask.copy())
    assert Image.open(io.BytesIO(data)).mode == "L"
    np.testing.assert_array_equal(decode_mask(data), mask)


def test_encoders_refuse_bad_arrays():
    with pytest.raises(ValueError):
        encode_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        encode_image(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        encode_image(np.zeros((4, 4, 3), np.uint8), "gif")
    with pytest.raises(ValueError):
        encode_image(np.zeros((4, 4, 3), np.uint8), "jpg", quality=0)
    with pytest.raises(ValueError):
        encode_mask(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError):
        encode_mask(np.zeros((4, 4), bool))
    with pytest.raises(ValueError):
        encode_mask(np.zeros((0, 4), np.uint8))


def test_strict_png_decoders_refuse_other_content():
    rgb_png = encode_image(_pattern())
    with pytest.raises(ImageLoadError):
        decode_mask(rgb_png)
    with pytest.raises(ImageLoadError):
        decode_png_rgb(encode_mask(np.zeros((4, 4), np.uint8)))
    with pytest.raises(ImageLoadError):
        decode_png_rgb(encode_image(_pattern(), "jpg"))
