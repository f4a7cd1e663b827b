"""The build pipeline: a plan of samples -> per-shard tasks -> shards + index + manifest.

sources -> align -> occlude -> write shards. A build is described by a `BuildConfig` and a
`plan` (one `PlannedSample` per output sample, each naming its source image, occlusion spec
and extra metadata). The plan is cut into shards of `shard_size` samples in key order; each
shard is one task whose output depends only on its samples and the config, so any executor
and worker count give byte-identical shards, and a killed run resumes by redoing only the
shards that have no published `NNNNN.tar` + `NNNNN.stats.json` pair.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from occsynth import __version__, contract
from occsynth.failures import Failure, SampleError
from occsynth.faces.landmarks import load_landmarks
from occsynth.io.tar import ShardWriter, sha256_file
from occsynth.faces.templates import DEFAULT_TEMPLATE, get_template

ON_NO_FACE = ("skip", "center-crop", "fail")


@dataclass(frozen=True)
class PlannedSample:
    key: str          # member prefix in the shard; plans are sorted by it
    sample_id: str    # the per-sample seed derives from (global seed, sample_id)
    item: Any         # sources.SourceItem of the source image
    spec: str = ""    # name of an occlusion spec in BuildConfig.specs ("" = clean)
    extra: dict = field(default_factory=dict)  # builder metadata (pair, fold, side, ...)


@dataclass
class BuildConfig:
    name: str = "align"
    template: str = DEFAULT_TEMPLATE
    seed: int = 0
    specs: dict[str, Any] = field(default_factory=lambda: {"": None})
    on_no_face: str = "skip"
    multi_face: str = "center"
    aligned_input: bool = False
    image_format: str = "png"
    jpeg_quality: int = 95
    keep_clean: bool = False
    shard_size: int = 1000
    min_face_size: int = 40  # detect.DEFAULT_MIN_FACE_SIZE: right for LFW-like crops
    detect_batch: int = 1
    device: str = "cpu"
    max_pixels: int = 64_000_000
    landmark_files: tuple[str, ...] = ()  # landmarks.jsonl files to reuse detections from

    def validate(self) -> None:
        get_template(self.template)
        if self.on_no_face not in ON_NO_FACE:
            raise ValueError(f"on_no_face must be one of {ON_NO_FACE}, got {self.on_no_face!r}")
        from occsynth.faces.detect import POLICIES

        if self.multi_face not in POLICIES:
            raise ValueError(f"multi_face must be one of {POLICIES}, got {self.multi_face!r}")
        if self.image_format not in ("png", "jpg"):
            raise ValueError(f"image_format must be png or jpg, got {self.image_format!r}")
        if self.shard_size < 1:
            raise ValueError("shard_size must be >= 1")

    def content(self) -> dict:
        """What determines the shards' bytes (not where or how fast they are made)."""
        data = asdict(self)
        for transient in ("device", "landmark_files"):
            data.pop(transient)
        return data

    def detector_settings(self) -> dict:
        return {"min_face_size": self.min_face_size, "max_pixels": self.max_pixels, "batch": self.detect_batch}


class NoFaceError(RuntimeError):
    """Raised with on_no_face='fail': the whole run stops."""


@dataclass
class ShardTask:
    index: int
    out_dir: str
    source: Any
    samples: list[PlannedSample]
    config: BuildConfig


# ---------------------------------------------------------------- per-process caches
_DETECTORS: dict[tuple, Any] = {}
_COMPOSERS: dict[str, Any] = {}
_STORES: dict[tuple[str, ...], dict] = {}


def _detector(config: BuildConfig):
    key = (config.device, config.min_face_size, config.detect_batch)
    if key not in _DETECTORS:
        from occsynth.faces.detect import FaceDetector

        # Batch 1 by default: MTCNN's last landmark digit depends on which images share a
        # batch, and a fresh build must match a lock made from another build's detections.
        _DETECTORS[key] = FaceDetector(device=config.device, min_face_size=config.min_face_size,
                                       batch_size=config.detect_batch)
    return _DETECTORS[key]


