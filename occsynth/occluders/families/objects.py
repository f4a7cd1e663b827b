"""Object occluders: RGBA templates from the project's own bank, placed by face region.

Placement. Every template carries anchor points (its own pixels) and the face-frame points
they belong on (see occsynth.assets.catalog): F(fx, fy) = E + fx * (right_eye - left_eye) +
fy * (mouth_mid - E). A least-squares similarity maps the anchors onto F(face points); a
region override shifts the target by F(centre of the new region) - F(centre of the template's
own region); then a random scale and rotation about the target centre and a jitter (fraction
of the inter-ocular distance) are applied.

Pose (version 2). A worn template (glasses, masks, hats, eye masks, scarves: "worn" in the
bank) follows the head pose that faces/pose.py reads from the 5 landmarks: the template is
taken as a plane at its anchors' depth, un-turned from the pose it was rendered at and turned
to the face's (weak perspective, so a face turned by 40 degrees gets glasses foreshortened to
cos 40 across both eyes), then shifted so its anchors' centroid lands on their face points.
Version 1 (and held objects) use the least-squares similarity above.

Compositing. Only the template's bounding box in the image is warped (cv2.warpAffine,
bilinear, straight alpha with colours bled into the transparent border so edges do not darken).
The mask is exactly `warped alpha >= 0.5`; the blend uses the alpha of the mask pixels
blurred by a Gaussian whose (2r+1)-square kernel has r = ceil(feather), so every changed pixel
lies within r pixels (chessboard distance) of the mask and feather=0 changes only mask pixels.
With `harmonize` (occluders/harmonize.py) the layer is then matched to the photo (light,
colour, noise, JPEG, sharpness): the mask is unchanged, and pixels around it may change within
the blur of the sharpness match and the contact shadow.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from occsynth.assets.catalog import (
    CATEGORIES,
    CURRENT_VERSION,
    EYE_MOUTH_CM,
    IOD_CM,
    REGION_CENTERS,
    REGIONS,
    VERSIONS,
    default_bank_dir,
    load_bank_index,
)
from occsynth.faces.geometry import compose_fast, face_points_fast, similarity
from occsynth.faces.pose import estimate_pose, pose_matrix
from occsynth.occluders import harmonize as hz
from occsynth.occluders.base import Occluder, register_occluder, sample_value
from occsynth.occluders.params import anything, custom, integer, number, word

SPLITS = ("train", "eval", "any")
ALPHA_HALF = 128  # uint8 alpha >= 128 <=> alpha >= 0.5 (128/255 = 0.502; 127/255 = 0.498)
# Where "random" placements may land, in the face frame (forehead to chin, cheek to cheek).
RANDOM_BOX = ((-0.7, 0.7), (-0.6, 1.3))


# ----------------------------------------------------------------------------- face geometry

# ----------------------------------------------------------------------------- templates


@dataclass
class Template:
    """A decoded RGBA template ready to warp (colours bled under transparent pixels)."""

    name: str
    rgba: np.ndarray  # HxWx4 uint8, contiguous
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return self.rgba.shape[1], self.rgba.shape[0]

    @functools.cached_property
    def alpha(self) -> np.ndarray:
        """The alpha channel, contiguous (what own_area warps), extracted once: fit_area counts
        one template at ten sizes or more."""
        return cv2.extractChannel(self.rgba, 3)


def bleed_colors(rgba: np.ndarray, steps: int = 3) -> np.ndarray:
    """Copy colours of opaque pixels into the transparent pixels around them (alpha untouched),
    so bilinear sampling at the edge mixes in the object's own colour rather than black."""
    out = np.ascontiguousarray(rgba).copy()
    weight = (out[..., 3] > 0).astype(np.float32)
    if weight.all() or not weight.any():
        return out
    rgb = out[..., :3].astype(np.float32) * weight[..., None]
    for _ in range(steps):
        num = cv2.blur(rgb, (3, 3))
        den = cv2.blur(weight, (3, 3))
        grow = (weight == 0) & (den > 0)
        rgb[grow] = num[grow] / den[grow, None]
        weight = np.where(grow, 1.0, weight).astype(np.float32)
    fill = weight > 0
    out[..., :3][fill] = np.clip(np.round(rgb[fill]), 0, 255).astype(np.uint8)
    return out


