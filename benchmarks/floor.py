"""Benchmark: re-alignment from stored landmarks against the bare-loop floor, in one run.

    python benchmarks/floor.py [--limit N] [--repeats 3] [--formats png,jpg] [--out results.json]

The floor is the least work a re-alignment can do, written as a bare loop on one core: read the
JPEG bytes, cv2 JPEG decode, similarity fit + warp to 112x112, encode image (PNG or JPEG) and
mask (PNG), JSON of the sample, tar append (tarfile). The pipeline is the whole command,
`occsynth align SUBSET.tar --landmarks SUBSET.jsonl --no-cache --workers W` (W = 1 and 2),
timed from start to exit (interpreter start-up, source listing, finalize included). Both read
the same images: the LFW images with a stored detection in the landmark cache, repacked into a
plain tar beside their landmarks, so no detection runs.

Also measured: the floor on 2 processes (what 2 cores give on this machine at that moment), and
the in-process shard rate (occsynth.build.shard.run_shard on the same tasks, one after the
other in this process: the pipeline's own work without start-up, workers or finalize).

The machine is shared: every measurement is repeated, the kinds alternate within each repeat
(floor, align w1, align w2, floor x2, in-process), ratios are taken between medians, and the
load average is recorded before each measurement.

Targets (issue "Speed to the floor"): align --workers 1 >= 0.8x the floor per core, and
--workers 2 >= 1.8x --workers 1 (PNG; JPEG reported too).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from machine import FILL_STORE, LFW_TGZ, timed_run, write_result  # noqa: E402

DETECTOR = {"batch": 1, "max_pixels": 64000000, "min_face_size": 40}  # the build defaults


# ------------------------------------------------------------------ the input subset
def make_subset(work: Path, limit: int, landmarks_file: Path) -> tuple[Path, Path, list[dict]]:
    """A plain tar of the LFW images that have a stored detection, their landmarks.jsonl, and
    per image (member, offset, size, 5 landmarks of the face the build would choose)."""
    import numpy as np

    from occsynth.faces.detect import Face, select_face
    from occsynth.faces.landmarks import load_landmarks
    from occsynth.sources import open_source

    store = load_landmarks([landmarks_file])
    source = open_source(LFW_TGZ)
    chosen, records = [], []
    for item in source.items():
        data = source.read(item)
        record = store.get(hashlib.sha256(data).hexdigest())
        if record is None or record.get("detector") != DETECTOR:
            continue
        faces = [Face(np.array(f["box"]), f["score"], np.array(f["landmarks"])) for f in record["faces"]]
        w, h = record["image_size"]
        face = select_face(faces, (h, w, 3), "center")
        if face is None:
            continue
        chosen.append((item, data, face.landmarks.tolist()))
        records.append(record)
        if limit and len(chosen) == limit:
            break
    tar_path, rows = work / "subset.tar", []
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for item, data, landmarks in chosen:
            info = tarfile.TarInfo(f"lfw/{item.sample_id}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(tar_path) as tar:
        offsets = {m.name: (m.offset_data, m.size) for m in tar.getmembers()}
    for item, _, landmarks in chosen:
        offset, size = offsets[f"lfw/{item.sample_id}"]
        rows.append({"member": item.sample_id, "offset": offset, "size": size, "landmarks": landmarks})
    landmarks_path = work / "subset.landmarks.jsonl"
    landmarks_path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return tar_path, landmarks_path, rows


# ------------------------------------------------------------------ the floor
def floor_loop(args: tuple) -> float:
    """The bare loop over rows (one core); returns its wall seconds."""
    tar_path, rows, fmt, out_dir = args
    import cv2
    import numpy as np

    from occsynth.faces.geometry import similarity
    from occsynth.faces.templates import get_template
    from occsynth.io.images import PNG_PARAMS

    cv2.setNumThreads(1)
    template = get_template("arcface-112x112")
    dst = template.points.tolist()
    ext, params = (".png", PNG_PARAMS) if fmt == "png" else (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])
    mask = np.zeros((112, 112), np.uint8)
    t0 = time.perf_counter()
    fd = os.open(tar_path, os.O_RDONLY)
    tar = None
    try:
        for i, row in enumerate(rows):
            if i % 1000 == 0:
                if tar is not None:
                    tar.close()
                tar = tarfile.open(Path(out_dir) / f"{i // 1000:05d}.tar", "w", format=tarfile.USTAR_FORMAT)
            data = os.pread(fd, row["size"], row["offset"])
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            m = np.array(similarity(row["landmarks"], dst)).reshape(2, 3)
            crop = cv2.warpAffine(bgr, m, (112, 112), flags=cv2.INTER_LINEAR, borderValue=0)
            image = cv2.imencode(ext, crop, params)[1].tobytes()
            mask_png = cv2.imencode(".png", mask, PNG_PARAMS)[1].tobytes()
            meta = json.dumps(
                {"key": f"{i:06d}", "source": row["member"], "transform": m.tolist(), "landmarks": row["landmarks"]},
                sort_keys=True,
            ).encode()
            for name, blob in ((f"{i:06d}{ext}", image), (f"{i:06d}.mask.png", mask_png), (f"{i:06d}.json", meta)):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    finally:
        if tar is not None:
            tar.close()
        os.close(fd)
    return time.perf_counter() - t0


def run_floor(tar_path: Path, rows: list[dict], fmt: str, work: Path, processes: int) -> float:
    """Wall seconds of the floor over all rows on `processes` processes (rows split evenly)."""
    out = work / f"floor-{fmt}-{processes}"
    shutil.rmtree(out, ignore_errors=True)
    parts = [(str(tar_path), rows[p::processes], fmt, str(out / str(p))) for p in range(processes)]
    for part in parts:
        Path(part[3]).mkdir(parents=True)
    if processes == 1:
        seconds = floor_loop(parts[0])
    else:
        with get_context("spawn").Pool(processes) as pool:
            pool.map(_noop, range(processes))  # workers started and imported before the clock
            t0 = time.perf_counter()
            pool.map(floor_loop, parts, chunksize=1)
            seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def _noop(_):
    import cv2  # noqa: F401
    import numpy  # noqa: F401

    import occsynth.io.images  # noqa: F401


# ------------------------------------------------------------------ the pipeline
def run_align(tar_path: Path, landmarks: Path, fmt: str, workers: int, work: Path) -> tuple[float, float, dict]:
    """(wall s, CPU s of the command and its workers, manifest) of `occsynth align`."""
    out = work / f"align-{fmt}-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "occsynth.cli",
        "align",
        str(tar_path),
        "--out",
        str(out),
        "--landmarks",
        str(landmarks),
        "--no-cache",
        "--workers",
        str(workers),
        "--format",
        fmt,
        "--quiet",
    ]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    _, seconds, cpu = timed_run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    manifest = json.loads((out / "manifest.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return seconds, cpu, manifest


def run_in_process(tar_path: Path, landmarks: Path, fmt: str, work: Path) -> float:
    """Wall seconds of run_shard over the align build's tasks, one after the other, here."""
    import dataclasses

    from occsynth.build import BuildConfig, ShardTask, plan_align
    from occsynth.build.executor import SerialExecutor
    from occsynth.build.shard import run_shard
    from occsynth.sources import open_source

    source = open_source(tar_path)
    plan = plan_align(source.items())
    config = BuildConfig(image_format=fmt, landmark_files=(str(landmarks),))
    out = work / f"inprocess-{fmt}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    tasks = [  # as `occsynth align` makes them: nothing reads the metadata back (cli.run_job)
        ShardTask(i, str(out), source, plan[k : k + 1000], dataclasses.replace(config), parse_index=False)
        for i, k in enumerate(range(0, len(plan), 1000))
    ]
    # warm: the landmark store and the template are loaded once per process, as in a worker
    list(SerialExecutor().map_unordered(run_shard, [dataclasses.replace(tasks[0], samples=tasks[0].samples[:20])]))
    t0 = time.perf_counter()
    list(SerialExecutor().map_unordered(run_shard, tasks))
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return seconds


