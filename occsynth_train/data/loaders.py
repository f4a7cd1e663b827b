"""DataLoaders over the training stream."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from .stream import ShardStream


def _worker_init(_: int) -> None:
    # workers decode in parallel already; intra-op threads per worker would oversubscribe the
    # cores. (No cv2.setNumThreads here: in a forked child it deadlocks on the parent's pool.)
    torch.set_num_threads(1)


def make_train_loader(
    stream: ShardStream, num_workers: int, pin_memory: bool = False, prefetch_factor: int = 4
) -> DataLoader:
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(prefetch_factor=prefetch_factor, worker_init_fn=_worker_init)
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs)
