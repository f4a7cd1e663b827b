"""The project's own occluder template bank: procedural 3D objects rendered to RGBA PNGs.

Every template is made here from a seed: trimesh geometry (lenses and frames, a revolved mug
with a swept handle, rounded slabs for phones and books, a hand of palm + finger capsules, a
cap of crown + brim, cloth sheets for scarves and masks, ...), procedural textures, a random
pose and light, rendered with pyrender (see authoring/render.py) and cropped to its alpha bounding box.
Nothing is taken from other projects' template sets.

Anchors. Each template carries reference points in its own pixels and the face points they
belong on, in the FACE FRAME shared with the object occluder:

    F(fx, fy) = E + fx * (right_eye - left_eye) + fy * (mouth_mid - E),   E = eye midpoint

so (-0.5, 0) / (0.5, 0) are the eyes, (0, 1) the mouth centre, (0, ~0.5) the nose tip.
Objects worn on the face (glasses, masks, hats, scarves) are modelled in centimetres in that
frame (IOD_CM between the eyes, EYE_MOUTH_CM from eyes to mouth) and their anchors are points
of the object itself (the pupils behind the lenses, ...). Hand-held objects anchor in the view
frame instead: a key point (the mug's centre, the microphone grille) plus a horizontal
reference width, so that the object keeps its rolled pose and its physical size
(ref_width_cm / IOD_CM inter-ocular distances).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.draw import polygon as draw_polygon

from occsynth.assets.catalog import BANK_FILE, BANK_FORMAT, CATEGORIES, default_bank_dir
from occsynth.authoring.masks import face_mask_parts, model_to_face_cm
from occsynth.authoring.meshes import (
    FABRIC,
    SKIN,
    _fabric_texture,
    _jitter_color,
    _pick,
    _to_u8,
    capsule,
    ellipsoid,
    euler_matrix,
    grid_faces,
    make_mesh,
    revolve,
    rigid,
    rounded_rect,
    shape_sheet,
    sheet,
    slab,
    superellipse,
    tex_knit,
    tex_noise,
    tube,
)
from occsynth.authoring.render import Light, Part, render_rgba
from occsynth.io.atomic import write_text
from occsynth.seeding import derive_seed, make_rng

IOD_CM = 6.3
EYE_MOUTH_CM = 7.3
DEFAULT_VARIANTS = 10
VARIANTS = {"surgical_mask": 20}  # categories with more than DEFAULT_VARIANTS templates
EVAL_FRACTION = 0.3
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
HEAD_PIVOT = np.array([0.0, -2.0, -9.0])  # worn objects turn with the head about this point


# ----------------------------------------------------------------------------- objects


@dataclass
class Model:
    """One variant: parts in its viewing pose plus how its anchors are defined."""

    parts: list
    region: str
    # worn objects: 3D anchor points (posed) and their face-frame targets
    anchor_points: np.ndarray | None = None
    face_points: np.ndarray | None = None
    # held objects: posed key point, its face-frame target and a reference width in cm
    key_point: np.ndarray | None = None
    key_face: tuple[float, float] | None = None
    ref_width_cm: float = 0.0
    landmarks: tuple[str, ...] = ("left_eye", "right_eye")
    pose: tuple[float, float, float] = (0.0, 0.0, 0.0)
    style: str = ""
    depth_cm: float = 0.0  # worn objects: mean depth of the unposed anchors (face frame, z toward the viewer)
    # worn objects: how a turned head shows them: "plane" (glasses, eye masks, face masks:
    # foreshortened across) or "round" (hats, scarves: about as wide from any side)
    turn: str = "plane"


def _face_points(points: np.ndarray) -> np.ndarray:
    """Face-frame coordinates of points modelled in face centimetres (y up)."""
    points = np.asarray(points, dtype=np.float64)
    return np.column_stack([points[:, 0] / IOD_CM, -points[:, 1] / EYE_MOUTH_CM])


def _worn(parts, anchors, rng, region, landmarks, yaw=12.0, pitch=6.0, roll=4.0, style="", turn="plane"):
    """Pose a worn object with the head (about HEAD_PIVOT); anchors follow the object."""
    angles = (float(rng.uniform(-yaw, yaw)), float(rng.uniform(-pitch, pitch)), float(rng.uniform(-roll, roll)))
    m = rigid(euler_matrix(*angles), HEAD_PIVOT)
    posed = [p.transformed(m) if isinstance(p, Part) else p for p in parts]
    anchors = np.asarray(anchors, dtype=np.float64)
    moved = anchors @ m[:3, :3].T + m[:3, 3]
    return Model(
        posed,
        region,
        anchor_points=moved,
        face_points=_face_points(anchors),
        landmarks=landmarks,
        pose=angles,
        style=style,
        depth_cm=float(anchors[:, 2].mean()),
        turn=turn,
    )


def _held(parts, key_point, key_face, ref_width_cm, angles, region, style=""):
    """Pose a hand-held object about its key point; its anchors stay horizontal on screen."""
    m = rigid(euler_matrix(*angles), key_point)
    posed = [p.transformed(m) for p in parts]
    return Model(
        posed,
        region,
        key_point=np.asarray(key_point, float),
        key_face=key_face,
        ref_width_cm=ref_width_cm,
        landmarks=LANDMARK_NAMES[:2] + LANDMARK_NAMES[3:],
        pose=tuple(angles),
        style=style,
    )


def _lens_outline(rng: np.random.Generator, shape: str, w: float, h: float) -> np.ndarray:
    """Outline of the RIGHT lens (outer side at +x), counter-clockwise, centred at 0."""
    n = 72
    if shape == "round":
        pts = superellipse(n, w / 2, h / 2, 2.0)
    elif shape == "rect":
        pts = superellipse(n, w / 2, h / 2, 4.5)
    elif shape == "wayfarer":
        pts = superellipse(n, w / 2, h / 2, 3.5)
        pts[:, 0] *= 1.0 + 0.12 * pts[:, 1] / (h / 2)  # wider at the top
        pts[:, 1] += 0.12 * h * np.clip(pts[:, 0] / (w / 2), 0, 1) ** 2 * (pts[:, 1] > 0)
    elif shape == "aviator":
        pts = superellipse(n, w / 2, h / 2, 2.3)
        low = pts[:, 1] < 0
        pts[low, 1] *= 1.0 + 0.3 * np.clip(0.5 + pts[low, 0] / w, 0, 1)  # teardrop toward the outside
        pts[:, 1] += 0.08 * h
    else:  # cat-eye: the outer top corner swept up
        pts = superellipse(n, w / 2, h / 2, 2.6)
        pts[:, 1] += 0.25 * h * np.clip(pts[:, 0] / (w / 2), 0, 1) ** 3 * (pts[:, 1] > -0.2 * h)
    return pts


def _lens_texture(rng: np.random.Generator, tint, size: int = 64) -> np.ndarray:
    """A tinted lens as a camera sees it: darker at the top (gradient tint), with the soft
    reflection of a bright sky or window across it and, sometimes, a mirror coating's colour."""
    v = np.linspace(1.0, 0.0, size)[:, None]  # uv v: 1 at the top
    u = np.linspace(0.0, 1.0, size)[None, :]
    tint = np.asarray(tint, dtype=np.float64)
    img = tint * (0.75 + 0.6 * (1 - v[..., None]) ** 1.5)
    angle, offset, width = float(rng.uniform(0.4, 1.1)), float(rng.uniform(0.25, 0.75)), float(rng.uniform(0.08, 0.2))
    band = np.exp(-0.5 * (((u * math.cos(angle) + v * math.sin(angle)) - offset) / width) ** 2)
    sky = np.array(_pick(rng, [(0.75, 0.82, 0.95), (0.9, 0.88, 0.8), (0.6, 0.75, 0.9)]))
    img = img + float(rng.uniform(0.12, 0.35)) * band[..., None] * sky
    if rng.random() < 0.3:  # a mirror coating
        coat = np.array(_pick(rng, [(0.9, 0.5, 0.15), (0.2, 0.5, 0.9), (0.75, 0.75, 0.8), (0.7, 0.2, 0.6)]))
        img = img * 0.6 + 0.25 * coat * (0.6 + 0.4 * v[..., None])
    return _to_u8(np.clip(img, 0, 1))


