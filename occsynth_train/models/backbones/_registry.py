"""The registry of backbones (leaf module: imports none of them; they register themselves)."""

from occsynth.registry import Registry

BACKBONES = Registry(
    "backbone",
    modules=(
        "occsynth_train.models.backbones.iresnet",
        "occsynth_train.models.backbones.lightcnn",
        "occsynth_train.models.backbones.unet",
        "occsynth_train.models.backbones.vgg",
    ),
)
