"""Training and evaluation data over occsynth datasets (see occsynth/contract.py).

Training: `ShardStream`, an endless, deterministic stream of batches over the shards of one or
more dataset directories, split across DDP ranks and DataLoader workers.

  * Slots. Each (rank, worker) pair is a slot: slot = rank * workers + worker. In epoch e the
    shard list is permuted with a seed derived from (seed, e) and slot s reads shards s, s+S,
    s+2S, ... of that order (S = number of slots). With fewer shards than slots every slot reads
    every shard and keeps every S-th sample instead, so tiny datasets still work.
  * Mixing. occsynth writes shards in key order (often identity order), so a slot reads
    `interleave` shards round-robin and passes samples through a shuffle buffer (per-epoch seed).
    For large runs, build shards with shuffled keys as well.
  * Position. The stream is a pure function of (seed, layout, samples consumed): a resumed run
    skips what each slot has already produced (whole epochs from the manifest counts, the rest by
    reading without decoding). With the same world size and worker count the resumed stream is
    exactly the uninterrupted one; with a different layout the position is recomputed from
    `samples_seen` as if the new layout had been used from the start (the epoch is right, the
    exact samples seen in the interrupted epoch are not).
  * Clean pairing. A sample's clean counterpart is its `<key>.clean.png`, or else the clean
    sample (no occluders) with the same `source` next to it in the shard (occsynth writes the
    variants of one source image with adjacent keys). `has_clean` says which samples got one.

Batches leave the workers as uint8 tensors; `prepare_batch` moves them to the device, applies
the optional on-device occluder, resizes to the model input and normalises to [-1, 1].

Evaluation: `KeyedDataset`, a map-style dataset over every sample of a directory with random
access into the tars (member offsets are indexed once), addressable by key.
"""
from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from occsynth import contract
from occsynth.seeding import derive_seed

IMAGE_EXTS = (contract.EXT_IMAGE_PNG, contract.EXT_IMAGE_JPG)
# image-order of the 5 landmarks after a horizontal flip (eyes and mouth corners swap)
FLIP_LANDMARKS = [1, 0, 2, 4, 3]
LABELS_FILE = "labels.json"


# ---------------------------------------------------------------- dataset directories
@dataclass(frozen=True)
class ShardInfo:
    path: str
    num_samples: int


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / contract.MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {root} is not a finished occsynth dataset")
    return json.loads(path.read_text())


def list_shards(root: str | Path) -> list[ShardInfo]:
    """The dataset's shards with their sample counts, from manifest.json."""
    root = Path(root)
    shards = []
    for entry in read_manifest(root)["shards"]:
        # the pipeline writes "shard", the contract notes say "name": accept both
        name = entry.get("name", entry.get("shard"))
        shards.append(ShardInfo(str(root / name), int(entry["num_samples"])))
    return sorted(shards, key=lambda s: s.path)


def read_index(root: str | Path) -> list[dict]:
    """Per-sample metadata in key order: index.jsonl, or the shards' json members without it."""
    root = Path(root)
    path = root / contract.INDEX
    if path.exists():
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    metas = []
    for shard in list_shards(root):
        for sample in _tar_samples(shard.path):
            metas.append(json.loads(sample[contract.EXT_META]))
    return sorted(metas, key=lambda m: m["key"])


def dataset_image_size(roots: Sequence[str | Path]) -> tuple[int, int]:
    """(H, W) shared by all datasets (from their manifests or first sample)."""
    sizes = set()
    for root in roots:
        manifest = read_manifest(root)
        size = manifest.get("image_size")
        if size is None:
            size = read_index(root)[0]["image_size"]
        sizes.add((int(size[1]), int(size[0])))  # contract sizes are [width, height]
    if len(sizes) != 1:
        raise ValueError(f"training datasets have different image sizes {sorted(sizes)}; build them with one template")
    return sizes.pop()


