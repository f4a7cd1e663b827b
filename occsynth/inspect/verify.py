"""`occsynth verify DIR`: re-hash shards and check every sample against the data contract and
against the dataset's own records.

Checked, each finding one line (`SHARD:KEY: ...` for a sample):

* the manifest: readable JSON with every field verify needs, of the right type (else one line);
* shards: on disk == listed, sha256 == manifest, sample count == manifest, no temp leftovers;
* each sample: members present and known, JSON valid and following the contract, its key, its
  template and image size == the manifest's, its seed == derive_seed(manifest seed, sample_id),
  its line in index.jsonl == its JSON, its record in the shard's stats file == its JSON; with
  decoding: image and mask decode, sizes agree, mask is 0/255 and gives occlusion_ratio;
* stats files: present, and their sha256 and counts agree with the manifest;
* index.jsonl lists exactly the shards' samples in order; failures.jsonl == the stats' failures;
  manifest totals == what the files hold.

A damaged sample is named by its key and the rest of its shard is still checked (a damaged
member header is skipped over, see io.tar.iter_shard(resync=True)).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from occsynth import contract
from occsynth.io.dataset import Dataset, DatasetError
from occsynth.io.images import decode_image, decode_mask
from occsynth.io.tar import iter_shard, sha256_file
from occsynth.seeding import derive_seed

IMAGE_EXTS = (contract.EXT_IMAGE_PNG, contract.EXT_IMAGE_JPG)
KNOWN_EXTS = set(IMAGE_EXTS) | {contract.EXT_MASK, contract.EXT_META, contract.EXT_CLEAN}


class _Stop(Exception):
    """Enough problems found."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def manifest_problem(dataset: Dataset) -> str:
    """One line naming what verify needs from the manifest and does not find ('' when fine)."""
    m = dataset.manifest
    bad = []
    if not isinstance(m.get("shards"), list):
        bad.append("shards is not a list")
    totals = m.get("totals")
    if not isinstance(totals, dict):
        bad.append("totals is not a mapping")
    else:
        bad += [f"totals.{k} is not an integer" for k in ("samples", "failures") if not _is_int(totals.get(k))]
    if not _is_int(m.get("seed")):
        bad.append("seed is missing or not an integer")
    if not isinstance(m.get("template"), str):
        bad.append("template is not a string")
    size = m.get("image_size")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        bad.append("image_size is not [width, height]")
    if bad:
        return f"{dataset.root / contract.MANIFEST}: incomplete manifest: {', '.join(bad)}"
    try:
        dataset.shards  # noqa: B018 - parses every entry
    except DatasetError as exc:
        return str(exc)
    return ""


def verify_dataset(out_dir: str | Path, *, decode: bool = True, max_problems: int = 50) -> list[str]:
    """Return a list of problems ([] = the dataset is intact and agrees with its records)."""
    out_dir = Path(out_dir)
    try:
        dataset = Dataset(out_dir)
        problem = manifest_problem(dataset)
    except DatasetError as exc:
        return [str(exc)]
    if problem:
        return [problem]
    problems: list[str] = []
    try:
        _verify(dataset, decode, problems, max_problems)
    except _Stop:
        problems.append(f"... stopped after {max_problems} problems")
    return problems


