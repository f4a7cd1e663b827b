"""The run's label map: identity name <-> contiguous class id, saved with the run as labels.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

from occsynth.io.atomic import write_json

from .shards import checked_index

LABELS_FILE = "labels.json"


class LabelMap:
    """Identity name <-> contiguous class id (sorted names), saved with the run as labels.json."""

    def __init__(self, identities: Iterable[str], sources: Sequence[str] = ()):
        self.identities = sorted(set(identities))
        self.index = {name: i for i, name in enumerate(self.identities)}
        self.sources = list(sources)

    @classmethod
    def from_datasets(cls, roots: Sequence[str | Path]) -> LabelMap:
        names = {m["identity"] for root in roots for m in checked_index(root)}
        return cls(names, [str(Path(r).resolve()) for r in roots])

    def __len__(self) -> int:
        return len(self.identities)

    def __getitem__(self, identity: str) -> int:
        try:
            return self.index[identity]
        except KeyError:
            raise KeyError(f"identity {identity!r} is not in the run's labels.json") from None

    def save(self, path: str | Path) -> None:
        data = {"num_classes": len(self), "identities": self.identities, "sources": self.sources}
        write_json(path, data, indent=1)

    @classmethod
    def load(cls, path: str | Path) -> LabelMap:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(data["identities"], data.get("sources", ()))
