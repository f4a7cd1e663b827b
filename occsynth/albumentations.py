"""`occsynth.albumentations.Occlude`: occsynth's occluders as an albumentations transform (the
implementation lives in occsynth/adapters/albumentations.py)."""

from occsynth.adapters.albumentations import Occlude

__all__ = ["Occlude"]
