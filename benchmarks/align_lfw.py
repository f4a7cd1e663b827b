"""Benchmark: detection + alignment of the real LFW, and the rebuild from stored landmarks.

    python benchmarks/align_lfw.py [--limit N] [--workers 2] [--out results.json]

Targets (issue "Foundation"): all 13,233 LFW images aligned in under 6 minutes on 2 CPU cores,
and a rebuild from stored landmarks at >= 1,500 images/s. Skips cleanly without ../shared/data.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import LFW_TGZ, write_result  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--out", default=None)
    parser.add_argument("--keep", default=None, help="keep the detected build's landmarks.jsonl here")
    args = parser.parse_args()

    tgz = LFW_TGZ
    if not tgz.exists():
        print(f"SKIP: {tgz} not found (real LFW needed for this benchmark)")
        return 0

    from occsynth.build import BuildConfig, build, plan_align
    from occsynth.sources import open_source

    work = Path(tempfile.mkdtemp(prefix="occsynth-bench-"))
    try:
        t0 = time.perf_counter()
        source = open_source(tgz, cache_dir=work / "cache")
        items = source.items()[: args.limit or None]
        open_s = time.perf_counter() - t0
        plan = plan_align(items)
        config = BuildConfig(name="bench-align", shard_size=args.shard_size)

        t0 = time.perf_counter()
        detected = build(config, plan, source, work / "detected", workers=args.workers, command="benchmark")
        detect_s = time.perf_counter() - t0

        stored = BuildConfig(
            name="bench-align", shard_size=args.shard_size, landmark_files=(str(work / "detected" / "landmarks.jsonl"),)
        )
        t0 = time.perf_counter()
        rebuilt = build(stored, plan, source, work / "stored", workers=args.workers, command="benchmark")
        stored_s = time.perf_counter() - t0
        identical = all(a["sha256"] == b["sha256"] for a, b in zip(detected["shards"], rebuilt["shards"]))
        if args.keep:
            shutil.copy(work / "detected" / "landmarks.jsonl", args.keep)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = len(items)
    result = {
        "images": n,
        "workers": args.workers,
        "source_open_s": round(open_s, 2),
        "detect_align": {
            "seconds": round(detect_s, 1),
            "images_per_s": round(n / detect_s, 1),
            "samples": detected["totals"]["samples"],
            "failures": detected["totals"]["failures"],
            "failure_reasons": detected["stats"]["failure_reasons"],
            "target": "13,233 images in < 360 s on 2 cores",
            "projected_full_lfw_s": round(13233 * detect_s / n, 1),
        },
        "from_stored_landmarks": {
            "seconds": round(stored_s, 2),
            "images_per_s": round(n / stored_s, 1),
            "target_images_per_s": 1500,
            "byte_identical_to_detected_build": identical,
        },
    }
    path = write_result("align_lfw", result, args.out)
    print(
        f"detect+align: {n} images in {detect_s:.1f} s = {n / detect_s:.1f} img/s; "
        f"from stored landmarks: {stored_s:.2f} s = {n / stored_s:.0f} img/s; identical={identical}\n-> {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
