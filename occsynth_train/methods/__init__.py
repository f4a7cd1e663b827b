"""Training methods by name: `occsynth-train <name> --config cfg.yaml` runs METHODS[name].

A method is a `Method` (see base.py) registered with `@METHODS.register("name")` in a module of
this package that _registry.py lists (the modules are imported on the first lookup), so adding
`msml.py` with a registered class and its line in _registry.py is all it takes to get
`occsynth-train msml`. A class registered anywhere else (a plug-in) becomes a command too.
"""

from __future__ import annotations

from ._registry import METHODS


def create_method(name: str, cfg, num_classes: int):
    """Build a registered method: create_method("baseline", cfg, num_classes=10572)."""
    return METHODS.create(name, cfg=cfg, num_classes=num_classes)


def list_methods() -> list[str]:
    return METHODS.names()


__all__ = ["METHODS", "create_method", "list_methods"]
