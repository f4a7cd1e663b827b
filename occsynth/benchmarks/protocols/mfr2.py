"""MFR2 ("Masked Faces in Real world for face Recognition", Anwar & Raychowdhury 2020,
distributed with MaskTheFace): 53 identities, 269 aligned 160x160 images laid out
``mfr2/<Name>/<Name>_0001.png``, plus ``pairs.txt`` with 848 verification pairs.

MFR2's ``pairs.txt`` uses the LFW line format but NOT the LFW file layout:

* no header line: every line is a pair (evaluation code reads ``len(lines)`` pairs, e.g. MSML's
  ``eval/qeval_folder.py``, github.com/ygtxr1997/MSML);
* ``name i j`` is a matched pair and ``name1 i name2 j`` a mismatched one; they need not come in
  blocks, so the kind of each pair is read from its field count;
* image numbers are 1-based (image 1 is ``<Name>_0001``), separated by spaces (tabs accepted);
* the images are PNGs, not JPEGs.

Because copies of MFR2 circulate re-encoded or with an LFW-style header added, both are
accepted: a first line of one or two integers is taken as an LFW header (and then the LFW block
layout is required, see :mod:`.lfw`), and when ``available_ids`` is given, each reference
resolves to the existing file ``<Name>/<Name>_NNNN.<any ext>``. Without a header all pairs are
in fold 0 (MFR2 defines no folds).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from occsynth.benchmarks.protocols import lfw
from occsynth.benchmarks.protocols.lfw import (  # the same image-number and name rules as LFW
    _check_name,
    _number,
)
from occsynth.benchmarks.protocols.pairs import Pair

__all__ = ["read_mfr2_pairs", "MFR2_EXT"]

MFR2_EXT = ".png"
_HEADER_RE = re.compile(r"^\s*\d+(\s+\d+)?\s*$")


def read_mfr2_pairs(
    path: str | os.PathLike,
    available_ids: Iterable[str] | None = None,
    *,
    ext: str = MFR2_EXT,
) -> list[Pair]:
    """Parse an MFR2 pairs file into Pairs in file order (see the module doc).

    ``available_ids``: sample ids of the MFR2 source (e.g. ``[i.sample_id for i in
    source.items()]``); references are resolved against them whatever their extension. A
    reference that matches no file keeps the ``ext`` spelling, so that
    :func:`~occsynth.benchmarks.protocols.pairs.check_pairs_against` flags it.
    """
    path = Path(path)
    resolve = _resolver(available_ids, ext)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"{path}:1: empty pairs file")
    if _HEADER_RE.match(lines[0]):
        pairs = lfw.read_lfw_pairs(path, expect=None, ext=ext)
        return [Pair(p.index, p.fold, p.issame, resolve(p.a), resolve(p.b)) for p in pairs]

    pairs = []
    for i, line in enumerate(lines):
        where = f"{path}:{i + 1}"
        fields = line.split()
        if len(fields) == 3:
            name, n1, n2 = fields[0], _number(where, fields[1]), _number(where, fields[2])
            _check_name(where, name)
            if n1 == n2:
                raise ValueError(f"{where}: matched pair compares image {n1} of {name} with itself")
            a, b, same = lfw.lfw_sample_id(name, n1, ext), lfw.lfw_sample_id(name, n2, ext), True
        elif len(fields) == 4:
            name1, n1, name2, n2 = fields[0], _number(where, fields[1]), fields[2], _number(where, fields[3])
            _check_name(where, name1)
            _check_name(where, name2)
            if name1 == name2:
                raise ValueError(f"{where}: 4-field (mismatched) pair names {name1} twice")
            a, b, same = lfw.lfw_sample_id(name1, n1, ext), lfw.lfw_sample_id(name2, n2, ext), False
        else:
            raise ValueError(f"{where}: expected 'name i j' or 'name1 i name2 j', got {len(fields)} field(s): {line!r}")
        pairs.append(Pair(index=i, fold=0, issame=same, a=resolve(a), b=resolve(b)))
    return pairs


def _resolver(available_ids: Iterable[str] | None, ext: str):
    if available_ids is None:
        return lambda sid: sid
    by_stem: dict[str, list[str]] = {}
    for sid in available_ids:
        stem, dot, _ = sid.rpartition(".")
        by_stem.setdefault(stem if dot else sid, []).append(sid)

    def resolve(sid: str) -> str:
        stem = sid[: -len(ext)] if ext and sid.endswith(ext) else sid
        found = by_stem.get(stem, [])
        if len(found) > 1:
            raise ValueError(f"{stem}.* is ambiguous in the source: {sorted(found)}")
        return found[0] if found else sid

    return resolve