def build_glasses(rng: np.random.Generator, dark: bool):
    """Two lenses (slabs), rims swept around them, a bridge and temples; wrapped slightly."""
    shape = _pick(
        rng,
        ["round", "rect", "wayfarer", "aviator", "cateye"]
        if dark
        else ["round", "rect", "wayfarer", "cateye", "round"],
    )
    w = float(rng.uniform(4.7, 5.6))
    h = float(rng.uniform(3.3, 4.4)) if shape != "round" else w * float(rng.uniform(0.85, 1.0))
    bridge = float(rng.uniform(1.4, 2.1))
    cx = (w + bridge) / 2
    pupil_y = float(rng.uniform(0.0, 0.4))  # lenses sit a little below the pupils
    plastic = bool(rng.random() < 0.6)
    rim_r = float(rng.uniform(0.16, 0.28)) if plastic else float(rng.uniform(0.06, 0.09))
    frame_colors = [(0.03, 0.03, 0.03), (0.25, 0.12, 0.05), (0.6, 0.05, 0.08), (0.05, 0.08, 0.3), (0.85, 0.85, 0.82)]
    metal_colors = [(0.85, 0.68, 0.32), (0.78, 0.78, 0.8), (0.25, 0.25, 0.27)]
    frame_color = _jitter_color(rng, _pick(rng, frame_colors if plastic else metal_colors), 0.03)
    frame_kw = dict(metallic=0.05, roughness=0.35) if plastic else dict(metallic=1.0, roughness=0.25)

    def wrap(v):
        v = np.array(v, dtype=np.float64)
        v[:, 2] -= 0.018 * v[:, 0] ** 2  # the frame follows the face's curvature
        return v

    right = _lens_outline(rng, shape, w, h)
    parts = []
    if dark:
        lens_color = _pick(
            rng, [(0.04, 0.04, 0.05), (0.16, 0.09, 0.04), (0.04, 0.09, 0.06), (0.05, 0.08, 0.2), (0.3, 0.3, 0.32)]
        )
        lens_kw = dict(
            color=(1.0, 1.0, 1.0),
            metallic=float(rng.uniform(0.0, 0.35)),
            roughness=float(rng.uniform(0.15, 0.35)),
            texture=_lens_texture(make_rng(int(rng.integers(1 << 62))), lens_color),
        )
    else:
        lens_kw = dict(color=(0.85, 0.9, 0.95), metallic=0.0, roughness=0.05, opacity=float(rng.uniform(0.1, 0.2)))
    tops = []
    for side in (-1, 1):
        outline = right.copy()
        if side < 0:
            outline = outline[::-1] * [-1, 1]
        outline = outline + [side * cx, -pupil_y]
        lens, uv = slab(outline, 0.12, bend=wrap)
        parts.append(Part(lens, uv=uv if dark else None, **lens_kw))
        rim_path = np.column_stack(
            [outline * 1.0 + np.sign(outline - [side * cx, -pupil_y]) * 0.0, np.zeros(len(outline))]
        )
        rim = tube(wrap(rim_path), rim_r, sides=10, closed=True)
        parts.append(Part(rim, color=frame_color, **frame_kw))
        top_outer = outline[np.argmax(outline[:, 1] + 0.3 * side * outline[:, 0])]
        top_inner = outline[np.argmax(outline[:, 1] - 0.6 * side * outline[:, 0])]
        tops.append((top_inner, top_outer))
        # temple: from the outer top corner straight back along the head
        x0, y0 = top_outer
        temple = np.array(
            [
                [x0, y0 - 0.2, 0],
                [x0 + side * 0.35, y0 - 0.25, -0.8],
                [x0 + side * 0.55, y0 - 0.4, -6],
                [x0 + side * 0.6, y0 - 0.9, -13],
            ]
        )
        parts.append(Part(tube(wrap(temple), rim_r * 0.9, sides=8), color=frame_color, **frame_kw))
    (li, _), (ri, _) = tops
    arch = float(rng.uniform(0.1, 0.5))
    t = np.linspace(0, 1, 12)
    bridge_path = np.column_stack(
        [li[0] + (ri[0] - li[0]) * t, li[1] - 0.35 + arch * np.sin(np.pi * t), 0.15 * np.sin(np.pi * t)]
    )
    parts.append(Part(tube(wrap(bridge_path), rim_r * 0.9, sides=8), color=frame_color, **frame_kw))
    if shape == "aviator":  # the double bar
        bar = bridge_path.copy()
        bar[:, 1] = max(li[1], ri[1]) - 0.05
        parts.append(Part(tube(wrap(bar), rim_r * 0.7, sides=8), color=frame_color, **frame_kw))
    anchors = np.array([[-IOD_CM / 2, 0, 0], [IOD_CM / 2, 0, 0]])
    return parts, anchors, f"{shape}/{'plastic' if plastic else 'metal'}"


