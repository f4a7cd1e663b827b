"""Statistics of a dataset, gathered from its samples' metadata and failure records."""
from __future__ import annotations

from collections import Counter

import numpy as np

from occsynth.contract import mask_known


def dataset_stats(metas: list[dict], failures: list[dict]) -> dict:
    """Occlusion statistics count the samples whose mask is known; samples with real occlusions
    and no pixel mask (contract.MASK_KNOWN) are counted apart, as "mask_unknown"."""
    unknown = sum(not mask_known(m) for m in metas)
    ratios = np.array([m["occlusion_ratio"] for m in metas if mask_known(m)], dtype=np.float64)
    hist, edges = np.histogram(ratios, bins=10, range=(0.0, 1.0)) if len(ratios) else (np.zeros(10, int), np.linspace(0, 1, 11))
    occluded = ratios[ratios > 0]
    stats = {
        "identities": len({m["identity"] for m in metas}),
        "occlusion_ratio": {
            "mean": float(ratios.mean()) if len(ratios) else 0.0,
            "mean_occluded_only": float(occluded.mean()) if len(occluded) else 0.0,
            "std": float(ratios.std()) if len(ratios) else 0.0,
            "min": float(ratios.min()) if len(ratios) else 0.0,
            "max": float(ratios.max()) if len(ratios) else 0.0,
            "histogram": {"edges": np.round(edges, 2).tolist(), "counts": hist.tolist()},
        },
        "occluded_samples": int(len(occluded)),
        "occluders": dict(sorted(Counter(o["name"] for m in metas for o in m["occluders"]).items())),
        "families": dict(sorted(Counter(o["family"] for m in metas for o in m["occluders"]).items())),
        "align_modes": dict(sorted(Counter(m.get("align_mode", "") for m in metas).items())),
        "failure_stages": dict(sorted(Counter(f["stage"] for f in failures).items())),
        "failure_reasons": dict(sorted(Counter(f["reason"] for f in failures).most_common(20))),
    }
    if unknown:  # only then: manifests of synthetic datasets stay as they were
        stats["mask_unknown"] = unknown
    return stats
