"""Make facenet-pytorch importable when torchvision is not.

facenet-pytorch 2.5.3 uses torchvision for two functions only:
``torchvision.ops.boxes.batched_nms`` and ``torchvision.transforms.functional.to_tensor``.
The torchvision wheel matching torch 2.13 is a CUDA build whose import fails next to the CPU
torch wheel (``RuntimeError: operator torchvision::nms does not exist``; see DEVELOPERS.md).
``ensure_torchvision`` keeps a working torchvision when there is one and otherwise registers a
minimal stand-in package providing exactly those two functions.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import torch

_FALLBACK_MARK = "__occsynth_fallback__"
_REQUIRED = (
    ("torchvision.ops.boxes", "batched_nms"),
    ("torchvision.transforms.functional", "to_tensor"),
)

# Why the real import failed (None when it did not, or was not tried): shown in test skips.
import_error: str | None = None


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Per-class greedy NMS with torchvision's semantics.

    A box is dropped when its IoU with a kept, higher-scoring box of the same class is
    strictly greater than ``iou_threshold``. Returns int64 indices of the kept boxes, sorted by
    decreasing score (equal scores: lower index first), on the device of ``boxes``.
    Boxes are (x1, y1, x2, y2) with area (x2 - x1) * (y2 - y1), as in torchvision.
    """
    device = boxes.device
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (N, 4), got shape {tuple(boxes.shape)}")
    n = boxes.shape[0]
    if scores.shape != (n,) or idxs.shape != (n,):
        raise ValueError(f"scores and idxs must be ({n},), got {tuple(scores.shape)} and {tuple(idxs.shape)}")
    if n == 0:
        return torch.empty((0,), dtype=torch.int64, device=device)

    # NumPy on CPU: the greedy loop is many tiny vector ops, where torch's per-op overhead
    # dominates. Arithmetic stays in the boxes' dtype so IoU ties round as torchvision's do.
    b = boxes.detach().cpu().numpy()
    s = scores.detach().cpu().numpy()
    c = idxs.detach().cpu().numpy()
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    area = (x2 - x1) * (y2 - y1)
    order = np.argsort(-s, kind="stable")

    keep = []
    with np.errstate(divide="ignore", invalid="ignore"):
        while order.size:
            i = order[0]
            keep.append(i)
            rest = order[1:]
            w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
            h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
            inter = w * h
            iou = inter / (area[i] + area[rest] - inter)
            # Compared in float64 as torchvision's kernel does (float IoU vs double threshold).
            # NaN (two empty boxes) compares False, so such a box is kept, as in torchvision.
            over = iou.astype(np.float64) > float(iou_threshold)
            order = rest[~(over & (c[rest] == c[i]))]
    return torch.as_tensor(np.asarray(keep, dtype=np.int64), device=device)


def to_tensor(pic) -> torch.Tensor:
    """HWC image (PIL or ndarray) to a CHW float tensor; uint8 scaled to [0, 1] as torchvision does."""
    arr = np.asarray(pic)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"to_tensor expects an HxW or HxWxC image, got shape {arr.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    if tensor.dtype == torch.uint8:
        return tensor.to(torch.get_default_dtype()).div(255)
    return tensor


def _is_torchvision_entry(name: str) -> bool:
    return name == "torchvision" or name.startswith("torchvision.")


def _real_torchvision_works() -> bool:
    global import_error
    try:
        # Import statements (not importlib) so tests can simulate a failure via builtins.__import__.
        import torchvision  # noqa: F401
        import torchvision.ops.boxes  # noqa: F401
        import torchvision.transforms.functional  # noqa: F401

        for module_name, attr in _REQUIRED:
            if not callable(getattr(sys.modules[module_name], attr, None)):
                raise ImportError(f"{module_name}.{attr} is missing")
    except Exception as exc:  # a broken build raises RuntimeError, not ImportError
        import_error = f"{type(exc).__name__}: {exc}"
        return False
    import_error = None
    return True


def _install_fallback() -> None:
    # A failed import leaves the submodules it got through in sys.modules; they would shadow
    # the stand-in's package attributes, so they go first.
    # list() first: the keys copied in one step, because another thread may import meanwhile
    # (the CLI imports matplotlib in the background while a build starts its detector)
    for name in [k for k in list(sys.modules) if _is_torchvision_entry(k)]:
        del sys.modules[name]

    def package(name: str) -> types.ModuleType:
        module = types.ModuleType(name, "occsynth stand-in for torchvision (see occsynth.faces._torchvision_compat)")
        module.__path__ = []  # a package, so that submodule imports resolve through sys.modules
        setattr(module, _FALLBACK_MARK, True)
        sys.modules[name] = module
        return module

    root = package("torchvision")
    root.__version__ = "0.0.0+occsynth.fallback"
    ops = package("torchvision.ops")
    boxes = package("torchvision.ops.boxes")
    transforms = package("torchvision.transforms")
    functional = package("torchvision.transforms.functional")
    boxes.batched_nms = ops.batched_nms = batched_nms
    functional.to_tensor = to_tensor
    root.ops, ops.boxes = ops, boxes
    root.transforms, transforms.functional = transforms, functional


def ensure_torchvision() -> str:
    """Return "torchvision" when the real package imports, else install the stand-in and
    return "fallback". Idempotent: once the stand-in is in place it is not rebuilt."""
    current = sys.modules.get("torchvision")
    if current is not None and getattr(current, _FALLBACK_MARK, False):
        return "fallback"
    if _real_torchvision_works():
        return "torchvision"
    _install_fallback()
    return "fallback"


def load_mtcnn_class() -> type:
    """facenet_pytorch.MTCNN, importable whatever the state of torchvision."""
    ensure_torchvision()
    from facenet_pytorch import MTCNN

    return MTCNN
