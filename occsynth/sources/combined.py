"""Several sources under name prefixes, read as one."""

from __future__ import annotations

from occsynth.sources._registry import SOURCES
from occsynth.sources.base import Source, SourceItem


@SOURCES.register("combined")
class CombinedSource(Source):
    """Several sources under name prefixes ("probes/...", "distractors/..."), read as one:
    builders whose protocol spans two folders (MF1_occ) still run a single pipeline."""

    kind = "combined"

    def __init__(self, parts: dict[str, Source]):
        self.parts = dict(sorted(parts.items()))
        items = [
            SourceItem(f"{prefix}/{item.sample_id}", item.identity, item.member, item.size, item.offset, item.problem)
            for prefix, source in self.parts.items()
            for item in source.items()
        ]
        description = "; ".join(f"{prefix}: {source.description}" for prefix, source in self.parts.items())
        ignored = [f"{prefix}/{name}" for prefix, source in self.parts.items() for name in source.ignored]
        super().__init__("+".join(source.root for source in self.parts.values()), description, items, ignored)

    def _read(self, item: SourceItem) -> bytes:
        prefix, _, rest = item.sample_id.partition("/")
        source = self.parts[prefix]
        return source.read(source._by_id[rest])
