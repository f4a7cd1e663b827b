"""Machine facts recorded with every benchmark result, so figures are never quoted without
the machine that produced them."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(os.environ.get("OCCSYNTH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
LFW_TGZ = SHARED_DATA / "lfw" / "lfw-deepfunneled.tgz"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info() -> dict:
    import cv2
    import numpy as np
    import torch

    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": _git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        info["load_average_1m"] = os.getloadavg()[0]  # a busy machine explains slow figures
    except OSError:
        pass
    return info


def write_result(
    name: str, result: dict, out: str | Path | None = None, *, slug: str | None = None, markdown: str | None = None
) -> Path:
    """RESULTS/<name>-<slug>.json (slug: the host name by default) with the machine facts, and
    beside it the same stem as .md when a markdown table is given."""
    path = Path(out) if out else RESULTS / f"{name}-{slug or platform.node() or 'host'}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, "machine": machine_info(), **result}, indent=2) + "\n")
    if markdown is not None:
        path.with_suffix(".md").write_text(markdown)
    return path
