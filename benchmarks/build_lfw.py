"""Benchmark + locks: end-to-end LFW benchmark builds on this machine.

    python benchmarks/build_lfw.py [--only lfw-occ,lfw-block] [--workers 2]

1. lfw-occ (0.43) from raw LFW with an empty detection cache (detection included),
2. the same build again from the stored landmarks, checked against the lock of step 1,
3. every other LFW build from stored landmarks, each writing benchmarks/locks/<name>.lock.json.
Wall time and images/s per build go to benchmarks/results/build_lfw-<host>.json.
Target (issue "Benchmark builders"): any LFW benchmark rebuilt from stored landmarks in < 60 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import LFW_TGZ, SHARED_DATA, write_result  # noqa: E402

BUILDS = [  # (lock name, build, extra args)
    ("lfw-occ-0.52", "lfw-occ", ["--ratio", "0.52"]),
    ("lfw-masked", "lfw-masked", []),
    ("lfw-block", "lfw-block", []),
    ("lfw-poly", "lfw-poly", []),
    *[(f"lfw-occ-{c}", f"lfw-occ-{c}", []) for c in ("sunglasses", "eye-mask", "scarf", "surgical-mask", "cup")],
]


def occsynth(args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "occsynth.cli", *args], check=True, env=env)
    return time.perf_counter() - t0


def samples(out: Path) -> int:
    return sum(json.loads(m.read_text())["totals"]["samples"] for m in out.rglob("manifest.json"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated lock names from the list (default: all)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    tgz = LFW_TGZ
    if not tgz.exists():
        print(f"SKIP: {tgz} not found (real LFW needed)")
        return 0
    work = Path(tempfile.mkdtemp(prefix="occsynth-build-bench-"))
    env = dict(os.environ, OCCSYNTH_CACHE=str(work / "cache"))
    common = [
        "--lfw",
        str(tgz),
        "--pairs",
        str(SHARED_DATA / "lfw" / "pairs.txt"),
        "--workers",
        str(args.workers),
        "--quiet",
    ]
    locks = HERE / "locks"
    results = {}
    try:
        lock = locks / "lfw-occ-0.43.lock.json"
        seconds = occsynth(
            ["build", "lfw-occ", "--ratio", "0.43", "--out", str(work / "raw"), "--write-lock", str(lock), *common], env
        )
        n = samples(work / "raw")
        results["lfw-occ-0.43 from raw LFW (detection included)"] = {
            "seconds": round(seconds, 1),
            "samples": n,
            "images_per_s": round(n / seconds, 1),
        }
        facts = json.loads((work / "raw" / "build_facts.json").read_text())["achieved"]
        results["lfw-occ-0.43 achieved"] = facts
        seconds = occsynth(
            ["build", "lfw-occ", "--ratio", "0.43", "--out", str(work / "stored"), "--check", str(lock), *common], env
        )
        results["lfw-occ-0.43 from stored landmarks (checked against the lock)"] = {
            "seconds": round(seconds, 1),
            "samples": n,
            "images_per_s": round(n / seconds, 1),
            "identical_to_lock": True,
        }
        only = {s for s in args.only.split(",") if s}
        for name, build, extra in BUILDS:
            if only and name not in only:
                continue
            out = work / name
            seconds = occsynth(
                ["build", build, *extra, "--out", str(out), "--write-lock", str(locks / f"{name}.lock.json"), *common],
                env,
            )
            n = samples(out)
            achieved = {}
            for facts_file in sorted(out.rglob("build_facts.json")):
                achieved[str(facts_file.parent.relative_to(out))] = json.loads(facts_file.read_text())["achieved"]
            results[f"{name} from stored landmarks"] = {
                "seconds": round(seconds, 1),
                "samples": n,
                "images_per_s": round(n / seconds, 1),
                "achieved": achieved,
            }
            print(name, results[f"{name} from stored landmarks"]["seconds"], "s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_result(
        "build_lfw",
        {"workers": args.workers, "target": "any LFW benchmark from stored landmarks < 60 s", "results": results},
        args.out,
    )
    print(json.dumps(results, indent=2), f"\n-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
