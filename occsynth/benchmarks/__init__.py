"""Named builds: benchmarks (LFW-OCC, LFW_block, ...) and training sets, one registry; their
protocol files (protocols/) and definitions as data (definitions/<name>.yaml)."""

from occsynth.benchmarks._registry import BUILDERS
from occsynth.benchmarks.base import (
    Builder,
    BuildJob,
    get_builder,
    list_builders,
    load_definition,
    register_builder,
)

__all__ = ["BUILDERS", "BuildJob", "Builder", "get_builder", "list_builders", "load_definition", "register_builder"]
