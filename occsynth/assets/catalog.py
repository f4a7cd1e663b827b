"""What the shipped banks hold, shared by the occluders that read them and the authoring code
that makes them: object categories, regions and the face frame, and the index readers.

Face frame: F(fx, fy) = E + fx * (right_eye - left_eye) + fy * (mouth_mid - E), E the eye
midpoint: (-0.5, 0) / (0.5, 0) are the eyes, (0, 1) the mouth centre, (0, ~0.5) the nose tip.
"""

from __future__ import annotations

import json
from pathlib import Path

from occsynth.assets import asset_dir

CATEGORIES = (
    "sunglasses",
    "eyeglasses",
    "scarf",
    "surgical_mask",
    "cup",
    "hand",
    "phone",
    "book",
    "hat",
    "eye_mask",
    "microphone",
)
REGIONS = ("eyes", "nose", "mouth", "lower_face", "upper_face", "forehead", "random")
# Centre of each region in the face frame; "random" is sampled by the occluder.
REGION_CENTERS = {
    "eyes": (0.0, 0.0),
    "nose": (0.0, 0.5),
    "mouth": (0.0, 1.0),
    "lower_face": (0.0, 0.95),
    "upper_face": (0.0, -0.1),
    "forehead": (0.0, -0.75),
}
IOD_CM = 6.3
EYE_MOUTH_CM = 7.3
BANK_FILE = "bank.json"
BANK_FORMAT = 1

# 3D face masks (the pose bank)
MASK_KINDS = ("surgical", "n95", "kn95", "cloth")
MASK_COLORS = {
    "blue": (0.45, 0.68, 0.86),
    "white": (0.93, 0.93, 0.92),
    "black": (0.09, 0.09, 0.1),
    "green": (0.5, 0.78, 0.7),
    "pink": (0.94, 0.68, 0.76),
    "grey": (0.6, 0.6, 0.62),
    "navy": (0.12, 0.16, 0.32),
}
MASK_PRINTS = ("print1", "print2", "print3")  # cloth masks: fabric prints drawn from the seed
MASK_STYLES = {
    "surgical": ("blue", "white", "black"),
    "n95": ("white",),
    "kn95": ("white", "black"),
    "cloth": ("print1", "print2"),
}
POSE_BANK_INDEX = "index.json"


def default_bank_dir() -> Path:
    """Where the object occluder finds its template bank by default (assets/templates)."""
    return asset_dir("templates")


def default_pose_bank_dir() -> Path:
    """Where the 3D mask occluder finds its pose bank by default (assets/mask3d)."""
    return asset_dir("mask3d")


def load_bank_index(bank_dir: str | Path | None = None) -> dict:
    path = Path(bank_dir) if bank_dir is not None else default_bank_dir()
    index_path = path / BANK_FILE
    if not index_path.exists():
        raise FileNotFoundError(
            f"no template bank at {path} ({BANK_FILE} missing); build it with `occsynth make-templates` "
            "or occsynth.authoring.objects.build_template_bank()"
        )
    return json.loads(index_path.read_text())
