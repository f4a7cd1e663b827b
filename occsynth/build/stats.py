"""Statistics of a dataset, gathered from its samples' metadata and failure records.

A shard task gathers its part while writing (`SampleStats`, from the metadata values before they
are encoded), the parent merges the parts in shard order (`merge_stats`): the same numbers as
`dataset_stats` over every sample's parsed metadata, without parsing 12,000 index lines back."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from occsynth.contract import mask_known


@dataclass
class SampleStats:
    """One shard's part of the dataset statistics (picklable, merged in shard order)."""

    samples: int = 0
    identities: set = field(default_factory=set)
    ratios: list = field(default_factory=list)  # occlusion ratios of the mask-known samples, in order
    occluders: Counter = field(default_factory=Counter)
    families: Counter = field(default_factory=Counter)
    align_modes: Counter = field(default_factory=Counter)
    mask_unknown: int = 0

    def add(self, meta: dict) -> None:
        """One sample's metadata: the dict as written, or as json.loads reads it back (the
        fields counted here are strings and a float, equal either way)."""
        self.samples += 1
        self.identities.add(meta["identity"])
        if mask_known(meta):
            self.ratios.append(float(meta["occlusion_ratio"]))
        else:
            self.mask_unknown += 1
        for record in meta["occluders"]:
            self.occluders[record["name"]] += 1
            self.families[record["family"]] += 1
        self.align_modes[meta.get("align_mode", "")] += 1

    @classmethod
    def joined(cls, parts: list[SampleStats]) -> SampleStats:
        """The statistics of several parts (in order: a shard's parts, a dataset's shards): what
        one pass over all their samples gathers, counters in the same first-seen order."""
        out = cls()
        for part in parts:
            out.samples += part.samples
            out.identities |= part.identities
            out.ratios += part.ratios
            out.occluders.update(part.occluders)
            out.families.update(part.families)
            out.align_modes.update(part.align_modes)
            out.mask_unknown += part.mask_unknown
        return out

    @classmethod
    def of(cls, metas: list[dict]) -> SampleStats:
        part = cls()
        for meta in metas:
            part.add(meta)
        return part


def merge_stats(parts: list[SampleStats], failures: list[dict]) -> dict:
    """The dataset statistics from its shards' parts (in shard order) and its failure records.
    Occlusion statistics count the samples whose mask is known; samples with real occlusions
    and no pixel mask (contract.MASK_KNOWN) are counted apart, as "mask_unknown"."""
    whole = SampleStats.joined(parts)
    ratios = np.array(whole.ratios, dtype=np.float64)
    hist, edges = (
        np.histogram(ratios, bins=10, range=(0.0, 1.0)) if len(ratios) else (np.zeros(10, int), np.linspace(0, 1, 11))
    )
    occluded = ratios[ratios > 0]
    stats = {
        "identities": len(whole.identities),
        "occlusion_ratio": {
            "mean": float(ratios.mean()) if len(ratios) else 0.0,
            "mean_occluded_only": float(occluded.mean()) if len(occluded) else 0.0,
            "std": float(ratios.std()) if len(ratios) else 0.0,
            "min": float(ratios.min()) if len(ratios) else 0.0,
            "max": float(ratios.max()) if len(ratios) else 0.0,
            "histogram": {"edges": np.round(edges, 2).tolist(), "counts": hist.tolist()},
        },
        "occluded_samples": int(len(occluded)),
        "occluders": dict(sorted(whole.occluders.items())),
        "families": dict(sorted(whole.families.items())),
        "align_modes": dict(sorted(whole.align_modes.items())),
        "failure_stages": dict(sorted(Counter(f["stage"] for f in failures).items())),
        "failure_reasons": dict(sorted(Counter(f["reason"] for f in failures).most_common(20))),
    }
    if whole.mask_unknown:  # only then: manifests of synthetic datasets stay as they were
        stats["mask_unknown"] = whole.mask_unknown
    return stats


def dataset_stats(metas: list[dict], failures: list[dict]) -> dict:
    """The dataset statistics from every sample's metadata (one part) and its failure records."""
    return merge_stats([SampleStats.of(metas)], failures)
