"""insightface `.bin` verification files (arcface_torch's `eval/verification.py`, `load_bin`) as
benchmarks: `occsynth-train eval --benchmark lfw.bin`.

The file is a pickle of `(bins, issame_list)`: the encoded images of every pair, a then b, and
one bool per pair (occsynth's `export --format insightface-bin` writes the same). A pickle can
run code when loaded, so it is read with a restricted unpickler that rebuilds only what such
files hold: bytes, str, lists, tuples, bools, ints, and numpy arrays (some published files
store issame_list as a numpy bool array; protocol-2 pickles spell bytes as _codecs.encode); any
other global is refused with one line, and the decoded structure is checked (list of bytes,
2 x as many images as pairs, bool flags).

Folds are arcface_torch's: `KFold(n_splits=10, shuffle=False)` over pair order, i.e. ten
contiguous blocks, the first `n % 10` one pair longer, so a `.bin` is scored on the same folds
as arcface_torch scores it (for LFW's 6,000 pairs in protocol order these are LFW's own folds).
The threshold and TAR rules are this project's (metrics.py), not verification.py's grid.
Images are decoded as in training (OpenCV, RGB); `load_bin` uses mxnet's imdecode (OpenCV
underneath: identical for PNG, JPEG may differ in the last bit across libjpeg builds).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from ..data.shards import decode_rgb

N_FOLDS = 10
# the globals a .bin may name: numpy's array reconstruction (old and new module paths), and
# _codecs.encode, with which Python 3 writes bytes into protocol-2 pickles (str -> bytes only)
_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class BinFormatError(ValueError):
    """A .bin that is not an insightface verification pickle (or asks for anything else)."""


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise BinFormatError(f"refuses to load {module}.{name}: an insightface .bin holds only bytes, lists and bools")


def _unpickle(data: bytes, path: Path):
    try:
        return _Restricted(io.BytesIO(data)).load()
    except UnicodeDecodeError:  # a Python 2 pickle (str images), as load_bin retries
        return _Restricted(io.BytesIO(data), encoding="bytes").load()


def kfold_ids(n: int, n_folds: int = N_FOLDS) -> np.ndarray:
    """sklearn KFold(n_splits, shuffle=False) as fold ids: contiguous blocks, the first n % k
    blocks one longer."""
    if n < n_folds:
        raise BinFormatError(f"{n} pairs cannot make {n_folds} folds")
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    return np.repeat(np.arange(n_folds), sizes)


def read_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """(encoded images, issame bool [pairs]) of a .bin, structure checked; one-line errors."""
    path = Path(path)
    try:
        obj = _unpickle(path.read_bytes(), path)
    except BinFormatError as exc:
        raise BinFormatError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any damage to the pickle stream
        raise BinFormatError(f"{path}: not an insightface .bin pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise BinFormatError(f"{path}: expected a pickled (bins, issame_list) pair, got {type(obj).__name__}")
    bins, issame = obj
    if isinstance(bins, np.ndarray) and bins.dtype == object:
        bins = list(bins)
    if not isinstance(bins, (list, tuple)) or not all(isinstance(b, (bytes, bytearray)) for b in bins):
        raise BinFormatError(f"{path}: bins must be a list of encoded images (bytes)")
    if isinstance(issame, np.ndarray):
        if issame.dtype != np.bool_ or issame.ndim != 1:
            raise BinFormatError(
                f"{path}: issame_list is a {issame.dtype} array of shape {issame.shape}; expected bools"
            )
        flags = issame.copy()
    elif isinstance(issame, (list, tuple)) and all(isinstance(s, (bool, np.bool_)) for s in issame):
        flags = np.array(issame, dtype=bool)
    else:
        raise BinFormatError(f"{path}: issame_list must be a list of bools")
    if len(bins) != 2 * len(flags) or not len(flags):
        raise BinFormatError(f"{path}: {len(bins)} images for {len(flags)} pairs; expected two images per pair")
    return [bytes(b) for b in bins], flags


class BinDataset(torch.utils.data.Dataset):
    """The images of a .bin as the evaluator's dataset: keys "000000".. in file order, pairs
    (2i, 2i+1) on arcface_torch's folds. No masks: mask_known is False for every image."""

    def __init__(self, path: str | Path):
        self.root = Path(path)
        self.bins, self.issame = read_bin(self.root)
        self.keys = [f"{i:06d}" for i in range(len(self.bins))]
        self.position = {k: i for i, k in enumerate(self.keys)}
        self.metas = [{"key": k} for k in self.keys]
        self.mask_known = [False] * len(self.keys)
        first = self._decode(0)
        self.image_size = (int(first.shape[0]), int(first.shape[1]))  # (H, W)

    def _decode(self, i: int) -> np.ndarray:
        try:
            return decode_rgb(self.bins[i])
        except ValueError as exc:
            raise BinFormatError(f"{self.root}: image {i}: {exc}") from None

    def pairs(self) -> list[dict]:
        folds = kfold_ids(len(self.issame))
        return [
            {"pair": i, "fold": int(folds[i]), "issame": bool(s), "a": self.keys[2 * i], "b": self.keys[2 * i + 1]}
            for i, s in enumerate(self.issame)
        ]

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, i: int) -> dict:
        image = self._decode(i)
        if image.shape[:2] != self.image_size:
            raise BinFormatError(
                f"{self.root}: image {i} is {image.shape[0]}x{image.shape[1]}, the first is "
                f"{self.image_size[0]}x{self.image_size[1]}: a .bin holds one size"
            )
        return {
            "index": i,
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
            "mask": torch.zeros(1, *self.image_size, dtype=torch.uint8),
            "mask_known": False,
        }
