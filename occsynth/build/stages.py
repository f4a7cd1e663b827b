"""The stages of one shard, each a named function: read -> find faces -> align -> occlude and
encode -> write. `run_shard` (shard.py) chains them. Every stage works on the shard's distinct
source images once (a source image may feed several samples) and turns an input that cannot go
on into a SampleError for its samples (recorded as a failure, never dropped).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from occsynth import __version__, contract
from occsynth.build.config import BuildConfig, NoFaceError, PlannedSample
from occsynth.build.executor import configure_threads
from occsynth.build.stats import SampleStats
from occsynth.contract import Failure, SampleError
from occsynth.faces.align import align_face, center_crop_landmarks, warp
from occsynth.faces.detect import PAD_FRACTION, Face, FaceDetector, select_face
from occsynth.faces.landmarks import StoredLandmarks
from occsynth.faces.templates import AlignTemplate
from occsynth.io.atomic import atomic_write
from occsynth.io.images import ImageLoadError, decode_image, encode_image, encode_mask
from occsynth.io.tar import ShardWriter
from occsynth.occluders import Composer
from occsynth.occluders.base import Occlusion
from occsynth.seeding import derive_seed, make_rng

# ---------------------------------------------------------------- per-process caches
_DETECTORS: dict[tuple, Any] = {}
_COMPOSERS: dict[str, Any] = {}
_STORES: dict[tuple[str, ...], StoredLandmarks] = {}


def detector(config: BuildConfig) -> FaceDetector:
    key = (config.device, config.min_face_size, config.detect_batch)
    if key not in _DETECTORS:
        # Batch 1 by default: MTCNN's last landmark digit depends on which images share a
        # batch, and a fresh build must match a lock made from another build's detections.
        _DETECTORS[key] = FaceDetector(
            device=config.device, min_face_size=config.min_face_size, batch_size=config.detect_batch
        )
    configure_threads()  # torch is imported by now: one thread inside an executor's tasks
    return _DETECTORS[key]


def composer(spec: Any) -> Composer:
    key = contract.dumps(spec)
    if key not in _COMPOSERS:
        _COMPOSERS[key] = Composer(spec)
    return _COMPOSERS[key]


def stored_detections(files: tuple[str, ...]) -> StoredLandmarks:
    if files not in _STORES:
        _STORES[files] = StoredLandmarks(files)
    return _STORES[files]


@dataclass
class ShardImages:
    """The shard's distinct source images as they move through the stages."""

    images: dict[str, np.ndarray] = field(default_factory=dict)  # sample_id of the source -> RGB
    digests: dict[str, str] = field(default_factory=dict)  # -> sha256 of the file's bytes
    errors: dict[str, SampleError] = field(default_factory=dict)  # -> why it cannot go on
    faces: dict[str, list] = field(default_factory=dict)  # -> detected faces
    padded: dict[str, list] = field(default_factory=dict)  # -> faces of the padded re-detection
    detections: dict[str, dict] = field(default_factory=dict)  # -> landmarks.jsonl record
    from_store: set[str] = field(default_factory=set)  # detections reused, not run
    aligned: dict[str, tuple] = field(default_factory=dict)  # -> (crop, landmarks, info)
    encoded: dict[tuple, bytes] = field(default_factory=dict)  # (sid, format, quality) -> crop encoded

    def merge(self, part: ShardImages) -> None:
        """Take in what the stages found for some of the shard's images (their decoded
        sources and encodings left out)."""
        for name in ("digests", "errors", "faces", "padded", "detections", "aligned"):
            getattr(self, name).update(getattr(part, name))
        self.from_store |= part.from_store


