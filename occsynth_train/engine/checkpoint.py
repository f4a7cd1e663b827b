"""Checkpoints: model, optimiser, scaler, global step, samples seen and every rank's RNG state.

Files are `checkpoints/step_NNNNNNNN.pt`, written through occsynth.io.atomic (a temporary name,
fsynced, renamed: a killed save never leaves a truncated checkpoint under a real name); the
newest *intact* one is resumed, so a file damaged later (disk full, a copy cut short) only costs
the steps since the previous one.

Every file is read with `torch.load(weights_only=True)`: a checkpoint is data, never code. A
crafted pickle that would import or call anything is refused with one line naming the file. To
make our own files load that way, RNG states are stored as tensors and plain Python numbers
(NumPy's generator state is split into its parts), never as pickled NumPy objects.
"""

from __future__ import annotations

import logging
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from occsynth.io.atomic import atomic_write

CKPT_DIR = "checkpoints"
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, truncated, or holding more than data."""


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    folder = Path(run_dir) / CKPT_DIR
    return sorted(folder.glob("step_*.pt")) if folder.exists() else []


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and Python numbers (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(path: Path, payload: dict, keep: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as fh:
        torch.save(payload, fh)
    log.debug("saved checkpoint %s", path)
    if keep:
        for old in list_checkpoints(path.parents[1])[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint (or a bare state dict) as data only. Raises CheckpointError with one
    line for a missing, empty, truncated or code-carrying file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refused a global: the file wants to import or call something
        first = str(exc).strip().splitlines()
        detail = next((line.strip() for line in first if "GLOBAL" in line or "global" in line), "")
        raise CheckpointError(
            f"{path}: refused, it holds Python objects other than tensors and plain "
            f"data (loaded with weights_only=True; nothing was run)" + (f": {detail}" if detail else "")
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({reason})") from None


def load_latest_intact(
    run_dir: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[Path | None, Any, list[tuple[Path, str]]]:
    """(path, state, skipped) of the newest checkpoint that loads; `skipped` lists the newer
    ones that did not, each with its reason. (None, None, skipped) when none loads."""
    skipped: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path, map_location=map_location)
        except CheckpointError as exc:
            skipped.append((path, str(exc)))
            log.warning("skipping checkpoint %s: %s", path.name, exc)
            continue
        if not isinstance(state, dict) or "model" not in state or "step" not in state:
            skipped.append((path, "not an occsynth-train checkpoint (no model/step)"))
            continue
        return path, state, skipped
    return None, None, skipped
