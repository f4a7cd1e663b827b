"""The registry of occluders (leaf module: imports none of them). Each family module registers
its classes; they are imported on the first lookup, which keeps `import occsynth` light."""

from occsynth.registry import Registry

OCCLUDERS = Registry(
    "occluder",
    modules=(
        "occsynth.occluders.families.geometric",
        "occsynth.occluders.families.grid",
        "occsynth.occluders.families.objects",
        "occsynth.occluders.families.importers",
        "occsynth.occluders.families.mask3d",
        "occsynth.occluders.families.fitting",
    ),
)