def load_rgba(path: str | Path) -> np.ndarray:
    """Read a PNG as RGBA uint8 (opaque alpha added when the file has none)."""
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise FileNotFoundError(f"cannot read template image {path}")
    if data.ndim == 2:
        data = cv2.cvtColor(data, cv2.COLOR_GRAY2BGRA)
    elif data.shape[2] == 3:
        data = cv2.cvtColor(data, cv2.COLOR_BGR2BGRA)
    if data.dtype != np.uint8:  # 16-bit PNGs
        data = (data / 257).round().astype(np.uint8)
    return cv2.cvtColor(data, cv2.COLOR_BGRA2RGBA)


def make_template(name: str, rgba: np.ndarray, meta: dict | None = None) -> Template:
    return Template(name, bleed_colors(rgba), dict(meta or {}))


@dataclass
class TemplateBank:
    root: Path
    templates: list[Template]
    _filtered: dict = field(default_factory=dict)

    def select(self, categories: tuple[str, ...] | None, split: str) -> list[int]:
        """Indices of the templates of these categories (None = all) in this split ("any" = all)."""
        key = (categories, split)
        if key not in self._filtered:
            self._filtered[key] = [
                i
                for i, t in enumerate(self.templates)
                if (categories is None or t.meta["category"] in categories)
                and (split == "any" or t.meta["split"] == split)
            ]
        return self._filtered[key]


def _bank_file(root: Path, index: dict, name: str) -> Path:
    """A template's file: in the bank's folder, or (a bank that shares files, see catalog's
    version 1) in its "files_from" folder, checked against the sha256 the index keeps."""
    path = root / name
    if path.exists() or "files_from" not in index:
        return path
    shared = (root / index["files_from"] / name).resolve()
    want = index.get("sha256", {}).get(name)
    if want is None or hashlib.sha256(shared.read_bytes()).hexdigest() != want:
        raise ValueError(
            f"template {name} of the bank at {root} is read from {shared.parent}, whose copy differs "
            "from the one this bank was made with (sha256 mismatch)"
        )
    return shared


@functools.lru_cache(maxsize=8)
def _load_bank_cached(root: str) -> TemplateBank:
    index = load_bank_index(root)
    templates = [
        make_template(meta["file"], load_rgba(_bank_file(Path(root), index, meta["file"])), meta)
        for meta in index["templates"]
    ]
    return TemplateBank(Path(root), templates)


def load_bank(bank_dir: str | Path | None = None, version: int = CURRENT_VERSION) -> TemplateBank:
    """The template bank at `bank_dir` (default: the package's bank of that occluder version),
    decoded once per process."""
    root = Path(bank_dir) if bank_dir is not None else default_bank_dir(version)
    return _load_bank_cached(str(root.resolve()))


# ----------------------------------------------------------------------------- warping


def _pad(feather: float) -> int:
    return int(math.ceil(max(0.0, float(feather)))) + 1


