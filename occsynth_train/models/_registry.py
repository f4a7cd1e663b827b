"""The registry of classification heads (leaf module: imports none of them)."""

from occsynth.registry import Registry

HEADS = Registry("head", modules=("occsynth_train.models.heads",))
