"""The registry of training methods (leaf module: imports none of them; they register themselves)."""

from occsynth.registry import Registry

METHODS = Registry(
    "method",
    modules=(
        "occsynth_train.methods.alob",
        "occsynth_train.methods.baseline",
        "occsynth_train.methods.lcd",
        "occsynth_train.methods.msml",
        "occsynth_train.methods.pdsn",
        "occsynth_train.methods.soidn",
    ),
)
