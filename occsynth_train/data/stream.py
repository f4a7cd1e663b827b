"""The training stream over occsynth datasets (see occsynth/contract.py).

`ShardStream`, an endless, deterministic stream of batches over the shards of one or
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

Batches leave the workers as uint8 tensors (batch.py's `collate`); `prepare_batch` moves them
to the device, applies the optional on-device occluder, resizes to the model input and
normalises to [-1, 1].
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from occsynth import contract
from occsynth.seeding import derive_seed

from .batch import collate
from .labels import LabelMap
from .shards import (
    ShardInfo,
    decode_mask,
    decode_rgb,
    image_ext,
    list_shards,
    tar_samples,
)

# image-order of the 5 landmarks after a horizontal flip (eyes and mouth corners swap)
FLIP_LANDMARKS = [1, 0, 2, 4, 3]


def _paired_by_source(samples: Iterator[dict], pairing: bool) -> Iterator[dict]:
    """Parse the json member and attach `__clean__` image bytes (clean member, or the clean
    sample of the same source within a run of adjacent samples)."""
    group: list[dict] = []

    def flush() -> Iterator[dict]:
        clean_bytes = None
        for s in group:
            if not s["__meta__"]["occluders"]:
                clean_bytes = s[image_ext(s)]
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


def slot_batches_done(steps_done: int, workers: int, worker: int) -> int:
    """Batches worker `worker` produced in the first `steps_done` steps (DataLoader round-robin)."""
    return max(0, (steps_done - worker + workers - 1) // workers)


class ShardStream(IterableDataset):
    """Endless per-rank batches (dicts of uint8 tensors) over occsynth shards; see module doc."""

    def __init__(
        self,
        roots: Sequence[str | Path],
        labels: LabelMap,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1000,
        interleave: int = 4,
        flip: bool = True,
        pairing: bool = True,
        samples_seen: int = 0,
    ):
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
                    readers.append(_paired_by_source(tar_samples(pending.pop(0).path), self.pairing))
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
        data = raw[image_ext(raw)]
        image = decode_rgb(data)
        # decoding is the loader's cost: skip what is known without it (clean samples' masks are
        # empty; a clean sample's counterpart is its own image)
        if contract.EXT_MASK in raw and meta.get("occluders"):
            mask = decode_mask(raw[contract.EXT_MASK])
        else:
            mask = np.zeros(image.shape[:2], np.uint8)
        clean_bytes = raw.get("__clean__")
        clean = None if clean_bytes is None else image if clean_bytes is data else decode_rgb(clean_bytes)
        landmarks = np.asarray(meta.get("landmarks", np.zeros((5, 2))), dtype=np.float32).reshape(5, 2)
        # per-sample flip decision from a hash: independent of how far a resumed stream skipped
        flipped = bool(self.flip and derive_seed(self.seed, "flip", epoch, raw["__key__"]) & 1)
        if flipped:
            image, mask = image[:, ::-1], mask[:, ::-1]
            clean = None if clean is None else clean[:, ::-1]
            landmarks = landmarks[FLIP_LANDMARKS].copy()
            landmarks[:, 0] = image.shape[1] - 1 - landmarks[:, 0]
        return {
            "key": raw["__key__"],
            "image": image,
            "mask": mask,
            "clean": clean,
            "label": self.labels[meta["identity"]],
            "landmarks": landmarks,
            "meta": {"occluders": meta.get("occluders") or [], "extra": meta.get("extra") or {}, "flipped": flipped},
        }

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
