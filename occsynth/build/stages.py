"""The stages of one shard, each a named function: read -> find faces -> align -> occlude and
encode -> write. `run_shard` (shard.py) chains them. Every stage works on the shard's distinct
source images once (a source image may feed several samples) and turns an input that cannot go
on into a SampleError for its samples (recorded as a failure, never dropped).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from occsynth import contract
from occsynth.build.config import BuildConfig, NoFaceError, PlannedSample
from occsynth.contract import Failure, SampleError
from occsynth.faces.align import align_face, center_crop_landmarks, warp
from occsynth.faces.detect import Face, FaceDetector, select_face
from occsynth.faces.landmarks import load_landmarks
from occsynth.faces.templates import AlignTemplate
from occsynth.io.images import ImageLoadError, decode_image, encode_image, encode_mask
from occsynth.io.tar import ShardWriter
from occsynth.occluders import Composer
from occsynth.seeding import derive_seed, make_rng

# ---------------------------------------------------------------- per-process caches
_DETECTORS: dict[tuple, Any] = {}
_COMPOSERS: dict[str, Any] = {}
_STORES: dict[tuple[str, ...], dict] = {}


def detector(config: BuildConfig) -> FaceDetector:
    key = (config.device, config.min_face_size, config.detect_batch)
    if key not in _DETECTORS:
        # Batch 1 by default: MTCNN's last landmark digit depends on which images share a
        # batch, and a fresh build must match a lock made from another build's detections.
        _DETECTORS[key] = FaceDetector(device=config.device, min_face_size=config.min_face_size,
                                       batch_size=config.detect_batch)
    return _DETECTORS[key]


def composer(spec: Any) -> Composer:
    key = contract.dumps(spec)
    if key not in _COMPOSERS:
        _COMPOSERS[key] = Composer(spec)
    return _COMPOSERS[key]


def stored_detections(files: tuple[str, ...]) -> dict:
    if files not in _STORES:
        _STORES[files] = load_landmarks(files)
    return _STORES[files]


@dataclass
class ShardImages:
    """The shard's distinct source images as they move through the stages."""

    images: dict[str, np.ndarray] = field(default_factory=dict)     # sample_id of the source -> RGB
    digests: dict[str, str] = field(default_factory=dict)           # -> sha256 of the file's bytes
    errors: dict[str, SampleError] = field(default_factory=dict)    # -> why it cannot go on
    faces: dict[str, list] = field(default_factory=dict)            # -> detected faces
    detections: dict[str, dict] = field(default_factory=dict)       # -> landmarks.jsonl record
    from_store: set[str] = field(default_factory=set)               # detections reused, not run
    aligned: dict[str, tuple] = field(default_factory=dict)         # -> (crop, landmarks, info)


# ---------------------------------------------------------------- 1. read
def read_images(source: Any, samples: list[PlannedSample], config: BuildConfig) -> ShardImages:
    """Read and decode each distinct source image once."""
    state = ShardImages()
    for item in {s.item.sample_id: s.item for s in samples}.values():
        try:
            data = source.read(item)
            state.digests[item.sample_id] = hashlib.sha256(data).hexdigest()
            state.images[item.sample_id] = decode_image(data, max_pixels=config.max_pixels)
        except ImageLoadError as exc:
            state.errors[item.sample_id] = SampleError(exc.stage, exc.reason)
        except OSError as exc:
            state.errors[item.sample_id] = SampleError("read", f"{type(exc).__name__}: {exc}")
    return state


# ---------------------------------------------------------------- 2. faces
def find_faces(state: ShardImages, config: BuildConfig) -> None:
    """Stored detections first (keyed by content), detect the rest in one call."""
    if config.aligned_input:
        return
    stored = stored_detections(config.landmark_files) if config.landmark_files else {}
    todo = []
    for sid, image in state.images.items():
        record = stored.get(state.digests[sid])
        if record is not None and record.get("detector") == config.detector_settings():
            state.faces[sid] = [Face(box=np.array(f["box"]), score=f["score"], landmarks=np.array(f["landmarks"]))
                                for f in record["faces"]]
            state.from_store.add(sid)
        else:
            todo.append(sid)
    if todo:
        for sid, found in zip(todo, detector(config).detect([state.images[s] for s in todo])):
            state.faces[sid] = found
    for sid, found in state.faces.items():
        h, w = state.images[sid].shape[:2]
        state.detections[sid] = {
            "sha256": state.digests[sid],
            "source": sid,
            "image_size": [w, h],
            "detector": config.detector_settings(),
            "faces": [{"box": f.box, "score": f.score, "landmarks": f.landmarks} for f in found],
        }


