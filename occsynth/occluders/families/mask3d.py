"""3D face masks: parametric surgical / N95 / KN95 / cloth meshes fitted to the face pose.

The head pose comes from the 5 landmarks (faces/pose.py: a mean 3D face, weak perspective).

Masks are meshes in the model frame (trimesh), cut from a 2D outline and shaped by a depth
function (pleats, a folded KN95 crease, an N95 dome), with ear loops or head straps. They are
rendered with pyrender through occsynth.authoring.render in "pixel space" (vertices = s R X + t), with a
head ellipsoid that hides what lies behind the head (the far loop) without being drawn. The
mask is exactly render alpha >= 0.5.

mode="bank" (default) uses pre-rendered poses (render_mask_bank, shipped in assets/mask3d):
the nearest (yaw, pitch) render is mapped onto the landmarks by the least-squares similarity
of its projected model points; no OpenGL needed. mode="direct" renders each image (with the
current meshes, whatever the version).

harmonize (default true) matches the mask to the photo's light and image quality
(occluders/harmonize.py); the mask is unchanged by it. version (None: 2 with harmonize, 1
without) picks the bank: 2 the current one (assets/mask3d), 1 the one from before
harmonisation (assets/mask3d_v1), which rebuilds earlier builds byte for byte.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from occsynth.assets.catalog import MASK_KINDS as KINDS
from occsynth.assets.catalog import MASK_STYLES as DEFAULT_STYLES
from occsynth.assets.catalog import POSE_BANK_INDEX as BANK_INDEX
from occsynth.assets.catalog import default_pose_bank_dir
from occsynth.faces.geometry import compose_fast, similarity
from occsynth.faces.pose import estimate_pose
from occsynth.occluders.base import register_occluder, sample_value
from occsynth.occluders.families.objects import (
    HARMONIZE_PARAM,
    VERSION_PARAM,
    HarmonizedOccluder,
    _pad,
    composite,
    effective_version,
    load_rgba,
    make_template,
    warp_roi,
)
from occsynth.occluders.params import anything, integer, number, word
from occsynth.seeding import derive_seed, make_rng


class PoseBank:
    """A decoded pose bank with a per-(kind, style) lookup table of poses."""

    def __init__(self, root: Path, index: dict):
        self.root = root
        self.renders = index["renders"]
        self.templates = [make_template(r["file"], load_rgba(root / r["file"]), r) for r in self.renders]
        self.poses = np.array([[r["yaw"], r["pitch"], r["roll"]] for r in self.renders], dtype=np.float64)
        self.anchors = [np.asarray(r["anchors"], dtype=np.float64) for r in self.renders]
        self.anchor_lists = [r["anchors"] for r in self.renders]
        self.pose_lists = self.poses.tolist()
        self._groups: dict = {}

    def candidates(self, kind: str, style: str | None) -> np.ndarray:
        key = (kind, style)
        if key not in self._groups:
            self._groups[key] = np.array(
                [i for i, r in enumerate(self.renders) if r["kind"] == kind and (style is None or r["style"] == style)],
                dtype=np.int64,
            )
        return self._groups[key]

    def styles(self, kind: str) -> list[str]:
        if ("styles", kind) not in self._groups:
            self._groups[("styles", kind)] = sorted({r["style"] for r in self.renders if r["kind"] == kind})
        return self._groups[("styles", kind)]

    def nearest(self, candidates: np.ndarray, yaw: float, pitch: float, roll: float = 0.0) -> int:
        """The candidate render whose (yaw, pitch) is nearest; roll only breaks ties, since the
        2D similarity absorbs it."""
        best, best_cost = -1, math.inf
        for i in candidates.tolist():
            py, pp, pr = self.pose_lists[i]
            cost = (py - yaw) ** 2 + (pp - pitch) ** 2 + 1e-3 * (pr - roll) ** 2
            if cost < best_cost:
                best, best_cost = i, cost
        return best


@functools.lru_cache(maxsize=4)
def _load_pose_bank(root: str) -> PoseBank:
    path = Path(root) / BANK_INDEX
    if not path.exists():
        raise FileNotFoundError(
            f"no 3D mask pose bank at {root} ({BANK_INDEX} missing); build it with "
            "`occsynth render-masks` or occsynth.occluders.families.mask3d.render_mask_bank()"
        )
    return PoseBank(Path(root), json.loads(path.read_text()))


def load_pose_bank(bank_dir: str | Path | None = None, version: int = 2) -> PoseBank:
    root = Path(bank_dir) if bank_dir is not None else default_pose_bank_dir(version)
    return _load_pose_bank(str(root.resolve()))


@functools.lru_cache(maxsize=64)
def _direct_parts(kind: str, style: Any, seed: int):
    # mode="direct" renders with pyrender: an optional heavy dependency, imported on first use
    from occsynth.authoring.masks import face_mask_parts

    return face_mask_parts(kind, make_rng(seed), style)[0]


# ----------------------------------------------------------------------------- occluder


@register_occluder
class FaceMask3D(HarmonizedOccluder):
    """A 3D face mask fitted to the face pose.

    Params: kind ("surgical" | "n95" | "kn95" | "cloth", a list or {"choice": [...]}),
    mode ("bank" | "direct"), bank_dir (None = the package's assets/mask3d), color (None = any
    style; a style name of the bank (catalog.MASK_STYLES); direct mode also takes [r, g, b] in
    0..1), scale (multiplier, [lo, hi]), feather (px), supersample (direct mode), harmonize
    (true, false or options, see occluders/harmonize.py), version (bank mode: None, 1 or 2)."""

    family = "mask3d"
    name = "mask3d"
    defaults = {
        "kind": {"choice": list(KINDS)},
        "mode": "bank",
        "bank_dir": None,
        "color": None,
        "scale": [0.98, 1.04],
        "feather": 1.0,
        "supersample": 2,
        "harmonize": True,
        "version": None,
    }
    legacy = {"harmonize": False, "version": None}
    schema = {
        "kind": word(*KINDS, lists=True),
        "mode": word("bank", "direct"),
        "bank_dir": anything("a pose bank folder (null: the package's bank)"),
        "color": anything("a style name, or [r, g, b] in 0..1 in direct mode (null: any style)"),
        "scale": number(0.0, lo_open=True),
        "feather": number(0.0),
        "supersample": integer(1, scalar=True),
        "harmonize": HARMONIZE_PARAM,
        "version": VERSION_PARAM,
    }

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.version = effective_version(self.params)

    def render(self, image, landmarks, rng):
        kind = sample_value(self.params["kind"], rng)
        if isinstance(kind, (list, tuple)):
            kind = kind[int(rng.integers(len(kind)))]
        if kind not in KINDS:
            raise ValueError(f"unknown mask kind {kind!r}; choose from {', '.join(KINDS)}")
        color = (
            sample_value(self.params["color"], rng) if isinstance(self.params["color"], dict) else self.params["color"]
        )
        scale = float(sample_value(self.params["scale"], rng))
        feather = float(sample_value(self.params["feather"], rng))
        pose = estimate_pose(landmarks)
        concrete = {
            "kind": kind,
            "mode": self.params["mode"],
            "scale": scale,
            "feather": feather,
            "pose": {k: round(float(pose[k]), 3) for k in ("yaw", "pitch", "roll")},
        }
        if self.params["mode"] == "bank":
            if getattr(self, "_bank_cache", None) is None:  # path resolution costs more than a composite
                self._bank_cache = load_pose_bank(self.params["bank_dir"], self.version)
            bank = self._bank_cache
            style = color
            if style is None:
                styles = bank.styles(kind)
                if not styles:
                    raise ValueError(f"the pose bank at {bank.root} has no {kind!r} masks")
                style = styles[int(rng.integers(len(styles)))]
            candidates = bank.candidates(kind, style)
            if len(candidates) == 0:
                raise ValueError(
                    f"the pose bank at {bank.root} has no {kind!r} mask in style {style!r} (its styles: "
                    f"{', '.join(bank.styles(kind))}; occluder version {self.version}: harmonize=false uses the "
                    "version-1 bank unless version=2 is given)"
                )
            index = bank.nearest(candidates, pose["yaw"], pose["pitch"], pose["roll"])
            lm = np.asarray(landmarks, dtype=np.float64).tolist()
            base = similarity(bank.anchor_lists[index], lm)
            cx, cy = (lm[2][0] + lm[3][0] + lm[4][0]) / 3.0, (lm[2][1] + lm[3][1] + lm[4][1]) / 3.0
            matrix = compose_fast(base, cx, cy, scale, 0.0, 0.0, 0.0)
            warped = warp_roi(bank.templates[index].rgba, matrix, image.shape[:2], margin=_pad(feather))
            concrete.update(
                style=style,
                render=bank.renders[index]["file"],
                matrix=matrix.ravel().tolist(),
                bank_dir=None if self.params["bank_dir"] is None else str(self.params["bank_dir"]),
            )
        else:
            style = color if color is not None else DEFAULT_STYLES[kind][int(rng.integers(len(DEFAULT_STYLES[kind])))]
            style_key = tuple(style) if isinstance(style, (list, tuple)) else style
            parts = _direct_parts(kind, style_key, derive_seed(0, "mask3d-direct", kind, str(style_key)))
            warped = self._render_direct(parts, pose, scale, image.shape[:2], landmarks, rng)
            concrete.update(style=list(style_key) if isinstance(style_key, tuple) else style_key)
        out, mask, look = composite(image, warped, feather, landmarks, rng, self.params["harmonize"])
        if look is not None:
            concrete["harmonize"] = look
        return out, mask, concrete, warped

    def _render_direct(self, parts, pose, scale, shape, landmarks, rng):
        from occsynth.authoring.masks import (  # pyrender: optional
            _light,
            _projected_box,
            render_posed,
        )

        s = pose["scale"] * scale
        centre = np.asarray(landmarks, dtype=np.float64)[2:].mean(0)
        t = (pose["translation"] - centre) * scale + centre
        lo, hi = _projected_box(parts, pose["rotation"], s, t)
        h_img, w_img = shape
        x0, y0 = max(int(math.floor(lo[0])) - 2, 0), max(int(math.floor(lo[1])) - 2, 0)
        x1, y1 = min(int(math.ceil(hi[0])) + 3, w_img), min(int(math.ceil(hi[1])) + 3, h_img)
        if x1 <= x0 or y1 <= y0:
            return None
        rgba = render_posed(
            parts, pose["rotation"], s, t - [x0, y0], (x1 - x0, y1 - y0), _light(rng), int(self.params["supersample"])
        )
        return rgba, x0, y0

    def apply(self, image, landmarks, rng):
        out, mask, concrete, _ = self.render(image, landmarks, rng)
        return out, mask, concrete