def _composer(spec: Any):
    key = contract.dumps(spec)
    if key not in _COMPOSERS:
        from occsynth.occluders import Composer

        _COMPOSERS[key] = Composer(spec)
    return _COMPOSERS[key]


def _stored_detections(files: tuple[str, ...]) -> dict:
    if files not in _STORES:
        _STORES[files] = load_landmarks(files)
    return _STORES[files]


# ---------------------------------------------------------------- one shard
def run_shard(task: ShardTask) -> dict:
    """Build one shard; returns (and writes) its stats record."""
    from occsynth.faces.align import align_face, center_crop_landmarks, warp
    from occsynth.faces.detect import Face, select_face
    from occsynth.io.images import ImageLoadError, decode_image, encode_image, encode_mask
    from occsynth.seeding import derive_seed, make_rng

    config = task.config
    template = get_template(config.template)
    out_dir = Path(task.out_dir)
    stored = _stored_detections(config.landmark_files) if config.landmark_files else {}
    failures: list[Failure] = []
    metas: list[dict] = []
    detections: dict[str, dict] = {}

    # 1. read + decode each distinct source image once
    images: dict[str, np.ndarray] = {}
    digests: dict[str, str] = {}
    errors: dict[str, SampleError] = {}
    for item in {s.item.sample_id: s.item for s in task.samples}.values():
        try:
            data = task.source.read(item)
            digests[item.sample_id] = hashlib.sha256(data).hexdigest()
            images[item.sample_id] = decode_image(data, max_pixels=config.max_pixels)
        except ImageLoadError as exc:
            errors[item.sample_id] = SampleError(exc.stage, exc.reason)
        except OSError as exc:
            errors[item.sample_id] = SampleError("read", f"{type(exc).__name__}: {exc}")

    # 2. faces: stored detections first, detect the rest in one batch
    faces: dict[str, list] = {}
    from_store: set[str] = set()
    if not config.aligned_input:
        todo = []
        for sid, image in images.items():
            record = stored.get(digests[sid])
            if record is not None and record.get("detector") == config.detector_settings():
                faces[sid] = [Face(box=np.array(f["box"]), score=f["score"], landmarks=np.array(f["landmarks"]))
                              for f in record["faces"]]
                from_store.add(sid)
            else:
                todo.append(sid)
        if todo:
            for sid, found in zip(todo, _detector(config).detect([images[s] for s in todo])):
                faces[sid] = found
        for sid, found in faces.items():
            h, w = images[sid].shape[:2]
            detections[sid] = {
                "sha256": digests[sid],
                "source": sid,
                "image_size": [w, h],
                "detector": config.detector_settings(),
                "faces": [{"box": f.box, "score": f.score, "landmarks": f.landmarks} for f in found],
            }

    # 3. align each distinct source once
    aligned: dict[str, tuple] = {}
    for sid, image in images.items():
        h, w = image.shape[:2]
        info: dict[str, Any] = {"source_size": [w, h]}
        if config.aligned_input:
            if (w, h) != template.size:
                info["resized_from"] = [w, h]
            matrix = np.array([[template.width / w, 0, 0], [0, template.height / h, 0]])
            crop = warp(image, matrix, template.size) if (w, h) != template.size else image
            aligned[sid] = (crop, contract.round_points(template.points), dict(info, align_mode="aligned-input"))
            continue
        found = faces[sid]
        face = select_face(found, image.shape, config.multi_face)
        info["num_faces"] = len(found)
        if face is None:
            if config.on_no_face == "fail":
                raise NoFaceError(f"no face found in {sid!r} (on_no_face='fail'); "
                                  "use --on-no-face skip or center-crop to record and continue")
            if config.on_no_face == "skip":
                errors[sid] = SampleError("detect", "no face detected")
                continue
            src_landmarks = center_crop_landmarks(w, h, template)
            info.update(align_mode="center-crop")
        else:
            src_landmarks = face.landmarks
            # "detected" whether the detection was made now or reused from a store: the
            # sample bytes must not depend on whether a cache was warm.
            info.update(align_mode="detected",
                        box=face.box, det_score=face.score)
        try:
            crop, matrix, landmarks = align_face(image, src_landmarks, template)
        except ValueError as exc:
            errors[sid] = SampleError("align", str(exc))
            continue
        info.update(source_landmarks=contract.round_points(src_landmarks), transform=np.round(matrix, 6))
        aligned[sid] = (crop, landmarks, info)

    # 4. occlude, encode, write
    writer = ShardWriter(out_dir / contract.shard_name(task.index))
    with writer:
        for sample in task.samples:
            sid = sample.item.sample_id
            try:
                if sid in errors:
                    raise errors[sid]
                crop, landmarks, info = aligned[sid]
                seed = derive_seed(config.seed, sample.sample_id)
                spec = config.specs[sample.spec]
                try:
                    occ = _composer(spec)(crop, landmarks, make_rng(seed))
                except (ValueError, TypeError, KeyError) as exc:
                    raise SampleError("occlude", f"{type(exc).__name__}: {exc}") from None
                meta = {
                    "key": sample.key,
                    "sample_id": sample.sample_id,
                    "identity": sample.item.identity,
                    "source": sid,
                    "template": template.name,
                    "image_size": [template.width, template.height],
                    "landmarks": landmarks,
                    "seed": seed,
                    "spec": sample.spec,
                    "occluders": occ.records,
                    "occlusion_ratio": contract.occlusion_ratio(occ.mask),
                    **info,
                }
                if sample.extra:
                    meta["extra"] = sample.extra
                ext = contract.EXT_IMAGE_JPG if config.image_format == "jpg" else contract.EXT_IMAGE_PNG
                members = {
                    ext: encode_image(occ.image, config.image_format, config.jpeg_quality),
                    contract.EXT_MASK: encode_mask(occ.mask),
                    contract.EXT_META: contract.dumps(meta).encode("utf-8"),
                }
                if config.keep_clean:
                    members[contract.EXT_CLEAN] = encode_image(crop, "png")
            except SampleError as exc:
                failures.append(Failure(sample.key, sample.sample_id, sid, exc.stage, exc.reason))
                continue
            writer.write(sample.key, members)
            metas.append(json.loads(members[contract.EXT_META]))
        digest = writer.commit()

    stats = {
        "name": contract.shard_name(task.index),
        "sha256": digest,
        "num_samples": len(metas),
        "num_failures": len(failures),
        "samples": metas,
        "failures": [f.to_dict() for f in failures],
        "detections": [detections[s] for s in sorted(detections)],
        "reused_detections": len(from_store),
    }
    _atomic_write(out_dir / contract.shard_stats_name(task.index), contract.dumps(stats))
    return _summary(stats)


