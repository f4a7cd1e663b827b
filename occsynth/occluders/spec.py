"""Occlusion specs: mix occluder families with probabilities, or apply several in sequence.

A spec is data (JSON/YAML) or a short CLI string:

    None | "clean"                                  no occlusion (mask all 0)
    {"name": "block", "params": {"ratio": 0.3}}     one occluder
    {"all": [spec, spec, ...]}  (or a plain list)   each applied in turn, masks united
    {"mix": [{"p": 0.5, "spec": spec}, ...]}        one branch drawn by probability
    {"preset": "shapes"}                            a named preset (presets.py)
    "shapes" | "preset:msml-train" | "x.yaml"       a preset name, or a .json/.yaml/.yml file

CLI string grammar (whitespace ignored):
    mix  := term ("|" term)*          alternatives
    term := [weight "*"] seq          weight defaults to 1 (weights are normalised)
    seq  := atom ("+" atom)*          applied in sequence
    atom := "clean" | "preset:" preset | preset | name ["(" key=value ("," key=value)* ")"]
    value: number, lo..hi (a uniform range), or a word
e.g. "0.5*clean | 0.5*block(ratio=0.2..0.4, fill=black) + ellipse"
A bare atom that is a preset name means the preset (no preset shadows an occluder name).

Errors: a spec that cannot be parsed or compiled raises SpecError (a UsageError: one line, before
any work); an unknown occluder or preset name raises the registry's UnknownNameError.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from occsynth.occluders.params import SpecError
from occsynth.occluders.presets import get_preset, is_preset

Spec = Any


def parse_cli_spec(text: str) -> Spec:
    """Turn the CLI grammar above into the data form."""
    text = text.strip()
    if not text:
        return None
    terms = [t for t in _split_top(text, "|")]
    if len(terms) == 1 and "*" not in _strip_parens(terms[0]):
        return _parse_seq(terms[0])
    branches = []
    for term in terms:
        weight, body = 1.0, term
        head = _strip_parens(term)
        if "*" in head:
            w, body = term.split("*", 1)
            try:
                weight = float(w)
            except ValueError:
                raise SpecError(f"weight {w.strip()!r} of {term!r} is not a number") from None
        branches.append({"p": weight, "spec": _parse_seq(body)})
    return {"mix": branches}


def _strip_parens(text: str) -> str:
    return re.sub(r"\([^)]*\)", "", text)


def _split_top(text: str, sep: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    if depth != 0:
        raise SpecError(f"unbalanced parentheses in occlusion spec {text!r}")
    if any(not p for p in parts):
        raise SpecError(f"empty term in occlusion spec {text!r}")
    return parts


def _parse_seq(text: str) -> Spec:
    atoms = [_parse_atom(a) for a in _split_top(text, "+")]
    atoms = [a for a in atoms if a is not None]
    if not atoms:
        return None
    return atoms[0] if len(atoms) == 1 else {"all": atoms}


_ATOM = re.compile(r"^([A-Za-z_][\w\-]*)\s*(?:\((.*)\))?$", re.S)


def _parse_atom(text: str) -> Spec:
    if is_preset(text):
        return get_preset(text)
    m = _ATOM.match(text.strip())
    if not m:
        raise SpecError(f"cannot parse occluder {text!r}; expected name or name(key=value, ...)")
    name, args = m.group(1), m.group(2)
    if name == "clean":
        return None
    params: dict[str, Any] = {}
    if args and args.strip():
        for item in _split_top(args, ","):
            if "=" not in item:
                raise SpecError(f"occluder parameter {item!r} in {text!r} must be key=value")
            key, value = (s.strip() for s in item.split("=", 1))
            params[key] = _parse_value(value)
    return {"name": name, "params": params}


def _parse_value(text: str) -> Any:
    if ".." in text:
        lo, hi = text.split("..", 1)
        try:
            return [float(lo), float(hi)]
        except ValueError:
            raise SpecError(f"range {text!r} must be lo..hi with two numbers") from None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def load_spec(value: Spec) -> Spec:
    """Accept a data spec, a CLI string, or a path to a .json/.yaml file."""
    if isinstance(value, (str, Path)) and str(value).endswith((".json", ".yaml", ".yml")):
        path = Path(value)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(
                f"cannot read occlusion spec file {path}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        try:
            return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            reason = " ".join(str(exc).split())
            raise SpecError(f"occlusion spec file {path} is not valid {path.suffix[1:].upper()}: {reason}") from None
    if isinstance(value, str):
        if is_preset(value):
            return get_preset(value)
        return parse_cli_spec(value)
    return value


def compile_tree(spec: Spec, leaf) -> tuple:
    """The spec as a tree of nodes: ("clean",), ("all", [nodes]), ("mix", probabilities,
    [nodes]), and whatever `leaf(name, params)` makes of each occluder. Shared by the CPU
    Composer and the batched torch path, so both read specs identically."""
    if spec is None or spec == "clean":
        return ("clean",)
    if isinstance(spec, list):
        return ("all", [compile_tree(s, leaf) for s in spec])
    if isinstance(spec, str):
        return compile_tree(load_spec(spec), leaf)
    if not isinstance(spec, dict):
        raise SpecError(f"occlusion spec must be None, str, list or dict, got {type(spec).__name__}")
    if "all" in spec:
        return ("all", [compile_tree(s, leaf) for s in spec["all"]])
    if "mix" in spec:
        branches = spec["mix"]
        if not isinstance(branches, list) or not all(isinstance(b, dict) for b in branches):
            raise SpecError(f"mix needs a list of {{p, spec}} branches: {spec!r}")
        try:
            weights = np.array([float(b.get("p", 1.0)) for b in branches])
        except (TypeError, ValueError):
            raise SpecError(f"mix weights must be numbers: {spec!r}") from None
        if len(branches) == 0 or not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise SpecError(f"mix needs branches with non-negative weights summing > 0: {spec!r}")
        return ("mix", weights / weights.sum(), [compile_tree(b.get("spec"), leaf) for b in branches])
    if "preset" in spec:
        return compile_tree(get_preset(spec["preset"]), leaf)
    if "name" in spec:
        params = spec.get("params") or {}
        if not isinstance(params, dict):
            raise SpecError(f"params of occluder {spec['name']!r} must be a mapping, got {params!r}")
        return leaf(spec["name"], params)
    raise SpecError(f"occlusion spec needs one of 'name', 'all', 'mix', 'preset': {spec!r}")