# ---------------------------------------------------------------- 3. align
def align_images(state: ShardImages, config: BuildConfig, template: AlignTemplate) -> None:
    """Align each distinct source once (or take it as aligned), applying the face policies."""
    for sid, image in state.images.items():
        h, w = image.shape[:2]
        info: dict[str, Any] = {"source_size": [w, h]}
        if config.aligned_input:
            if (w, h) != template.size:
                info["resized_from"] = [w, h]
            matrix = np.array([[template.width / w, 0, 0], [0, template.height / h, 0]])
            crop = warp(image, matrix, template.size) if (w, h) != template.size else image
            state.aligned[sid] = (crop, contract.round_points(template.points), dict(info, align_mode="aligned-input"))
            continue
        found = state.faces[sid]
        face = select_face(found, image.shape, config.multi_face)
        info["num_faces"] = len(found)
        if face is None:
            if config.on_no_face == "fail":
                raise NoFaceError(f"no face found in {sid!r} (on_no_face='fail'); "
                                  "use --on-no-face skip or center-crop to record and continue")
            if config.on_no_face == "skip":
                state.errors[sid] = SampleError("detect", "no face detected")
                continue
            src_landmarks = center_crop_landmarks(w, h, template)
            info.update(align_mode="center-crop")
        else:
            src_landmarks = face.landmarks
            # "detected" whether the detection was made now or reused from a store: the
            # sample bytes must not depend on whether a cache was warm.
            info.update(align_mode="detected", box=face.box, det_score=face.score)
        try:
            crop, matrix, landmarks = align_face(image, src_landmarks, template)
        except ValueError as exc:
            state.errors[sid] = SampleError("align", str(exc))
            continue
        info.update(source_landmarks=contract.round_points(src_landmarks), transform=np.round(matrix, 6))
        state.aligned[sid] = (crop, landmarks, info)


# ---------------------------------------------------------------- 4. occlude + encode
def make_sample(sample: PlannedSample, state: ShardImages, config: BuildConfig,
                template: AlignTemplate) -> dict[str, bytes]:
    """One sample's shard members (image, mask, metadata[, clean]); SampleError if it has none."""
    sid = sample.item.sample_id
    if sid in state.errors:
        raise state.errors[sid]
    crop, landmarks, info = state.aligned[sid]
    seed = derive_seed(config.seed, sample.sample_id)
    spec = config.specs[sample.spec]
    try:
        occ = composer(spec)(crop, landmarks, make_rng(seed))
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
    if not sample.mask_known:
        meta[contract.MASK_KNOWN] = False  # real occlusion: the stored mask does not show it
    ext = contract.EXT_IMAGE_JPG if config.image_format == "jpg" else contract.EXT_IMAGE_PNG
    members = {
        ext: encode_image(occ.image, config.image_format, config.jpeg_quality),
        contract.EXT_MASK: encode_mask(occ.mask),
        contract.EXT_META: contract.dumps(meta).encode("utf-8"),
    }
    if config.keep_clean:
        members[contract.EXT_CLEAN] = encode_image(crop, "png")
    return members


# ---------------------------------------------------------------- 5. write
def write_samples(writer: ShardWriter, samples: list[PlannedSample], state: ShardImages, config: BuildConfig,
                  template: AlignTemplate) -> tuple[list[dict], list[Failure]]:
    """Occlude, encode and append every sample in plan order; (metadata, failures)."""
    metas: list[dict] = []
    failures: list[Failure] = []
    for sample in samples:
        try:
            members = make_sample(sample, state, config, template)
        except SampleError as exc:
            failures.append(Failure(sample.key, sample.sample_id, sample.item.sample_id, exc.stage, exc.reason))
            continue
        writer.write(sample.key, members)
        metas.append(json.loads(members[contract.EXT_META]))
    return metas, failures