class LabelMap:
    """Identity name <-> contiguous class id (sorted names), saved with the run as labels.json."""

    def __init__(self, identities: Iterable[str], sources: Sequence[str] = ()):
        self.identities = sorted(set(identities))
        self.index = {name: i for i, name in enumerate(self.identities)}
        self.sources = list(sources)

    @classmethod
    def from_datasets(cls, roots: Sequence[str | Path]) -> "LabelMap":
        names = {m["identity"] for root in roots for m in read_index(root)}
        return cls(names, [str(Path(r).resolve()) for r in roots])

    def __len__(self) -> int:
        return len(self.identities)

    def __getitem__(self, identity: str) -> int:
        try:
            return self.index[identity]
        except KeyError:
            raise KeyError(f"identity {identity!r} is not in the run's labels.json") from None

    def save(self, path: str | Path) -> None:
        data = {"num_classes": len(self), "identities": self.identities, "sources": self.sources}
        Path(path).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "LabelMap":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(data["identities"], data.get("sources", ()))


# ---------------------------------------------------------------- raw samples
def _tar_samples(path: str) -> Iterator[dict]:
    """Samples of one tar as {ext: bytes, "__key__": key} (webdataset's key/extension rule)."""
    from webdataset.tariterators import tarfile_samples

    for sample in tarfile_samples([{"url": path}]):
        yield sample


def _image_ext(sample: dict) -> str:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext
    raise KeyError(f"sample {sample.get('__key__')!r} in {sample.get('__url__')} has no image member")


def _paired_by_source(samples: Iterator[dict], pairing: bool) -> Iterator[dict]:
    """Parse the json member and attach `__clean__` image bytes (clean member, or the clean
    sample of the same source within a run of adjacent samples)."""
    group: list[dict] = []

    def flush() -> Iterator[dict]:
        clean_bytes = None
        for s in group:
            if not s["__meta__"]["occluders"]:
                clean_bytes = s[_image_ext(s)]
                break
        for s in group:
            if pairing:
                s["__clean__"] = s.get(contract.EXT_CLEAN, clean_bytes)
            yield s

    for sample in samples:
        sample["__meta__"] = json.loads(sample[contract.EXT_META])
        if group and sample["__meta__"]["source"] != group[0]["__meta__"]["source"]:
            yield from flush()
            group = []
        group.append(sample)
    yield from flush()