def _model_sunglasses(rng):
    parts, anchors, style = build_glasses(rng, dark=True)
    return _worn(parts, anchors, rng, "eyes", ("left_eye", "right_eye"), yaw=15, pitch=8, roll=3, style=style)


def _model_eyeglasses(rng):
    parts, anchors, style = build_glasses(rng, dark=False)
    return _worn(parts, anchors, rng, "eyes", ("left_eye", "right_eye"), yaw=15, pitch=8, roll=3, style=style)


def _model_scarf(rng):
    """A cloth sheet wrapped around the lower face on a cylinder, with drape folds."""
    top = -float(rng.uniform(2.0, 4.0))  # top edge between the nose bridge and just under the nose tip
    depth = 16.0
    radius = float(rng.uniform(7.5, 8.8))
    span = math.radians(float(rng.uniform(88, 100)))
    folds = int(rng.integers(4, 8))
    phase = float(rng.uniform(0, 2 * np.pi))
    amp = float(rng.uniform(0.15, 0.4))

    def surface(u, v):
        theta = (u * 2 - 1) * span
        down = 1 - v
        r = radius + 0.9 + amp * np.sin(folds * theta + phase) * (0.3 + down) + 0.8 * down
        x = r * np.sin(theta)
        z = r * np.cos(theta) - radius + 1.0 + 1.6 * np.exp(-((theta / 0.5) ** 2)) * np.exp(-down * 3)
        sag = 0.9 * (1 - np.cos(theta)) + 0.25 * np.sin(
            3 * theta + phase
        )  # stretched over the nose, sagging at the cheeks
        y = top - sag - depth * down
        return np.column_stack([x, y, z])

    mesh, uv = sheet(72, 40, surface)
    texture, kind = _fabric_texture(rng)
    parts = [Part(mesh, color=(1, 1, 1), roughness=0.9, texture=texture, uv=uv * [3.0, 2.5])]
    # a rolled top edge reads as thick cloth
    t = np.linspace(0, 1, 60)
    edge = surface(t, np.ones_like(t)) + [0, 0.1, 0.15]
    parts.append(
        Part(
            tube(edge, 0.35, sides=10),
            color=(1, 1, 1),
            roughness=0.9,
            texture=texture,
            uv=np.zeros((60 * 10 + 2, 2)) + 0.3,
        )
    )
    anchors = surface(np.array([0.32, 0.68]), np.array([1.0, 1.0]))
    return _worn(parts, anchors, rng, "lower_face", LANDMARK_NAMES, yaw=10, pitch=5, roll=4, style=kind, turn="round")


def _model_surgical_mask(rng):
    kind = _pick(rng, ["surgical", "surgical", "kn95", "n95", "cloth"])
    parts, anchors = face_mask_parts(kind, rng, straps="front")  # no head here to hide the rest
    m = model_to_face_cm()
    parts = [p.transformed(m) for p in parts]
    anchors = anchors @ m[:3, :3].T + m[:3, 3]
    return _worn(parts, anchors, rng, "lower_face", LANDMARK_NAMES, yaw=10, pitch=5, roll=3, style=kind)


def _model_cup(rng):
    """A mug: a revolved profile (wall, rim, base) with a swept handle and a drink inside."""
    r0, r1, height, wall = (
        float(rng.uniform(3.6, 4.0)),
        float(rng.uniform(3.9, 4.4)),
        float(rng.uniform(8.5, 10.5)),
        0.35,
    )
    ys = np.linspace(0.3, height, 48)
    outer = np.column_stack([r0 + (r1 - r0) * ys / height, ys])
    inner = np.column_stack([outer[::-1, 0] - wall, ys[::-1]])
    profile = np.concatenate(
        [[[0.0, 0.0], [r0 - 0.2, 0.0], [r0, 0.15]], outer, [[r1 - wall / 2, height + 0.12]], inner, [[0.0, 0.5]]]
    )
    mesh, param = revolve(profile, 72)
    base = np.array(_jitter_color(rng, _pick(rng, FABRIC + [(0.95, 0.95, 0.93)] * 3), 0.04))
    accent = np.array(_pick(rng, FABRIC))
    style = _pick(rng, ["plain", "band", "two_tone", "dots", "speckle"])
    y = mesh.vertices[:, 1]
    ang = param[:, 0]
    colors = np.tile(base, (len(y), 1))
    is_outer = np.repeat(np.arange(len(profile)), 72) < 3 + len(outer)
    if style == "band":
        band = (np.abs(y - height * 0.55) < height * 0.12) & is_outer
        colors[band] = accent
    elif style == "two_tone":
        colors[~is_outer] = accent
    elif style == "dots":
        colors[is_outer & ((np.sin(ang * 2 * np.pi * 9) * np.sin(y * 2.2)) > 0.75)] = accent
    elif style == "speckle":
        colors *= 1 - 0.25 * (make_rng(int(rng.integers(1 << 30))).random(len(y)) < 0.08)[:, None]
    parts = [Part(mesh, color=(1, 1, 1), roughness=0.25, metallic=0.0, vertex_colors=colors)]
    t = np.linspace(-0.1, np.pi + 0.1, 24)
    hx = r1 - 0.2 + 2.6 * np.sin(t)
    hy = height * 0.5 + height * 0.3 * np.cos(t)
    parts.append(
        Part(tube(np.column_stack([hx, hy, np.zeros_like(t)]), 0.45, sides=10), color=tuple(base), roughness=0.25)
    )
    drink = _pick(rng, [(0.25, 0.13, 0.06), (0.45, 0.28, 0.15), (0.9, 0.85, 0.75)])
    parts.append(
        Part(
            slab(superellipse(48, r1 - wall - 0.05, r1 - wall - 0.05), 0.05)[0]
            .apply_transform(rigid(euler_matrix(0, -90, 0)) @ np.diag([1, 1, 1, 1.0]))
            .apply_translation([0, height - 1.2, 0]),
            color=drink,
            roughness=0.2,
        )
    )
    if rng.random() < 0.5:  # handle on the left
        parts = [p.transformed(rigid(euler_matrix(180, 0, 0), (0, 0, 0))) for p in parts]
    angles = (float(rng.uniform(-35, 35)), float(rng.uniform(5, 25)), float(rng.uniform(-25, 25)))
    return _held(
        parts,
        (0.0, height * 0.5, 0.0),
        (float(rng.uniform(-0.15, 0.15)), float(rng.uniform(1.0, 1.2))),
        2 * r1,
        angles,
        "mouth",
        style,
    )


