"""Dataset cards on a tiny hand-built dataset: the card states the build facts, the plots exist
and are not blank, and the heat map is exactly the mean of the masks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from tiny_dataset import build_tiny_dataset

from occsynth.inspect.card import (
    CARD,
    FREQUENCY_NPY,
    PLOT_HEATMAP,
    PLOT_OCCLUDERS,
    PLOT_RATIO,
    measure,
    occlusion_frequency,
    write_card,
)
from occsynth.io.dataset import DatasetError


@pytest.fixture(scope="module")
def carded(tmp_path_factory):
    root = tmp_path_factory.mktemp("card") / "ds"
    built = build_tiny_dataset(root)
    facts = {
        "benchmark": "TINY-OCC",
        "source": "Someone et al., A Venue 2020",
        "protocol": "8 pairs in 2 folds",
        "notes": ["synthetic test data"],
        "targets": {"mean_occlusion_ratio_occluded": 0.4309, "pairs": 8, "lpips": 0.1},
    }
    path = write_card(root, facts)
    return root, built, path


def test_heat_map_is_the_mean_of_the_masks(carded):
    root, built, _ = carded
    expected = np.mean([m.astype(np.float64) / 255.0 for m in built["masks"].values()], axis=0)
    saved = np.load(root / FREQUENCY_NPY)
    assert saved.shape == (112, 112) and np.allclose(saved, expected, atol=1e-12)
    maps = occlusion_frequency(root)
    assert maps.count == 8 and maps.other_sizes == 0 and np.array_equal(maps.frequency, saved)
    # the bottom half is covered by 3 of the 8 masks (two surgical, one cloth), plus Bob's left half
    assert saved[100, 100] == pytest.approx(3 / 8) and saved[100, 10] == pytest.approx(4 / 8)
    assert saved[5, 100] == 0.0
    mean_face = np.mean(
        [np.asarray(Image.open(io.BytesIO(b))).astype(np.float64) for b in built["images"].values()], axis=0
    )
    assert np.allclose(maps.mean_face, mean_face)


def test_plots_exist_and_are_not_blank(carded):
    root, _, _ = carded
    for name in (PLOT_RATIO, PLOT_HEATMAP, PLOT_OCCLUDERS):
        image = np.asarray(Image.open(root / name).convert("RGB"))
        assert image.shape[0] > 100 and image.shape[1] > 200, name
        colours = (image[..., 0].astype(np.uint32) << 16) | (image[..., 1].astype(np.uint32) << 8) | image[..., 2]
        assert len(np.unique(colours)) > 20, name  # drawn, not a flat canvas


def test_card_lists_the_build_facts(carded):
    root, built, path = carded
    text = path.read_text()
    assert path == root / CARD
    manifest = built["manifest"]
    assert f"`{manifest['command']}`" in text
    assert "**Seed:** 7" in text and "occsynth 0.1.0" in text and "arcface-112x112 (112x112)" in text
    for shard in manifest["shards"]:
        assert shard["sha256"] in text
    assert "| detect | 1 |" in text and "no face detected" in text
    assert "Someone et al., A Venue 2020" in text and "8 pairs in 2 folds" in text
    values = measure(root)
    occluded = [m["occlusion_ratio"] for m in built["metas"] if m["occlusion_ratio"] > 0]
    assert values["mean_occlusion_ratio_occluded"] == pytest.approx(np.mean(occluded))
    achieved = f"{np.mean(occluded):.2%}"
    assert f"| `mean_occlusion_ratio_occluded` | 43.09% | {achieved} |" in text
    assert "| `pairs` | 8 | 8 | +0 |" in text
    assert "| lpips | `lpips` | 0.1 | not measured by occsynth |" in text
    assert values["flagged_pairs"] == 1 and "| 8 | 4 | 4 | 2 | 1 |" in text
    for name in (PLOT_RATIO, PLOT_HEATMAP, PLOT_OCCLUDERS):
        assert f"]({name})" in text
    assert "| mask | 3 |" in text and "| surgical | 2 |" in text


def test_card_without_facts_or_pairs(tmp_path):
    root = tmp_path / "ds"
    build_tiny_dataset(root, with_pairs=False)
    text = write_card(root).read_text()
    assert text.startswith("# tiny\n") and "## Pairs" not in text and "## Benchmark" not in text
    with pytest.raises(DatasetError, match="no such dataset folder"):
        write_card(tmp_path / "nothing")


def test_card_summarises_protocol_json(tmp_path):
    from occsynth.benchmarks.protocols.ar import ar_protocol
    from occsynth.benchmarks.protocols.identification import write_protocol_json

    root = tmp_path / "ds"
    built = build_tiny_dataset(root, with_pairs=False)
    ids = ["m-001-01.bmp", "m-001-08.bmp", "m-001-11.bmp", "w-002-01.bmp", "w-002-21.bmp", "w-003-08.bmp"]
    protocol = ar_protocol(ids, 2)
    keys = {sid: built["metas"][i]["key"] for i, sid in enumerate(protocol.sample_ids())}
    write_protocol_json(root / "protocol.json", protocol, keys)
    text = write_card(root).read_text()
    assert "- **Protocol:** `ar-protocol-2`" in text and "- **gallery_images:** `[1]`" in text
    assert "| gallery | 2 |" in text and "| probes: sunglasses | 2 |" in text
    assert "| excluded source images | 1 |" in text  # w-003 has no gallery image
