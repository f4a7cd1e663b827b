"""Verification pairs shared by the pair protocols (LFW, MFR2): the `Pair` record, the
`pairs.jsonl` file a built dataset carries, and the official ``pairs.txt`` text layout.

``pairs.jsonl`` (beside the shards of a pair benchmark), one line per pair in protocol order::

    {"pair": 17, "fold": 0, "issame": true,
     "a": "000034", "b": "000035",          # sample KEYS in the built dataset (null when absent)
     "a_id": "Name/Name_0001.jpg", "b_id": "Name/Name_0003.jpg",   # source sample ids
     "flagged": false, "reason": ""}

A pair is never dropped: a pair whose image is missing from the source, or whose sample could
not be built, is written with ``flagged: true`` and the reason. ``a_id``/``b_id`` keep the
protocol's own image references so the official ``pairs.txt`` can be written back exactly.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from occsynth import contract
from occsynth.io.atomic import write_text
from occsynth.io.dataset import iter_jsonl

__all__ = [
    "PAIRS_FILE",
    "Pair",
    "MissingImage",
    "check_pairs_against",
    "pair_rows",
    "read_pairs_jsonl",
    "write_pairs_jsonl",
    "write_pairs_txt",
    "split_sample_id",
]

PAIRS_FILE = "pairs.jsonl"
PAIRS_FIELDS = ("pair", "fold", "issame", "a", "b", "a_id", "b_id", "flagged", "reason")

# "<Name>/<Name>_<digits>.<ext>": the identity-folder naming LFW and MFR2 both use.
_ID_RE = re.compile(r"^(?P<name>[^/]+)/(?P=name)_(?P<num>\d+)(?P<ext>\.[^./]+)$")


@dataclass(frozen=True)
class Pair:
    """One verification pair. ``a``/``b`` are source sample ids ("Name/Name_0001.jpg")."""

    index: int  # position in the protocol file (0-based, file order)
    fold: int
    issame: bool
    a: str
    b: str


@dataclass(frozen=True)
class MissingImage:
    pair: int  # Pair.index
    side: str  # "a" or "b"
    sample_id: str


def split_sample_id(sample_id: str) -> tuple[str, int, str]:
    """'Name/Name_0003.jpg' -> ('Name', 3, '.jpg'); ValueError for any other shape."""
    m = _ID_RE.match(sample_id)
    if not m:
        raise ValueError(f"sample id {sample_id!r} is not of the form <Name>/<Name>_<number>.<ext>")
    return m["name"], int(m["num"]), m["ext"]


def check_pairs_against(pairs: Iterable[Pair], available_ids: Iterable[str]) -> list[MissingImage]:
    """Every (pair, side) whose image is not among ``available_ids``, in pair order.

    The builders flag these pairs in pairs.jsonl; they are never removed from the protocol."""
    available = available_ids if isinstance(available_ids, (set, frozenset)) else set(available_ids)
    missing = []
    for pair in pairs:
        for side, sid in (("a", pair.a), ("b", pair.b)):
            if sid not in available:
                missing.append(MissingImage(pair.index, side, sid))
    return missing


def pair_rows(
    pairs: Iterable[Pair],
    key_of: Callable[[str], str | None] | Mapping[str, str],
    problems: Mapping[str, str] | None = None,
) -> list[dict]:
    """pairs.jsonl rows. ``key_of`` maps a source sample id to its key in the built dataset
    (None / absent = no sample). ``problems`` may give, per sample id, why it has no sample
    (e.g. "not in the source", or a failure reason); it becomes the pair's ``reason``."""
    lookup = key_of.get if isinstance(key_of, Mapping) else key_of
    problems = problems or {}
    rows = []
    for pair in pairs:
        keys, reasons = {}, []
        for side, sid in (("a", pair.a), ("b", pair.b)):
            keys[side] = lookup(sid)
            if keys[side] is None:
                why = problems.get(sid, "no sample in the dataset")
                reasons.append(f"{side}={sid}: {why}")
        rows.append(
            {
                "pair": pair.index,
                "fold": pair.fold,
                "issame": bool(pair.issame),
                "a": keys["a"],
                "b": keys["b"],
                "a_id": pair.a,
                "b_id": pair.b,
                "flagged": bool(reasons),
                "reason": "; ".join(reasons),
            }
        )
    return rows


