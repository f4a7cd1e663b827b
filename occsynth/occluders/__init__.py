"""Occluder families with exact pixel masks, one registry, composable specs.

Families (each a module registering its occluders): geometric (block, rectangle, ellipse,
polygon, blob, pieces, grid_cell), object templates (object + one name per category),
importers of third-party template sets, 3D face masks (mask3d), and fit_area, which sizes any
of them to a target area. `TorchOccluder` (torch_ops) applies the same specs to GPU batches.
"""

from occsynth.occluders.base import (
    Occluder,
    Occlusion,
    create_occluder,
    list_occluders,
    register_occluder,
    sample_value,
)
from occsynth.occluders.compose import Composer, occlude, replay, with_harmonize
from occsynth.occluders.presets import get_preset, list_presets
from occsynth.occluders.spec import compile_tree, load_spec, parse_cli_spec

__all__ = [
    "Composer",
    "Occluder",
    "Occlusion",
    "compile_tree",
    "create_occluder",
    "get_preset",
    "list_occluders",
    "list_presets",
    "load_spec",
    "occlude",
    "parse_cli_spec",
    "register_occluder",
    "replay",
    "sample_value",
    "with_harmonize",
]
