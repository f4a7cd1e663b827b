"""The registry of named builds (benchmarks and training sets).

A builder turns user paths and options into one or more `BuildJob`s: a pipeline config, a
plan of samples and a `finish` step that writes the protocol files (pairs.jsonl,
protocol.json) once the shards exist. Each builder's facts (what it reproduces, from which
paper, its default parameters) live as data in benchmarks/definitions/<name>.yaml.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from occsynth.pipeline import BuildConfig, PlannedSample

DEFINITIONS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "definitions"


@dataclass
class BuildJob:
    subdir: str                      # "" or e.g. "level-30" for multi-dataset builds
    config: BuildConfig
    plan: list[PlannedSample]
    source: Any
    finish: Callable[[Path, dict], dict] = lambda out, manifest: {}  # -> achieved facts for the card
    facts: dict = field(default_factory=dict)


class Builder:
    """Subclasses set `name`, `help`, `options` (click options) and implement `jobs`."""

    name: str = ""
    help: str = ""
    options: list[Callable] = []
    on_no_face: str = "center-crop"  # benchmarks keep every protocol image evaluable

    @property
    def definition(self) -> dict:
        return load_definition(self.definition_name)

    @property
    def definition_name(self) -> str:
        return self.name

    def jobs(self, config: BuildConfig, **options: Any) -> list[BuildJob]:
        raise NotImplementedError


_BUILDERS: dict[str, Builder] = {}


def register_builder(cls: type[Builder]) -> type[Builder]:
    instance = cls()
    if not instance.name:
        raise ValueError(f"{cls.__name__} has no name")
    if instance.name in _BUILDERS:
        raise ValueError(f"builder {instance.name!r} registered twice")
    _BUILDERS[instance.name] = instance
    return cls


def list_builders() -> dict[str, Builder]:
    from occsynth.builders import identification, lfw, training  # noqa: F401  (they register on import)

    return dict(sorted(_BUILDERS.items()))


def get_builder(name: str) -> Builder:
    builders = list_builders()
    if name not in builders:
        raise KeyError(f"unknown build {name!r}; choose from {', '.join(builders)}")
    return builders[name]


@functools.lru_cache(maxsize=None)
def load_definition(name: str) -> dict:
    import yaml

    path = DEFINITIONS_DIR / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"benchmark definition {path} is missing")
    data = yaml.safe_load(path.read_text())
    if data.get("name") != name:
        raise ValueError(f"{path}: 'name' must be {name!r}")
    return data


def source_option(flag: str, help_text: str, required: bool = True):
    return click.option(flag, required=required, type=click.Path(exists=True), help=help_text)
