"""Training methods by name: `occsynth-train <name> --config cfg.yaml` runs METHODS[name].

A method is a `Method` (see base.py) registered with `@register_method("name")` in a module of
this package; every module here is imported on first use, so adding `msml.py` with a
registered class is all it takes to get `occsynth-train msml`.
"""
from __future__ import annotations

import importlib
import pkgutil

from ..registry import Registry
from .base import Method, build_backbone, build_head

METHODS: Registry[Method] = Registry("method")
register_method = METHODS.register
_loaded = False


def load_methods() -> Registry[Method]:
    """Import every module of this package once (each registers its methods)."""
    global _loaded
    if not _loaded:
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if info.name != "base" and not info.name.startswith("_"):
                importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True
    return METHODS


def create_method(name: str, cfg, num_classes: int) -> Method:
    """Build a registered method: create_method("baseline", cfg, num_classes=10572)."""
    return load_methods().create(name, cfg=cfg, num_classes=num_classes)


def list_methods() -> list[str]:
    return load_methods().names()


__all__ = ["METHODS", "Method", "build_backbone", "build_head", "create_method", "list_methods", "load_methods",
           "register_method"]
