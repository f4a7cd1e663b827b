"""Tiny occsynth-contract datasets for the occsynth_train tests.

Two face sources:
  * `skimage_faces`: scikit-image's bundled `lfw_subset` faces (25x25 grayscale) and the
    `astronaut` face, one identity per source face, several jittered views each. Always
    available, so the core CPU smoke tests never need ../shared/data.
  * `lfw_faces`: real LFW deep-funneled images from the tgz (centre crop, resized), the first
    identities in archive order with enough images.

Writers follow occsynth/contract.py exactly (member names, metadata fields, 255 = occluded,
manifest/index/failures files) using webdataset.TarWriter, so the tests exercise the reader on
the same layout `occsynth build` writes.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np

from occsynth import contract
from occsynth.faces.templates import get_template


def _png(array: np.ndarray) -> bytes:
    image = array if array.ndim == 2 else cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def _jitter(face: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A slightly shifted / scaled / re-lit view of one face, size x size RGB uint8."""
    h, w = face.shape[:2]
    scale = size / min(h, w) * rng.uniform(0.95, 1.05)
    dx, dy = rng.uniform(-0.04, 0.04, size=2) * size
    m = np.array([[scale, 0, (size - w * scale) / 2 + dx], [0, scale, (size - h * scale) / 2 + dy]])
    out = cv2.warpAffine(face, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    out = out.astype(np.float32) * rng.uniform(0.85, 1.15) + rng.normal(0, 4, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def skimage_faces(
    num_identities: int = 10, per_identity: int = 5, size: int = 112, seed: int = 0
) -> dict[str, list[np.ndarray]]:
    """{identity: [RGB uint8 size x size]} from scikit-image's bundled images."""
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = []
    astronaut = data.astronaut()[20:220, 150:330]  # her face, roughly centred
    sources.append(("astronaut", astronaut))
    faces = data.lfw_subset()[:100]  # the first 100 are faces, the rest are not
    for i in range(num_identities - 1):
        gray = (faces[i] * 255).astype(np.uint8)
        sources.append((f"lfw_subset_{i:03d}", np.repeat(gray[:, :, None], 3, axis=2)))
    return {name: [_jitter(face, size, rng) for _ in range(per_identity)] for name, face in sources[:num_identities]}


def lfw_faces(
    tgz: Path, num_identities: int = 10, min_images: int = 4, max_images: int = 6, size: int = 112
) -> dict[str, list[np.ndarray]]:
    """{identity: [RGB uint8]} from the first LFW identities (archive order) with >= min_images."""
    out: dict[str, list[np.ndarray]] = {}
    current, images = None, []

    def close() -> None:
        if current is not None and len(images) >= min_images:
            out[current] = images[:max_images]

    with tarfile.open(tgz) as archive:
        for member in archive:
            if not member.isfile() or not member.name.endswith(".jpg"):
                continue
            name = member.name.split("/")[1]
            if name != current:
                close()
                if len(out) >= num_identities:
                    break
                current, images = name, []
            bgr = cv2.imdecode(np.frombuffer(archive.extractfile(member).read(), np.uint8), cv2.IMREAD_COLOR)
            crop = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[60:190, 60:190]  # the deep-funneled face centre
            images.append(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA))
        else:
            close()
    return out


def block_occlusion(image: np.ndarray, ratio: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """A black square covering `ratio` of the image at a random place: (image, mask 0/255, record)."""
    h, w = image.shape[:2]
    side = max(1, int(round(np.sqrt(ratio * h * w))))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    out, mask = image.copy(), np.zeros((h, w), np.uint8)
    out[y : y + side, x : x + side] = 0
    mask[y : y + side, x : x + side] = contract.MASK_OCCLUDED
    record = {
        "family": "geometric",
        "name": "block",
        "params": {"ratio": ratio, "fill": "black", "x": x, "y": y, "width": side, "height": side},
    }
    return out, mask, record


def _meta(
    key: str,
    sample_id: str,
    identity: str,
    source: str,
    size: int,
    seed: int,
    occluders: list,
    mask: np.ndarray,
    extra: dict | None,
) -> dict:
    template = get_template("arcface-112x112")
    meta = {
        "key": key,
        "sample_id": sample_id,
        "identity": identity,
        "source": source,
        "template": template.name,
        "image_size": [size, size],
        "landmarks": np.round(template.points * (size / 112.0), 3).tolist(),
        "seed": seed,
        "occluders": occluders,
        "occlusion_ratio": contract.occlusion_ratio(mask),
    }
    if extra:
        meta["extra"] = extra
    return meta


def write_samples(out_dir: Path, samples: list[dict], shard_size: int = 16) -> Path:
    """Write contract shards + manifest.json + index.jsonl + failures.jsonl from sample dicts
    {"meta": dict, "image": RGB, "mask": uint8 0/255, "clean": RGB | None}, in key order."""
    import webdataset as wds

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = sorted(samples, key=lambda s: s["meta"]["key"])
    shards = []
    for index in range(0, len(samples), shard_size):
        chunk = samples[index : index + shard_size]
        path = out_dir / contract.shard_name(index // shard_size)
        with open(path, "wb") as f:
            writer = wds.TarWriter(f)
            for s in chunk:
                record = {
                    "__key__": s["meta"]["key"],
                    contract.EXT_IMAGE_PNG: _png(s["image"]),
                    contract.EXT_MASK: _png(s["mask"]),
                    contract.EXT_META: contract.dumps(s["meta"]).encode(),
                }
                if s.get("clean") is not None:
                    record[contract.EXT_CLEAN] = _png(s["clean"])
                writer.write(record)
            writer.close()
        shards.append(
            {"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "num_samples": len(chunk)}
        )
    metas = [s["meta"] for s in samples]
    size = metas[0]["image_size"]
    manifest = {
        "format": "occsynth-shards/1",
        "tool": "tests/train_fixtures.py",
        "template": metas[0]["template"],
        "image_size": size,
        "shards": shards,
        "totals": {"samples": len(samples), "failures": 0, "shards": len(shards)},
    }
    (out_dir / contract.MANIFEST).write_text(json.dumps(manifest, indent=2))
    (out_dir / contract.INDEX).write_text(contract.dumps_lines(metas))
    (out_dir / contract.FAILURES).write_text("")
    return out_dir


def build_train_set(
    out_dir: Path,
    faces: dict[str, list[np.ndarray]],
    *,
    seed: int = 0,
    ratio: tuple[float, float] = (0.1, 0.35),
    occluded_fraction: float = 0.5,
    keep_clean: bool = False,
    clean_variant: bool = False,
    shard_size: int = 16,
) -> Path:
    """A training set: every face once, occluded with probability `occluded_fraction`.

    keep_clean: occluded samples carry `<key>.clean.png`. clean_variant: each source image is
    written twice with adjacent keys, clean then occluded (pairing by `source`).
    """
    rng = np.random.default_rng(seed)
    samples, n = [], 0
    for identity in sorted(faces):
        for j, face in enumerate(faces[identity]):
            source = f"{identity}/{identity}_{j + 1:04d}.png"
            variants = [False, True] if clean_variant else [rng.random() < occluded_fraction]
            for v, occluded in enumerate(variants):
                key = f"{n:06d}"
                n += 1
                sample_id = source if len(variants) == 1 else f"{source}#{v}"
                if occluded:
                    image, mask, record = block_occlusion(face, float(rng.uniform(*ratio)), rng)
                    occluders = [record]
                else:
                    image, mask, occluders = face, np.zeros(face.shape[:2], np.uint8), []
                meta = _meta(
                    key, sample_id, identity, source, face.shape[0], int(rng.integers(2**62)), occluders, mask, None
                )
                samples.append(
                    {"meta": meta, "image": image, "mask": mask, "clean": face if (keep_clean and occluded) else None}
                )
    return write_samples(out_dir, samples, shard_size)


def build_pairs_benchmark(
    out_dir: Path,
    faces: dict[str, list[np.ndarray]],
    *,
    num_folds: int = 2,
    ratio: float | None = 0.2,
    seed: int = 1,
    shard_size: int = 32,
) -> tuple[Path, list[dict]]:
    """A verification benchmark: per fold, matched pairs (two images of one identity) and as many
    mismatched pairs; samples carry extra {pair, fold, side, issame}; pairs.jsonl beside."""
    rng = np.random.default_rng(seed)
    ids = [i for i in sorted(faces) if len(faces[i]) >= 2]
    pairs = []
    for fold in range(num_folds):
        for identity in ids:
            a, b = rng.choice(len(faces[identity]), size=2, replace=False)
            pairs.append((fold, True, (identity, int(a)), (identity, int(b))))
        for _ in ids:
            i1, i2 = rng.choice(len(ids), size=2, replace=False)
            pairs.append(
                (
                    fold,
                    False,
                    (ids[i1], int(rng.integers(len(faces[ids[i1]])))),
                    (ids[i2], int(rng.integers(len(faces[ids[i2]])))),
                )
            )
    samples, rows = [], []
    for p, (fold, issame, *sides) in enumerate(pairs):
        row = {"pair": p, "fold": fold, "issame": issame, "flagged": False}
        for side, (identity, j) in zip("ab", sides):
            key = f"{p:05d}{side}"
            face = faces[identity][j]
            if ratio:
                image, mask, record = block_occlusion(face, ratio, rng)
                occluders = [record]
            else:
                image, mask, occluders = face, np.zeros(face.shape[:2], np.uint8), []
            source = f"{identity}/{identity}_{j + 1:04d}.png"
            extra = {"pair": p, "fold": fold, "side": side, "issame": issame}
            meta = _meta(key, f"{source}@{p}{side}", identity, source, face.shape[0], 0, occluders, mask, extra)
            samples.append({"meta": meta, "image": image, "mask": mask, "clean": None})
            row[side] = key
        rows.append(row)
    write_samples(out_dir, samples, shard_size)
    (Path(out_dir) / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Path(out_dir), rows


def build_identification_benchmark(
    out_dir: Path,
    faces: dict[str, list[np.ndarray]],
    distractors: dict[str, list[np.ndarray]],
    *,
    ratio: float | None = 0.2,
    seed: int = 2,
) -> Path:
    """Gallery = first image of each identity, probes = the rest (occluded), plus one image of each
    distractor identity; protocol.json in occsynth's format (occsynth/benchmarks/protocols/identification.py)."""
    rng = np.random.default_rng(seed)
    samples, gallery, probe, extra_keys = [], [], [], []
    n = 0
    for group, source_faces in (("main", faces), ("distractor", distractors)):
        for identity in sorted(source_faces):
            for j, face in enumerate(source_faces[identity]):
                if group == "distractor" and j > 0:
                    break
                key = f"{n:06d}"
                n += 1
                is_probe = group == "main" and j > 0
                if is_probe and ratio:
                    image, mask, record = block_occlusion(face, ratio, rng)
                    occluders = [record]
                else:
                    image, mask, occluders = face, np.zeros(face.shape[:2], np.uint8), []
                source = f"{identity}/{identity}_{j + 1:04d}.png"
                meta = _meta(key, source, identity, source, face.shape[0], 0, occluders, mask, None)
                samples.append({"meta": meta, "image": image, "mask": mask, "clean": None})
                (probe if is_probe else extra_keys if group == "distractor" else gallery).append(key)
    write_samples(out_dir, samples, 64)
    identity = {s["meta"]["key"]: s["meta"]["identity"] for s in samples}
    doc = {
        "protocol": "fixture",
        "info": {"gallery_mode": "first"},
        "gallery": gallery,
        "probes": {"occluded": probe},
        "distractors": extra_keys,
        "identity": identity,
        "flagged": [],
        "excluded": [],
    }
    (Path(out_dir) / "protocol.json").write_text(json.dumps(doc))
    return Path(out_dir)


__all__ = [
    "build_identification_benchmark",
    "build_pairs_benchmark",
    "build_train_set",
    "lfw_faces",
    "skimage_faces",
    "write_samples",
    "block_occlusion",
]


# ---------------------------------------------------------------- pytest fixtures
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread while a test runs (import this fixture into a module to use it): on a
    shared 2-core machine two spinning threads made CPU steps 3-5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sk_faces() -> dict[str, list[np.ndarray]]:
    """10 identities x 5 views from scikit-image's bundled faces (no ../shared/data needed)."""
    return skimage_faces(10, 5)


@pytest.fixture(scope="session")
def tiny_train(tmp_path_factory, sk_faces) -> Path:
    """50 samples in 4 shards, half occluded (with clean.png)."""
    return build_train_set(tmp_path_factory.mktemp("train") / "ds", sk_faces, keep_clean=True, shard_size=16)


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory, sk_faces) -> Path:
    return build_pairs_benchmark(tmp_path_factory.mktemp("pairs") / "pairs_bench", sk_faces, num_folds=2)[0]


@pytest.fixture(scope="session")
def tiny_ident(tmp_path_factory, sk_faces) -> Path:
    distractors = skimage_faces(14, 1, seed=5)
    distractors = {
        f"distractor_{k}": v for k, v in distractors.items() if k.startswith("lfw_subset_") and int(k[-3:]) >= 9
    }
    return build_identification_benchmark(tmp_path_factory.mktemp("ident") / "ident_bench", sk_faces, distractors)
