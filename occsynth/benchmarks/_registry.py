"""The registry of named builds (leaf module: imports none of them)."""

from occsynth.registry import Registry

BUILDERS = Registry(
    "build",
    modules=(
        "occsynth.benchmarks.lfw",
        "occsynth.benchmarks.identification",
        "occsynth.benchmarks.training",
    ),
)
