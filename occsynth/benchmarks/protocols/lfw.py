"""LFW verification protocol files: ``pairs.txt`` (View 2) and ``pairsDevTrain.txt`` /
``pairsDevTest.txt`` (View 1).

Format (LFW README, section 3c): the first line is the header, ``folds<TAB>n`` for View 2
(``10\\t300``) or ``n`` for View 1 (``1100``, ``500``: one set). Each fold is n matched pairs
``name<TAB>i<TAB>j`` followed by n mismatched pairs ``name1<TAB>i<TAB>name2<TAB>j``. Image
numbers are 1-based and name the file ``name/name_%04d.jpg``.

Parsing is strict: a wrong header, a wrong number of lines, a malformed line or a pair of the
wrong kind in a block is a ValueError naming ``file:line``. A protocol that silently lost or
mislabelled a pair would give a benchmark number that is not comparable with published ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from occsynth.benchmarks.protocols.pairs import Pair, write_pairs_txt  # noqa: F401  (write_pairs_txt: LFW's own format)

__all__ = [
    "lfw_sample_id",
    "read_lfw_pairs",
    "write_pairs_txt",
    "VIEW1_TRAIN",
    "VIEW1_TEST",
    "VIEW2",
]

VIEW2 = "pairs.txt"
VIEW1_TRAIN = "pairsDevTrain.txt"
VIEW1_TEST = "pairsDevTest.txt"

# Headers of the official files, for the `expect=` check.
OFFICIAL_HEADERS = {VIEW2: (10, 300), VIEW1_TRAIN: (1, 1100), VIEW1_TEST: (1, 500)}


def lfw_sample_id(name: str, number: int, ext: str = ".jpg") -> str:
    """('Aaron_Peirsol', 1) -> 'Aaron_Peirsol/Aaron_Peirsol_0001.jpg' (the archive layout)."""
    return f"{name}/{name}_{number:04d}{ext}"


def read_lfw_pairs(
    path: str | os.PathLike,
    *,
    expect: tuple[int, int] | str | None = "official",
    ext: str = ".jpg",
) -> list[Pair]:
    """Parse an LFW pairs file into Pairs in file order.

    ``expect``: (folds, n) the header must announce; "official" (default) = the official value
    when the file has an official name (pairs.txt: 10 x 300, pairsDevTrain.txt: 1 x 1100,
    pairsDevTest.txt: 1 x 500), else any; None = any header. The fold of the i-th pair is
    ``i // (2n)`` (0 for View 1). ``ext`` is the image extension of the sample ids.
    """
    path = Path(path)
    if expect == "official":
        expect = OFFICIAL_HEADERS.get(path.name)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    while lines and not lines[-1].strip():
        lines.pop()  # the newline ending the last line, and blank lines after it
    if not lines:
        raise ValueError(f"{path}:1: empty file (expected an LFW header such as '10\\t300')")

    folds, n = _header(path, lines[0])
    if expect is not None and (folds, n) != tuple(expect):
        raise ValueError(f"{path}:1: header announces {folds} fold(s) x {n} pairs, expected {expect[0]} x {expect[1]}")
    per_fold = 2 * n
    body = lines[1:]
    expected = folds * per_fold
    if len(body) < expected:
        fold = len(body) // per_fold + 1
        raise ValueError(
            f"{path}:{len(lines) + 1}: file ends after line {len(lines)}: expected {expected} "
            f"pair lines ({folds} fold(s) x ({n} matched + {n} mismatched)), found "
            f"{len(body)} (fold {fold} is incomplete)"
        )
    if len(body) > expected:
        raise ValueError(
            f"{path}:{expected + 2}: extra line(s): the header announces {expected} pair "
            f"lines ({folds} fold(s) x ({n} matched + {n} mismatched)), found {len(body)}"
        )

    pairs = []
    for i, line in enumerate(body):
        line_no = i + 2
        fold, pos = divmod(i, per_fold)
        matched_block = pos < n
        fields = line.split()
        where = f"{path}:{line_no}"
        block = f"fold {fold + 1}, {'matched' if matched_block else 'mismatched'} block"
        if matched_block:
            if len(fields) != 3:
                kind = "a mismatched pair" if len(fields) == 4 else f"{len(fields)} fields"
                raise ValueError(f"{where}: expected a matched pair 'name i j' ({block}), got {kind}: {line!r}")
            name, i1, i2 = fields[0], _number(where, fields[1]), _number(where, fields[2])
            _check_name(where, name)
            if i1 == i2:
                raise ValueError(f"{where}: matched pair compares image {i1} of {name} with itself")
            a, b = lfw_sample_id(name, i1, ext), lfw_sample_id(name, i2, ext)
        else:
            if len(fields) != 4:
                kind = "a matched pair" if len(fields) == 3 else f"{len(fields)} fields"
                raise ValueError(
                    f"{where}: expected a mismatched pair 'name1 i name2 j' ({block}), got {kind}: {line!r}"
                )
            n1, i1, n2, i2 = fields[0], _number(where, fields[1]), fields[2], _number(where, fields[3])
            _check_name(where, n1)
            _check_name(where, n2)
            if n1 == n2:
                raise ValueError(f"{where}: a matched pair ({n1} twice) in the mismatched block ({block})")
            a, b = lfw_sample_id(n1, i1, ext), lfw_sample_id(n2, i2, ext)
        pairs.append(Pair(index=i, fold=fold, issame=matched_block, a=a, b=b))
    return pairs


def _header(path: Path, line: str) -> tuple[int, int]:
    fields = line.split()
    try:
        values = [int(v) for v in fields]
    except ValueError:
        values = []
    if len(values) == 2 and values[0] >= 1 and values[1] >= 1:
        return values[0], values[1]
    if len(values) == 1 and values[0] >= 1:
        return 1, values[0]
    raise ValueError(
        f"{path}:1: not an LFW header (expected 'folds<TAB>n' such as '10\\t300', or 'n' such as '1100'): {line!r}"
    )


def _number(where: str, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{where}: image number must be a positive integer (1-based), got {text!r}")
    return int(text)


def _check_name(where: str, name: str) -> None:
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"{where}: {name!r} is not a valid person name")
