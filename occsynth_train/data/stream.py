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
  * Corrupt samples. A sample whose image, mask, clean image or json member cannot be decoded
    (or whose image has another size than its dataset's) is skipped, and so is every sample a
    shard promises in the manifest but cannot deliver (a truncated or unreadable shard): the
    batch is filled with the next samples. Each batch lists what was skipped while it was
    assembled (`skipped`: shard, key, reason) and the slot it came from; `BadSamples` (used by
    the trainer) logs each distinct one once with shard and key, counts them per slot, and stops
    the run with BadDataError once the distinct ones pass `max_share` of the samples. Skipping
    is a function of the bytes, so the stream stays deterministic; a resumed stream is given
    the per-slot counts (`bad_seen`, saved in checkpoints) and skips exactly the raw samples
    already consumed (with a changed layout those counts do not apply; see Position).
  * Clean pairing. A sample's clean counterpart is its `<key>.clean.png`, or else the clean
    sample (no occluders) with the same `source` next to it in the shard (occsynth writes the
    variants of one source image with adjacent keys). `has_clean` says which samples got one.

Batches leave the workers as uint8 tensors (batch.py's `collate`); `prepare_batch` moves them
to the device, applies the optional on-device occluder, resizes to the model input and
normalises to [-1, 1].
"""

from __future__ import annotations

import json
import logging
import tarfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from occsynth import contract
from occsynth.io.dataset import Dataset
from occsynth.seeding import derive_seed

from .batch import collate
from .labels import LabelMap
from .shards import (
    IMAGE_EXTS,
    ShardInfo,
    decode_mask,
    decode_rgb,
    image_ext,
    list_shards,
    refuse_unknown_masks,
    tar_samples,
)

log = logging.getLogger(__name__)

# image-order of the 5 landmarks after a horizontal flip (eyes and mouth corners swap)
FLIP_LANDMARKS = [1, 0, 2, 4, 3]
BAD = "__bad__"  # raw-sample field: why the sample cannot be used (it is skipped)


class BadDataError(ValueError):
    """More training samples were skipped as corrupt than data.max_bad_share allows."""


class _BadSample(Exception):
    """A sample that cannot be decoded (becomes a `skipped` record; never leaves the stream)."""


def _shard_samples(shard: ShardInfo) -> Iterator[dict]:
    """The raw samples of one shard. A shard that breaks off (truncated, unreadable, a member
    that breaks the layout) or holds fewer samples than its manifest entry yields one bad
    placeholder per missing sample, so positions stay those the manifest counts (resume)."""
    read = 0
    try:
        for sample in tar_samples(shard.path):
            read += 1
            yield sample
        reason = f"the shard ends after {read} of its {shard.num_samples} samples"
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:  # ShardError is a ValueError
        reason = f"the shard cannot be read past sample {read} ({exc})"
    for i in range(read, shard.num_samples):
        yield {"__key__": f"#{i}", "__url__": shard.path, BAD: reason}


def _parse(sample: dict) -> str | None:
    """Attach `__meta__` (the parsed json member); the reason the sample is unusable, or None."""
    if not any(ext in sample for ext in IMAGE_EXTS):
        return "no image member"
    if contract.EXT_META not in sample:
        return "no json member"
    try:
        meta = json.loads(sample[contract.EXT_META])
    except (ValueError, UnicodeDecodeError) as exc:
        return f"json member: {exc}"
    if not isinstance(meta, dict) or not isinstance(meta.get("identity"), str):
        return "json member: not an object with an identity"
    sample["__meta__"] = meta
    return None


def _paired_by_source(samples: Iterator[dict], pairing: bool) -> Iterator[dict]:
    """Parse the json member and attach `__clean__` image bytes (clean member, or the clean
    sample of the same source within a run of adjacent samples). Unusable samples are marked
    (BAD) and passed on in place; they neither pair nor end a run of one source."""
    group: list[dict] = []
    source: Any = None

    def flush() -> Iterator[dict]:
        clean_bytes = None
        for s in group:
            if BAD not in s and not s["__meta__"].get("occluders"):
                clean_bytes = s[image_ext(s)]
                break
        for s in group:
            if pairing and BAD not in s:
                s["__clean__"] = s.get(contract.EXT_CLEAN, clean_bytes)
            yield s

    for sample in samples:
        if BAD not in sample and (reason := _parse(sample)) is not None:
            sample[BAD] = reason
        if BAD not in sample:
            this = sample["__meta__"].get("source")
            if group and this != source:
                yield from flush()
                group = []
            source = this
        group.append(sample)
    yield from flush()


def slot_batches_done(steps_done: int, workers: int, worker: int) -> int:
    """Batches worker `worker` produced in the first `steps_done` steps (DataLoader round-robin)."""
    return max(0, (steps_done - worker + workers - 1) // workers)


class ShardStream(IterableDataset):
    """Endless per-rank batches (dicts of uint8 tensors) over occsynth shards; see module doc.

    `bad_seen`: a checkpoint's BadSamples entry (a resumed stream skips those raw samples too);
    `need_masks`: what needs true masks (e.g. "method 'msml'"), so datasets with samples marked
    mask_known=false (real occlusions) are refused here with a ValueError; None: nothing does.
    """

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
        bad_seen: dict | None = None,
        need_masks: str | None = None,
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
        # raw samples each slot skipped as bad in the consumed batches ({"slots": S, "per_slot": {..}})
        self.bad_seen = bad_seen or {}
        if need_masks:  # e.g. "method 'msml'": refuse datasets without pixel masks up front
            refuse_unknown_masks(self.roots, need_masks)
        self._size = {}  # shard path -> (H, W) of its dataset
        for root in self.roots:
            w, h = Dataset(root).image_size
            for shard in list_shards(root):
                self._size[shard.path] = (h, w)

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
                    readers.append(_paired_by_source(_shard_samples(pending.pop(0)), self.pairing))
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
        label = self.labels[meta["identity"]]  # an unknown identity is a mixed-up dataset, not a bad sample
        data = raw[image_ext(raw)]
        size = self._size[raw["__url__"]]
        try:
            image = decode_rgb(data)
            # decoding is the loader's cost: skip what is known without it (clean samples' masks
            # are empty; a clean sample's counterpart is its own image)
            if contract.EXT_MASK in raw and meta.get("occluders"):
                mask = decode_mask(raw[contract.EXT_MASK])
            else:
                mask = np.zeros(image.shape[:2], np.uint8)
        except ValueError as exc:
            raise _BadSample(str(exc)) from None
        clean_bytes = raw.get("__clean__")
        try:
            clean = None if clean_bytes is None else image if clean_bytes is data else decode_rgb(clean_bytes)
        except ValueError as exc:
            raise _BadSample(f"its clean counterpart: {exc}") from None
        for name, array in (("image", image), ("mask", mask), ("clean image", clean)):
            if array is not None and array.shape[:2] != size:
                raise _BadSample(f"{name} is {array.shape[1]}x{array.shape[0]}, the dataset's {size[1]}x{size[0]}")
        try:
            landmarks = np.asarray(meta.get("landmarks", np.zeros((5, 2))), dtype=np.float32).reshape(5, 2)
        except (ValueError, TypeError):
            raise _BadSample("json member: landmarks are not 5 points") from None
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
            "label": label,
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
        if self.bad_seen.get("slots") == slots:  # the bad samples among them (same layout only)
            skip += int(self.bad_seen.get("per_slot", {}).get(slot, 0))
        batch: list[dict] = []
        skipped: list[dict] = []
        for epoch, raw in self._slot_stream(slot, slots, skip):
            reason = raw.get(BAD)
            if reason is None:
                try:
                    batch.append(self._decode(epoch, raw))
                except _BadSample as exc:
                    reason = str(exc)
            if reason is not None:
                skipped.append({"shard": str(raw["__url__"]), "key": raw["__key__"], "reason": reason})
                continue
            if len(batch) == self.batch_size:
                out = collate(batch)
                out.update(slot=slot, slots=slots, skipped=skipped)
                yield out
                batch, skipped = [], []


class BadSamples:
    """One rank's account of the training samples the stream skipped (see the module doc).

    `account(batch)` takes the batch's `skipped` records: each distinct (shard, key) is logged
    once as a warning, raw counts are kept per loader slot (to resume the stream exactly), and
    it answers True once the distinct ones exceed `max_share` of this rank's part of the data
    (samples / world size), as the trainer then stops with `error()`. `state()` is what a
    checkpoint keeps; `merge` joins the ranks' states.
    """

    def __init__(self, max_share: float, num_samples: int, *, world_size: int = 1, rank: int = 0, state=None):
        self.max_share = float(max_share)
        self.limit = self.max_share * num_samples / max(1, world_size)
        self.num_samples, self.world_size = int(num_samples), int(world_size)
        state = state or {}
        self.slots: int | None = state.get("slots")
        self.per_slot: dict[int, int] = {int(k): int(v) for k, v in (state.get("per_slot") or {}).items()}
        ranks = state.get("distinct") or []
        # distinct samples are per rank: restored when the world size is unchanged, else counted anew
        self.distinct: list[str] = list(ranks[rank]) if len(ranks) == world_size else []
        self._seen = set(self.distinct)
        self._cut_logged: set[tuple[str, str]] = set()  # (shard, reason) of logged placeholders
        self.first: dict | None = None

    def account(self, batch: dict) -> bool:
        skipped = batch.get("skipped") or []
        slots = batch.get("slots")
        if slots is not None and slots != self.slots:  # counts of another layout do not apply
            self.slots, self.per_slot = slots, {}
        if skipped:
            slot = int(batch["slot"])
            self.per_slot[slot] = self.per_slot.get(slot, 0) + len(skipped)
        for record in skipped:
            name = f"{record['shard']}:{record['key']}"
            if name in self._seen:
                continue
            self._seen.add(name)
            self.distinct.append(name)
            self.first = self.first or record
            if record["key"].startswith("#"):  # a placeholder of a cut shard: one line per shard
                if (record["shard"], record["reason"]) in self._cut_logged:
                    continue
                self._cut_logged.add((record["shard"], record["reason"]))
                what = f"the samples of {record['shard']} from position {record['key'][1:]} on"
            else:
                what = f"training sample {record['key']} in {record['shard']}"
            log.warning(
                "skipped %s: %s (%d distinct skipped, the run stops past %.4g)",
                what,
                record["reason"],
                len(self.distinct),
                self.limit,
            )
        return len(self.distinct) > self.limit

    def error(self) -> BadDataError:
        if len(self.distinct) <= self.limit:
            return BadDataError(
                "stopped: another rank skipped more corrupt training samples than data.max_bad_share allows"
            )
        first = self.first or {}
        where = f"; first: {first['key']} in {first['shard']} ({first['reason']})" if first else ""
        return BadDataError(
            f"{len(self.distinct)} distinct training samples could not be read or decoded, more than "
            f"data.max_bad_share={self.max_share:g} of the {self.num_samples} samples"
            + (f" ({self.world_size} ranks: per rank)" if self.world_size > 1 else "")
            + f"{where}; repair or rebuild the shards, or raise data.max_bad_share"
        )

    def state(self) -> dict:
        return {"slots": self.slots, "per_slot": dict(self.per_slot), "distinct": list(self.distinct)}

    @staticmethod
    def merge(states: list[dict]) -> dict:
        """The checkpoint entry from every rank's state(): per-slot counts joined (a slot belongs
        to one rank; the larger count is the newer), distinct samples kept per rank."""
        per_slot: dict[int, int] = {}
        for st in states:
            for k, v in st["per_slot"].items():
                per_slot[k] = max(per_slot.get(k, 0), v)
        return {"slots": states[0]["slots"], "per_slot": per_slot, "distinct": [st["distinct"] for st in states]}