def _summary(stats: dict) -> dict:
    return {k: stats[k] for k in ("name", "sha256", "num_samples", "num_failures")}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------- the whole build
BUILD_FILE = ".occsynth-build.json"


def plan_fingerprint(plan: list[PlannedSample]) -> str:
    h = hashlib.sha256()
    for s in plan:
        h.update(contract.dumps([s.key, s.sample_id, s.item.sample_id, s.spec, s.extra]).encode())
    return h.hexdigest()


def _shard_done(out_dir: Path, index: int) -> dict | None:
    tar = out_dir / contract.shard_name(index)
    stats_path = out_dir / contract.shard_stats_name(index)
    if not (tar.exists() and stats_path.exists()):
        return None
    stats = json.loads(stats_path.read_text())
    return _summary(stats) if stats["sha256"] == sha256_file(tar) else None


def build(
    config: BuildConfig,
    plan: list[PlannedSample],
    source: Any,
    out_dir: str | Path,
    *,
    workers: int = 2,
    executor: str = "process",
    command: str | None = None,
    progress: bool = True,
    extra_manifest: dict | None = None,
) -> dict:
    """Run a build (resuming a killed one) and return its manifest."""
    from occsynth.executor import create_executor

    config.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = sorted(plan, key=lambda s: s.key)
    keys = [s.key for s in plan]
    if len(set(keys)) != len(keys):
        raise ValueError("plan has duplicate sample keys")
    missing = sorted({s.spec for s in plan} - set(config.specs))
    if missing:
        raise ValueError(f"plan names occlusion specs not in the config: {missing}")
    for spec in config.specs.values():
        _composer(spec)  # a bad spec is the user's error, not 13,000 per-sample failures

    identity = {"config": config.content(), "plan": plan_fingerprint(plan), "version": __version__}
    build_file = out_dir / BUILD_FILE
    if build_file.exists():
        previous = json.loads(build_file.read_text())
        if previous != identity:
            raise RuntimeError(
                f"{out_dir} holds a different build (config, inputs or version differ); "
                "use a new output directory or delete this one"
            )
    else:
        _atomic_write(build_file, contract.dumps(identity))

    chunks = [plan[i : i + config.shard_size] for i in range(0, len(plan), config.shard_size)]
    results: dict[int, dict] = {}
    tasks = []
    for index, chunk in enumerate(chunks):
        done = _shard_done(out_dir, index)
        if done is not None:
            results[index] = done
        else:
            tasks.append(ShardTask(index, str(out_dir), source, chunk, config))

    runner = create_executor(executor, workers)
    bar = _progress(total=len(plan), initial=sum(len(chunks[i]) for i in results), enabled=progress,
                    desc=f"{config.name} ({len(tasks)}/{len(chunks)} shards to build)")
    try:
        for summary in runner.map_unordered(run_shard, tasks):
            index = int(summary["name"].split(".")[0])
            results[index] = summary
            bar.update(len(chunks[index]))
    finally:
        bar.close()
    return finalize(out_dir, config, source, results, command=command, extra=extra_manifest)


