"""`occsynth verify DIR`: re-hash shards and check every sample against the data contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from occsynth import contract
from occsynth.io.dataset import Dataset, DatasetError
from occsynth.io.images import decode_image, decode_mask
from occsynth.io.tar import iter_shard, sha256_file


def verify_dataset(out_dir: str | Path, *, decode: bool = True, max_problems: int = 50) -> list[str]:
    """Return a list of problems ([] = the dataset is intact and follows the contract)."""
    out_dir = Path(out_dir)
    problems: list[str] = []

    def problem(text: str) -> None:
        problems.append(text)

    try:
        dataset = Dataset(out_dir)
        listed = {s.name: s for s in dataset.shards}
    except DatasetError as exc:
        return [str(exc)]
    manifest = dataset.manifest
    on_disk = {p.name for p in out_dir.glob("*.tar")}
    for name in sorted(on_disk - set(listed)):
        problem(f"{name}: shard on disk but not in manifest.json")
    for name in sorted(set(listed) - on_disk):
        problem(f"{name}: listed in manifest.json but missing on disk")
    for leftover in sorted(out_dir.glob("*.tmp")):
        problem(f"{leftover.name}: temporary file left by an interrupted run")

    index_keys = []
    if dataset.has_index():
        try:
            index_keys = [m.get("key") for m in dataset.index()]
        except DatasetError as exc:
            problem(str(exc))
    else:
        problem(f"{contract.INDEX} is missing")
    if not (out_dir / contract.FAILURES).exists():
        problem(f"{contract.FAILURES} is missing")

    seen_keys: list[str] = []
    image_exts = (contract.EXT_IMAGE_PNG, contract.EXT_IMAGE_JPG)
    for name in sorted(set(listed) & on_disk):
        entry, path = listed[name], out_dir / name
        digest = sha256_file(path)
        if digest != entry.sha256:
            problem(f"{name}: sha256 {digest[:12]}… does not match manifest {entry.sha256[:12]}…")
        count = 0
        try:
            for key, members in iter_shard(path):
                count += 1
                seen_keys.append(key)
                where = f"{name}:{key}"
                image_ext = [e for e in image_exts if e in members]
                required = [contract.EXT_MASK, contract.EXT_META]
                missing = [e for e in required if e not in members] + ([] if image_ext else ["png|jpg"])
                if missing:
                    problem(f"{where}: missing member(s) {missing}")
                    continue
                unknown = set(members) - set(image_exts) - {contract.EXT_MASK, contract.EXT_META, contract.EXT_CLEAN}
                if unknown:
                    problem(f"{where}: unexpected member(s) {sorted(unknown)}")
                meta = json.loads(members[contract.EXT_META])
                for text in contract.validate_sample_meta(meta):
                    problem(f"{where}: {text}")
                if meta.get("key") != key:
                    problem(f"{where}: json key {meta.get('key')!r} differs from the member name")
                if not decode:
                    continue
                image = decode_image(members[image_ext[0]])
                mask = decode_mask(members[contract.EXT_MASK])
                w, h = meta.get("image_size", [0, 0])
                if image.shape[:2] != (h, w):
                    problem(f"{where}: image is {image.shape[1]}x{image.shape[0]}, json says {w}x{h}")
                if mask.shape != image.shape[:2]:
                    problem(f"{where}: mask {mask.shape[::-1]} and image {image.shape[1::-1]} differ in size")
                values = np.unique(mask)
                if not set(values.tolist()) <= {contract.MASK_VISIBLE, contract.MASK_OCCLUDED}:
                    problem(f"{where}: mask holds values other than 0/255: {values[:8].tolist()}")
                ratio = contract.occlusion_ratio(mask)
                if abs(ratio - float(meta.get("occlusion_ratio", -1))) > 1e-9:
                    problem(f"{where}: occlusion_ratio {meta.get('occlusion_ratio')} but the mask gives {ratio}")
                if contract.EXT_CLEAN in members:
                    clean = decode_image(members[contract.EXT_CLEAN])
                    if clean.shape != image.shape:
                        problem(f"{where}: clean image size differs from the image")
                if len(problems) >= max_problems:
                    return problems + [f"... stopped after {max_problems} problems"]
        except Exception as exc:  # a corrupt tar or member is a finding, not a crash
            problem(f"{name}: cannot be read: {type(exc).__name__}: {exc}")
        if count != entry.num_samples:
            problem(f"{name}: holds {count} samples, manifest says {entry.num_samples}")
    if len(seen_keys) != len(set(seen_keys)):
        problem("duplicate sample keys across shards")
    if index_keys and index_keys != seen_keys:
        problem(f"{contract.INDEX} lists {len(index_keys)} samples that differ from the {len(seen_keys)} in the shards")
    if manifest.get("totals", {}).get("samples") != len(seen_keys):
        problem(
            f"manifest totals say {manifest.get('totals', {}).get('samples')} samples, shards hold {len(seen_keys)}"
        )
    return problems
