"""Robust image decoding and deterministic encoding.

Every input image goes through :func:`decode_image`, which turns any supported file into the
one array type the pipeline uses (RGB, uint8, HxWx3, C-contiguous) or raises
:class:`ImageLoadError` with the failure stage and a short human reason. The caller records
that as a failure of the sample; nothing is dropped silently.

Decisions worth knowing:

* The pixel count is checked from the file header, before any pixel is decoded, against
  ``max_pixels``. Pillow's own global ``Image.MAX_IMAGE_PIXELS`` is bypassed on purpose (see
  :func:`_open_header`): the limit is a per-call argument here, not process-wide state.
* Truncated files are errors: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never touched, so a cut
  JPEG fails instead of coming back half grey.
* EXIF orientation is applied by :func:`apply_orientation` (NumPy, all 8 values), one
  implementation for the Pillow path and the OpenCV path used for 16-bit colour.
* 16 bits per channel are scaled by rounding (65535 -> 255, 32896 -> 128). Pillow keeps 16-bit
  grey, but reads 16-bit RGB(A) as 8-bit by dropping the low byte, so those files are decoded
  again with OpenCV, which keeps all 16 bits.
* CMYK JPEGs: Pillow always reads them as Adobe-inverted CMYK (rawmode ``CMYK;I``), which is
  what Photoshop and nearly every CMYK JPEG writer produce, then converts naively to RGB
  (no ICC colour management). Good enough for face detection; colours are approximate.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import cv2
import numpy as np

# Importing the plugins registers them in Image.OPEN; these are the only formats accepted.
# Formats that run external programs (EPS via Ghostscript) or are not photographs are refused.
from PIL import (  # noqa: F401  (imported for their registration side effect)
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from occsynth.contract import SampleError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "PNG_COMPRESSION",
    "SUPPORTED_FORMATS",
    "ImageLoadError",
    "apply_orientation",
    "decode_image",
    "decode_mask",
    "decode_png_rgb",
    "encode_image",
    "encode_mask",
    "load_image",
]

# 64 MP is four times a 24 MP camera frame and far beyond any face-dataset photo, while the
# worst case a worker may then allocate (64e6 px x 4 channels x 2 bytes for 16-bit RGBA, plus
# the 8-bit copies) stays around 1 GB, which a machine running several workers survives.
# It is also below Pillow's own 89 MP warning threshold, so Pillow never has to be consulted.
DEFAULT_MAX_PIXELS = 64_000_000

# Pillow format ids tried, in order, on the file's first bytes. JPEG also covers MPO
# (multi-picture JPEGs from cameras: Pillow's JPEG opener hands those to the MPO plugin).
SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF", "PPM")

# zlib level 1: measured on 112x112 and 250x250 face crops it encodes 1.5-2x faster than
# OpenCV's default 3 and ~3x faster than 9, for files only 2-5% larger (level 0, stored,
# is 1.6x larger). Encoding happens for every sample of every build; a few percent of disk
# is the cheaper side of that trade.
PNG_COMPRESSION = 1
# One fixed row filter (SUB) instead of libpng's adaptive choice: measured on 112x112 faces
# with OpenCV 5 it halves PNG encoding time (0.8 vs 1.6 ms) for files ~3% larger; encoding
# is the largest cost of a rebuild from stored landmarks.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_GREY16_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


class ImageLoadError(SampleError):
    """An input image that could not be read or decoded.

    ``stage`` is "read" (the bytes could not be obtained) or "decode" (the bytes are not a
    usable image); ``reason`` is a short human text. A :class:`SampleError`, so the per-sample
    pipeline turns it into a failure record like any other stage error.
    """

    def __init__(self, stage: str, reason: str):
        if stage not in ("read", "decode"):
            raise ValueError(f"ImageLoadError stage must be 'read' or 'decode', got {stage!r}")
        super().__init__(stage, reason)


# --------------------------------------------------------------------------------------------
# decoding


def load_image(path: str | os.PathLike, **kwargs) -> np.ndarray:
    """Read a file and :func:`decode_image` it; keyword arguments go to ``decode_image``."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageLoadError("read", f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from exc
    if not data:
        raise ImageLoadError("read", "empty file (0 bytes)")
    return decode_image(data, **kwargs)


