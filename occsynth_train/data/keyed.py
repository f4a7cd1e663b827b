"""Evaluation data: every sample of a dataset directory, by index or key, with random access."""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from occsynth import contract

from .shards import IMAGE_EXTS, decode_mask, decode_rgb, list_shards, read_index


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
        image = decode_rgb(self._read(key, ext))
        mask = decode_mask(self._read(key, contract.EXT_MASK)) if contract.EXT_MASK in exts else np.zeros(image.shape[:2], np.uint8)
        return {"index": i, "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
                "mask": torch.from_numpy(np.ascontiguousarray(mask))[None]}

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