def _model_hand(rng):
    """A hand seen from its back: an ellipsoid palm, finger capsules (two segments, curled
    away from the viewer) and a thumb."""
    skin = _jitter_color(rng, _pick(rng, SKIN), 0.03)
    side = 1 if rng.random() < 0.5 else -1  # which hand: the thumb's side
    parts = [Part(ellipsoid((4.1, 4.8, 1.5), (0, 0, 0), 3), color=skin, roughness=0.55)]
    bases = [-2.75, -0.92, 0.92, 2.75]
    lengths = [6.0, 7.4, 7.9, 7.2]  # little .. index (the index sits next to the thumb)
    radii = [0.72, 0.82, 0.86, 0.84]
    spread = float(rng.uniform(0, 6))
    curl = float(rng.uniform(0.1, 0.6))
    for i, (bx, ln, r) in enumerate(zip(bases, lengths, radii)):
        bx = bx * side
        ang = math.radians((i - 1.5) * spread * side)
        d = np.array([math.sin(ang), math.cos(ang), 0.0])
        p0 = np.array([bx, 3.6, 0.1])
        p1 = p0 + d * ln * 0.55
        p2 = p1 + (d * math.cos(curl) + np.array([0, 0, -math.sin(curl)])) * ln * 0.45
        parts.append(Part(capsule(p0, p1, r), color=skin, roughness=0.55))
        parts.append(Part(capsule(p1, p2, r * 0.92), color=skin, roughness=0.55))
    t0 = np.array([3.4 * side, -1.8, 0.2])
    t1 = t0 + np.array([1.9 * side, 2.2, 0.4])
    t2 = t1 + np.array([0.9 * side, 2.4, 0.2])
    parts.append(Part(capsule(t0, t1, 1.05), color=skin, roughness=0.55))
    parts.append(Part(capsule(t1, t2, 0.9), color=skin, roughness=0.55))
    pose = _pick(rng, ["up", "tilted", "tilted", "across"])
    # over the mouth the palm sits low, so that the fingers reach the nose and cheeks, not the eyes
    if pose == "up":
        angles, face = (
            (float(rng.uniform(-20, 20)), float(rng.uniform(-10, 10)), float(rng.uniform(-12, 12))),
            (0.0, 1.6),
        )
        region = "lower_face"
    elif pose == "tilted":
        angles, face = (
            (float(rng.uniform(-20, 20)), float(rng.uniform(-10, 10)), float(side * rng.uniform(45, 70))),
            (float(side * 0.35), 1.25),
        )
        region = "mouth"
    else:
        angles, face = (
            (float(rng.uniform(-15, 15)), float(rng.uniform(-10, 10)), float(side * rng.uniform(75, 95))),
            (float(-side * 0.3), 0.0),
        )
        region = "eyes"
    return _held(parts, (0.0, 1.0, 0.0), face, 8.4, angles, region, f"{pose}/{'right' if side > 0 else 'left'}")


def _screen_texture(rng, w=96, h=200) -> np.ndarray:
    """A phone screen: wallpaper gradient with rows of app icons, or a dark glossy screen."""
    if rng.random() < 0.3:
        return tex_noise(rng, 64, (0.03, 0.03, 0.05), 0.3)
    c0, c1 = np.array(_pick(rng, FABRIC)), np.array(_pick(rng, FABRIC))
    t = np.linspace(0, 1, h)[:, None, None]
    img = np.broadcast_to(c0 * (1 - t) + c1 * t, (h, w, 3)).copy()
    icon = w // 5
    for row in range(5):
        for col in range(4):
            if rng.random() < 0.85:
                y0, x0 = 30 + row * (icon + 10), 6 + col * (icon + 6)
                img[y0 : y0 + icon, x0 : x0 + icon] = np.array(_pick(rng, FABRIC)) * 1.1
    img[:8] *= 0.3  # status bar
    return _to_u8(np.clip(img, 0, 1))


def _model_phone(rng):
    """A rounded slab body with an inset screen (front) or camera bump (back)."""
    w, h, d = float(rng.uniform(6.8, 7.8)), float(rng.uniform(14.0, 16.0)), float(rng.uniform(0.75, 0.95))
    body_color = _jitter_color(
        rng,
        _pick(
            rng,
            [
                (0.05, 0.05, 0.06),
                (0.75, 0.75, 0.78),
                (0.15, 0.25, 0.45),
                (0.85, 0.7, 0.65),
                (0.9, 0.9, 0.9),
                (0.2, 0.35, 0.25),
            ],
        ),
        0.03,
    )
    body, _ = slab(rounded_rect(w, h, 1.0), d)
    parts = [Part(body, color=body_color, metallic=0.6, roughness=0.3)]
    front = rng.random() < 0.55
    if front:
        screen, uv = slab(rounded_rect(w - 0.5, h - 0.6, 0.7), 0.02)
        screen.apply_translation([0, 0, d / 2 + 0.01])
        parts.append(Part(screen, color=(1, 1, 1), roughness=0.08, metallic=0.1, texture=_screen_texture(rng), uv=uv))
    else:
        bump, _ = slab(rounded_rect(2.8, 2.8, 0.7), 0.25)
        bump.apply_translation([-w / 2 + 2.0, h / 2 - 2.0, -d / 2 - 0.12])
        parts.append(Part(bump, color=tuple(np.array(body_color) * 0.8), metallic=0.6, roughness=0.3))
        for dx, dy in ((-0.65, 0.65), (0.65, 0.65), (-0.65, -0.65)):
            lens, _ = slab(superellipse(32, 0.5, 0.5), 0.12)
            lens.apply_translation([-w / 2 + 2.0 + dx, h / 2 - 2.0 + dy, -d / 2 - 0.3])
            parts.append(Part(lens, color=(0.02, 0.02, 0.03), metallic=0.5, roughness=0.05))
        parts = [p.transformed(rigid(euler_matrix(180, 0, 0))) for p in parts]
    landscape = rng.random() < 0.25
    roll = float(rng.uniform(-30, 30)) + (90.0 if landscape else 0.0)
    angles = (float(rng.uniform(-35, 35)), float(rng.uniform(-20, 20)), roll)
    return _held(
        parts,
        (0.0, 0.0, 0.0),
        (float(rng.uniform(-0.3, 0.3)), float(rng.uniform(0.9, 1.3))),
        w if not landscape else w,
        angles,
        "lower_face",
        "front" if front else "back",
    )


