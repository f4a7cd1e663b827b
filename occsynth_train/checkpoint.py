"""Checkpoints: model, optimiser, scaler, global step, samples seen and every rank's RNG state.

Files are `checkpoints/step_NNNNNNNN.pt`, written to a temporary name and renamed (a killed
save never leaves a truncated checkpoint under a real name); the newest is resumed.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CKPT_DIR = "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    folder = Path(run_dir) / CKPT_DIR
    return sorted(folder.glob("step_*.pt")) if folder.exists() else []


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(path: Path, payload: dict, keep: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    if keep:
        for old in list_checkpoints(path.parents[1])[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    # our own files: RNG states hold numpy objects, so the full unpickler is needed
    return torch.load(path, map_location=map_location, weights_only=False)
