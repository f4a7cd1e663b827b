"""Factories for `occsynth-train eval --model eval_model_factory:NAME` in tests/test_eval_models.py
(the tests folder is on sys.path under pytest). RUN is set by the test to a run directory."""

from __future__ import annotations

import numpy as np
import torch

from occsynth_train.eval.models import load_run

RUN = None
CALLS: list[tuple] = []  # (shape, dtype) of every batch a callable received


class Embedder(torch.nn.Module):
    """An occsynth_train method as a plain module: images in the method's [-1, 1] NCHW -> [B, D]."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, x):
        return self.method.embed(x)


class NHWCEmbedder(Embedder):
    """The same, taking NHWC input (as some exported models do)."""

    def forward(self, x):
        return self.method.embed(x.permute(0, 3, 1, 2))


def embedder() -> torch.nn.Module:
    return Embedder(load_run(RUN)[0])


def numpy_callable():
    """A plain callable (not a module) that answers numpy arrays."""
    module = embedder()

    def embed(batch: torch.Tensor) -> np.ndarray:
        CALLS.append((tuple(batch.shape), batch.dtype))
        with torch.no_grad():
            return module(batch).numpy()

    return embed


NOT_CALLABLE = 3


def flatten():
    """A model-free callable: the prepared batch itself, flattened (for input-convention tests)."""
    return lambda batch: batch.flatten(1)
