"""Evaluation data: every sample of a dataset directory, by index or key, with random access."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from occsynth import contract
from occsynth.io.dataset import Dataset as OccsynthDataset
from occsynth.io.tar import ShardReader

from .shards import IMAGE_EXTS, decode_mask, decode_rgb


class KeyedDataset(Dataset):
    """Every sample of a dataset directory, by index or key, with random access into the tars.

    `metas[i]` is sample i's metadata (key order); `__getitem__` returns
    {"index", "image" uint8 [3, H, W], "mask" uint8 [1, H, W] (1 = occluded)}.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        dataset = OccsynthDataset(self.root)
        self._readers: dict[str, ShardReader] = {}  # shard name -> random-access reader
        self._shard_of: dict[str, str] = {}  # key -> shard name
        for shard in dataset.shards:
            reader = dataset.reader(shard)
            self._readers[shard.name] = reader
            for key in reader.keys():
                self._shard_of[key] = shard.name
        index = {m["key"]: m for m in dataset.index()}
        self.keys = sorted(self._shard_of)
        missing = [k for k in self.keys if k not in index]
        for key in missing:  # no index line: read the json member
            index[key] = json.loads(self._read(key, contract.EXT_META))
        self.metas = [index[k] for k in self.keys]
        self.position = {k: i for i, k in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)

    def _read(self, key: str, ext: str) -> bytes:
        return self._readers[self._shard_of[key]].read(key, ext)

    def __getitem__(self, i: int) -> dict:
        key = self.keys[i]
        exts = self._readers[self._shard_of[key]].exts(key)
        ext = next(e for e in IMAGE_EXTS if e in exts)
        image = decode_rgb(self._read(key, ext))
        mask = (
            decode_mask(self._read(key, contract.EXT_MASK))
            if contract.EXT_MASK in exts
            else np.zeros(image.shape[:2], np.uint8)
        )
        return {
            "index": i,
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
            "mask": torch.from_numpy(np.ascontiguousarray(mask))[None],
        }