# ---------------------------------------------------------------- 1. read
def read_sources(source: Any, samples: list[PlannedSample]) -> tuple[ShardImages, dict[str, bytes]]:
    """Read (and hash) each distinct source image once: (state, sample_id -> bytes)."""
    state, data = ShardImages(), {}
    for item in {s.item.sample_id: s.item for s in samples}.values():
        try:
            blob = source.read(item)
            state.digests[item.sample_id] = hashlib.sha256(blob).hexdigest()
            data[item.sample_id] = blob
        except ImageLoadError as exc:
            state.errors[item.sample_id] = SampleError(exc.stage, exc.reason)
        except OSError as exc:
            state.errors[item.sample_id] = SampleError("read", f"{type(exc).__name__}: {exc}")
    return state, data


def decode_images(state: ShardImages, data: dict[str, bytes], config: BuildConfig) -> None:
    for sid, blob in data.items():
        try:
            state.images[sid] = decode_image(blob, max_pixels=config.max_pixels)
        except ImageLoadError as exc:
            state.errors[sid] = SampleError(exc.stage, exc.reason)
        except OSError as exc:
            state.errors[sid] = SampleError("read", f"{type(exc).__name__}: {exc}")


def read_images(source: Any, samples: list[PlannedSample], config: BuildConfig) -> ShardImages:
    """Read and decode each distinct source image once."""
    state, data = read_sources(source, samples)
    decode_images(state, data, config)
    return state


# ---------------------------------------------------------------- 2. faces
def _faces(records: list[dict]) -> list[Face]:
    return [Face(box=np.array(f["box"]), score=f["score"], landmarks=np.array(f["landmarks"])) for f in records]


