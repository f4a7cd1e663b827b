"""Closed-set identification protocols (AR, MegaFace challenge 1): a gallery, named probe
subsets, optional distractors, and the ``protocol.json`` a built benchmark carries.

``protocol.json``::

    {"protocol": "ar-protocol-1",
     "info": {...},                              # convention, image numbers, citation
     "gallery": ["000001", ...],                 # sample KEYS in the built dataset
     "probes": {"sunglasses": [...], "scarf": [...]},
     "distractors": [...],
     "identity": {"000001": "m-001", ...},       # identity of every listed key
     "flagged": [{"sample_id", "role", "reason"}],   # listed by the protocol, but no sample
     "excluded": [{"sample_id", "reason"}]}      # source images the protocol cannot use

Nothing is dropped silently: an image the protocol names whose sample could not be built is
in ``flagged``; a source image the protocol cannot use (unknown name, identity without a
gallery image, ...) is in ``excluded`` with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from occsynth import contract
from occsynth.io.atomic import write_text

__all__ = ["Protocol", "PROTOCOL_FILE", "protocol_document", "write_protocol_json"]

PROTOCOL_FILE = "protocol.json"


@dataclass
class Protocol:
    """Sample ids (source paths) of each role, and the identity of each listed id."""

    name: str
    gallery: list[str]
    probes: dict[str, list[str]]
    identity: dict[str, str]
    distractors: list[str] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)  # {"sample_id", "reason"}
    info: dict = field(default_factory=dict)

    def sample_ids(self) -> list[str]:
        """Every image the protocol uses, once each, sorted (what a builder must build)."""
        ids = set(self.gallery) | set(self.distractors)
        for members in self.probes.values():
            ids.update(members)
        return sorted(ids)


def protocol_document(
    protocol: Protocol,
    key_of: Callable[[str], str | None] | Mapping[str, str],
    problems: Mapping[str, str] | None = None,
) -> dict:
    """The protocol.json content: sample ids mapped to keys (see the module doc)."""
    lookup = key_of.get if isinstance(key_of, Mapping) else key_of
    problems = problems or {}
    flagged: list[dict] = []
    identity: dict[str, str] = {}

    def keys(ids: list[str], role: str) -> list[str]:
        out = []
        for sid in ids:
            key = lookup(sid)
            if key is None:
                flagged.append(
                    {"sample_id": sid, "role": role, "reason": problems.get(sid, "no sample in the dataset")}
                )
                continue
            out.append(key)
            if sid in protocol.identity:
                identity[key] = protocol.identity[sid]
        return out

    doc = {
        "protocol": protocol.name,
        "info": protocol.info,
        "gallery": keys(protocol.gallery, "gallery"),
        "probes": {name: keys(ids, f"probe:{name}") for name, ids in protocol.probes.items()},
        "distractors": keys(protocol.distractors, "distractor"),
    }
    doc["identity"] = dict(sorted(identity.items()))
    doc["flagged"] = flagged
    doc["excluded"] = protocol.excluded
    return doc


def write_protocol_json(
    path: str | os.PathLike,
    protocol: Protocol,
    key_of: Callable[[str], str | None] | Mapping[str, str],
    problems: Mapping[str, str] | None = None,
) -> dict:
    """Write protocol.json atomically; returns the document."""
    doc = protocol_document(protocol, key_of, problems)
    write_text(Path(path), contract.dumps(doc) + "\n")
    return doc