def write_pairs_jsonl(
    path: str | os.PathLike,
    pairs: Iterable[Pair],
    key_of: Callable[[str], str | None] | Mapping[str, str],
    problems: Mapping[str, str] | None = None,
) -> list[dict]:
    """Write pairs.jsonl (see the module doc) atomically; returns the rows written."""
    rows = pair_rows(pairs, key_of, problems)
    write_text(Path(path), contract.dumps_lines(rows))
    return rows


def read_pairs_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a pairs.jsonl, checked for the required fields and protocol order."""
    path = Path(path)
    rows = []
    for line_no, row in iter_jsonl(path, "pairs.jsonl"):  # the project's one JSON-lines reader
        lacking = [k for k in ("pair", "fold", "issame", "a", "b", "flagged", "reason") if k not in row]
        if lacking:
            raise ValueError(f"{path}:{line_no}: pairs.jsonl row lacks {lacking}")
        # repeated protocols (lfw-block --repeats) list all pairs once per repeat
        if rows and (row.get("repeat", 0), row["pair"]) <= (rows[-1].get("repeat", 0), rows[-1]["pair"]):
            raise ValueError(f"{path}:{line_no}: pair {row['pair']} is out of order")
        if not row["flagged"] and (row["a"] is None or row["b"] is None):
            raise ValueError(f"{path}:{line_no}: pair {row['pair']} has no key but is not flagged")
        rows.append(row)
    return rows


def write_pairs_txt(path: str | os.PathLike, pairs: Iterable[Pair], *, layout: str = "auto") -> str:
    """Write pairs in the official text format; returns the layout used.

    ``layout``:
      * "lfw": header then, per fold, the matched pairs ``name<TAB>i<TAB>j`` followed by as many
        mismatched pairs ``name1<TAB>i<TAB>name2<TAB>j``. The header is ``folds<TAB>n`` for
        several folds (View 2, "10\\t300") and ``n`` for one fold (View 1, "1100"), exactly as in
        the LFW files, so parsing an official file and writing it back gives the same bytes.
      * "plain": no header, one pair per line in index order (the MFR2 layout).
      * "auto": "lfw" when the pairs have that block structure, else "plain".
    Image numbers are written as plain integers (1-based, as in the files).
    """
    pairs = sorted(pairs, key=lambda p: p.index)
    if layout not in ("auto", "lfw", "plain"):
        raise ValueError(f"layout must be 'auto', 'lfw' or 'plain', got {layout!r}")
    lines = [_pair_line(p) for p in pairs]
    header = _lfw_header(pairs)
    if layout == "lfw" and header is None:
        raise ValueError("pairs do not follow the LFW layout (per fold: n matched then n mismatched)")
    if layout == "auto":
        layout = "lfw" if header is not None else "plain"
    text = "".join(line + "\n" for line in ([header] if layout == "lfw" else []) + lines)
    write_text(Path(path), text)
    return layout


def _pair_line(pair: Pair) -> str:
    name_a, num_a, _ = split_sample_id(pair.a)
    name_b, num_b, _ = split_sample_id(pair.b)
    if pair.issame:
        if name_a != name_b:
            raise ValueError(f"pair {pair.index} is matched but names differ: {pair.a} / {pair.b}")
        return f"{name_a}\t{num_a}\t{num_b}"
    return f"{name_a}\t{num_a}\t{name_b}\t{num_b}"


def _lfw_header(pairs: list[Pair]) -> str | None:
    """The LFW header for pairs in LFW block order, or None when they are not."""
    if not pairs:
        return None
    folds = sorted({p.fold for p in pairs})
    if folds != list(range(len(folds))):
        return None
    per_fold = len(pairs) // len(folds)
    if per_fold * len(folds) != len(pairs) or per_fold % 2:
        return None
    n = per_fold // 2
    for i, p in enumerate(pairs):
        if p.index != i or p.fold != i // per_fold or p.issame != (i % per_fold < n):
            return None
    return f"{len(folds)}\t{n}" if len(folds) > 1 else f"{n}"