def find_faces(state: ShardImages, config: BuildConfig) -> None:
    """Stored detections first (keyed by content), detect the rest in one call; then, with
    config.redetect "padded", the images where no face was found are detected again on a padded
    canvas (FaceDetector.detect_padded), stored in their record under "padded" (the canvas's
    pad fraction and the faces, in the image's pixels). Images with a face are never re-detected,
    so their records and samples are those of a build without it."""
    if config.aligned_input:
        return
    stored = stored_detections(config.landmark_files) if config.landmark_files else None
    settings = config.detector_settings()
    todo = []
    for sid, image in state.images.items():
        # the last stored record made with this build's settings (another file's later record
        # of the image, made with other settings, does not send it back to MTCNN)
        record = None if stored is None else stored.get(state.digests[sid], detector=settings)
        if record is not None:
            state.faces[sid] = _faces(record["faces"])
            if record.get("padded", {}).get("pad_fraction") == PAD_FRACTION:
                state.padded[sid] = _faces(record["padded"]["faces"])
            state.from_store.add(sid)
        else:
            todo.append(sid)
    if todo:
        for sid, found in zip(todo, detector(config).detect([state.images[s] for s in todo])):
            state.faces[sid] = found
    if config.redetect == "padded":
        again = [sid for sid, found in state.faces.items() if not found and sid not in state.padded]
        if again:
            for sid, found in zip(again, detector(config).detect_padded([state.images[s] for s in again])):
                state.padded[sid] = found
    for sid, found in state.faces.items():
        h, w = state.images[sid].shape[:2]
        state.detections[sid] = {
            "sha256": state.digests[sid],
            "source": sid,
            "image_size": [w, h],
            "detector": config.detector_settings(),
            "faces": [{"box": f.box, "score": f.score, "landmarks": f.landmarks} for f in found],
        }
        if sid in state.padded:  # kept whatever config.redetect is: the store does not forget it
            state.detections[sid]["padded"] = {
                "pad_fraction": PAD_FRACTION,
                "faces": [{"box": f.box, "score": f.score, "landmarks": f.landmarks} for f in state.padded[sid]],
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
        mode = "detected"
        if face is None and config.redetect == "padded":
            # no face in the image itself: the padded re-detection's (find_faces), before on_no_face
            face = select_face(state.padded.get(sid, []), image.shape, config.multi_face)
            mode = "detected-padded"
            if face is not None:
                info["num_faces"] = len(state.padded[sid])
        if face is None:
            if config.on_no_face == "fail":
                raise NoFaceError(
                    f"no face found in {sid!r} (on_no_face='fail'); "
                    "use --on-no-face skip or center-crop to record and continue"
                )
            if config.on_no_face == "skip":
                state.errors[sid] = SampleError("detect", "no face detected")
                continue
            src_landmarks = center_crop_landmarks(w, h, template)
            info.update(align_mode="center-crop")
        else:
            src_landmarks = face.landmarks
            # "detected" whether the detection was made now or reused from a store: the
            # sample bytes must not depend on whether a cache was warm.
            # "detected-padded": found by the padded re-detection (box and score in the image's pixels)
            info.update(align_mode=mode, box=face.box, det_score=face.score)
        try:
            crop, matrix, landmarks = align_face(image, src_landmarks, template)
        except ValueError as exc:
            state.errors[sid] = SampleError("align", str(exc))
            continue
        info.update(source_landmarks=contract.round_points(src_landmarks), transform=np.round(matrix, 6))
        # arrays as lists once per source, not once per sample by the JSON encoder's hook (same text)
        state.aligned[sid] = (
            crop,
            landmarks,
            {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in info.items()},
        )


# ---------------------------------------------------------------- 3b. aligned faces kept for the next dataset
# A build of several datasets over the same images (lfw-block's ten levels) aligns each shard's
# images once: the first task saves the aligned state (crops, landmarks, alignment records,
# detections, errors) under a key of its content, the same shard of the next datasets loads it
# instead of decoding, detecting and aligning again. The key covers everything the aligned state
# depends on: the inputs' bytes (sha256), the alignment settings and the occsynth version.
ALIGNED_SETTINGS = (
    "template",
    "aligned_input",
    "on_no_face",
    "redetect",
    "multi_face",
    "min_face_size",
    "detect_batch",
    "max_pixels",
    "device",
    "landmark_files",
)


def aligned_key(state: ShardImages, config: BuildConfig) -> str | None:
    """The content key of a shard's aligned state; None when it must not be reused (detection
    batches of several images: landmarks depend on the batch-mates)."""
    if config.detect_batch != 1:
        return None
    settings = {name: getattr(config, name) for name in ALIGNED_SETTINGS}
    inputs = sorted(state.digests.items())
    return hashlib.sha256(contract.dumps([__version__, settings, inputs]).encode()).hexdigest()


def save_aligned(folder: Path, key: str, state: ShardImages) -> None:
    """`key.npy` (the crops) then `key.json` (the rest; its presence marks the entry complete)."""
    entries, crops = [], []
    for sid in sorted(state.digests):
        entry: dict[str, Any] = {"sid": sid}
        if sid in state.errors:
            entry["error"] = [state.errors[sid].stage, state.errors[sid].reason]
        if sid in state.aligned:
            crop, landmarks, info = state.aligned[sid]
            entry.update(crop=len(crops), landmarks=landmarks, info=info)
            crops.append(crop)
        if sid in state.detections:
            entry.update(detection=state.detections[sid], stored=sid in state.from_store)
        entries.append(entry)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / f"{key}.npy", "wb", durable=False) as f:
        np.save(f, np.stack(crops) if crops else np.zeros((0, 1, 1, 3), np.uint8), allow_pickle=False)
    with atomic_write(folder / f"{key}.json", "w", encoding="utf-8", durable=False) as f:
        f.write(contract.dumps(entries))


def load_aligned(folder: Path, key: str, state: ShardImages) -> bool:
    """Fill state from a saved entry; False (state untouched) when there is none to use."""
    try:
        entries = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
        crops = np.load(folder / f"{key}.npy", allow_pickle=False)
        if sorted(e["sid"] for e in entries) != sorted(state.digests):
            return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    for entry in entries:
        sid = entry["sid"]
        if "error" in entry:
            state.errors[sid] = SampleError(*entry["error"])
        if "crop" in entry:
            state.aligned[sid] = (crops[entry["crop"]], np.array(entry["landmarks"], np.float64), entry["info"])
        if "detection" in entry:
            state.detections[sid] = entry["detection"]
            if entry["stored"]:
                state.from_store.add(sid)
    return True


