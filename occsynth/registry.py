"""The one registry type: occluders, builders, sources, backbones, heads and methods.

Each instance lives in a leaf `_registry.py` that imports nothing of the things it lists
(timm's pattern), so families import their registry, never the other way round, and there is
no import cycle. The modules that register entries are named as data (`modules=`) and
imported by `importlib` on the first lookup, which keeps `import occsynth` light.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "UnknownNameError"]


class UnknownNameError(KeyError):
    """A name no entry is registered under. str() is a one-line message with suggestions."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Name -> entry (a class or a factory).

    `@REG.register("name")` (or `@REG.register()` to use the entry's `name` attribute) adds an
    entry; `REG.get(name)`, `REG.create(name, **kw)`, `REG.names()`, `REG.items()` look up,
    importing `modules` once before the first lookup."""

    def __init__(self, kind: str, modules: Iterable[str] = ()):
        self.kind = kind
        self._modules = tuple(modules)
        self._loaded = not self._modules
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def wrap(entry: T) -> T:
            key = name if name is not None else getattr(entry, "name", None)
            if not key:
                raise ValueError(f"{self.kind} {entry!r} has no name")
            if key in self._items and self._items[key] is not entry:
                raise ValueError(f"{self.kind} {key!r} is already registered by {self._items[key]!r}")
            self._items[key] = entry
            return entry

        return wrap

    def load(self) -> Registry[T]:
        if not self._loaded:
            self._loaded = True  # set first: a module that looks itself up while importing is fine
            for module in self._modules:
                importlib.import_module(module)
        return self

    def get(self, name: str) -> T:
        self.load()
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: Any) -> str:
        known = sorted(self._items)
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (known: {', '.join(known) or '(none)'})"

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        return sorted(self.load()._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self.load()._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self.load()._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.load()._items)
