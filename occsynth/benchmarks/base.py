"""What a named build is (benchmarks and training sets) and where its definition lives.

A builder turns user paths and options into one or more `BuildJob`s: a pipeline config, a
plan of samples and a `finish` step that writes the protocol files (pairs.jsonl,
protocol.json) once the shards exist. Each builder's facts (what it reproduces, from which
paper, its default parameters) live as data in occsynth/benchmarks/definitions/<name>.yaml.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import click
import yaml

from occsynth.benchmarks._registry import BUILDERS
from occsynth.build import BuildConfig, PlannedSample
from occsynth.occluders import with_harmonize

DEFINITIONS = "definitions"  # package data: occsynth/benchmarks/definitions/<name>.yaml


@dataclass
class BuildJob:
    subdir: str  # "" or e.g. "level-30" for multi-dataset builds
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


def register_builder(cls: type[Builder]) -> type[Builder]:
    """Class decorator: one instance of the builder, registered under its `name`."""
    instance = cls()
    if not instance.name:
        raise ValueError(f"{cls.__name__} has no name")
    BUILDERS.register(instance.name)(instance)
    return cls


def list_builders() -> dict[str, Builder]:
    return dict(BUILDERS.items())


def get_builder(name: str) -> Builder:
    return BUILDERS.get(name)


@functools.lru_cache(maxsize=None)
def load_definition(name: str) -> dict:
    path = resources.files("occsynth.benchmarks").joinpath(DEFINITIONS, f"{name}.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"benchmark definition {path} is missing")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if data.get("name") != name:
        raise ValueError(f"{path}: 'name' must be {name!r}")
    return data


# The one --harmonize/--no-harmonize of every builder whose occluders are textured (objects, masks,
# templates): harmonisation is their default, and --no-harmonize builds what occsynth built before
# it existed (occluders/harmonize.py, Occluder.legacy). Builders pass their spec through
# `harmonized`.
HARMONIZE_OPTION = click.option(
    "--harmonize/--no-harmonize",
    default=True,
    show_default=True,
    help="Match textured occluders to each photo's light and image quality (occluders/harmonize.py). "
    "--no-harmonize builds what occsynth built before harmonisation (its locks, byte for byte).",
)


def harmonized(spec: Any, harmonize: bool) -> Any:
    """The occlusion spec a build uses under --harmonize/--no-harmonize: unchanged when True,
    harmonize set to false on every occluder that takes it when False."""
    return spec if harmonize else with_harmonize(spec, False)


def source_option(flag: str, help_text: str, required: bool = True):
    return click.option(flag, required=required, type=click.Path(exists=True), help=help_text)
