"""Export a built dataset to the formats other tools read.

``export(dataset_dir, out, fmt)`` with ``fmt``:

* ``insightface-bin``: the verification pickle of insightface's arcface_torch
  (``eval/verification.py``, ``load_bin``): ``pickle.dump((bins, issame_list))`` where ``bins``
  holds the encoded images of every pair, a then b, in pair order, and ``issame_list`` one bool
  per pair. ``load_bin`` decodes each entry with ``mx.image.imdecode`` (bytes in, RGB out) and
  only resizes when the width differs from the ``image_size`` it is called with (112 for the
  arcface models), so the images must be 112x112. Needs ``pairs.jsonl`` beside the shards.
  Flagged pairs (an image that is missing or failed to build) cannot be represented: they are
  left out and listed, with the reason, in the sidecar ``<out>.json`` — which also warns that
  arcface_torch's 10-fold split (KFold without shuffle over pair order) then no longer lines up
  with the protocol folds.
* ``folder``: ``images/<identity>/<key>.png`` (``.jpg`` when the dataset stores JPEG),
  ``masks/<identity>/<key>.png``, ``metadata.jsonl`` (one sample per line, index order), and when
  the dataset has pairs, ``pairs.jsonl`` (keys) and ``pairs.txt`` (the official text format,
  referring to the source images, see :func:`occsynth.benchmarks.protocols.pairs.write_pairs_txt`).
* ``parquet``: one row per sample: the metadata columns (image_size split into width/height,
  landmarks as 10 floats, occluder names and families as lists, the occluder records and the
  full metadata as JSON text) plus the image, mask and (when kept) clean-image bytes.

Every export is written to a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterator

from occsynth import contract
from occsynth.benchmarks.protocols.pairs import (
    PAIRS_FILE,
    Pair,
    read_pairs_jsonl,
    write_pairs_txt,
)
from occsynth.io.atomic import atomic_write, fsync_dir, temp_path, write_text
from occsynth.io.dataset import Dataset

__all__ = ["FORMATS", "BIN_PICKLE_PROTOCOL", "export", "iter_samples"]

FORMATS = ("insightface-bin", "folder", "parquet")
# Protocol 4 (Python >= 3.4) is read by every Python 3 arcface_torch; load_bin's fallback to
# encoding="bytes" only matters for Python 2 pickles.
BIN_PICKLE_PROTOCOL = 4
ARCFACE_SIZE = (112, 112)
_IMAGE_EXTS = (contract.EXT_IMAGE_PNG, contract.EXT_IMAGE_JPG)


def export(dataset_dir: str | os.PathLike, out: str | os.PathLike, fmt: str) -> dict:
    """Export ``dataset_dir`` to ``out`` in ``fmt`` (see the module doc); returns a summary."""
    dataset_dir, out = Path(dataset_dir), Path(out)
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    Dataset(dataset_dir)  # one-line DatasetError before any work
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new output path or delete it")
    if fmt == "insightface-bin":
        return _export_bin(dataset_dir, out)
    if fmt == "folder":
        return _export_folder(dataset_dir, out)
    if fmt == "parquet":
        return _export_parquet(dataset_dir, out)
    raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")


def iter_samples(dataset_dir: str | os.PathLike) -> Iterator[tuple[str, dict[str, bytes], dict]]:
    """(key, members, metadata) of every sample, shard by shard in manifest order."""
    for key, members in Dataset(dataset_dir).iter_samples():
        if contract.EXT_META not in members:
            raise ValueError(f"{key}: no {contract.EXT_META} member")
        yield key, members, json.loads(members[contract.EXT_META])


def _image_member(key: str, members: dict[str, bytes]) -> tuple[str, bytes]:
    for ext in _IMAGE_EXTS:
        if ext in members:
            return ext, members[ext]
    raise ValueError(f"sample {key} has no image member ({' or '.join(_IMAGE_EXTS)})")


def _safe_component(text: str, what: str) -> str:
    if not text or text in (".", "..") or any(c in text for c in "/\\\0"):
        raise ValueError(f"{what} {text!r} cannot be used as a folder or file name")
    return text


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A fresh temporary path beside `out` (a name only this process uses), renamed to `out` on
    success and removed on failure: an export never deletes anything it did not create."""
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new output path or delete it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    try:
        yield tmp
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(contract._jsonable(data), indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------ insightface .bin
def _export_bin(dataset_dir: Path, out: Path) -> dict:
    pairs_path = dataset_dir / PAIRS_FILE
    if not pairs_path.exists():
        raise FileNotFoundError(f"{pairs_path} is missing: the insightface .bin format needs verification pairs")
    rows = read_pairs_jsonl(pairs_path)
    usable = [r for r in rows if not r["flagged"]]
    wanted = {r[side] for r in usable for side in ("a", "b")}
    images: dict[str, bytes] = {}
    sizes: Counter = Counter()
    for key, members, meta in iter_samples(dataset_dir):
        if key in wanted:
            images[key] = _image_member(key, members)[1]
            sizes[tuple(meta["image_size"])] += 1
    unknown = sorted(wanted - set(images))
    if unknown:
        raise ValueError(
            f"{pairs_path} names keys that are not in the shards: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}"
        )
    if len(sizes) > 1:
        raise ValueError(f"the paired images have several sizes {sorted(sizes)}; a .bin holds one size")

    bins = [images[r[side]] for r in usable for side in ("a", "b")]
    issame = [bool(r["issame"]) for r in usable]
    with atomic_write(out, "wb") as f:
        pickle.dump((bins, issame), f, protocol=BIN_PICKLE_PROTOCOL)

    size = next(iter(sizes)) if sizes else tuple(ARCFACE_SIZE)
    warnings = []
    excluded = [{"pair": r["pair"], "fold": r["fold"], "reason": r["reason"]} for r in rows if r["flagged"]]
    if excluded:
        warnings.append(
            f"{len(excluded)} flagged pair(s) left out (the .bin format cannot mark them); "
            "arcface_torch's 10-fold split over pair order no longer matches the protocol folds"
        )
    if tuple(size) != ARCFACE_SIZE:
        warnings.append(
            f"images are {size[0]}x{size[1]}; arcface_torch's load_bin expects 112x112 "
            "(call load_bin with image_size=[height, width])"
        )
    summary = {
        "format": "insightface-bin",
        "path": str(out),
        "pickle_protocol": BIN_PICKLE_PROTOCOL,
        "pairs": len(usable),
        "pairs_in_protocol": len(rows),
        "matched": sum(issame),
        "images": len(bins),
        "image_size": list(size),
        "excluded": excluded,
        "warnings": warnings,
        "dataset": str(dataset_dir.absolute()),
    }
    _write_json(out.with_name(out.name + ".json"), summary)
    return summary


# ------------------------------------------------------------------------ folder
def _export_folder(dataset_dir: Path, out: Path) -> dict:
    with _staged(out) as tmp:
        tmp.mkdir()
        return _write_folder(dataset_dir, out, tmp)


def _write_folder(dataset_dir: Path, out: Path, tmp: Path) -> dict:
    metas = []
    for key, members, meta in iter_samples(dataset_dir):
        identity = _safe_component(str(meta["identity"]), "identity")
        for part in key.split("/"):
            _safe_component(part, "sample key")
        ext, data = _image_member(key, members)
        image_path = tmp / "images" / identity / f"{key}.{ext}"
        mask_path = tmp / "masks" / identity / f"{key}.png"
        for path, blob in ((image_path, data), (mask_path, members[contract.EXT_MASK])):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
        metas.append(meta)
    (tmp / "metadata.jsonl").write_text(contract.dumps_lines(metas), encoding="utf-8")

    summary = {
        "format": "folder",
        "path": str(out),
        "samples": len(metas),
        "identities": len({m["identity"] for m in metas}),
    }
    pairs_path = dataset_dir / PAIRS_FILE
    if pairs_path.exists():
        rows = read_pairs_jsonl(pairs_path)
        shutil.copyfile(pairs_path, tmp / PAIRS_FILE)
        summary["pairs"] = len(rows)
        missing_ids = [r["pair"] for r in rows if "a_id" not in r or "b_id" not in r]
        if missing_ids:
            raise ValueError(f"{pairs_path}: rows lack a_id/b_id (e.g. pair {missing_ids[0]}); cannot write pairs.txt")
        pairs = [Pair(r["pair"], r["fold"], r["issame"], r["a_id"], r["b_id"]) for r in rows]
        summary["pairs_txt_layout"] = write_pairs_txt(tmp / "pairs.txt", pairs)
    return summary


# ------------------------------------------------------------------------ parquet
def _export_parquet(dataset_dir: Path, out: Path, rows_per_group: int = 1000) -> dict:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("parquet export needs pyarrow: pip install 'occsynth[parquet]'") from None

    schema = pa.schema(
        [
            ("key", pa.string()),
            ("sample_id", pa.string()),
            ("identity", pa.string()),
            ("source", pa.string()),
            ("template", pa.string()),
            ("image_width", pa.int32()),
            ("image_height", pa.int32()),
            ("landmarks", pa.list_(pa.float64())),  # x0, y0, ..., x4, y4
            ("seed", pa.int64()),
            ("spec", pa.string()),
            ("occlusion_ratio", pa.float64()),
            ("occluder_names", pa.list_(pa.string())),
            ("occluder_families", pa.list_(pa.string())),
            ("occluders_json", pa.string()),
            ("align_mode", pa.string()),
            ("extra_json", pa.string()),
            ("metadata_json", pa.string()),
            ("image_format", pa.string()),
            ("image", pa.binary()),
            ("mask", pa.binary()),
            ("clean", pa.binary()),
        ]
    )
    with _staged(out) as tmp:
        count = _write_parquet(dataset_dir, tmp, schema, rows_per_group, pa, pq)
    return {"format": "parquet", "path": str(out), "rows": count, "columns": schema.names}


def _write_parquet(dataset_dir: Path, tmp: Path, schema, rows_per_group: int, pa, pq) -> int:
    count = 0
    batch: dict[str, list] = {name: [] for name in schema.names}

    def flush(writer) -> None:
        if batch["key"]:
            writer.write_table(pa.table(batch, schema=schema))
            for column in batch.values():
                column.clear()

    with pq.ParquetWriter(tmp, schema) as writer:
        for key, members, meta in iter_samples(dataset_dir):
            ext, data = _image_member(key, members)
            width, height = meta["image_size"]
            row = {
                "key": key,
                "sample_id": meta["sample_id"],
                "identity": str(meta["identity"]),
                "source": meta["source"],
                "template": meta["template"],
                "image_width": width,
                "image_height": height,
                "landmarks": [float(v) for point in meta["landmarks"] for v in point],
                "seed": meta["seed"],
                "spec": meta.get("spec", ""),
                "occlusion_ratio": float(meta["occlusion_ratio"]),
                "occluder_names": [o["name"] for o in meta["occluders"]],
                "occluder_families": [o["family"] for o in meta["occluders"]],
                "occluders_json": contract.dumps(meta["occluders"]),
                "align_mode": meta.get("align_mode", ""),
                "extra_json": contract.dumps(meta.get("extra", {})),
                "metadata_json": contract.dumps(meta),
                "image_format": ext,
                "image": data,
                "mask": members[contract.EXT_MASK],
                "clean": members.get(contract.EXT_CLEAN),
            }
            for name, value in row.items():
                batch[name].append(value)
            count += 1
            if count % rows_per_group == 0:
                flush(writer)
        flush(writer)
    return count
