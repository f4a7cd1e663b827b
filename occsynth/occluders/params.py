"""What each occluder parameter accepts, checked when a spec is compiled (never per sample).

An occluder class declares ``schema = {name: Param}`` beside its ``defaults``. A value takes one
of the forms ``base.sample_value`` understands: a scalar, a ``[lo, hi]`` range of numbers, or
``{"choice": [options], "p": [weights]}``; where ``lists=True`` also a plain list of words (an
object's ``category``: the template is drawn from all listed). Every option of a choice and
both ends of a range must satisfy the parameter's type and range, so ``block(ratio=1.5)``,
``fill=purple`` or ``object(split=test)`` fail at once with one line naming the parameter and
the allowed values, instead of failing on every sample. Numbers must be numbers: a string such
as "1e-3" (what PyYAML reads from ``ratio: 1e-3``) is refused with a hint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from occsynth.errors import UsageError

__all__ = ["Param", "SpecError", "anything", "check_params", "custom", "flag", "integer", "number", "word"]


class SpecError(UsageError):
    """An occlusion spec that cannot be parsed or compiled (one line; bad usage)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value: float | None, default: str) -> str:
    if value is None:
        return default
    return f"{value:g}"


@dataclass(frozen=True)
class Param:
    """One parameter's type and range. kind: number | int | word | flag | any | custom (a
    `check` function decides, `note` says what it accepts)."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    words: tuple = ()
    nullable: bool = False  # None is allowed
    lists: bool = False  # a plain list of words is allowed (word parameters)
    scalar: bool = False  # only a plain value: no [lo, hi] range, no choice
    note: str = ""  # what an unchecked ("any") or custom parameter holds
    check: Callable[[Any], bool] | None = None  # custom parameters: whether a value is allowed

    # ------------------------------------------------------------------ description
    def allowed(self) -> str:
        if self.kind in ("number", "int"):
            what = "a number" if self.kind == "number" else "an integer"
            if self.lo is not None or self.hi is not None:
                left = "(" if self.lo_open or self.lo is None else "["
                right = ")" if self.hi_open or self.hi is None else "]"
                what += f" in {left}{_fmt(self.lo, '-inf')}, {_fmt(self.hi, 'inf')}{right}"
            text = what if self.scalar else f"{what}, a [lo, hi] range or {{choice: [...]}} of such"
        elif self.kind == "word":
            text = f"one of {', '.join(map(str, self.words))}"
            text += ", a list of them" if self.lists else ""
            text += " or {choice: [...]} of them"
        elif self.kind == "flag":
            text = "true or false"
        else:
            text = self.note or "any value"
        return text + (" (or null)" if self.nullable else "")

    # ------------------------------------------------------------------ checking
    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable or self.kind == "any"
        if self.kind == "any":
            return True
        if self.kind == "custom":
            return bool(self.check(value))
        if self.scalar:
            return self._scalar_ok(value)
        if isinstance(value, dict):
            return self._choice_ok(value)
        if self.kind in ("number", "int"):
            if isinstance(value, (list, tuple)):
                return len(value) == 2 and all(self._scalar_ok(v) for v in value) and float(value[0]) <= float(value[1])
            return self._scalar_ok(value)
        if self.kind == "word" and self.lists and isinstance(value, (list, tuple)):
            return len(value) > 0 and all(self._scalar_ok(v) for v in value)
        return self._scalar_ok(value)

    def _choice_ok(self, value: dict) -> bool:
        if set(value) - {"choice", "p"} or not isinstance(value.get("choice"), (list, tuple)):
            return False
        options = value["choice"]
        if not options or not all(self._scalar_ok(v) for v in options):
            return False
        weights = value.get("p")
        if weights is None:
            return True
        return (
            isinstance(weights, (list, tuple))
            and len(weights) == len(options)
            and all(_is_number(w) and w >= 0 and math.isfinite(w) for w in weights)
            and sum(weights) > 0
        )

    def _scalar_ok(self, value: Any) -> bool:
        if self.kind == "flag":
            return isinstance(value, bool)
        if self.kind == "word":
            return isinstance(value, str) and value in self.words
        if not _is_number(value) or not math.isfinite(value):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            return False
        return True


def number(lo=None, hi=None, *, lo_open=False, hi_open=False, nullable=False, scalar=False) -> Param:
    return Param("number", lo, hi, lo_open, hi_open, nullable=nullable, scalar=scalar)


def integer(lo=None, hi=None, *, nullable=False, scalar=False) -> Param:
    return Param("int", lo, hi, nullable=nullable, scalar=scalar)


def word(*words: str, lists: bool = False, nullable: bool = False) -> Param:
    return Param("word", words=tuple(words), lists=lists, nullable=nullable)


def flag() -> Param:
    return Param("flag")


def anything(note: str = "", nullable: bool = True) -> Param:
    return Param("any", nullable=nullable, note=note)


def custom(check: Callable[[Any], bool], note: str) -> Param:
    """A parameter whose values `check` accepts (None included, if it says so)."""
    return Param("custom", note=note, check=check, nullable=True)


def check_params(occluder: str, params: dict, schema: dict[str, Param]) -> None:
    """SpecError naming the first parameter whose value the schema does not allow."""
    for key, value in params.items():
        param = schema.get(key)
        if param is None or param.accepts(value):
            continue
        hint = ""
        if isinstance(value, str) and param.kind in ("number", "int"):
            hint = " (text, not a number: YAML reads 1e-3 as text, write 1.0e-3)"
        raise SpecError(f"occluder {occluder!r} parameter {key!r}: got {value!r}{hint}; expected {param.allowed()}")