# ---------------------------------------------------------------- 4. occlude + encode
_ZERO_MASKS: dict[tuple[int, int], bytes] = {}  # (height, width) -> PNG of an all-visible mask


def _mask_png(mask: np.ndarray, drawn: bool) -> bytes:
    """encode_mask, with the all-visible mask of each size encoded once (the same bytes).
    drawn: an occluder ran (else the mask is Composer's all-visible start)."""
    if drawn and mask.any():
        return encode_mask(mask)
    if mask.shape not in _ZERO_MASKS:
        _ZERO_MASKS[mask.shape] = encode_mask(np.zeros(mask.shape, np.uint8))
    return _ZERO_MASKS[mask.shape]


def _crop_encoded(state: ShardImages, sid: str, fmt: str, quality: int) -> bytes:
    """The unoccluded aligned face of a source, encoded once per shard (a source feeds several
    samples: LFW pairs, a clean side, keep_clean): equal arrays give equal bytes."""
    key = (sid, fmt, quality if fmt == "jpg" else 0)
    if key not in state.encoded:
        state.encoded[key] = encode_image(state.aligned[sid][0], fmt, quality)
    return state.encoded[key]


def make_sample(
    sample: PlannedSample, state: ShardImages, config: BuildConfig, template: AlignTemplate
) -> tuple[dict[str, bytes], dict, Occlusion]:
    """One sample's shard members (image, mask, metadata[, clean]), its metadata and its
    occlusion; SampleError if it has none."""
    sid = sample.item.sample_id
    if sid in state.errors:
        raise state.errors[sid]
    crop, landmarks, info = state.aligned[sid]
    seed = derive_seed(config.seed, sample.sample_id)
    spec = config.specs[sample.spec]
    if spec is None or spec == "clean":
        # what Composer(None) returns (the crop itself, an all-visible mask, no record), without
        # seeding a generator it would never draw from
        occ = Occlusion(image=crop, mask=np.zeros(crop.shape[:2], np.uint8), records=[])
    else:
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
        "landmarks": landmarks.tolist(),
        "seed": seed,
        "spec": sample.spec,
        "occluders": occ.records,
        "occlusion_ratio": contract.occlusion_ratio(occ.mask) if occ.records else 0.0,
        **info,
    }
    if sample.extra:
        meta["extra"] = sample.extra
    if not sample.mask_known:
        meta[contract.MASK_KNOWN] = False  # real occlusion: the stored mask does not show it
    ext = contract.EXT_IMAGE_JPG if config.image_format == "jpg" else contract.EXT_IMAGE_PNG
    unchanged = occ.image is crop and not occ.records  # occluders never draw in place (occluders.base)
    members = {
        ext: (
            _crop_encoded(state, sid, config.image_format, config.jpeg_quality)
            if unchanged
            else encode_image(occ.image, config.image_format, config.jpeg_quality)
        ),
        contract.EXT_MASK: _mask_png(occ.mask, bool(occ.records)),
        contract.EXT_META: contract.dumps(meta).encode("utf-8"),
    }
    if config.keep_clean:
        members[contract.EXT_CLEAN] = _crop_encoded(state, sid, "png", 0)
    return members, meta, occ


