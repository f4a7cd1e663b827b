"""The CPU speed paths of the batched ops give what the general ones give: a polygon's sector
found by counting comparisons equals searchsorted's, for every vertex count it is used for."""

from __future__ import annotations

import torch

from occsynth.occluders.torch import TorchOccluder, shapes


def _run(spec: str, seed: int):
    images = torch.randint(0, 256, (48, 3, 40, 36), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return TorchOccluder(spec)(images, None, torch.Generator().manual_seed(seed))


def test_polygon_sectors_by_counting_equal_searchsorted(monkeypatch):
    specs = [f"polygon(vertices={n}, spikiness=0.0..0.9, ratio=0.05..0.95, overflow=shrink)" for n in (3, 7, 16)]
    specs.append("polygon(vertices=3..16, ratio=0.1..0.6)")
    counted = [_run(spec, seed) for spec in specs for seed in range(3)]
    monkeypatch.setattr(shapes, "SECTOR_COUNT_MAX", 0)  # searchsorted for every vertex count
    searched = [_run(spec, seed) for spec in specs for seed in range(3)]
    for (image_a, mask_a), (image_b, mask_b) in zip(counted, searched):
        assert torch.equal(mask_a, mask_b) and torch.equal(image_a, image_b)
    assert all(bool(mask.any()) for _, mask in counted)
