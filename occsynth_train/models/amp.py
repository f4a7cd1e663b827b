"""Mixed-precision helpers."""

from __future__ import annotations

from contextlib import nullcontext

import torch


def autocast_off(t: torch.Tensor):
    """A region computed in fp32 whatever the surrounding autocast says (no-op on devices
    without autocast, such as "meta", used for shape checks)."""
    if t.device.type in ("cuda", "cpu", "xpu", "mps"):
        return torch.autocast(device_type=t.device.type, enabled=False)
    return nullcontext()
