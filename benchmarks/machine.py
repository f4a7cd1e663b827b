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
# The MTCNN detections of every LFW image the locks were made from (see check_locks.py): the
# builds the benchmarks time and check read them, not this machine's detection cache.
LOCK_DETECTIONS = Path(__file__).resolve().parent / "locks" / "lfw-detections.jsonl.gz"


FILL_STORE = "occsynth align {tgz} --out /tmp/lfw-detected --workers 2  (detects LFW once, ~2-5 min on 2 cores)"


def lfw_without_detection(landmarks_file: str | Path) -> tuple[int, int]:
    """(LFW images with no stored detection in `landmarks_file`, LFW images): the benchmarks that
    time builds "from stored landmarks" would otherwise time MTCNN for the rest."""
    import hashlib

    from occsynth.faces.landmarks import StoredLandmarks
    from occsynth.sources import open_source

    store = StoredLandmarks([landmarks_file]) if Path(landmarks_file).exists() else None
    source = open_source(str(LFW_TGZ))
    items = source.items()
    if store is None:
        return len(items), len(items)
    missing = sum(store.get(hashlib.sha256(source.read(item)).hexdigest()) is None for item in items)
    return missing, len(items)


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


# ------------------------------------------------------------------ timing a command
def _children() -> set[int]:
    """The processes whose parent is this one (Linux /proc)."""
    me, out = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                out.add(int(entry))
    return out


def timed_run(cmd: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, float, float]:
    """(the finished command, its wall seconds, the CPU seconds of it and of every process it
    started). occsynth's workers fork from multiprocessing's fork server on Linux: they are not
    the command's children, and the server outlives the command by a moment, so RUSAGE_CHILDREN
    alone misses their CPU. This process becomes a child subreaper (prctl), so what the command
    leaves running is handed to it when the command exits, and reaps it before reading the CPU."""
    import ctypes
    import resource

    linux = sys.platform.startswith("linux")
    if linux:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    known = _children() if linux else set()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    run = subprocess.run(cmd, **kwargs)
    seconds = time.perf_counter() - t0
    quiet_since, deadline = time.monotonic(), time.monotonic() + 30
    while linux and time.monotonic() < deadline:
        left = _children() - known
        if left:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 0.2:
            break
        for pid in left:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.01)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return run, seconds, cpu
