"""Evaluation data: every sample of a dataset directory, by index or key, with random access."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from occsynth import contract
from occsynth.contract import mask_known
from occsynth.io.dataset import Dataset as OccsynthDataset
from occsynth.io.dataset import DatasetError
from occsynth.io.tar import ShardReader

from .shards import IMAGE_EXTS, decode_mask, decode_rgb


def _first(keys) -> str:
    return repr(sorted(keys)[0])


class KeyedDataset(Dataset):
    """Every sample of a dataset directory, by index or key, with random access into the tars.

    `metas[i]` is sample i's metadata (key order); `__getitem__` returns
    {"index", "image" uint8 [3, H, W], "mask" uint8 [1, H, W] (1 = occluded), "mask_known"
    (False for real occlusions without pixel masks: their "mask" is all zeros, not ground truth)}.

    The index (index.jsonl) must describe exactly the shards' samples: a key in two shards, an
    index line listed twice, an index line no shard holds or a sample without an index line is a
    one-line DatasetError (a damaged or mixed dataset). Without index.jsonl the metadata is read
    from the shards' json members. A member that cannot be decoded is a DatasetError naming the
    shard and the key (a benchmark is scored complete or not at all).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        dataset = OccsynthDataset(self.root)
        self._readers: dict[str, ShardReader] = {}  # shard name -> random-access reader
        self._shard_of: dict[str, str] = {}  # key -> shard name
        for shard in dataset.shards:
            if not shard.path.is_file():
                raise DatasetError(f"{shard.path} is missing (listed in {contract.MANIFEST})")
            reader = dataset.reader(shard)
            self._readers[shard.name] = reader
            for key in reader.keys():
                if key in self._shard_of:
                    raise DatasetError(f"{self.root}: key {key!r} is in {self._shard_of[key]} and {shard.name}")
                self._shard_of[key] = shard.name
        index: dict[str, dict] = {}
        where = self.root / contract.INDEX if dataset.has_index() else f"{self.root} (json members)"
        for meta in dataset.index():
            key = meta.get("key")
            if not isinstance(key, str):
                raise DatasetError(f"{where}: a line without a key")
            if key in index:
                raise DatasetError(f"{where}: key {key!r} is listed twice (a mixed or merged index)")
            index[key] = meta
        foreign = index.keys() - self._shard_of.keys()
        if foreign:
            raise DatasetError(
                f"{where}: {len(foreign)} key(s) that no shard holds (first: {_first(foreign)}): "
                "the index belongs to another build or shards are missing"
            )
        missing = self._shard_of.keys() - index.keys()
        if missing:
            raise DatasetError(
                f"{where}: no line for {len(missing)} sample(s) of the shards (first: {_first(missing)}): "
                f"the index is incomplete; rebuild the dataset, or delete {contract.INDEX} to read the "
                "metadata from the shards' json members"
            )
        self.keys = sorted(self._shard_of)
        self.metas = [index[k] for k in self.keys]
        self.mask_known = [mask_known(m) for m in self.metas]
        self.position = {k: i for i, k in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)

    def _read(self, key: str, ext: str) -> bytes:
        return self._readers[self._shard_of[key]].read(key, ext)

    def __getitem__(self, i: int) -> dict:
        key = self.keys[i]
        reader = self._readers[self._shard_of[key]]
        exts = reader.exts(key)
        try:
            ext = next((e for e in IMAGE_EXTS if e in exts), None)
            if ext is None:
                raise ValueError("no image member")
            image = decode_rgb(self._read(key, ext))
            mask = (
                decode_mask(self._read(key, contract.EXT_MASK))
                if contract.EXT_MASK in exts and self.mask_known[i]
                else np.zeros(image.shape[:2], np.uint8)
            )
        except ValueError as exc:  # ShardError (a truncated member) is a ValueError too
            raise DatasetError(f"{reader.path}: sample {key!r}: {exc}") from None
        return {
            "index": i,
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
            "mask": torch.from_numpy(np.ascontiguousarray(mask))[None],
            "mask_known": self.mask_known[i],
        }