def decode_image(
    data: bytes | bytearray | memoryview,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Decode an encoded image to RGB uint8, HxWx3, C-contiguous.

    Transparent pixels are composited over ``background`` (RGB 0..255); the first frame of
    animated/multi-page files is used; EXIF orientation is applied. Raises
    :class:`ImageLoadError` (stage "decode") for anything that is not a sound image of at most
    ``max_pixels`` pixels.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    bg = _check_background(background)
    data = bytes(data)
    if not data:
        raise ImageLoadError("decode", "empty data (0 bytes)")

    fast = _decode_plain_jpeg(data, max_pixels)
    if fast is not None:
        return fast
    im = _open_header(data)
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageLoadError("decode", f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageLoadError(
            "decode",
            f"image too large: {width}x{height} = {_megapixels(width * height)} exceeds the "
            f"{_megapixels(max_pixels)} limit (decompression-bomb guard)",
        )
    fmt = im.format or "image"
    rawmode = _tile_rawmode(im)  # must be read before load(), which clears the tiles

    try:
        # Some plugins check frame/tile sizes against Pillow's global limit while loading; a
        # warning there means a part larger than the header said, so it is refused as well.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError("decode", f"image too large: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this sample's failure
        raise ImageLoadError("decode", f"truncated or corrupt {fmt}: {_text(exc)}") from exc

    try:
        orientation = _orientation(im)
    except Exception as exc:  # noqa: BLE001
        # A wrong orientation would silently give a sideways face; refuse instead.
        raise ImageLoadError("decode", f"corrupt EXIF metadata in {fmt}: {_text(exc)}") from exc

    try:
        if im.mode in ("RGB", "RGBA", "LA") and ";16" in rawmode:
            rgb = _decode_16bit_colour(data, im, bg)
        else:
            rgb = _pil_to_rgb(im, bg)
    except ImageLoadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ImageLoadError("decode", f"cannot convert {fmt} mode {im.mode}: {_text(exc)}") from exc

    return np.ascontiguousarray(apply_orientation(rgb, orientation))


# JPEG markers: start of frame for Huffman baseline, extended and progressive 8-bit images (the
# ones decoded by OpenCV directly); any other start of frame (lossless, arithmetic coding,
# hierarchical) takes Pillow's path.
_SOF_PLAIN = frozenset({0xC0, 0xC1, 0xC2})
_SOF_OTHER = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# RGB straight from libjpeg-turbo where OpenCV offers it (4.10+): the same pixels as decoding
# to BGR and swapping (tests/test_image_io.py compares both with Pillow), without the swap
# (~60 us of a 250x250 LFW image's ~420 us)
_JPEG_RGB = hasattr(cv2, "IMREAD_COLOR_RGB")
_JPEG_IMREAD = (cv2.IMREAD_COLOR_RGB if _JPEG_RGB else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION


def _plain_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a "plain" JPEG, else None.

    Plain: SOI first and EOI last (so a cut file is never plain), well-formed marker segments up
    to the first scan, one 8-bit Huffman frame of 1 (grey) or 3 (YCbCr: JFIF or component ids
    1, 2, 3) components, and no Exif (orientation), Adobe (colour transform, CMYK) or MPF
    (multi-picture) segment. Reads the segment headers only (a few microseconds)."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8 or data[n - 2] != 0xFF or data[n - 1] != 0xD9:
        return None
    pos, size, jfif = 2, None, False
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        end = pos + 2 + length
        if length < 2 or end > n:
            return None
        if marker == 0xDA:  # start of scan: the header is complete
            if size is None:
                return None
            return size
        if marker in _SOF_PLAIN:
            if size is not None or length < 8 or data[pos + 4] != 8:
                return None
            height = (data[pos + 5] << 8) | data[pos + 6]
            width = (data[pos + 7] << 8) | data[pos + 8]
            components = data[pos + 9]
            if width == 0 or height == 0 or length != 8 + 3 * components:
                return None
            if components == 3:
                ids = (data[pos + 10], data[pos + 13], data[pos + 16])
                if not jfif and ids != (1, 2, 3):
                    return None
            elif components != 1:
                return None
            size = (width, height)
        elif marker in _SOF_OTHER or marker == 0xCC or marker in (0xD8, 0xD9) or 0xD0 <= marker <= 0xD7:
            return None
        elif marker == 0xE0:
            jfif = jfif or data[pos + 4 : pos + 9] == b"JFIF\x00"
        elif marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00":
            return None
        elif marker == 0xE2 and data[pos + 4 : pos + 8] == b"MPF\x00":
            return None
        elif marker == 0xEE and data[pos + 4 : pos + 9] == b"Adobe":
            return None
        pos = end
    return None


def _decode_plain_jpeg(data: bytes, max_pixels: int) -> np.ndarray | None:
    """A plain JPEG (see _plain_jpeg_size) decoded by OpenCV, else None (Pillow's path decodes
    it, or says why it cannot).

    OpenCV and Pillow both decode with libjpeg-turbo (islow IDCT, fancy upsampling): the pixels
    are the same (all 13,233 LFW images; grey, 4:4:4, 4:2:2, 4:2:0, progressive and restart
    intervals in tests/test_image_io.py), and OpenCV is ~2x faster for a face photo (no header
    parsing in Python, no copy out of Pillow's 4-byte pixels). One difference: damaged
    entropy-coded data inside a complete file is decoded with libjpeg's substitutions (and its
    warning on stderr), where Pillow sometimes refused it ("broken data stream") and sometimes
    decoded it the same way; a cut file (no EOI at the end) still fails in Pillow's path."""
    size = _plain_jpeg_size(data)
    if size is None or size[0] * size[1] > max_pixels:
        return None
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _JPEG_IMREAD)
    if pixels is None or pixels.shape != (size[1], size[0], 3):
        return None
    return pixels if _JPEG_RGB else cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an image stored with EXIF orientation 1..8 into its upright view.

    Matches Pillow's ``ImageOps.exif_transpose``; values outside 1..8 are treated as 1, as
    Pillow and browsers do. Returns a view (call ``np.ascontiguousarray`` if needed).
    """
    if orientation == 2:
        return image[:, ::-1]
    if orientation == 3:
        return image[::-1, ::-1]
    if orientation == 4:
        return image[::-1]
    if orientation == 5:  # transpose: mirror across the main diagonal
        return image.swapaxes(0, 1)
    if orientation == 6:  # stored rotated 90 deg counter-clockwise: turn it clockwise
        return np.rot90(image, -1)
    if orientation == 7:  # transverse: mirror across the anti-diagonal
        return image[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(image, 1)
    return image


def _open_header(data: bytes) -> Image.Image:
    """Identify the format and parse the header only (no pixel data is decoded).

    This is ``Image.open`` restricted to SUPPORTED_FORMATS and without its call to
    ``Image._decompression_bomb_check``: that check reads the process-wide
    ``Image.MAX_IMAGE_PIXELS``, while the limit here is the caller's ``max_pixels``.
    """
    prefix = data[:16]
    recognised_but_broken: list[str] = []
    for fmt in SUPPORTED_FORMATS:
        factory, accept = Image.OPEN[fmt]
        verdict = accept(prefix) if accept else True
        if isinstance(verdict, str):  # Pillow's way of saying "that format, but unsupported"
            recognised_but_broken.append(f"{fmt}: {verdict}")
            continue
        if not verdict:
            continue
        try:
            return factory(io.BytesIO(data), "")
        except Image.DecompressionBombError as exc:  # WebP checks inside its opener
            raise ImageLoadError("decode", f"image too large: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - the magic matched but the header is bad
            recognised_but_broken.append(f"truncated or corrupt {fmt} header: {_text(exc)}")
    if recognised_but_broken:
        raise ImageLoadError("decode", "; ".join(recognised_but_broken))
    if _looks_like_text(prefix):
        raise ImageLoadError("decode", "not an image (unrecognised format; looks like text)")
    raise ImageLoadError("decode", "not an image (unrecognised format)")


def _looks_like_text(prefix: bytes) -> bool:
    try:
        text = prefix.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def _tile_rawmode(im: Image.Image) -> str:
    """The raw pixel layout of the first tile, e.g. "RGB;16B" for a 16-bit RGB PNG."""
    if not im.tile:
        return ""
    args = im.tile[0].args
    if isinstance(args, tuple):
        args = args[0] if args else ""
    return args if isinstance(args, str) else ""


def _orientation(im: Image.Image) -> int:
    value = im.getexif().get(_EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _pil_to_rgb(im: Image.Image, bg: np.ndarray) -> np.ndarray:
    mode = im.mode
    if mode in _GREY16_MODES or mode == "I":
        grey = np.asarray(im)
        if mode == "I" and grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise ImageLoadError(
                "decode",
                f"32-bit integer image with values {grey.min()}..{grey.max()} outside the "
                "16-bit range; convert it to 8 or 16 bits first",
            )
        grey8 = _scale16(grey)
        rgb = np.repeat(grey8[:, :, None], 3, axis=2)
        trns = im.info.get("transparency")
        if isinstance(trns, int):  # 16-bit grey PNG with a tRNS colour key
            alpha = np.where(grey == trns, 0, 255).astype(np.uint8)
            return _composite(np.dstack([rgb, alpha]), bg)
        return rgb
    if mode == "F":
        return _float_to_rgb(np.asarray(im))
    if mode in _ALPHA_MODES or "transparency" in im.info:
        return _composite(np.asarray(im.convert("RGBA")), bg)
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def _decode_16bit_colour(data: bytes, im: Image.Image, bg: np.ndarray) -> np.ndarray:
    """Decode 16-bit-per-channel colour with OpenCV (Pillow would drop the low byte).

    Pillow has already loaded the file, so it is known to be complete; OpenCV re-decodes it.
    IMREAD_UNCHANGED keeps the bit depth and ignores EXIF orientation (applied by the caller).
    """
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageLoadError("decode", f"OpenCV cannot decode this 16-bit {im.format}")
    if arr.shape[:2] != (im.size[1], im.size[0]):
        raise ImageLoadError(
            "decode",
            f"OpenCV and Pillow disagree on the size ({arr.shape[1]}x{arr.shape[0]} vs {im.size[0]}x{im.size[1]})",
        )
    arr = _scale16(arr) if arr.dtype == np.uint16 else arr
    if arr.dtype != np.uint8:
        raise ImageLoadError("decode", f"unsupported sample type {arr.dtype} in {im.format}")
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape[2] == 3:
        return arr[:, :, ::-1]
    if arr.shape[2] == 4:
        return _composite(arr[:, :, [2, 1, 0, 3]], bg)
    raise ImageLoadError("decode", f"unsupported channel count {arr.shape[2]} in {im.format}")


def _scale16(values: np.ndarray) -> np.ndarray:
    """0..65535 to 0..255 with rounding (x * 255 / 65535): 65535 -> 255, 32896 -> 128."""
    wide = values.astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _float_to_rgb(values: np.ndarray) -> np.ndarray:
    # Float TIFFs have no agreed scale; only the common [0, 1] convention is accepted.
    if not np.all(np.isfinite(values)):
        raise ImageLoadError("decode", "float image contains NaN or infinity")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low < 0.0 or high > 1.0:
        raise ImageLoadError(
            "decode",
            f"float image with values {low:g}..{high:g} outside [0, 1]; convert it to 8 bits first",
        )
    grey = np.round(values.astype(np.float64) * 255.0).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _composite(rgba: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Alpha-composite straight (non-premultiplied) RGBA uint8 over a solid RGB colour."""
    alpha = rgba[:, :, 3:4]
    if np.all(alpha == 255):
        return rgba[:, :, :3]
    a = alpha.astype(np.uint16)
    rgb = rgba[:, :, :3].astype(np.uint16)
    out = (rgb * a + bg.astype(np.uint16) * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _check_background(background) -> np.ndarray:
    bg = np.asarray(background)
    if bg.shape != (3,) or not np.issubdtype(bg.dtype, np.integer) or bg.min() < 0 or bg.max() > 255:
        raise ValueError(f"background must be three ints in 0..255, got {background!r}")
    return bg.astype(np.uint8)


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP" if pixels >= 100_000 else f"{pixels:,} pixels"


def _text(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# encoding (the dataset writer) and strict decoding of what the writer produced


def encode_image(rgb: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode RGB uint8 HxWx3 as PNG or JPEG ("png", "jpg"/"jpeg").

    Deterministic: the same array gives the same bytes with the same OpenCV build (no
    timestamps or other metadata are written). ``quality`` (1..100) applies to JPEG only.
    """
    _check_array(rgb, ndim=3, what="image")
    fmt = fmt.lower()
    # OpenCV encoders expect BGR (cvtColor: ~20x faster than copying a reversed view)
    bgr = cv2.cvtColor(rgb if rgb.flags.c_contiguous else np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    if fmt == "png":
        params = PNG_PARAMS
        ext = ".png"
    elif fmt in ("jpg", "jpeg"):
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be an int in 1..100, got {quality!r}")
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
        ext = ".jpg"
    else:
        raise ValueError(f"unknown image format {fmt!r}; expected 'png' or 'jpg'")
    ok, buf = cv2.imencode(ext, bgr, params)
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {rgb.shape} image as {fmt}")
    return buf.tobytes()


def encode_mask(mask: np.ndarray) -> bytes:
    """Encode a contract mask (uint8 HxW, 255 = occluded) as a single-channel 8-bit PNG."""
    _check_array(mask, ndim=2, what="mask")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(mask), PNG_PARAMS)
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {mask.shape} mask")
    return buf.tobytes()


def decode_png_rgb(data: bytes) -> np.ndarray:
    """Decode an 8-bit RGB PNG as written by :func:`encode_image` to RGB uint8 HxWx3.

    Strict on purpose (used by verify): anything else raises ImageLoadError. For JPEG members
    or arbitrary inputs use :func:`decode_image`.
    """
    arr = _decode_png_exact(data, "image")
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageLoadError("decode", f"expected an RGB PNG, got shape {arr.shape}")
    return np.ascontiguousarray(arr[:, :, ::-1])


def decode_mask(data: bytes) -> np.ndarray:
    """Decode a mask PNG as written by :func:`encode_mask` to uint8 HxW (strict, like verify)."""
    arr = _decode_png_exact(data, "mask")
    if arr.ndim != 2:
        raise ImageLoadError("decode", f"expected a single-channel mask PNG, got shape {arr.shape}")
    return arr


def _decode_png_exact(data: bytes, what: str) -> np.ndarray:
    data = bytes(data)
    if not data.startswith(_PNG_SIGNATURE):
        raise ImageLoadError("decode", f"{what} is not a PNG (bad signature)")
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageLoadError("decode", f"corrupt {what} PNG")
    if arr.dtype != np.uint8:
        raise ImageLoadError("decode", f"expected an 8-bit {what} PNG, got {arr.dtype}")
    return arr


def _check_array(arr: np.ndarray, *, ndim: int, what: str) -> None:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8, got {arr.dtype}")
    if ndim == 3 and (arr.ndim != 3 or arr.shape[2] != 3):
        raise ValueError(f"{what} must be HxWx3 RGB, got shape {arr.shape}")
    if ndim == 2 and arr.ndim != 2:
        raise ValueError(f"{what} must be HxW (single channel), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what} is empty: shape {arr.shape}")
