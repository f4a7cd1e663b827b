"""Occluders from third-party template sets, read in their own formats.

- `template_folder`: any folder of RGBA PNGs, placed at random over the face with a FROM-style
  size factor (template width = factor x face width, face width = FACE_WIDTH_IOD x the
  inter-ocular distance).
- `ocfr2022`: OCFR-2022's occluders/occlusions.csv. It has no header; its columns are
  path, region, width, height, left_eye, right_eye, nose, left_mouth, right_mouth (points as
  "x,y" in template pixels, width/height given only for the eye templates). As in OCFR-2022,
  "eye" templates anchor to both eyes, "upper_face"/"top_face" to the eyes and nose,
  "lower_face" to the nose and mouth corners, by a least-squares similarity; a region written
  as "!top_face!" is disabled upstream and skipped unless include_disabled=True.
- `maskthefaces`: MaskTheFace's masks/masks.cfg: per template six points mask_a..mask_f that
  MaskTheFace maps onto face points computed from 68 dlib landmarks with a homography (a, c:
  jaw at the nose-tip level; b: middle of the nose bridge; d, f: jaw at the lower-lip level;
  e: chin). Here they are estimated from 5 landmarks, see `maskthefaces_face_points`.

The mask is the warped template's alpha >= 0.5, as for every template occluder. Each takes
`harmonize` (default true: the layer is matched to the photo's light and image quality, see
occluders/harmonize.py; false: pasted as read, the behaviour before harmonisation).
"""

from __future__ import annotations

import configparser
import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from occsynth.assets.catalog import REGIONS
from occsynth.faces.geometry import (
    compose_about,
    face_axes,
    face_point,
    inter_ocular,
    similarity_matrix,
)
from occsynth.faces.pose import estimate_pose
from occsynth.occluders.base import register_occluder, sample_value
from occsynth.occluders.families.objects import (
    HARMONIZE_PARAM,
    Template,
    TemplateOccluder,
    _choose,
    load_rgba,
    make_template,
    region_centre,
)
from occsynth.occluders.params import anything, flag, number, word