def _decode_rgb(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("cannot decode image member")
    # BGR -> RGB by slicing, not cv2.cvtColor: that would start OpenCV's thread pool, and a pool
    # inherited through fork() deadlocks DataLoader workers that touch it
    return image[:, :, ::-1]


def _decode_mask(data: bytes) -> np.ndarray:
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError("cannot decode mask member")
    return (mask >= 128).astype(np.uint8)  # contract: 255 = occluded


# ---------------------------------------------------------------- training stream
def slot_batches_done(steps_done: int, workers: int, worker: int) -> int:
    """Batches worker `worker` produced in the first `steps_done` steps (DataLoader round-robin)."""
    return max(0, (steps_done - worker + workers - 1) // workers)


class ShardStream(IterableDataset):
    """Endless per-rank batches (dicts of uint8 tensors) over occsynth shards; see module doc."""

    def __init__(self, roots: Sequence[str | Path], labels: LabelMap, batch_size: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle_buffer: int = 1000, interleave: int = 4,
                 flip: bool = True, pairing: bool = True, samples_seen: int = 0):
        super().__init__()
        self.roots = [str(r) for r in roots]
        self.shards = [s for root in self.roots for s in list_shards(root)]
        if not self.shards or sum(s.num_samples for s in self.shards) == 0:
            raise ValueError(f"no samples in {self.roots}")
        self.labels = labels
        self.batch_size = int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.shuffle_buffer, self.interleave = int(shuffle_buffer), max(1, int(interleave))
        self.flip, self.pairing = flip, pairing
        self.samples_seen = int(samples_seen)

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    # -- epoch plans
    def _epoch_plan(self, epoch: int, slot: int, slots: int) -> tuple[list[ShardInfo], int]:
        """Shards this slot reads in `epoch`, and its keep-stride (1, or `slots` in sample mode)."""
        rng = np.random.Generator(np.random.PCG64(derive_seed(self.seed, "shards", epoch)))
        order = [self.shards[i] for i in rng.permutation(len(self.shards))]
        if len(order) >= slots:
            return order[slot::slots], 1
        return order, slots

    def _epoch_size(self, epoch: int, slot: int, slots: int) -> int:
        shards, stride = self._epoch_plan(epoch, slot, slots)
        total = sum(s.num_samples for s in shards)
        return total if stride == 1 else len(range(slot, total, stride))

    def _epoch_raw(self, epoch: int, slot: int, slots: int) -> Iterator[dict]:
        shards, stride = self._epoch_plan(epoch, slot, slots)
        pending = list(shards)
        readers: list[Iterator[dict]] = []
        position = 0
        rng = np.random.Generator(np.random.PCG64(derive_seed(self.seed, "shuffle", epoch, slot)))
        buffer: list[dict] = []

        def interleaved() -> Iterator[dict]:
            while pending or readers:
                while pending and len(readers) < self.interleave:
                    readers.append(_paired_by_source(_tar_samples(pending.pop(0).path), self.pairing))
                for reader in list(readers):
                    sample = next(reader, None)
                    if sample is None:
                        readers.remove(reader)
                    else:
                        yield sample

        for sample in interleaved():
            keep = position % stride == slot % stride if stride > 1 else True
            position += 1
            if not keep:
                continue
            if self.shuffle_buffer <= 1:
                yield sample
                continue
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            j = int(rng.integers(len(buffer)))
            buffer[j], sample = sample, buffer[j]
            yield sample
        rng.shuffle(buffer)
        yield from buffer

    def _slot_stream(self, slot: int, slots: int, skip: int) -> Iterator[tuple[int, dict]]:
        epoch = 0
        while True:
            size = self._epoch_size(epoch, slot, slots)
            if size == 0:
                raise ValueError(f"loader slot {slot} of {slots} gets no samples in epoch {epoch} (empty shards?)")
            if skip >= size:  # whole epochs are skipped without reading
                skip -= size
                epoch += 1
                continue
            for sample in self._epoch_raw(epoch, slot, slots):
                if skip:
                    skip -= 1
                    continue
                yield epoch, sample
            epoch += 1

    def _decode(self, epoch: int, raw: dict) -> dict:
        meta = raw["__meta__"]
        data = raw[_image_ext(raw)]
        image = _decode_rgb(data)
        # decoding is the loader's cost: skip what is known without it (clean samples' masks are
        # empty; a clean sample's counterpart is its own image)
        if contract.EXT_MASK in raw and meta.get("occluders"):
            mask = _decode_mask(raw[contract.EXT_MASK])
        else:
            mask = np.zeros(image.shape[:2], np.uint8)
        clean_bytes = raw.get("__clean__")
        clean = None if clean_bytes is None else image if clean_bytes is data else _decode_rgb(clean_bytes)
        landmarks = np.asarray(meta.get("landmarks", np.zeros((5, 2))), dtype=np.float32).reshape(5, 2)
        # per-sample flip decision from a hash: independent of how far a resumed stream skipped
        flipped = bool(self.flip and derive_seed(self.seed, "flip", epoch, raw["__key__"]) & 1)
        if flipped:
            image, mask = image[:, ::-1], mask[:, ::-1]
            clean = None if clean is None else clean[:, ::-1]
            landmarks = landmarks[FLIP_LANDMARKS].copy()
            landmarks[:, 0] = image.shape[1] - 1 - landmarks[:, 0]
        return {"key": raw["__key__"], "image": image, "mask": mask, "clean": clean,
                "label": self.labels[meta["identity"]], "landmarks": landmarks,
                "meta": {"occluders": meta.get("occluders") or [], "extra": meta.get("extra") or {}, "flipped": flipped}}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        slots = self.world_size * workers
        steps_done = self.samples_seen // (self.world_size * self.batch_size)
        # DataLoader asks workers round-robin starting at worker 0; after `steps_done` steps the
        # next batch belongs to worker steps_done % workers, so worker w plays that role.
        role = (worker + steps_done) % workers
        slot = self.rank * workers + role
        skip = slot_batches_done(steps_done, workers, role) * self.batch_size
        batch: list[dict] = []
        for epoch, raw in self._slot_stream(slot, slots, skip):
            batch.append(self._decode(epoch, raw))
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch = []


def collate(samples: list[dict]) -> dict:
    """Stack decoded samples into uint8 tensors; `clean` falls back to the image itself."""
    images = np.stack([s["image"] for s in samples])
    has_clean = [s["clean"] is not None for s in samples]
    clean = np.stack([s["clean"] if s["clean"] is not None else s["image"] for s in samples])
    return {
        "images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        "masks": torch.from_numpy(np.stack([s["mask"] for s in samples]))[:, None].contiguous(),
        "clean": torch.from_numpy(clean).permute(0, 3, 1, 2).contiguous(),
        "has_clean": torch.tensor(has_clean, dtype=torch.bool),
        "labels": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        "landmarks": torch.from_numpy(np.stack([s["landmarks"] for s in samples])),
        "keys": [s["key"] for s in samples],
        "meta": [s.get("meta") or {} for s in samples],
    }


def _worker_init(_: int) -> None:
    # workers decode in parallel already; intra-op threads per worker would oversubscribe the
    # cores. (No cv2.setNumThreads here: in a forked child it deadlocks on the parent's pool.)
    torch.set_num_threads(1)


def make_train_loader(stream: ShardStream, num_workers: int, pin_memory: bool = False, prefetch_factor: int = 4) -> DataLoader:
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(prefetch_factor=prefetch_factor, worker_init_fn=_worker_init)
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs)


# ---------------------------------------------------------------- on-device batch
@dataclass
class Batch:
    """One training batch on the device.

    images    float [B, 3, H, W], RGB normalised to [-1, 1] ((x / 255 - 0.5) / 0.5)
    masks     float [B, 1, H, W], 1 = occluded (stored mask, united with any online occlusion)
    labels    long  [B], contiguous identity ids (labels.json)
    landmarks float [B, 5, 2] in pixels of `images`
    clean     float like images: the same face unoccluded where has_clean, else the image itself
    has_clean bool  [B]
    keys      sample keys (for debugging / logging)
    meta      per sample {"occluders": the shard's occluder records, "extra": its extra dict,
              "flipped": whether the loader mirrored it (records keep the unflipped geometry)}
    """

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    landmarks: torch.Tensor
    clean: torch.Tensor
    has_clean: torch.Tensor
    keys: list[str]
    meta: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]