def _verify(dataset: Dataset, decode: bool, problems: list[str], max_problems: int) -> None:
    out_dir, manifest = dataset.root, dataset.manifest

    def problem(text: str) -> None:
        problems.append(text)
        if len(problems) >= max_problems:
            raise _Stop

    listed = {s.name: s for s in dataset.shards}
    on_disk = {p.name for p in out_dir.glob("*.tar")}
    for name in sorted(on_disk - set(listed)):
        problem(f"{name}: shard on disk but not in manifest.json")
    for name in sorted(set(listed) - on_disk):
        problem(f"{name}: listed in manifest.json but missing on disk")
    for leftover in sorted(out_dir.glob("*.tmp")):
        problem(f"{leftover.name}: temporary file left by an interrupted run")

    index: list[dict] | None = None
    if dataset.has_index():
        try:
            index = dataset.index()
        except DatasetError as exc:
            problem(str(exc))
    else:
        problem(f"{contract.INDEX} is missing")
    index_by_key: dict | None = None if index is None else {}
    for meta in index or []:
        if meta.get("key") in index_by_key:
            problem(f"{contract.INDEX}: key {meta.get('key')!r} is listed twice")
        index_by_key[meta.get("key")] = meta
    failures: list[dict] | None = None
    if (out_dir / contract.FAILURES).exists():
        try:
            failures = dataset.failures()
        except DatasetError as exc:
            problem(str(exc))
    else:
        problem(f"{contract.FAILURES} is missing")

    seed, template, size = manifest["seed"], manifest["template"], manifest["image_size"]
    seen_keys: list[str] = []
    stats_failures: list[dict] = []
    for name in sorted(set(listed) & on_disk):
        entry, path = listed[name], out_dir / name
        digest = sha256_file(path)
        if digest != entry.sha256:
            problem(f"{name}: sha256 {digest[:12]}… does not match manifest {entry.sha256[:12]}…")
        stats_by_key: dict | None = None
        try:
            stats = dataset.shard_stats(entry)
        except DatasetError as exc:
            problem(str(exc))
        else:
            stats_by_key, stats_failures_here = _check_stats(name, entry, stats, problem)
            stats_failures += stats_failures_here
        count, last = 0, None
        try:
            for key, members in iter_shard(path, resync=True):
                count += 1
                seen_keys.append(key)
                last = key
                _check_sample(
                    f"{name}:{key}", key, members, seed, template, size, index_by_key, stats_by_key, decode, problem
                )
                if stats_by_key is not None:
                    stats_by_key.pop(key, None)
        except _Stop:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged shard is a finding, not a crash
            after = f" after sample {last}" if last is not None else ""
            problem(f"{name}: cannot be read{after}: {type(exc).__name__}: {exc}")
        if count != entry.num_samples:
            problem(f"{name}: holds {count} samples, manifest says {entry.num_samples}")
        for key in sorted(stats_by_key or {}):
            problem(f"{name}:{key}: in {contract.shard_stats_name(int(name.split('.')[0]))} but not in the shard")

    if len(seen_keys) != len(set(seen_keys)):
        problem("duplicate sample keys across shards")
    if index is not None:
        index_keys = [m.get("key") for m in index]
        if index_keys != seen_keys:
            missing = sorted(set(index_keys) - set(seen_keys))
            extra = sorted(set(seen_keys) - set(index_keys))
            detail = (f"; not in the shards: {missing[:3]}" if missing else "") + (
                f"; not in the index: {extra[:3]}" if extra else ""
            )
            problem(
                f"{contract.INDEX} lists {len(index_keys)} samples that differ from the {len(seen_keys)} "
                f"in the shards{detail or ' (order)'}"
            )
    if failures is not None:
        if sorted(stats_failures, key=lambda f: str(f.get("key"))) != failures:
            problem(f"{contract.FAILURES} differs from the failures the shards' stats files record")
        if manifest["totals"]["failures"] != len(failures):
            problem(
                f"manifest totals say {manifest['totals']['failures']} failures, {contract.FAILURES} holds {len(failures)}"
            )
    if manifest["totals"]["samples"] != len(seen_keys):
        problem(f"manifest totals say {manifest['totals']['samples']} samples, shards hold {len(seen_keys)}")


def _check_stats(name: str, entry, stats, problem) -> tuple[dict | None, list[dict]]:
    """A shard's stats record against the manifest; (sample JSON by key, failure records)."""
    where = contract.shard_stats_name(int(name.split(".")[0]))
    if not isinstance(stats, dict):
        problem(f"{where}: expected a JSON object")
        return None, []
    for field, want in (
        ("sha256", entry.sha256),
        ("num_samples", entry.num_samples),
        ("num_failures", entry.num_failures),
    ):
        if stats.get(field) != want:
            problem(f"{where}: {field} {stats.get(field)!r} differs from manifest.json's {want!r}")
    samples, failures = stats.get("samples"), stats.get("failures")
    if not isinstance(samples, list) or not all(isinstance(m, dict) for m in samples):
        problem(f"{where}: samples is not a list of sample records")
        samples = None
    if not isinstance(failures, list):
        problem(f"{where}: failures is not a list")
        failures = []
    return (None if samples is None else {m.get("key"): m for m in samples}), failures