def _cover_texture(rng, size=256) -> np.ndarray:
    base = _jitter_color(rng, _pick(rng, FABRIC), 0.05)
    img = tex_noise(rng, size, base, 0.08).astype(np.float64) / 255
    accent = np.array(_pick(rng, FABRIC + [(0.95, 0.9, 0.6)]))
    y0 = int(rng.uniform(0.15, 0.35) * size)
    img[y0 : y0 + size // 7, size // 8 : -size // 8] = accent  # title block
    img[int(size * 0.8) : int(size * 0.84), size // 4 : -size // 4] = accent * 0.8  # author line
    if rng.random() < 0.5:
        img[size // 20 : size // 20 + 3, :] = accent
        img[-size // 20 - 3 : -size // 20, :] = accent
    return _to_u8(img)


def _model_book(rng):
    """Covers and a page block as textured quads/slabs; held up in front of the lower face."""
    w, h, d = float(rng.uniform(13, 16)), float(rng.uniform(19, 23)), float(rng.uniform(1.5, 3.5))
    cover = _cover_texture(rng)
    c = 0.15
    front, uv = slab(rounded_rect(w, h, 0.15, 3), c)
    front.apply_translation([0, 0, d / 2 - c / 2])
    back, _ = slab(rounded_rect(w, h, 0.15, 3), c)
    back.apply_translation([0, 0, -d / 2 + c / 2])
    cover_color = tuple(float(x) for x in cover[5, 5] / 255.0)
    parts = [
        Part(front, color=(1, 1, 1), roughness=0.6, texture=cover, uv=uv, smooth=False),
        Part(back, color=cover_color, roughness=0.6, smooth=False),
    ]
    spine, _ = slab(rounded_rect(c * 2, h, 0.05, 2), d + 0.04)  # a hair proud of the covers: no z-fighting
    spine.apply_translation([-w / 2, 0, 0])
    parts.append(Part(spine, color=cover_color, roughness=0.6, smooth=False))
    lines = np.tile((0.93 - 0.08 * (np.arange(64) % 3 == 0))[:, None], (1, 64))
    pages_tex = _to_u8(np.stack([lines * 0.98, lines * 0.95, lines * 0.85], -1))
    pages, puv = slab(rounded_rect(w - 0.3, h - 0.4, 0.05, 2), d - 2 * c)
    parts.append(Part(pages, color=(1, 1, 1), roughness=0.9, texture=pages_tex, uv=puv[:, ::-1] * [1, 8], smooth=False))
    landscape = rng.random() < 0.35
    roll = float(rng.uniform(-15, 15)) + (90.0 if landscape else 0.0)
    angles = (float(rng.uniform(-35, 35)), float(rng.uniform(-15, 15)), roll)
    half = (h if not landscape else w) / 2
    # the book's centre goes half its height below a top edge just under the nose
    return _held(
        parts,
        (0.0, 0.0, 0.0),
        (float(rng.uniform(-0.2, 0.2)), float(rng.uniform(0.55, 0.7)) + half / EYE_MOUTH_CM),
        w,
        angles,
        "lower_face",
        "landscape" if landscape else "portrait",
    )


def _cap_brim(rx, rz, cz, base_y, length, curve, droop, thickness=0.3, n_phi=41, n_s=8):
    """A cap's brim: a solid band from the front half of the crown's base ellipse outward,
    bent down at the sides (`curve`) and toward its front edge (`droop`)."""
    phi = np.radians(np.linspace(-80, 80, n_phi))
    s = np.linspace(0, 1, n_s)
    S, PH = np.meshgrid(s, phi, indexing="ij")  # rows: s (inner -> outer), cols: phi
    reach = length * np.cos(PH) ** 0.8
    x = rx * 0.97 * np.sin(PH) * (1 + 0.08 * S)
    zr = rz * 0.97 * np.cos(PH) + S * reach
    y = base_y + 0.1 - curve * x**2 - droop * S * reach
    top = np.stack([x, y, cz + zr], -1).reshape(-1, 3)
    bottom = top - [0, thickness, 0]
    n = len(top)
    f_top = grid_faces(n_phi, n_s)
    faces = [f_top, f_top[:, ::-1] + n]
    ring = lambda idx: np.asarray(idx)  # noqa: E731
    outer = ring((n_s - 1) * n_phi + np.arange(n_phi))
    ends = [ring(np.arange(n_s) * n_phi), ring(np.arange(n_s) * n_phi + n_phi - 1)]
    for edge in [outer] + ends:
        a, b = edge[:-1], edge[1:]
        faces.append(np.stack([a, b, b + n], 1))
        faces.append(np.stack([a, b + n, a + n], 1))
    verts = np.concatenate([top, bottom])
    faces = np.concatenate(faces)
    # orient every face away from the brim's mid-surface (top up, bottom down, rims outward)
    centre_line = np.concatenate([top, top]) - [0, thickness / 2, 0]
    tri = verts[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    mid_surface = centre_line[faces].mean(1)
    outward = tri.mean(1) - mid_surface
    rim = np.abs(outward[:, 1]) < thickness * 0.25
    outward[rim] = (tri.mean(1) - [0, base_y, cz])[rim] * [1, 0, 1]
    flip = np.einsum("ij,ij->i", normal, outward) < 0
    faces[flip] = faces[flip][:, ::-1]
    return make_mesh(verts, faces)


def _model_hat(rng):
    """A cap (crown dome + curved brim + button) or a beanie (dome + cuff + pom-pom)."""
    kind = _pick(rng, ["cap", "cap", "cap", "beanie"])
    color = _jitter_color(rng, _pick(rng, FABRIC), 0.04)
    rx, rz = float(rng.uniform(7.6, 8.2)), float(rng.uniform(9.2, 10.0))
    ry = float(rng.uniform(6.0, 7.0)) if kind == "cap" else float(rng.uniform(8.5, 10))
    base_y = float(rng.uniform(5.2, 6.2))  # crown base above the eye line (cm)
    cz = -rz + 2.0  # the crown's front touches the forehead about 2 cm in front of the eyes
    n_phi, n_th = 64, 20
    phi = np.linspace(0, 2 * np.pi, n_phi, endpoint=False)
    th = np.linspace(0, np.pi / 2, n_th)
    P, T = np.meshgrid(phi, th)
    verts = np.column_stack(
        [
            (rx * np.sin(T) * np.sin(P)).ravel(),
            (base_y + ry * np.cos(T)).ravel(),
            (cz + rz * np.sin(T) * np.cos(P)).ravel(),
        ]
    )
    faces = grid_faces(n_phi, n_th, wrap_u=True)
    crown = make_mesh(verts, faces)
    crown.fix_normals()
    if kind == "cap":
        seams = np.abs(((P.ravel() / (2 * np.pi) * 6) % 1) - 0.5) > 0.47
        colors = np.where(seams[:, None], 0.7, 1.0) * np.ones((len(verts), 3))
        parts = [Part(crown, color=color, roughness=0.85, vertex_colors=colors)]
        button = ellipsoid((0.7, 0.35, 0.7), (0, base_y + ry, cz), 2)
        parts.append(Part(button, color=color, roughness=0.85))
        brim_len = float(rng.uniform(6.0, 7.5))
        brim_color = color if rng.random() < 0.6 else _jitter_color(rng, _pick(rng, FABRIC))
        brim = _cap_brim(rx, rz, cz, base_y, brim_len, float(rng.uniform(0.008, 0.025)), float(rng.uniform(0.08, 0.2)))
        parts.append(Part(brim, color=brim_color, roughness=0.8))
        anchors = np.array([[-rx, base_y, cz], [rx, base_y, cz]])
    else:
        knit = tex_knit(rng, 128, color, ribs=int(rng.integers(20, 36)))
        uv = np.column_stack([P.ravel() / (2 * np.pi) * 4, T.ravel() / (np.pi / 2)])
        parts = [Part(crown, color=(1, 1, 1), roughness=0.95, texture=knit, uv=uv)]
        cuff_h = float(rng.uniform(3.0, 4.5))
        prof = np.array([[1.0, -0.3], [1.04, 0.0], [1.05, cuff_h], [1.0, cuff_h + 0.3]])
        a = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        cv = np.concatenate(
            [
                np.column_stack([rx * r * np.sin(a), np.full(64, base_y + y - cuff_h * 0.6), cz + rz * r * np.cos(a)])
                for r, y in prof
            ]
        )
        cuff = make_mesh(cv, grid_faces(64, len(prof), wrap_u=True)[:, ::-1])
        cuff.fix_normals()
        cuv = np.column_stack([np.tile(a / (2 * np.pi) * 6, len(prof)), np.repeat(np.linspace(0, 1, len(prof)), 64)])
        parts.append(Part(cuff, color=(1, 1, 1), roughness=0.95, texture=knit, uv=cuv))
        if rng.random() < 0.6:
            pom = ellipsoid((2.4, 2.2, 2.4), (0, base_y + ry + 1.2, cz), 3)
            pom.vertices += pom.vertex_normals * make_rng(int(rng.integers(1 << 30))).uniform(
                -0.25, 0.25, (len(pom.vertices), 1)
            )
            parts.append(Part(pom, color=_jitter_color(rng, _pick(rng, FABRIC)), roughness=1.0))
        anchors = np.array([[-rx, base_y - cuff_h * 0.6, cz], [rx, base_y - cuff_h * 0.6, cz]])
    return _worn(
        parts, anchors, rng, "forehead", ("left_eye", "right_eye"), yaw=12, pitch=5, roll=4, style=kind, turn="round"
    )


def _eye_mask_shape(rng, px_per_cm: float = 24.0):
    """Raster (rows top-down) of a carnival mask over [-9, 9] x [-4.5, 6.5] cm, with eye holes."""
    xs, ys = (-9.0, 9.0), (-4.5, 6.5)
    w, h = int((xs[1] - xs[0]) * px_per_cm), int((ys[1] - ys[0]) * px_per_cm)
    yy, xx = np.mgrid[0:h, 0:w]
    X = xs[0] + (xx + 0.5) / px_per_cm
    Y = ys[1] - (yy + 0.5) / px_per_cm
    style = _pick(rng, ["domino", "wings", "cat", "venetian"])
    lobe_w, lobe_h = float(rng.uniform(3.6, 4.4)), float(rng.uniform(2.2, 2.8))
    shape = ((np.abs(X) - 3.2) / lobe_w) ** 2 + ((Y - 0.2) / lobe_h) ** 2 < 1.0
    shape |= (np.abs(X) < 2.2) & (Y > -0.4) & (Y < 1.6)  # over the nose bridge
    if style in ("wings", "venetian"):
        for side in (-1, 1):  # swept wing tips at the outer top
            poly_x = side * np.array([5.5, 8.8, 7.9, 4.5])
            poly_y = np.array([1.0, 4.2 if style == "wings" else 5.8, 0.6, -0.8])
            rr, cc = draw_polygon((ys[1] - poly_y) * px_per_cm, (poly_x - xs[0]) * px_per_cm, (h, w))
            shape[rr, cc] = True
    if style == "cat":
        for side in (-1, 1):
            poly_x = side * np.array([2.0, 4.2, 5.8])
            poly_y = np.array([1.8, 5.0, 1.8])
            rr, cc = draw_polygon((ys[1] - poly_y) * px_per_cm, (poly_x - xs[0]) * px_per_cm, (h, w))
            shape[rr, cc] = True
    if style == "venetian":
        shape |= (X / 3.2) ** 2 + ((Y - 2.4) / 3.0) ** 2 < 1.0
    # nose notch and eye holes
    shape &= ~((X / 1.3) ** 2 + ((Y + 2.4) / 2.3) ** 2 < 1.0)
    hole_w, hole_h = float(rng.uniform(1.5, 1.8)), float(rng.uniform(0.8, 1.05))
    for side in (-1, 1):
        dx = X - side * IOD_CM / 2
        shape &= ~((dx / hole_w) ** 2 + ((Y - 0.12 * np.abs(dx) * side * np.sign(dx)) / hole_h) ** 2 < 1.0)
    return shape, (X, Y), style


def _model_eye_mask(rng):
    """A carnival mask: a cut sheet bent around the face, with a trim along its edge."""
    shape, (X, Y), style = _eye_mask_shape(rng)
    h, w = shape.shape
    base = np.array(
        _pick(
            rng,
            [
                (0.05, 0.05, 0.06),
                (0.75, 0.08, 0.1),
                (0.35, 0.1, 0.5),
                (0.9, 0.9, 0.92),
                (0.1, 0.25, 0.55),
                (0.8, 0.62, 0.2),
            ],
        )
    )
    trim = np.array(_pick(rng, [(0.85, 0.68, 0.25), (0.8, 0.8, 0.82), (0.05, 0.05, 0.05)]))
    edge = ndimage.distance_transform_edt(shape) < 0.28 * 24
    sparkle = make_rng(int(rng.integers(1 << 30))).random((h, w)) < 0.04
    tex = np.where(edge[..., None], trim, base) * np.where(sparkle[..., None], 1.5, 1.0)
    if rng.random() < 0.5:  # swirl pattern
        swirl = np.sin(3.0 * np.hypot(X - 3 * np.sign(X), Y) + 2 * np.arctan2(Y, X - 3 * np.sign(X))) > 0.85
        tex = np.where((swirl & ~edge)[..., None], trim, tex)
    texture = _to_u8(np.clip(tex, 0, 1))[::2, ::2]
    radius = 9.0

    def surface(u, v):
        x = -9.0 + 18.0 * u
        y = -4.5 + 11.0 * v
        theta = x / radius
        return np.column_stack([radius * np.sin(theta), y, radius * np.cos(theta) - radius + 1.2 - 0.015 * y**2])

    mesh, uv = shape_sheet(shape, surface, spacing=10)
    parts = [Part(mesh, color=(1, 1, 1), metallic=0.35, roughness=0.35, texture=texture, uv=uv)]
    anchors = np.array([[-IOD_CM / 2, 0, 0], [IOD_CM / 2, 0, 0]])
    return _worn(parts, anchors, rng, "eyes", ("left_eye", "right_eye"), yaw=12, pitch=6, roll=5, style=style)


def _model_microphone(rng):
    """A handheld microphone: tapered handle, metal band, a mesh grille ball."""
    handle_color = _pick(rng, [(0.04, 0.04, 0.045), (0.05, 0.05, 0.05), (0.7, 0.7, 0.72), (0.75, 0.6, 0.3)])
    grille_color = _pick(rng, [(0.75, 0.75, 0.78), (0.2, 0.2, 0.22), (0.8, 0.65, 0.35)])
    length = float(rng.uniform(15, 19))
    ys = np.linspace(-length, -1.8, 12)
    radius = 1.05 + (1.55 - 1.05) * (ys + length) / length
    profile = np.concatenate([[[0, -length]], np.column_stack([radius, ys]), [[0, -1.8]]])
    handle, _ = revolve(profile, 48)
    parts = [Part(handle, color=handle_color, metallic=0.4, roughness=0.35)]
    band, _ = revolve(np.array([[1.5, -2.0], [1.75, -1.8], [1.75, -0.6], [1.6, -0.4]]), 48)
    parts.append(Part(band, color=grille_color, metallic=1.0, roughness=0.3))
    r = float(rng.uniform(2.3, 2.8))
    grille = ellipsoid((r, r, r), (0, r * 0.75, 0), 4)
    v = grille.vertices - [0, r * 0.75, 0]
    lat = np.arcsin(np.clip(v[:, 1] / r, -1, 1))
    lon = np.arctan2(v[:, 0], v[:, 2])
    lines = (np.abs(np.sin(lat * 14)) < 0.22) | (np.abs(np.sin(lon * 14)) < 0.22)
    colors = np.where(lines[:, None], 1.0, 0.35) * np.ones((len(v), 3))
    parts.append(Part(grille, color=grille_color, metallic=0.9, roughness=0.35, vertex_colors=colors))
    angles = (float(rng.uniform(-25, 25)), float(rng.uniform(10, 45)), float(rng.uniform(-35, 35)))
    return _held(
        parts,
        (0.0, r * 0.75, 0.0),
        (float(rng.uniform(-0.25, 0.25)), float(rng.uniform(1.05, 1.3))),
        2 * r,
        angles,
        "mouth",
        "handheld",
    )


BUILDERS: dict[str, Callable[[np.random.Generator], Model]] = {
    "sunglasses": _model_sunglasses,
    "eyeglasses": _model_eyeglasses,
    "scarf": _model_scarf,
    "surgical_mask": _model_surgical_mask,
    "cup": _model_cup,
    "hand": _model_hand,
    "phone": _model_phone,
    "book": _model_book,
    "hat": _model_hat,
    "eye_mask": _model_eye_mask,
    "microphone": _model_microphone,
}
TEMPLATE_PX = {  # long side of each category's template, in pixels
    "sunglasses": 176,
    "eyeglasses": 176,
    "scarf": 192,
    "surgical_mask": 176,
    "cup": 144,
    "hand": 176,
    "phone": 160,
    "book": 192,
    "hat": 192,
    "eye_mask": 176,
    "microphone": 160,
}


# ----------------------------------------------------------------------------- rendering


def _random_light(rng: np.random.Generator):
    sx, sy = float(rng.uniform(-0.7, 0.7)), float(rng.uniform(0.2, 0.8))
    return Light(
        direction=(sx, -sy, -1.0), intensity=float(rng.uniform(2.6, 4.0)), ambient=float(rng.uniform(0.3, 0.45))
    )


def render_model(model: Model, long_side: int, light, supersample: int = 3):
    """Render a posed model orthographically so its long side spans `long_side` pixels.
    Returns (cropped RGBA, anchor points in its pixels, face points, pixels per cm)."""
    verts = np.concatenate([np.asarray(p.mesh.vertices) for p in model.parts])
    lo, hi = verts[:, :2].min(0), verts[:, :2].max(0)
    k = long_side / float(max(hi - lo))
    pad = 2
    width, height = int(math.ceil((hi[0] - lo[0]) * k)) + 2 * pad, int(math.ceil((hi[1] - lo[1]) * k)) + 2 * pad
    left, top = lo[0] - pad / k, hi[1] + pad / k
    cx, cy = left + width / (2 * k), top - height / (2 * k)
    pose = np.eye(4)
    pose[:3, 3] = [cx, cy, 60.0]
    common = dict(camera_pose=pose, xmag=width / (2 * k), light=light, znear=1.0, zfar=200.0, supersample=supersample)
    opaque = [p for p in model.parts if p.opacity >= 1.0]
    clear = [p for p in model.parts if p.opacity < 1.0]
    rgba, depth = render_rgba(opaque, (width, height), **common)
    if clear:
        rgba = _composite_clear(rgba, depth, clear, (width, height), common)

    def to_px(points):
        points = np.atleast_2d(points)
        return np.column_stack([(points[:, 0] - left) * k - 0.5, (top - points[:, 1]) * k - 0.5])

    if model.anchor_points is not None:
        anchors = to_px(model.anchor_points)
        faces = np.asarray(model.face_points)
    else:
        key = to_px(model.key_point)[0]
        half = model.ref_width_cm / 2 * k
        anchors = np.array([key - [half, 0], key + [half, 0]])
        fx, fy = model.key_face
        hw = model.ref_width_cm / 2 / IOD_CM
        faces = np.array([[fx - hw, fy], [fx + hw, fy]])
    ys, xs = np.nonzero(rgba[..., 3])
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return rgba[y0:y1, x0:x1].copy(), anchors - [x0, y0], faces, k


def _composite_clear(rgba, depth, clear_parts, size, common):
    """Lay see-through parts (clear lenses) over or under the opaque render by depth."""
    g_rgba, g_depth = render_rgba(clear_parts, size, **common)
    opacity = np.zeros(g_rgba.shape[:2])
    # every clear part in one model shares its opacity (the two lenses)
    opacity[:] = clear_parts[0].opacity
    ga = g_rgba[..., 3:4] / 255.0 * opacity[..., None]
    oa = rgba[..., 3:4] / 255.0
    glass_front = ((g_depth > 0) & ((depth == 0) | (g_depth < depth)))[..., None]
    g_rgb, o_rgb = g_rgba[..., :3] / 255.0, rgba[..., :3] / 255.0
    front_a, front_c = np.where(glass_front, ga, oa), np.where(glass_front, g_rgb, o_rgb)
    back_a, back_c = np.where(glass_front, oa, ga), np.where(glass_front, o_rgb, g_rgb)
    out_a = front_a + back_a * (1 - front_a)
    out_c = (front_c * front_a + back_c * back_a * (1 - front_a)) / np.maximum(out_a, 1e-6)
    return np.round(np.concatenate([out_c, out_a], -1) * 255).clip(0, 255).astype(np.uint8)


def split_of(category: str, count: int, seed: int) -> list[str]:
    """Deterministic train/eval split of a category's variants: EVAL_FRACTION go to "eval"."""
    order = make_rng(derive_seed(seed, "split", category)).permutation(count)
    n_eval = int(round(count * EVAL_FRACTION))
    splits = ["train"] * count
    for i in order[:n_eval]:
        splits[int(i)] = "eval"
    return splits


def build_model(category: str, variant: int, seed: int = 0) -> Model:
    if category not in BUILDERS:
        raise KeyError(f"unknown template category {category!r}; choose from {', '.join(CATEGORIES)}")
    return BUILDERS[category](make_rng(derive_seed(seed, "template", category, variant)))


def build_template_bank(
    out_dir: str | Path | None = None,
    seed: int = 0,
    variants: int | dict[str, int] | None = None,
    categories: Sequence[str] | None = None,
    supersample: int = 3,
) -> dict:
    """Render the object template bank into `out_dir` (default: assets/templates).

    `variants` is a count per category or a {category: count} dict (None: VARIANTS, else
    DEFAULT_VARIANTS); the same seed gives the same files byte for byte (geometry, textures,
    poses and lights are all drawn from per-template seeds). Writes <category>_<NN>.png and
    bank.json; returns the bank index. Worn templates also record "worn", "depth_cm" and
    "px_per_cm", with which the object occluder turns them to the head pose."""
    out = Path(out_dir) if out_dir is not None else default_bank_dir()
    out.mkdir(parents=True, exist_ok=True)
    cats = list(categories or CATEGORIES)
    templates = []
    for category in cats:
        if variants is None:
            count = VARIANTS.get(category, DEFAULT_VARIANTS)
        else:
            count = variants.get(category, DEFAULT_VARIANTS) if isinstance(variants, dict) else int(variants)
        splits = split_of(category, count, seed)
        for i in range(count):
            rng = make_rng(derive_seed(seed, "light", category, i))
            model = build_model(category, i, seed)
            rgba, anchors, faces, k = render_model(model, TEMPLATE_PX[category], _random_light(rng), supersample)
            name = f"{category}_{i:02d}.png"
            Image.fromarray(rgba, "RGBA").save(out / name, optimize=True)
            templates.append(
                {
                    "file": name,
                    "category": category,
                    "variant": i,
                    "split": splits[i],
                    "region": model.region,
                    "size": [int(rgba.shape[1]), int(rgba.shape[0])],
                    "style": model.style,
                    "worn": model.anchor_points is not None,
                    "turn": model.turn,
                    "depth_cm": round(model.depth_cm, 4),
                    "px_per_cm": round(float(k), 4),
                    "pose": {
                        "yaw": round(model.pose[0], 2),
                        "pitch": round(model.pose[1], 2),
                        "roll": round(model.pose[2], 2),
                    },
                    "anchor": {
                        "landmarks": list(model.landmarks),
                        "points": np.round(anchors, 3).tolist(),
                        "face_points": np.round(faces, 4).tolist(),
                        "width_iod": round(rgba.shape[1] / (k * IOD_CM), 4),
                    },
                }
            )
    index = {
        "format": BANK_FORMAT,
        "seed": int(seed),
        "face_frame": "F(fx,fy) = E + fx*(right_eye-left_eye) + fy*(mouth_mid-E), E = eye midpoint",
        "templates": templates,
    }
    write_text(out / BANK_FILE, json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index
