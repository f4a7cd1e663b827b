"""A tiny dataset directory written by hand following occsynth.contract (shards through
ShardWriter, index.jsonl, failures.jsonl, manifest.json, pairs.jsonl), for the export and card
tests; and a folder of synthetic aligned faces to build from. Not a test module: imported by them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from occsynth import __version__, contract
from occsynth.benchmarks.protocols.pairs import Pair, write_pairs_jsonl
from occsynth.build.stats import dataset_stats
from occsynth.faces.templates import get_template
from occsynth.io.images import encode_image, encode_mask
from occsynth.io.tar import ShardWriter

TEMPLATE = get_template("arcface-112x112")
W, H = TEMPLATE.width, TEMPLATE.height

# (identity, image number, occluder box (x0, y0, x1, y1) or None, occluder family/name)
SAMPLES = [
    ("Alice", 1, None, None),
    ("Alice", 2, (0, 60, 112, 112), ("mask", "surgical")),
    ("Alice", 3, (20, 30, 90, 55), ("glasses", "sunglasses")),
    ("Bob", 1, (0, 0, 56, 112), ("geometric", "block")),
    ("Bob", 2, None, None),
    ("Carol", 1, (0, 60, 112, 112), ("mask", "surgical")),
    ("Carol", 2, (10, 10, 30, 30), ("geometric", "block")),
    ("Carol", 3, (0, 56, 112, 112), ("mask", "cloth")),
]
SHARD_SIZE = 5


def write_blocky_faces(root: Path, per_person: int, seed: int) -> Path:
    """Aligned 112x112 'faces' (8x8 blocks of noise, so PNG sizes vary) of Ann, Bob and Cid,
    `per_person` each, as <root>/<Name>/<Name>_NNNN.png; returns root."""
    rng = np.random.default_rng(seed)
    for person in ("Ann", "Bob", "Cid"):
        (root / person).mkdir()
        for i in range(per_person):
            image = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
            (root / person / f"{person}_{i:04d}.png").write_bytes(encode_image(image))
    return root


def sample_id(identity: str, number: int) -> str:
    return f"{identity}/{identity}_{number:04d}.jpg"


def make_images(index: int, box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(index)
    clean = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), np.uint8)
    image = clean.copy()
    if box is not None:
        x0, y0, x1, y1 = box
        mask[y0:y1, x0:x1] = contract.MASK_OCCLUDED
        image[mask > 0] = (40 * (index + 1)) % 256
    return image, mask, clean


def build_tiny_dataset(out: Path, *, with_pairs: bool = True, image_format: str = "png") -> dict:
    """Write the dataset; returns {"metas", "images", "masks", "cleans", "pairs", "rows"}."""
    out.mkdir(parents=True, exist_ok=True)
    metas, images, masks, cleans, shards = [], {}, {}, {}, []
    for shard_index in range(0, len(SAMPLES), SHARD_SIZE):
        writer = ShardWriter(out / contract.shard_name(shard_index // SHARD_SIZE))
        count = 0
        for i in range(shard_index, min(shard_index + SHARD_SIZE, len(SAMPLES))):
            identity, number, box, occ = SAMPLES[i]
            key = f"{i:06d}"
            image, mask, clean = make_images(i, box)
            occluders = [] if occ is None else [{"family": occ[0], "name": occ[1], "params": {"box": list(box)}}]
            meta = {
                "key": key,
                "sample_id": sample_id(identity, number),
                "identity": identity,
                "source": sample_id(identity, number),
                "template": TEMPLATE.name,
                "image_size": [W, H],
                "landmarks": contract.round_points(TEMPLATE.points),
                "seed": 1000 + i,
                "spec": "" if occ is None else "demo",
                "occluders": occluders,
                "occlusion_ratio": contract.occlusion_ratio(mask),
                "align_mode": "aligned-input",
                "extra": {"number": number},
            }
            assert contract.validate_sample_meta(json.loads(contract.dumps(meta))) == []
            members = {
                image_format: encode_image(image, image_format, 95),
                contract.EXT_MASK: encode_mask(mask),
                contract.EXT_META: contract.dumps(meta).encode(),
                contract.EXT_CLEAN: encode_image(clean, "png"),
            }
            writer.write(key, members)
            metas.append(json.loads(members[contract.EXT_META]))
            images[key], masks[key], cleans[key] = members[image_format], mask, clean
            count += 1
        digest = writer.commit()
        shards.append(
            {
                "name": contract.shard_name(shard_index // SHARD_SIZE),
                "sha256": digest,
                "num_samples": count,
                "num_failures": 0,
            }
        )
    failures = [
        {
            "key": "000099",
            "sample_id": "Dave/Dave_0001.jpg",
            "source": "Dave/Dave_0001.jpg",
            "stage": "detect",
            "reason": "no face detected",
        }
    ]
    (out / contract.INDEX).write_text(contract.dumps_lines(metas))
    (out / contract.FAILURES).write_text(contract.dumps_lines(failures))
    manifest = {
        "format": "occsynth-shards/1",
        "tool": "occsynth",
        "version": __version__,
        "name": "tiny",
        "command": "occsynth build tiny --seed 7",
        "config": {"seed": 7},
        "seed": 7,
        "template": TEMPLATE.name,
        "image_size": [W, H],
        "source": {"description": "hand-made test samples", "fingerprint": "0" * 64},
        "shards": shards,
        "totals": {"planned": len(metas) + 1, "samples": len(metas), "failures": 1, "shards": len(shards)},
        "stats": dataset_stats(metas, failures),
    }
    (out / contract.MANIFEST).write_text(json.dumps(contract._jsonable(manifest), indent=2, sort_keys=True))

    pairs, rows = [], []
    if with_pairs:
        pairs = [
            Pair(0, 0, True, sample_id("Alice", 1), sample_id("Alice", 2)),
            Pair(1, 0, True, sample_id("Carol", 1), sample_id("Carol", 3)),
            Pair(2, 0, False, sample_id("Alice", 3), sample_id("Bob", 1)),
            Pair(3, 0, False, sample_id("Bob", 2), sample_id("Dave", 1)),  # Dave failed: flagged
            Pair(4, 1, True, sample_id("Bob", 1), sample_id("Bob", 2)),
            Pair(5, 1, True, sample_id("Carol", 2), sample_id("Carol", 3)),
            Pair(6, 1, False, sample_id("Carol", 2), sample_id("Alice", 1)),
            Pair(7, 1, False, sample_id("Bob", 1), sample_id("Carol", 1)),
        ]
        key_of = {m["sample_id"]: m["key"] for m in metas}
        rows = write_pairs_jsonl(
            out / "pairs.jsonl", pairs, key_of, problems={"Dave/Dave_0001.jpg": "detect: no face detected"}
        )
    return {
        "metas": metas,
        "images": images,
        "masks": masks,
        "cleans": cleans,
        "pairs": pairs,
        "rows": rows,
        "manifest": manifest,
    }
