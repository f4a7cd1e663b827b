"""Statistics of a dataset, gathered from its samples' metadata and failure records."""
from __future__ import annotations

from collections import Counter

import numpy as np


def dataset_stats(metas: list[dict], failures: list[dict]) -> dict:
    ratios = np.array([m["occlusion_ratio"] for m in metas], dtype=np.float64)
    hist, edges = np.histogram(ratios, bins=10, range=(0.0, 1.0)) if len(ratios) else (np.zeros(10, int), np.linspace(0, 1, 11))
    occluded = ratios[ratios > 0]
    return {
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
