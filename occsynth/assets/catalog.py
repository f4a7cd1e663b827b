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
BANK_FORMAT = 2  # 2: worn templates carry "worn", "depth_cm" and "px_per_cm" (pose-following placement)

# Occluder versions. 2 (current): the banks in templates/ and mask3d/, worn objects placed by the
# head pose. 1: the banks and placement before harmonisation, kept (templates_v1/, mask3d_v1/)
# so that builds made then rebuild byte for byte: templates_v1/bank.json is the version-1 index;
# the PNGs it lists that did not change are read from templates/ ("files_from"), each checked
# against the sha256 the index keeps for it.
VERSIONS = (1, 2)
CURRENT_VERSION = 2

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
MASK_PRINTS = ("print1", "print2", "print3")  # fabric prints drawn from the seed
# textile patterns (authoring/masks.py): procedural prints, photos shipped inside scikit-image
# (brick, grass, gravel) printed in two colours, printed motifs, sequins
MASK_PATTERNS = (*MASK_PRINTS, "brick", "grass", "gravel", "motif", "sequin")
MASK_STYLES = {  # the styles of the current pose bank (the version-1 bank lists its own)
    "surgical": ("blue", "white", "black", "pink"),
    "n95": ("white", "white_valve", "grey"),
    "kn95": ("white", "black", "print1"),
    "cloth": ("print1", "print2", "brick", "grass", "gravel", "motif", "sequin"),
}
POSE_BANK_INDEX = "index.json"


def _check_version(version: int) -> int:
    if version not in VERSIONS:
        raise ValueError(f"unknown occluder version {version!r}; choose from {', '.join(map(str, VERSIONS))}")
    return version


def default_bank_dir(version: int = CURRENT_VERSION) -> Path:
    """Where the object occluder finds its template bank by default (assets/templates; version
    1: assets/templates_v1)."""
    return asset_dir("templates" if _check_version(version) == CURRENT_VERSION else f"templates_v{version}")


def default_pose_bank_dir(version: int = CURRENT_VERSION) -> Path:
    """Where the 3D mask occluder finds its pose bank by default (assets/mask3d; version 1:
    assets/mask3d_v1)."""
    return asset_dir("mask3d" if _check_version(version) == CURRENT_VERSION else f"mask3d_v{version}")


def load_bank_index(bank_dir: str | Path | None = None) -> dict:
    path = Path(bank_dir) if bank_dir is not None else default_bank_dir()
    index_path = path / BANK_FILE
    if not index_path.exists():
        raise FileNotFoundError(
            f"no template bank at {path} ({BANK_FILE} missing); build it with `occsynth make-templates` "
            "or occsynth.authoring.objects.build_template_bank()"
        )
    return json.loads(index_path.read_text())