def _progress(total: int, initial: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="img", desc=desc,
                file=sys.stderr, dynamic_ncols=True)


def finalize(out_dir: Path, config: BuildConfig, source: Any, results: dict[int, dict],
             command: str | None, extra: dict | None) -> dict:
    """Merge per-shard stats into index.jsonl, failures.jsonl, landmarks.jsonl, manifest.json."""
    metas, failures, detections = [], [], {}
    for index in sorted(results):
        stats = json.loads((out_dir / contract.shard_stats_name(index)).read_text())
        metas.extend(stats["samples"])
        failures.extend(stats["failures"])
        for record in stats["detections"]:
            detections[record["source"]] = record
    failures.sort(key=lambda f: f["key"])
    _atomic_write(out_dir / contract.INDEX, contract.dumps_lines(metas))
    _atomic_write(out_dir / contract.FAILURES, contract.dumps_lines(failures))
    if detections:
        _atomic_write(out_dir / "landmarks.jsonl", contract.dumps_lines(detections[k] for k in sorted(detections)))
    template = get_template(config.template)
    manifest = {
        "format": "occsynth-shards/1",
        "tool": "occsynth",
        "version": __version__,
        "name": config.name,
        "command": command or " ".join(sys.argv),
        "config": config.content(),
        "seed": config.seed,
        "template": template.name,
        "image_size": [template.width, template.height],
        "source": {"description": getattr(source, "description", str(source)),
                   "fingerprint": source.fingerprint()},
        "shards": [results[i] for i in sorted(results)],
        "totals": {
            "planned": sum(r["num_samples"] + r["num_failures"] for r in results.values()),
            "samples": len(metas),
            "failures": len(failures),
            "shards": len(results),
        },
        "stats": dataset_stats(metas, failures),
    }
    if extra:
        manifest.update(extra)
    _atomic_write(out_dir / contract.MANIFEST, json.dumps(contract._jsonable(manifest), indent=2, sort_keys=True) + "\n")
    return manifest


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


# ---------------------------------------------------------------- plans
def plan_align(items: list, *, spec: str = "", variants: int = 1) -> list[PlannedSample]:
    """One sample per source image (or `variants` per image, each with its own seed)."""
    plan = []
    width = len(str(max(len(items) * variants - 1, 0)))
    width = max(width, 6)
    for i, item in enumerate(sorted(items, key=lambda it: it.sample_id)):
        for v in range(variants):
            sample_id = item.sample_id if variants == 1 else f"{item.sample_id}#{v}"
            plan.append(PlannedSample(f"{i * variants + v:0{width}d}", sample_id, item, spec,
                                      {"variant": v} if variants > 1 else {}))
    return plan
