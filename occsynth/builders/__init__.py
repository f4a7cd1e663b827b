"""Named builds: benchmarks (LFW-OCC, LFW_block, ...) and training sets, one registry."""
from occsynth.builders.registry import Builder, BuildJob, get_builder, list_builders, load_definition, register_builder

__all__ = ["BuildJob", "Builder", "get_builder", "list_builders", "load_definition", "register_builder"]