def _check_sample(where, key, members, seed, template, size, index_by_key, stats_by_key, decode, problem) -> None:
    image_ext = [e for e in IMAGE_EXTS if e in members]
    missing = [e for e in (contract.EXT_MASK, contract.EXT_META) if e not in members] + (
        [] if image_ext else ["png|jpg"]
    )
    if missing:
        problem(f"{where}: missing member(s) {missing}")
        return
    unknown = set(members) - KNOWN_EXTS
    if unknown:
        problem(f"{where}: unexpected member(s) {sorted(unknown)}")
    try:
        meta = json.loads(members[contract.EXT_META])
    except ValueError as exc:
        problem(f"{where}: json member is not valid JSON ({exc})")
        return
    if not isinstance(meta, dict):
        problem(f"{where}: json member is not a JSON object")
        return
    violations = contract.validate_sample_meta(meta)
    for text in violations:
        problem(f"{where}: {text}")
    if meta.get("key") != key:
        problem(f"{where}: json key {meta.get('key')!r} differs from the member name")
    if meta.get("template") != template:
        problem(f"{where}: template {meta.get('template')!r} differs from the manifest's {template!r}")
    if meta.get("image_size") != size:
        problem(f"{where}: image_size {meta.get('image_size')!r} differs from the manifest's {size!r}")
    if isinstance(meta.get("sample_id"), str) and meta.get("seed") != derive_seed(seed, meta["sample_id"]):
        problem(f"{where}: seed {meta.get('seed')!r} is not the one derived from the manifest seed and its sample_id")
    if index_by_key is None:
        pass  # index.jsonl is missing or unreadable: said once
    elif key not in index_by_key:
        problem(f"{where}: not in {contract.INDEX}")
    elif index_by_key[key] != meta:
        problem(f"{where}: its line in {contract.INDEX} differs from its json member")
    if stats_by_key is not None:
        if key not in stats_by_key:
            problem(f"{where}: not in its shard's stats file")
        elif stats_by_key[key] != meta:
            problem(f"{where}: its record in the shard's stats file differs from its json member")
    if not decode or violations:
        return
    try:
        image = decode_image(members[image_ext[0]])
    except Exception as exc:  # noqa: BLE001 - a damaged member is a finding
        problem(f"{where}: {image_ext[0]} member cannot be decoded: {exc}")
        return
    try:
        mask = decode_mask(members[contract.EXT_MASK])
    except Exception as exc:  # noqa: BLE001
        problem(f"{where}: {contract.EXT_MASK} member cannot be decoded: {exc}")
        return
    w, h = meta["image_size"]
    if image.shape[:2] != (h, w):
        problem(f"{where}: image is {image.shape[1]}x{image.shape[0]}, json says {w}x{h}")
    if mask.shape != image.shape[:2]:
        problem(f"{where}: mask {mask.shape[::-1]} and image {image.shape[1::-1]} differ in size")
    values = np.unique(mask)
    if not set(values.tolist()) <= {contract.MASK_VISIBLE, contract.MASK_OCCLUDED}:
        problem(f"{where}: mask holds values other than 0/255: {values[:8].tolist()}")
    ratio = contract.occlusion_ratio(mask)
    if abs(ratio - float(meta["occlusion_ratio"])) > 1e-9:
        problem(f"{where}: occlusion_ratio {meta['occlusion_ratio']} but the mask gives {ratio}")
    if contract.EXT_CLEAN in members:
        try:
            clean = decode_image(members[contract.EXT_CLEAN])
        except Exception as exc:  # noqa: BLE001
            problem(f"{where}: {contract.EXT_CLEAN} member cannot be decoded: {exc}")
            return
        if clean.shape != image.shape:
            problem(f"{where}: clean image size differs from the image")
