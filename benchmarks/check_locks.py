"""Rebuild every LFW benchmark named in benchmarks/locks/ and compare it with its lock.

    python benchmarks/check_locks.py [--only lfw-occ-0.43,lfw-block] [--workers 2] [--keep DIR] [--write]

Each lock records its build and options (a lock without "harmonize", written before
harmonisation, is rebuilt with --no-harmonize; one without "redetect", written before the padded
re-detection, with --redetect none); the build is rerun with `--check LOCK` into a
temporary folder. Prints one line per lock and exits 1 if any differs, with a note when the
installed OpenCV is not the 5.0 the locks were made with (other OpenCV releases may write other
bytes).

Detections come from the file the locks were made from, lfw-detections.jsonl.gz beside them
(`--landmarks FILE --no-cache`), not from this machine's MTCNN: its floats differ in the last bits
from one CPU to another, and 19 of 224 LFW faces moved a landmark by the stored rounding (0.001
px) between two machines, which moved their crops and so every shard. The locks pin that file's
records (each dataset's landmarks.jsonl), so a build from other detections says so first.

--write rebuilds each lock's build from the same options and detections and writes the lock
(after a change that alters the bytes on purpose: say why in the commit).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import LFW_TGZ, LOCK_DETECTIONS, SHARED_DATA  # noqa: E402

# options a lock records that are not build flags, or are spelled differently
_SKIP = {"lfw", "pairs", "device", "landmark_files", "no_cache"}
_FLAGS = {"image_format": "--format"}


def build_args(lock: dict) -> list[str]:
    args = ["build", lock["build"]]
    options = dict(lock["options"])
    # a lock without `harmonize` was written before harmonisation existed: --no-harmonize
    # rebuilds what was built then (occluders/harmonize.py, catalog.VERSIONS)
    harmonize = options.pop("harmonize", False)
    args.append("--harmonize" if harmonize else "--no-harmonize")
    # a lock without `redetect` was written before the padded re-detection of images where no
    # face was found (faces/detect.py detect_padded): --redetect none rebuilds what was built then
    options.setdefault("redetect", "none")
    for key, value in sorted(options.items()):
        if key in _SKIP or value is None or value == "" or value is False:
            continue
        flag = _FLAGS.get(key, "--" + key.replace("_", "-"))
        args += [flag] if value is True else [flag, str(value)]
    # the detections the locks were made from, and only those (see the module's docstring)
    return args + ["--landmarks", str(LOCK_DETECTIONS), "--no-cache"]


def check_command(lock: dict, lock_path: Path, out: Path, workers: int, write: bool = False) -> list[str]:
    """The `occsynth build ... --check LOCK` command that rebuilds a lock's build into `out`
    (`write`: `--write-lock LOCK`, which writes the lock instead)."""
    return [
        sys.executable,
        "-m",
        "occsynth.cli",
        *build_args(lock),
        "--lfw",
        str(LFW_TGZ),
        "--pairs",
        str(SHARED_DATA / "lfw" / "pairs.txt"),
        "--workers",
        str(workers),
        "--quiet",
        "--out",
        str(out),
        "--write-lock" if write else "--check",
        str(lock_path),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default="")
    parser.add_argument("--keep", default=None, help="build into this folder and keep it")
    parser.add_argument("--write", action="store_true", help="write each lock from its rebuild instead of checking")
    args = parser.parse_args()
    if not LFW_TGZ.exists():
        print(f"SKIP: {LFW_TGZ} not found (real LFW needed)")
        return 0
    if not LOCK_DETECTIONS.exists():
        print(f"Error: {LOCK_DETECTIONS} not found: the detections the locks were made from", file=sys.stderr)
        return 1
    only = {s for s in args.only.split(",") if s}
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="occsynth-locks-"))
    failed = 0
    try:
        for path in sorted((HERE / "locks").glob("*.lock.json")):
            name = path.name[: -len(".lock.json")]
            if only and name not in only:
                continue
            lock = json.loads(path.read_text())
            cmd = check_command(lock, path, work / name, args.workers, args.write)
            t0 = time.perf_counter()
            run = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            ok = run.returncode == 0
            failed += not ok
            lines = (run.stderr or run.stdout).strip().splitlines()
            # the first lines say what differs first (the detections, when they do); the last, a crash's cause
            detail = "" if ok else " | " + " ".join(lines[:2] + lines[2:][-1:])[:600]
            verdict = ("written" if args.write else "identical") if ok else ("FAILED" if args.write else "DIFFERS")
            print(f"{name}: {verdict} ({seconds:.1f} s){detail}", flush=True)
            if not args.keep:
                shutil.rmtree(work / name, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    # the locks were made with OpenCV 5.0 (pyproject.toml holds it below 5.1)
    if failed and not cv2.__version__.startswith("5.0."):
        print(f"note: OpenCV {cv2.__version__} is installed; the locks were made with OpenCV 5.0")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