# ------------------------------------------------------------------ main
def _paired(slow: list[dict], fast: list[dict]) -> float:
    """The median over repeats of slow seconds / fast seconds of the same repeat."""
    return round(statistics.median(a["seconds"] / b["seconds"] for a, b in zip(slow, fast)), 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="only the first N images with landmarks (0 = all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--formats", default="png,jpg")
    parser.add_argument("--landmarks", default=str(Path.home() / ".cache" / "occsynth" / "landmarks.jsonl"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not LFW_TGZ.exists() or not Path(args.landmarks).exists():
        print(f"SKIP: needs {LFW_TGZ} and stored detections in {args.landmarks}")
        return 0
    formats = [f for f in args.formats.split(",") if f]
    work = Path(tempfile.mkdtemp(prefix="occsynth-floor-"))
    kinds = ["floor", "align_w1", "align_w2", "floor_x2", "in_process"]
    runs: dict[str, dict[str, list]] = {f: {k: [] for k in kinds} for f in formats}
    identical = True
    try:
        tar_path, landmarks, rows = make_subset(work, args.limit, Path(args.landmarks))
        n = len(rows)
        if n == 0:
            print(f"SKIP: no LFW image has a stored detection in {args.landmarks}; fill it first:")
            print("  " + FILL_STORE.format(tgz=LFW_TGZ))
            return 0
        print(f"{n} LFW images with stored landmarks; {args.repeats} repeats of {kinds} x {formats}", flush=True)
        for rep in range(args.repeats):
            for fmt in formats:
                for kind in kinds:
                    load = os.getloadavg()[0]
                    cpu = None
                    if kind == "floor":
                        seconds = run_floor(tar_path, rows, fmt, work, 1)
                    elif kind == "floor_x2":
                        seconds = run_floor(tar_path, rows, fmt, work, 2)
                    elif kind == "in_process":
                        seconds = run_in_process(tar_path, landmarks, fmt, work)
                    else:
                        seconds, cpu, manifest = run_align(tar_path, landmarks, fmt, int(kind[-1]), work)
                        assert manifest["totals"]["samples"] == n, manifest["totals"]
                        shards = [s["sha256"] for s in manifest["shards"]]
                        runs[fmt].setdefault(f"{kind}_shards", shards)
                        identical &= runs[fmt][f"{kind}_shards"] == shards
                    runs[fmt][kind].append(
                        {
                            "seconds": round(seconds, 3),
                            "images_per_s": round(n / seconds, 1),
                            "load_1m_before": round(load, 2),
                            **({"cpu_s": round(cpu, 2)} if cpu is not None else {}),
                        }
                    )
                    print(
                        f"[{rep}] {fmt} {kind}: {seconds:.2f} s = {n / seconds:.0f} img/s (load {load:.2f})", flush=True
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = {}
    for fmt in formats:
        med = {k: statistics.median(r["images_per_s"] for r in runs[fmt][k]) for k in kinds}
        w1, w2 = runs[fmt].pop("align_w1_shards"), runs[fmt].pop("align_w2_shards")
        identical &= w1 == w2
        summary[fmt] = {
            "median_images_per_s": med,
            "align_w1_over_floor": round(med["align_w1"] / med["floor"], 3),
            "align_w2_over_w1": round(med["align_w2"] / med["align_w1"], 3),
            "floor_x2_over_floor": round(med["floor_x2"] / med["floor"], 3),
            "align_w1_over_in_process": round(med["align_w1"] / med["in_process"], 3),
            "in_process_over_floor": round(med["in_process"] / med["floor"], 3),
            # the same ratios within each repeat (measured minutes apart, not across the run:
            # this machine's speed drifts by more than the effects measured), their median
            "paired_median": {
                "align_w1_over_floor": _paired(runs[fmt]["floor"], runs[fmt]["align_w1"]),
                "align_w2_over_w1": _paired(runs[fmt]["align_w1"], runs[fmt]["align_w2"]),
            },
        }
    loads = [r["load_1m_before"] for f in formats for k in kinds for r in runs[f][k]]
    result = {
        "images": n,
        "what": "occsynth align from stored landmarks vs the bare loop (one core) in the same run",
        "targets": {"align_w1_over_floor": 0.8, "align_w2_over_w1": 1.8},
        "load_1m": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
        "w1_and_w2_shards_identical": identical,
        "summary": summary,
        "runs": runs,
    }
    path = write_result("floor", result, args.out)
    print(json.dumps({"summary": summary, "load_1m": result["load_1m"], "identical": identical}, indent=2))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
