"""Benchmark protocol files: which images form the pairs, galleries and probe sets of the
public occluded-face benchmarks, parsed strictly and written back in their own formats.

* :mod:`.lfw`   LFW View 1 / View 2 pairs files
* :mod:`.mfr2`  MFR2 (masked faces in the real world) pairs
* :mod:`.ar`    AR face database: identification protocols 1 and 2 (sunglasses / scarf)
* :mod:`.mf1`   MegaFace challenge 1 style identification (FaceScrub probes + distractors)
* :mod:`.pairs` the Pair record and the pairs.jsonl / pairs.txt files shared by pair protocols
"""

from occsynth.benchmarks.protocols.pairs import (
    PAIRS_FILE,
    MissingImage,
    Pair,
    check_pairs_against,
    read_pairs_jsonl,
    write_pairs_jsonl,
    write_pairs_txt,
)

__all__ = [
    "PAIRS_FILE",
    "MissingImage",
    "Pair",
    "check_pairs_against",
    "read_pairs_jsonl",
    "write_pairs_jsonl",
    "write_pairs_txt",
]