# ---------------------------------------------------------------- 5. write
class OcclusionSums:
    """Per-pixel sums over a shard's samples of one image size, gathered while writing, so the
    dataset card's heat map and mean face need no mask or image decoded again (inspect/card.py):
    occlusion (mask / 255) and RGB sums, plus the samples' aligned landmarks. Accumulated in
    float64 (cv2.accumulate): sums of uint8 values stay exact integers up to 2**53."""

    def __init__(self, width: int, height: int):
        self.size = (width, height)
        self.count = 0
        self.mask = np.zeros((height, width), np.float64)
        self.rgb = np.zeros((height, width, 3), np.float64)
        self.landmarks = np.zeros((5, 2), np.float64)
        self.landmark_count = 0
        # a part of a shard keeps each landmark set it added: `joined` adds them again in sample
        # order, the float64 sum one pass over the whole shard makes (the other sums are integers)
        self.trail: list[np.ndarray] | None = None

    def add(self, image: np.ndarray, mask: np.ndarray | None, landmarks: np.ndarray) -> None:
        """mask None: all visible (adds nothing to the occlusion sum)."""
        if image.shape[:2] != (self.size[1], self.size[0]):
            return  # another size: not part of the maps (the card says how many)
        self.count += 1
        if mask is not None:
            cv2.accumulate(mask, self.mask)
        cv2.accumulate(image, self.rgb)
        if np.shape(landmarks) == (5, 2):
            self.landmarks += landmarks
            self.landmark_count += 1
            if self.trail is not None:
                self.trail.append(np.asarray(landmarks, dtype=np.float64))

    @classmethod
    def joined(cls, parts: list[OcclusionSums]) -> OcclusionSums:
        """The sums of a shard from those of its parts (in order, each made with a trail)."""
        out = cls(*parts[0].size)
        for part in parts:
            out.count += part.count
            out.mask += part.mask
            out.rgb += part.rgb
            for landmarks in part.trail:
                out.landmarks += landmarks
                out.landmark_count += 1
        return out

    def to_array(self) -> np.ndarray:
        """One structured record (np.save writes it without pickle)."""
        h, w = self.size[1], self.size[0]
        dtype = np.dtype(
            [
                ("size", "<i8", (2,)),
                ("count", "<i8"),
                ("landmark_count", "<i8"),
                ("landmarks", "<f8", (5, 2)),
                ("mask", "<i8", (h, w)),
                ("rgb", "<i8", (h, w, 3)),
            ]
        )
        record = np.zeros((), dtype)
        record["size"], record["count"], record["landmark_count"] = self.size, self.count, self.landmark_count
        record["landmarks"] = self.landmarks
        record["mask"], record["rgb"] = self.mask.astype(np.int64), self.rgb.astype(np.int64)
        return record


@dataclass
class ShardOutput:
    """What write_samples made: per written sample its metadata as JSON text (index.jsonl's
    lines), the shard's part of the dataset statistics and its occlusion sums, gathered while
    writing: nothing is parsed or decoded back."""

    texts: list[str] = field(default_factory=list)
    metas: list[dict] | None = None  # the texts parsed back, when asked for (ShardTask.parse_index)
    failures: list[Failure] = field(default_factory=list)
    stats: SampleStats = field(default_factory=SampleStats)
    sums: OcclusionSums | None = None


def write_samples(
    writer: ShardWriter,
    samples: list[PlannedSample],
    state: ShardImages,
    config: BuildConfig,
    template: AlignTemplate,
    parse: bool = False,
    part: bool = False,
) -> ShardOutput:
    """Occlude, encode and append every sample in plan order (`parse`: keep the metadata
    parsed back too; `part`: the samples are a part of a shard, see OcclusionSums.joined)."""
    out = ShardOutput(sums=OcclusionSums(template.width, template.height), metas=[] if parse else None)
    if part:
        out.sums.trail = []
    for sample in samples:
        try:
            members, meta, occ = make_sample(sample, state, config, template)
        except SampleError as exc:
            out.failures.append(Failure(sample.key, sample.sample_id, sample.item.sample_id, exc.stage, exc.reason))
            continue
        writer.write(sample.key, members)
        out.texts.append(members[contract.EXT_META].decode("utf-8"))
        out.stats.add(meta)
        if out.metas is not None:
            out.metas.append(json.loads(out.texts[-1]))
        if sample.mask_known:
            out.sums.add(occ.image, occ.mask if occ.records else None, meta["landmarks"])
    return out
