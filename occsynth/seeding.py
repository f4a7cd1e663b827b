"""Seeds derived from names, never from file-system order, worker id or time.

A sample's seed is a hash of (global seed, sample_id), so the same sample gets the same
occlusion whichever shard or worker handles it and however many samples come before it.
"""

from __future__ import annotations

import hashlib

import numpy as np

_SEED_BITS = 63  # fits int64 and JSON numbers exactly enough (< 2**63)


def derive_seed(global_seed: int, *parts: object) -> int:
    """A stable 63-bit seed for (global_seed, *parts); parts are joined by their str()."""
    text = "\x1f".join([str(int(global_seed))] + [str(p) for p in parts])
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << _SEED_BITS) - 1)


def make_rng(seed: int) -> np.random.Generator:
    """The one generator type used for occlusion sampling (PCG64, stream-stable in NumPy)."""
    return np.random.Generator(np.random.PCG64(seed))