def load_online_occluder(spec: Any, device: torch.device):
    """The on-device occluder of occsynth (imported lazily: it is optional)."""
    try:
        from occsynth.occluders.torch import TorchOccluder
    except ImportError as exc:
        raise ImportError("data.online_occlusion needs occsynth.occluders.torch.TorchOccluder, "
                          f"which could not be imported ({exc})") from exc
    return TorchOccluder(spec, device)


def normalize(images01: torch.Tensor) -> torch.Tensor:
    return (images01 - 0.5) / 0.5


def prepare_batch(raw: dict, device: torch.device, *, input_size: tuple[int, int] | None = None,
                  occluder=None, generator: torch.Generator | None = None,
                  channels_last: bool = False) -> Batch:
    """Move a collated batch to `device`, occlude online (optional), resize, normalise.

    The online occluder is called as `occluder(images, landmarks, generator)` with images float
    in [0, 1] on the device and returns (images, masks bool [B, 1, H, W]). Samples that were
    stored clean (empty mask) and had no clean counterpart get their pre-occlusion image as one.
    """
    nb = device.type == "cuda"
    images = raw["images"].to(device, non_blocking=nb).float().div_(255.0)
    masks = raw["masks"].to(device, non_blocking=nb).bool()
    clean = raw["clean"].to(device, non_blocking=nb).float().div_(255.0)
    has_clean = raw["has_clean"].to(device, non_blocking=nb)
    landmarks = raw["landmarks"].to(device, non_blocking=nb).float()
    labels = raw["labels"].to(device, non_blocking=nb)
    if occluder is not None:
        stored_clean = ~masks.flatten(1).any(1)
        adopt = stored_clean & ~has_clean
        clean = torch.where(adopt.view(-1, 1, 1, 1), images, clean)
        has_clean = has_clean | adopt
        images, new_masks = occluder(images, landmarks, generator)
        masks = masks | new_masks.bool()
    masks = masks.float()
    if input_size is not None and tuple(images.shape[-2:]) != tuple(input_size):
        h, w = images.shape[-2:]
        images = F.interpolate(images, size=input_size, mode="bilinear", align_corners=False, antialias=True)
        clean = F.interpolate(clean, size=input_size, mode="bilinear", align_corners=False, antialias=True)
        masks = F.interpolate(masks, size=input_size, mode="nearest")
        scale = torch.tensor([input_size[1] / w, input_size[0] / h], device=device)
        landmarks = (landmarks + 0.5) * scale - 0.5
    images, clean = normalize(images), normalize(clean)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
        clean = clean.contiguous(memory_format=torch.channels_last)
    meta = list(raw.get("meta") or [{} for _ in raw["keys"]])
    return Batch(images, masks, labels, landmarks, clean, has_clean, list(raw["keys"]), meta)