def warp_roi(
    rgba: np.ndarray, matrix: np.ndarray, shape: tuple[int, int], margin: int = 1, perspective: bool = False
) -> tuple[np.ndarray, int, int] | None:
    """Warp a template into the image-space bounding box of its corners (+ `margin` px),
    clipped to the image. Returns (warped RGBA, x0, y0), or None when it lands outside."""
    h_img, w_img = shape
    h, w = rgba.shape[:2]
    if perspective:
        corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)
        p = np.c_[corners, np.ones(4)] @ np.asarray(matrix).T
        if np.any(p[:, 2] <= 1e-9):
            raise ValueError("homography sends part of the template behind the camera")
        mapped = p[:, :2] / p[:, 2:]
        xs, ys = mapped[:, 0].tolist(), mapped[:, 1].tolist()
    else:
        (a, b, c), (d, e, f) = np.asarray(matrix).tolist()
        xs = [a * x + b * y + c for x, y in ((0, 0), (w - 1, 0), (w - 1, h - 1), (0, h - 1))]
        ys = [d * x + e * y + f for x, y in ((0, 0), (w - 1, 0), (w - 1, h - 1), (0, h - 1))]
    x0 = max(int(math.floor(min(xs))) - margin, 0)
    y0 = max(int(math.floor(min(ys))) - margin, 0)
    x1 = min(int(math.ceil(max(xs))) + margin + 1, w_img)
    y1 = min(int(math.ceil(max(ys))) + margin + 1, h_img)
    if x1 <= x0 or y1 <= y0:
        return None
    if perspective:
        shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], dtype=np.float64)
        out = cv2.warpPerspective(
            rgba,
            shift @ np.asarray(matrix),
            (x1 - x0, y1 - y0),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
    else:
        m = np.array(matrix, dtype=np.float64)
        m[0, 2] -= x0
        m[1, 2] -= y0
        out = cv2.warpAffine(
            rgba, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
    return out, x0, y0


def blend_alpha(alpha: np.ndarray, feather: float) -> np.ndarray:
    """The alpha used for blending: the alpha of mask pixels only (alpha >= 0.5; the rest set to
    0), blurred by a Gaussian whose kernel reaches ceil(feather) px, so the blend reaches at most
    that far beyond the mask; feather <= 0 blends mask pixels only."""
    hard = cv2.threshold(alpha, ALPHA_HALF - 1, 0, cv2.THRESH_TOZERO)[1]
    if feather <= 0:
        return hard
    radius = int(math.ceil(feather))
    return cv2.GaussianBlur(hard, (2 * radius + 1, 2 * radius + 1), feather / 2.0)


def paste(
    image: np.ndarray, warped: tuple[np.ndarray, int, int] | None, feather: float
) -> tuple[np.ndarray, np.ndarray]:
    """Blend a warped RGBA box into a copy of the image; returns (image, bool mask)."""
    out = image.copy()
    mask = np.zeros(image.shape[:2], dtype=bool)
    if warped is None:
        return out, mask
    rgba, x0, y0 = warped
    h, w = rgba.shape[:2]
    alpha = cv2.extractChannel(rgba, 3)  # cv2 copies channels faster than numpy slicing
    mask[y0 : y0 + h, x0 : x0 + w] = alpha >= ALPHA_HALF
    weight = blend_alpha(alpha, feather).astype(np.float32) * np.float32(1.0 / 255.0)
    region = out[y0 : y0 + h, x0 : x0 + w]
    region[...] = cv2.blendLinear(cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB), region, weight, np.float32(1.0) - weight)
    return out, mask


def composite(
    image: np.ndarray,
    warped: tuple[np.ndarray, int, int] | None,
    feather: float,
    landmarks: np.ndarray,
    rng: np.random.Generator,
    harmonize: Any,
) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """`paste`, or with `harmonize` options the photometric paste of occluders/harmonize.py
    (its random draws come from `rng`, so call it after every geometric draw). The mask is the
    same either way. Returns (image, bool mask, harmonisation record or None)."""
    opts = hz.options(harmonize)
    if opts is None:
        return (*paste(image, warped, feather), None)
    mask = np.zeros(image.shape[:2], dtype=bool)
    if warped is None:
        return image.copy(), mask, {}
    rgba, x0, y0 = warped
    alpha = cv2.extractChannel(rgba, 3)
    mask[y0 : y0 + rgba.shape[0], x0 : x0 + rgba.shape[1]] = alpha >= ALPHA_HALF
    weight = blend_alpha(alpha, feather).astype(np.float32) * np.float32(1.0 / 255.0)
    out, record = hz.harmonized_paste(image, warped, weight, mask, landmarks, rng, opts)
    return out, mask, record


HARMONIZE_PARAM = custom(hz.valid, hz.OPTION_NOTE)
VERSION_PARAM = integer(min(VERSIONS), max(VERSIONS), nullable=True, scalar=True)


def effective_version(params: dict) -> int:
    """The occluder version: `version` when given, else the current one with harmonize on and
    version 1 (the pre-harmonisation banks and placement) with it off."""
    if params.get("version") is not None:
        return int(params["version"])
    return CURRENT_VERSION if hz.options(params.get("harmonize")) is not None else 1


def full_alpha(warped: tuple[np.ndarray, int, int] | None, shape: tuple[int, int]) -> np.ndarray:
    """The warped alpha laid into a full-frame uint8 array (debug and tests)."""
    alpha = np.zeros(shape, dtype=np.uint8)
    if warped is not None:
        rgba, x0, y0 = warped
        alpha[y0 : y0 + rgba.shape[0], x0 : x0 + rgba.shape[1]] = rgba[..., 3]
    return alpha


# ----------------------------------------------------------------------------- occluders


def _choose(value: Any, rng: np.random.Generator) -> Any:
    """sample_value plus plain lists of options (["cup", "phone"] -> one of them)."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return value[int(rng.integers(len(value)))]
    return sample_value(value, rng)


def region_centre(region: str, rng: np.random.Generator | None = None) -> tuple[float, float]:
    if region == "random":
        if rng is None:
            raise ValueError("a random region needs an rng")
        return (float(rng.uniform(*RANDOM_BOX[0])), float(rng.uniform(*RANDOM_BOX[1])))
    try:
        return REGION_CENTERS[region]
    except KeyError:
        raise ValueError(f"unknown region {region!r}; choose from {', '.join(REGIONS)}") from None


class HarmonizedOccluder(Occluder):
    """An occluder with a `harmonize` parameter: its options added after harmonised samples
    were first recorded (harmonize.LEGACY_OPTIONS) are written out in records where they are
    not at their legacy value, and a replay puts that value back where a record has none (so
    a record made before them replays as it was made)."""

    @classmethod
    def record_form(cls, params: dict) -> dict:
        params = super().record_form(params)
        return {**params, "harmonize": hz.recorded(params["harmonize"])} if "harmonize" in params else params

    @classmethod
    def replay_params(cls, recorded: dict) -> dict:
        out = super().replay_params(recorded)
        return {**out, "harmonize": hz.replayed(out["harmonize"])} if "harmonize" in out else out


class TemplateOccluder(HarmonizedOccluder):
    """Shared apply(): subclasses say which template and which 2x3 (or 3x3) map to use."""

    perspective = False

    def place(self, image, landmarks, rng) -> tuple[Template, np.ndarray, dict]:
        raise NotImplementedError

    def render(self, image, landmarks, rng):
        """Everything apply() computes, plus the warped alpha (debug/tests)."""
        return self.finish(image, landmarks, rng, *self.place(image, landmarks, rng))

    def finish(self, image, landmarks, rng, template: Template, matrix, concrete: dict):
        """render() after place() gave (template, matrix, concrete) from `rng`: the feather,
        the warp and the composite (fit_area finishes the place its search made)."""
        feather = float(sample_value(self.params.get("feather", 1.0), rng))
        warped = warp_roi(template.rgba, matrix, image.shape[:2], margin=_pad(feather), perspective=self.perspective)
        out, mask, look = composite(image, warped, feather, landmarks, rng, self.params.get("harmonize"))
        concrete.update(matrix=np.asarray(matrix).ravel().tolist(), feather=feather)
        if look is not None:
            concrete["harmonize"] = look
        return out, mask, concrete, warped

    def apply(self, image, landmarks, rng):
        out, mask, concrete, _ = self.render(image, landmarks, rng)
        return out, mask, concrete

    def own_area(self, image, landmarks, rng) -> int:
        """The pixel count of the mask apply() returns for this rng, without compositing (only
        the alpha is warped; OpenCV warps each channel alike): fit_area's trial sizes. Draws
        from rng exactly as render() does (tests/test_fit_trials.py compares the two)."""
        template, matrix, _ = self.place(image, landmarks, rng)
        return self.count(image, template, matrix, rng)

    def count(self, image, template: Template, matrix, rng) -> int:
        """own_area after place(): the feather drawn as render() draws it, the alpha warped and
        its mask pixels counted."""
        feather = float(sample_value(self.params.get("feather", 1.0), rng))
        warped = warp_roi(template.alpha, matrix, image.shape[:2], margin=_pad(feather), perspective=self.perspective)
        return 0 if warped is None else cv2.countNonZero(cv2.compare(warped[0], ALPHA_HALF, cv2.CMP_GE))

    # The size parameter `sized` varies (None: no `sized`; fit_area then tries each size on a
    # copy of the occluder, placed from scratch).
    size_param: str | None = None

    def sized(self, image, landmarks, rng) -> Sizes:
        """The placement from rng's current state at many values of `size_param` (Sizes)."""
        raise NotImplementedError

    def place_sized(self, pose: Any, value: Any, rng) -> tuple[Template, np.ndarray, dict]:
        """place() from what `sized` worked out before the size, with `size_param` at `value`."""
        raise NotImplementedError


class Sizes:
    """One placement of a template occluder at many sizes, for fit_area's search: `place(value)`
    and `area(value)` give what place() and own_area() of a copy of the occluder with its
    `size_param` at `value` give from the generator state `sized` started from, and leave the
    generator where those leave it. The draws made before the size (template, region, the
    pose's fit) are made once; each call goes back to the state after them."""

    def __init__(self, occluder: TemplateOccluder, image: np.ndarray, pose: Any, rng: np.random.Generator):
        self.occluder, self.image, self.pose, self.rng = occluder, image, pose, rng
        self.state = rng.bit_generator.state

    def place(self, value: Any) -> tuple[Template, np.ndarray, dict]:
        self.rng.bit_generator.state = self.state
        return self.occluder.place_sized(self.pose, value, self.rng)

    def area(self, value: Any) -> int:
        template, matrix, _ = self.place(value)
        return self.occluder.count(self.image, template, matrix, self.rng)


def _category_filter(value: Any, rng: np.random.Generator) -> tuple[str, ...] | None:
    """None/"any" -> all categories; a name; a list -> ALL listed (the template is then drawn
    from their union); {"choice": [...]} -> one category drawn first."""
    if value is None or value == "any":
        return None
    if isinstance(value, dict):
        value = sample_value(value, rng)
    names = (value,) if isinstance(value, str) else tuple(value)
    unknown = [n for n in names if n not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown object categories {unknown}; choose from {', '.join(CATEGORIES)}")
    return tuple(sorted(names))


@register_occluder
class ObjectOccluder(TemplateOccluder):
    """A rendered object from the template bank, anchored to the face by its region.

    Params: category (name, list, {"choice": [...]} or "any"), region (None = the template's
    own, or one of REGIONS), split ("train" | "eval" | "any"), scale ([lo, hi] multiplier),
    rotation (degrees, [lo, hi], clockwise positive), jitter (max shift as a fraction of the
    inter-ocular distance), feather (px), bank_dir (None = the package's bank), template
    (a file name in the bank: forces that template, used when re-creating a sample),
    harmonize (true: match the photo's light and image quality, see occluders/harmonize.py, or
    a dict of its options; false: paste as rendered), version (None: 2 with harmonize, 1
    without; 2: the current bank with worn objects following the head pose; 1: the bank and
    similarity placement from before harmonisation, which rebuild earlier builds byte for byte)."""

    family = "object"
    name = "object"
    fixed_category: str | None = None
    defaults = {
        "category": "any",
        "region": None,
        "split": "any",
        "scale": [0.9, 1.1],
        "rotation": [-8.0, 8.0],
        "jitter": 0.06,
        "feather": 1.0,
        "bank_dir": None,
        "template": None,
        "harmonize": True,
        "version": None,
    }
    legacy = {"harmonize": False, "version": None}
    schema = {
        "category": word("any", *CATEGORIES, lists=True, nullable=True),
        "region": word(*REGIONS, lists=True, nullable=True),
        "split": word(*SPLITS),
        "scale": number(0.0, lo_open=True),
        "rotation": number(),
        "jitter": number(0.0),
        "feather": number(0.0),
        "bank_dir": anything("a template bank folder (null: the package's bank)"),
        "template": anything("a template file name in the bank (null: drawn)"),
        "harmonize": HARMONIZE_PARAM,
        "version": VERSION_PARAM,
    }

    def __init__(self, **params: Any):
        super().__init__(**params)
        if self.fixed_category is not None:
            self.params["category"] = self.fixed_category
        self.version = effective_version(self.params)

    def _bank(self) -> TemplateBank:
        # resolved once per occluder: path resolution costs more than a whole composite
        if getattr(self, "_bank_cache", None) is None:
            self._bank_cache = load_bank(self.params["bank_dir"], self.version)
        return self._bank_cache

    size_param = "scale"

    def place(self, image, landmarks, rng):
        return self.place_sized(self._pose(image, landmarks, rng), self.params["scale"], rng)

    def sized(self, image, landmarks, rng) -> Sizes:
        return Sizes(self, image, self._pose(image, landmarks, rng), rng)

    def _pose(self, image, landmarks, rng) -> tuple:
        """place()'s draws and work before the size: the template, its region, its map onto the
        face before scale, rotation and shift, the inter-ocular distance and the targets' centre."""
        bank = self._bank()
        if self.params["template"] is not None:
            names = [t.name for t in bank.templates]
            if self.params["template"] not in names:
                raise KeyError(f"template {self.params['template']!r} is not in the bank at {bank.root}")
            index = names.index(self.params["template"])
        else:
            categories = _category_filter(self.params["category"], rng)
            candidates = bank.select(categories, self.params["split"])
            if not candidates:
                raise ValueError(
                    f"no templates for category {self.params['category']!r} in split {self.params['split']!r} "
                    f"of the bank at {bank.root}"
                )
            index = candidates[int(rng.integers(len(candidates)))]
        template = bank.templates[index]
        meta = template.meta
        anchor = meta["anchor"]
        lm = np.asarray(landmarks, dtype=np.float64).tolist()
        targets = face_points_fast(lm, anchor["face_points"])
        region = _choose(self.params["region"], rng) or meta["region"]
        if region != meta["region"]:
            (nx, ny), (ox, oy) = face_points_fast(lm, [region_centre(region, rng), REGION_CENTERS[meta["region"]]])
            targets = [(x + nx - ox, y + ny - oy) for x, y in targets]
        posed = self.version >= 2 and meta.get("worn", False)
        if posed:  # fit_area places one template on one face many times: the pose is solved once
            key = (template.name, tuple(map(tuple, lm)), tuple(map(tuple, targets)))
            cache = self.__dict__.setdefault("_posed_maps", {})
            base = cache.get(key)
            if base is None:
                if len(cache) >= 64:
                    cache.clear()
                base = cache[key] = posed_map(meta, landmarks, targets)
        else:
            base = similarity(anchor["points"], targets)
        iod = math.hypot(lm[1][0] - lm[0][0], lm[1][1] - lm[0][1])
        cx = sum(p[0] for p in targets) / len(targets)
        cy = sum(p[1] for p in targets) / len(targets)
        return template, region, base, posed, iod, cx, cy

    def place_sized(self, pose: tuple, scale_spec: Any, rng) -> tuple[Template, np.ndarray, dict]:
        """place() from its `_pose`, with the scale parameter at `scale_spec`."""
        template, region, base, posed, iod, cx, cy = pose
        meta = template.meta
        scale = float(sample_value(scale_spec, rng))
        angle = float(sample_value(self.params["rotation"], rng))
        jitter = float(sample_value(self.params["jitter"], rng)) * iod
        shift = rng.uniform(-jitter, jitter, size=2).tolist() if jitter > 0 else [0.0, 0.0]
        matrix = compose_fast(base, cx, cy, scale, angle, shift[0], shift[1])
        concrete = {
            "category": meta["category"],
            "template": template.name,
            "split": meta["split"],
            "region": region,
            "scale": scale,
            "rotation": angle,
            "shift": shift,
            "bank_dir": None if self.params["bank_dir"] is None else str(self.params["bank_dir"]),
        }
        if self.version >= 2:
            concrete["placement"] = "pose" if posed else "similarity"
        return template, matrix, concrete


def _euler_view(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The authoring rotation (authoring/meshes.euler_matrix: y up, z toward the viewer,
    degrees) a template was rendered at: roll @ pitch @ yaw."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def posed_map(meta: dict, landmarks: np.ndarray, targets: list) -> list[float]:
    """Template pixels -> image for a worn template that follows the head pose (see the module
    doc), as the row-major 2x3 list `similarity` returns.

    The template is the plane z = depth_cm of the face frame in centimetres (x right, y up, z
    toward the viewer), rendered orthographically at px_per_cm after the turn `pose`: its
    pixels are A_t (x, y) + b_t with A_t = k diag(1, -1) R_t[:2, :2], b_t fitted to the anchors.
    The face is the mean face of faces/pose.py (millimetres, y down, z away) under the
    estimated weak-perspective pose: image = s R_f[:2] (10x, -10y, -10 depth) + t; a "round"
    template (hats, scarves, about as wide from any side) takes R_f without its yaw for the
    linear part (its place still turns with the head)."""
    anchor = meta["anchor"]
    pts = np.asarray(anchor["points"], dtype=np.float64)
    faces = np.asarray(anchor["face_points"], dtype=np.float64)
    plane = np.column_stack([faces[:, 0] * IOD_CM, -faces[:, 1] * EYE_MOUTH_CM])
    pose_t = meta["pose"]
    rot_t = _euler_view(pose_t["yaw"], pose_t["pitch"], pose_t["roll"])
    a_t = float(meta["px_per_cm"]) * np.diag([1.0, -1.0]) @ rot_t[:2, :2]
    b_t = (pts - plane @ a_t.T).mean(axis=0)
    face = estimate_pose(landmarks)
    rot_f, s = face["rotation"], face["scale"]
    # a round object (a hat, a scarf) is as wide from any side: turned without the yaw
    turned = pose_matrix(0.0, face["pitch"], face["roll"]) if meta.get("turn") == "round" else rot_f
    a_f = s * turned[:2, :2] @ np.diag([10.0, -10.0])
    b_f = s * rot_f[:2, 2] * (-10.0 * float(meta["depth_cm"])) + face["translation"]
    lin = a_f @ np.linalg.inv(a_t)
    off = b_f - lin @ b_t
    mapped = pts @ lin.T + off
    off = off + (np.asarray(targets, dtype=np.float64) - mapped).mean(axis=0)
    return [lin[0, 0], lin[0, 1], off[0], lin[1, 0], lin[1, 1], off[1]]


def _alias(category: str) -> type[ObjectOccluder]:
    cls = type(
        f"{''.join(p.title() for p in category.split('_'))}Occluder",
        (ObjectOccluder,),
        {
            "name": category,
            "fixed_category": category,
            "__doc__": f"The object occluder with category fixed to {category!r}.",
            "__module__": __name__,
        },
    )
    return register_occluder(cls)


for _category in CATEGORIES:
    _alias(_category)