FACE_WIDTH_IOD = 2.2  # face width (cheek to cheek) in inter-ocular distances, for size factors
OCFR_COLUMNS = ("path", "region", "width", "height", "left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
OCFR_REGIONS = {"eye": (0, 1), "upper_face": (0, 1, 2), "top_face": (0, 1, 2), "lower_face": (2, 3, 4)}
MTF_POINTS = ("mask_a", "mask_b", "mask_c", "mask_d", "mask_e", "mask_f")
MTF_YAW_DEG = 20.0  # beyond this estimated yaw the _left/_right template of a mask is used


@functools.lru_cache(maxsize=512)
def _template(path: str) -> Template:
    return make_template(Path(path).name, load_rgba(path))


# ----------------------------------------------------------------------------- template_folder


@functools.lru_cache(maxsize=16)
def folder_templates(path: str, recursive: bool = False) -> tuple[Template, ...]:
    """All PNGs of a folder (sorted by relative path), decoded once per process."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"template folder {root} does not exist")
    files = sorted(root.rglob("*.png") if recursive else root.glob("*.png"))
    if not files:
        raise FileNotFoundError(f"no PNG templates in {root}")
    return tuple(_template(str(f)) for f in files)


@register_occluder
class TemplateFolder(TemplateOccluder):
    """Random RGBA templates from a folder, sized by a fraction of the face width.

    Params: path, factor ([lo, hi]: template width / face width), rotation (degrees), region
    ("random" or a named region: where the template centre goes), recursive, feather (px),
    template (a file name: forces that template)."""

    family = "importer"
    name = "template_folder"
    defaults = {
        "path": None,
        "factor": [0.3, 0.6],
        "rotation": [-20.0, 20.0],
        "region": "random",
        "recursive": False,
        "feather": 1.0,
        "template": None,
        "harmonize": True,
    }
    legacy = {"harmonize": False}
    schema = {
        "path": anything("a folder of RGBA templates"),
        "factor": number(0.0, lo_open=True),
        "rotation": number(),
        "region": word(*REGIONS, lists=True),
        "recursive": flag(),
        "feather": number(0.0),
        "template": anything("a template file name (null: drawn)"),
        "harmonize": HARMONIZE_PARAM,
    }

    def place(self, image, landmarks, rng):
        if not self.params["path"]:
            raise ValueError("template_folder needs a path")
        if getattr(self, "_templates", None) is None:  # resolved once per occluder
            self._templates = folder_templates(str(Path(self.params["path"]).resolve()), bool(self.params["recursive"]))
        templates = self._templates
        if self.params["template"] is not None:
            matches = [t for t in templates if t.name == self.params["template"]]
            if not matches:
                raise KeyError(f"no template {self.params['template']!r} in {self.params['path']}")
            template = matches[0]
        else:
            template = templates[int(rng.integers(len(templates)))]
        factor = float(sample_value(self.params["factor"], rng))
        angle = float(sample_value(self.params["rotation"], rng))
        region = _choose(self.params["region"], rng)
        centre_f = region_centre(region, rng)
        centre = face_point(landmarks, [centre_f])[0]
        w, h = template.size
        scale = factor * FACE_WIDTH_IOD * inter_ocular(landmarks) / w
        _, ax, _ = face_axes(landmarks)
        roll = math.degrees(math.atan2(ax[1], ax[0]))  # follow the face's roll
        base = np.array([[1.0, 0.0, centre[0] - (w - 1) / 2], [0.0, 1.0, centre[1] - (h - 1) / 2]])
        matrix = compose_about(base, centre, scale, roll + angle, (0.0, 0.0))
        return (
            template,
            matrix,
            {
                "template": template.name,
                "factor": factor,
                "rotation": angle,
                "region": region,
                "centre": [float(c) for c in centre_f],
            },
        )


# ----------------------------------------------------------------------------- OCFR-2022


@dataclass(frozen=True)
class OcfrEntry:
    file: str
    region: str
    disabled: bool
    points: dict  # landmark index -> (x, y) in template pixels
    template: Template


def _ocfr_csv(path: str | Path) -> Path:
    p = Path(path)
    for candidate in (p, p / "occlusions.csv", p / "occluders" / "occlusions.csv"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no OCFR-2022 occlusions.csv at {p} (expected <root>/occluders/occlusions.csv)")


def _point(text: str) -> tuple[float, float] | None:
    text = (text or "").strip()
    if not text:
        return None
    x, y = (float(v) for v in text.split(","))
    return (x, y)


@functools.lru_cache(maxsize=8)
def load_ocfr(path: str) -> tuple[OcfrEntry, ...]:
    """Parse occlusions.csv and decode its templates (rows with an unknown region raise)."""
    csv_path = _ocfr_csv(path)
    entries = []
    with open(csv_path, newline="") as handle:
        for row in csv.reader(handle):
            if not row or not row[0].strip():
                continue
            row = (row + [""] * len(OCFR_COLUMNS))[: len(OCFR_COLUMNS)]
            fields = dict(zip(OCFR_COLUMNS, row))
            raw = fields["region"].strip()
            region = raw.strip("!")
            if region not in OCFR_REGIONS:
                raise ValueError(f"{csv_path}: unknown region {raw!r} for {fields['path']!r}")
            file = csv_path.parent / region / fields["path"].strip()
            template = _template(str(file))
            points = {}
            for index in OCFR_REGIONS[region]:
                p = _point(fields[OCFR_COLUMNS[4 + index]])
                if p is None:
                    raise ValueError(
                        f"{csv_path}: {fields['path']} ({region}) lacks its {OCFR_COLUMNS[4 + index]} point"
                    )
                points[index] = p
            # eye templates state their size; anchors refer to that size
            if fields["width"].strip() and fields["height"].strip():
                sx = template.size[0] / float(fields["width"])
                sy = template.size[1] / float(fields["height"])
                points = {k: (x * sx, y * sy) for k, (x, y) in points.items()}
            entries.append(OcfrEntry(fields["path"].strip(), region, raw.startswith("!"), points, template))
    if not entries:
        raise ValueError(f"{csv_path} lists no occluders")
    return tuple(entries)


@register_occluder
class Ocfr2022(TemplateOccluder):
    """OCFR-2022 occluders anchored as in its generator.

    Params: path (OCFR-2022 root, its occluders/ folder or the csv), region (None = any, a
    region name, a list or {"choice": [...]}), include_disabled, anchor_jitter (std of the
    x shift of each anchor, as a fraction of the anchors' span; OCFR-2022 uses 0.05),
    feather (px), template (a file name: forces that template)."""

    family = "importer"
    name = "ocfr2022"
    defaults = {
        "path": None,
        "region": None,
        "include_disabled": False,
        "anchor_jitter": 0.05,
        "feather": 1.0,
        "template": None,
        "harmonize": True,
    }
    legacy = {"harmonize": False}
    schema = {
        "path": anything("the OCFR-2022 root, its occluders/ folder or its csv"),
        "region": anything("a region name of the csv, a list or {choice: [...]} (null: any)"),
        "include_disabled": flag(),
        "anchor_jitter": number(0.0),
        "feather": number(0.0),
        "template": anything("a template file name (null: drawn)"),
        "harmonize": HARMONIZE_PARAM,
    }

    def place(self, image, landmarks, rng):
        if not self.params["path"]:
            raise ValueError("ocfr2022 needs a path")
        if getattr(self, "_entries", None) is None:  # resolved once per occluder
            self._entries = load_ocfr(str(Path(self.params["path"]).resolve()))
        entries = self._entries
        if self.params["template"] is not None:
            pool = [e for e in entries if e.file == self.params["template"]]
        else:
            region = self.params["region"]
            if isinstance(region, dict):
                region = sample_value(region, rng)
            regions = None if region is None else ((region,) if isinstance(region, str) else tuple(region))
            pool = [
                e
                for e in entries
                if (self.params["include_disabled"] or not e.disabled) and (regions is None or e.region in regions)
            ]
        if not pool:
            raise ValueError(
                f"no OCFR-2022 templates match region={self.params['region']!r} template={self.params['template']!r}"
            )
        entry = pool[int(rng.integers(len(pool)))]
        indices = sorted(entry.points)
        src = np.array([entry.points[i] for i in indices], dtype=np.float64)
        jitter = float(sample_value(self.params["anchor_jitter"], rng))
        if jitter > 0:
            span = float(np.ptp(src[:, 0])) or float(entry.template.size[0])
            src[:, 0] += rng.normal(0.0, jitter * span, size=len(src))
        dst = np.asarray(landmarks, dtype=np.float64)[indices]
        matrix = similarity_matrix(src, dst)
        return (
            entry.template,
            matrix,
            {"template": entry.file, "region": entry.region, "anchor_jitter": jitter, "anchors": src.tolist()},
        )


# ----------------------------------------------------------------------------- MaskTheFace


@dataclass(frozen=True)
class MtfEntry:
    name: str
    points: np.ndarray  # (6, 2): mask_a .. mask_f in template pixels
    template: Template


def _mtf_root(path: str | Path) -> tuple[Path, Path]:
    """(the cfg file, the folder its template paths are relative to)."""
    p = Path(path)
    for cfg in (p, p / "masks.cfg", p / "masks" / "masks.cfg"):
        if cfg.is_file():
            # template paths read "masks/templates/x.png": relative to the folder above masks/
            return cfg, cfg.parent.parent
    raise FileNotFoundError(f"no MaskTheFace masks.cfg at {p} (expected <root>/masks/masks.cfg)")


@functools.lru_cache(maxsize=8)
def load_maskthefaces(path: str) -> dict[str, MtfEntry]:
    """Parse masks.cfg; sections without a template or all six points are skipped."""
    cfg_path, root = _mtf_root(path)
    parser = configparser.ConfigParser(strict=False, inline_comment_prefixes=None)
    parser.read(cfg_path)
    entries = {}
    for name in parser.sections():
        section = parser[name]
        if "template" not in section or not all(k in section for k in MTF_POINTS):
            continue
        points = np.array([[float(v) for v in section[k].split(",")] for k in MTF_POINTS], dtype=np.float64)
        file = root / section["template"].strip()
        entries[name] = MtfEntry(name, points, _template(str(file)))
    if not entries:
        raise ValueError(f"{cfg_path} defines no usable mask templates")
    return entries


def maskthefaces_face_points(landmarks: np.ndarray) -> np.ndarray:
    """MaskTheFace's six face points (a..f) estimated from 5 landmarks.

    With E the eye midpoint, M the mouth midpoint, N the nose tip, u the unit eye-to-eye
    direction and iod the eye distance, on the face midline E + t (M - E):
      b = E + 0.5 (N - E)                       middle of the nose bridge
      a, c = L_n -/+ 1.0 iod u (yaw-weighted)    jaw at the nose-tip level L_n
      d, f = L_l -/+ 0.9 iod u (yaw-weighted)    jaw at the lower-lip level L_l = E + 1.18 (M - E)
      e = E + 1.55 (M - E) + 0.5 (N - L_n)       chin (menton), following the nose under yaw
    Yaw weighting: o = (N - L_n).u / iod is how far the nose points sideways; the half-width on
    that (far) side shrinks by 1.2 o and the near side grows by as much. The ratios are
    anthropometric means in inter-ocular units (cheek-to-cheek ~2 iod, menton ~0.55 of the
    eye-mouth distance below the mouth)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    e, ex, ey = face_axes(lm)
    iod = float(np.hypot(*ex))
    u = ex / iod
    down = np.array([-u[1], u[0]])
    nose = lm[2]
    t_n = float(np.dot(nose - e, down) / max(np.dot(ey, down), 1e-9))
    level_n = e + t_n * ey
    level_l = e + 1.18 * ey
    o = float(np.dot(nose - level_n, u) / iod)
    grow_left, grow_right = np.clip(1 + 1.2 * o, 0.3, 1.7), np.clip(1 - 1.2 * o, 0.3, 1.7)
    a = level_n - 1.0 * iod * grow_left * u
    c = level_n + 1.0 * iod * grow_right * u
    d = level_l - 0.9 * iod * grow_left * u
    f = level_l + 0.9 * iod * grow_right * u
    b = e + 0.5 * (nose - e)
    chin = e + 1.55 * ey + 0.5 * (nose - level_n)
    return np.array([a, b, c, d, chin, f])


def _yaw(landmarks: np.ndarray) -> float:
    return float(estimate_pose(landmarks)["yaw"])


@register_occluder
class MaskTheFace(TemplateOccluder):
    """MaskTheFace mask templates warped onto the lower face by a homography.

    Params: path (MaskTheFace root, its masks/ folder or masks.cfg), mask (a base name such as
    "surgical_blue", a list or {"choice": [...]}; None = any frontal template), pose_variants
    (use the "<name>_left"/"<name>_right" template when the estimated yaw passes
    MTF_YAW_DEG, as MaskTheFace does), feather (px)."""

    family = "importer"
    name = "maskthefaces"
    perspective = True
    defaults = {"path": None, "mask": None, "pose_variants": True, "feather": 1.0, "harmonize": True}
    legacy = {"harmonize": False}
    schema = {
        "path": anything("the MaskTheFace root, its masks/ folder or masks.cfg"),
        "mask": anything("a mask name of masks.cfg, a list or {choice: [...]} (null: any)"),
        "pose_variants": flag(),
        "feather": number(0.0),
        "harmonize": HARMONIZE_PARAM,
    }

    def place(self, image, landmarks, rng):
        if not self.params["path"]:
            raise ValueError("maskthefaces needs a path")
        if getattr(self, "_entries", None) is None:  # resolved once per occluder
            self._entries = load_maskthefaces(str(Path(self.params["path"]).resolve()))
        entries = self._entries
        bases = sorted(n for n in entries if not n.endswith(("_left", "_right")))
        choice = self.params["mask"]
        if choice is None:
            name = bases[int(rng.integers(len(bases)))]
        else:
            name = _choose(choice, rng)
            if name not in entries:
                raise KeyError(f"no mask {name!r} in {self.params['path']}; known: {', '.join(sorted(entries))}")
        yaw = _yaw(landmarks)
        if self.params["pose_variants"] and abs(yaw) > MTF_YAW_DEG:
            turned = f"{name}_{'right' if yaw > 0 else 'left'}"
            name = turned if turned in entries else name
        entry = entries[name]
        dst = maskthefaces_face_points(landmarks)
        matrix, fit = _mask_transform(entry, dst)
        return (
            entry.template,
            matrix,
            {"mask": name, "yaw": round(yaw, 2), "fit": fit, "face_points": dst.round(3).tolist()},
        )


def _mask_transform(entry: MtfEntry, dst: np.ndarray) -> tuple[np.ndarray, str]:
    """The homography of the six points, or (when it would fold the template or send part of
    it to infinity, e.g. a turned template forced onto a frontal face) their affine fit."""
    matrix, _ = cv2.findHomography(entry.points, dst, 0)
    if matrix is not None:
        w, h = entry.template.size
        corners = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], dtype=np.float64)
        p = corners @ matrix.T
        if np.all(p[:, 2] > 0.1 * abs(matrix[2, 2])):
            q = p[:, :2] / p[:, 2:]
            edges = np.roll(q, -1, 0) - q
            turns = edges[:, 0] * np.roll(edges, -1, 0)[:, 1] - edges[:, 1] * np.roll(edges, -1, 0)[:, 0]
            if np.all(turns > 0) or np.all(turns < 0):  # still a convex quadrilateral
                return matrix, "homography"
    src = np.c_[entry.points, np.ones(len(entry.points))]
    affine = np.linalg.lstsq(src, dst, rcond=None)[0].T
    return np.vstack([affine, [0.0, 0.0, 1.0]]), "affine"


__all__ = [
    "FACE_WIDTH_IOD",
    "MaskTheFace",
    "Ocfr2022",
    "TemplateFolder",
    "folder_templates",
    "load_maskthefaces",
    "load_ocfr",
    "maskthefaces_face_points",
]
