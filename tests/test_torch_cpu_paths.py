"""The CPU speed paths of the batched ops give what the general ones give: a polygon's sector
found by counting comparisons equals searchsorted's, for every vertex count it is used for; the
paint blended in chunks of images equals the whole-batch blend; the k-th smallest gauge gives
the same mask whatever the number of Newton steps before its exact correction."""

from __future__ import annotations

import torch

from occsynth.occluders.torch import TorchOccluder, _ops, kth_smallest, shapes


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


def test_paint_in_chunks_equals_the_whole_batch_blend(monkeypatch):
    runs = []
    for chunk in (5, 16, 10_000):  # 10,000: one blend over the whole batch, as before the chunks
        monkeypatch.setattr(_ops, "PAINT_CHUNK", chunk)
        out = []
        for seed in range(2):
            for dtype in (torch.uint8, torch.float32):
                images = torch.randint(0, 256, (48, 3, 40, 36), generator=torch.Generator().manual_seed(seed))
                images = images.to(dtype) if dtype == torch.uint8 else images.to(dtype) / 255
                for fill in ("black", "white", "mean", "noise", "texture"):
                    for shape in ("block", "ellipse"):
                        occluder = TorchOccluder(f"{shape}(ratio=0.05..0.5, fill={fill})")
                        out.append(occluder(images, None, torch.Generator().manual_seed(seed)))
        runs.append(out)
    for other in runs[1:]:
        for (image_a, mask_a), (image_b, mask_b) in zip(runs[0], other):
            assert torch.equal(mask_a, mask_b) and torch.equal(image_a, image_b)
    assert all(bool(mask.any()) for _, mask in runs[0])


def test_kth_smallest_mask_is_the_same_whatever_the_newton_steps():
    """Rows of gauges with ties (values on a coarse grid), k from 1 to the whole row: {g <= t}
    holds the k smallest (all members of a tie at the k-th value) for 0 to 6 steps alike."""
    gen = torch.Generator().manual_seed(0)
    g = torch.floor(torch.rand(64, 500, generator=gen) * 300) / 300 + torch.rand(64, 1, generator=gen)
    k = torch.randint(1, 501, (64,), generator=gen)
    guess = torch.rand(64, generator=gen, dtype=torch.float64) + 0.5
    expected = g <= g.sort(1).values.gather(1, (k - 1).view(-1, 1))
    for steps in (0, 1, 3, 6):
        for power in (1, 2):
            t = kth_smallest(g, k, guess, power, steps=steps)
            assert torch.equal(g <= t.view(-1, 1), expected), (steps, power)