# ---------------------------------------------------------------- evaluation data
class KeyedDataset(Dataset):
    """Every sample of a dataset directory, by index or key, with random access into the tars.

    `metas[i]` is sample i's metadata (key order); `__getitem__` returns
    {"index", "image" uint8 [3, H, W], "mask" uint8 [1, H, W] (1 = occluded)}.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._members: dict[str, dict[str, tuple[str, int, int]]] = {}
        for shard in list_shards(self.root):
            with tarfile.open(shard.path, mode="r") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    base = info.name.rpartition("/")[2]
                    key, _, ext = base.partition(".")
                    self._members.setdefault(key, {})[ext] = (shard.path, info.offset_data, info.size)
        index = {m["key"]: m for m in read_index(self.root)}
        self.keys = sorted(self._members)
        missing = [k for k in self.keys if k not in index]
        for key in missing:  # no index line: read the json member
            index[key] = json.loads(self._read(key, contract.EXT_META))
        self.metas = [index[k] for k in self.keys]
        self.position = {k: i for i, k in enumerate(self.keys)}
        self._fds: dict[str, int] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.keys)

    def _read(self, key: str, ext: str) -> bytes:
        path, offset, size = self._members[key][ext]
        if self._pid != os.getpid():  # file descriptors do not survive into DataLoader workers
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return os.pread(fd, size, offset)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"], state["_pid"] = {}, None
        return state

    def __getitem__(self, i: int) -> dict:
        key = self.keys[i]
        exts = self._members[key]
        ext = next(e for e in IMAGE_EXTS if e in exts)
        image = _decode_rgb(self._read(key, ext))
        mask = _decode_mask(self._read(key, contract.EXT_MASK)) if contract.EXT_MASK in exts else np.zeros(image.shape[:2], np.uint8)
        return {"index": i, "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
                "mask": torch.from_numpy(np.ascontiguousarray(mask))[None]}

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
