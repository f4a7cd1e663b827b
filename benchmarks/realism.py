"""Benchmark: how real the occluders look on real LFW faces (issue "Occluders that look like the
real thing"). Measures, with and without harmonisation, on LFW deep-funneled faces aligned to
ArcFace 112x112 with the project's MTCNN detections:

* sharpness: the occluder-to-face sharpness ratio (occluders/harmonize.sharpness_ratio, the
  re-blur edge measure) and, beside it, the ratio of the variances of the Laplacian, per family;
* coverage of face masks: nose tip, chin (face frame (0, 1.55), as MaskTheFace's chin point)
  and eyes, over mask3d and surgical_mask samples;
* pose: on the faces with the largest estimated yaw, how far the lens centres of sunglasses
  (the two largest blobs of the mask after an opening) lie from the eye landmarks;
* framing: the centre-crop fallback on tight crops of detected faces (the "chip" prior) and,
  with the LFW images, the whole chain a build runs on such crops (build/stages.py: detection,
  the padded re-detection where it finds no face, then the prior).

    python benchmarks/realism.py fixture --landmarks ~/.cache/occsynth/landmarks.jsonl
    python benchmarks/realism.py measure [--samples 200] [--landmarks FILE]
    python benchmarks/realism.py framing --landmarks ~/.cache/occsynth/landmarks.jsonl [--chain-faces N]

`fixture` writes tests/data/lfw_faces.json (detections the tests use, read from a build's
landmarks.jsonl, e.g. the detection cache of `occsynth build lfw-occ`); `framing` measures the
chip prior of faces/align.py on the even half of the single-face detections and its error on
the odd half. `measure` writes benchmarks/results/realism.json (with the framing measure too
when the detections are there), `framing` realism-framing-<host>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from lfw_fixture import load_lfw_faces  # noqa: E402  (tests/lfw_fixture.py: the fixture faces, read and aligned)
from machine import LFW_TGZ, write_result  # noqa: E402

from occsynth.build.config import BuildConfig  # noqa: E402
from occsynth.build.stages import ShardImages, align_images, detector, find_faces  # noqa: E402
from occsynth.faces.align import (  # noqa: E402
    CHIP_CROP_FRACTION,
    CHIP_CROP_OFFSET,
    LFW_CROP_FRACTION,
    LFW_CROP_OFFSET,
    center_crop_landmarks,
    estimate_similarity,
    warp,
)
from occsynth.faces.detect import select_face  # noqa: E402
from occsynth.faces.geometry import face_point, similarity_matrix  # noqa: E402
from occsynth.faces.pose import estimate_pose  # noqa: E402
from occsynth.faces.templates import get_template  # noqa: E402
from occsynth.io.archive import iter_files  # noqa: E402
from occsynth.occluders import create_occluder  # noqa: E402
from occsynth.occluders.harmonize import laplacian_ratio, sharpness_ratio  # noqa: E402
from occsynth.seeding import derive_seed, make_rng  # noqa: E402

FIXTURE = ROOT / "tests" / "data" / "lfw_faces.json"
DETECTIONS = Path.home() / ".cache" / "occsynth" / "landmarks.jsonl"  # the machine's detection cache
RESULT = HERE / "results" / "realism.json"
SAMPLE_FACES = 200
YAW_FACES = 24
CHIP_MARGIN = 0.1  # a tight chip: the detector's box grown by 10% of its side on each side, squared
CHIN = (0.0, 1.55)  # face frame: MaskTheFace's chin point (occluders/families/importers.py)
FAMILIES = (
    "sunglasses",
    "eyeglasses",
    "eye_mask",
    "hat",
    "scarf",
    "surgical_mask",
    "cup",
    "hand",
    "phone",
    "book",
    "microphone",
    "mask3d",
)


# ----------------------------------------------------------------------------- detections


def single_faces(landmarks_file: Path) -> list[dict]:
    """One row per image with exactly one detected face, sorted by source."""
    rows = []
    with open(landmarks_file) as handle:
        for line in handle:
            record = json.loads(line)
            if len(record["faces"]) != 1:
                continue
            face = record["faces"][0]
            rows.append(
                {
                    "source": record["source"],
                    "box": [round(float(v), 2) for v in face["box"]],
                    "landmarks": [[round(float(v), 3) for v in p] for p in face["landmarks"]],
                }
            )
    unique = {r["source"]: r for r in rows}
    return [unique[k] for k in sorted(unique)]


def chip(row: dict, margin: float = CHIP_MARGIN, size: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """(2x3 source -> chip matrix, landmarks in the chip) of a square crop of the detector's box
    grown by `margin` of its side on each side, resized to size x size."""
    x0, y0, x1, y1 = row["box"]
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    k = size / side
    m = np.array([[k, 0.0, -k * ((x0 + x1) / 2 - side / 2)], [0.0, k, -k * ((y0 + y1) / 2 - side / 2)]])
    lm = np.asarray(row["landmarks"], dtype=np.float64)
    return m, lm @ m[:, :2].T + m[:, 2]


def chip_eye_error(lm_chip: np.ndarray, size: int, framing: str = "chip", **prior) -> float:
    """Mean distance (px, 112x112) of the two eyes aligned by the fallback's guess from where
    the detected alignment puts them (the template's eye points)."""
    template = get_template("arcface")
    return eye_error(center_crop_landmarks(size, size, template, framing=framing, **prior), lm_chip)


def eye_error(used: np.ndarray, lm_chip: np.ndarray) -> float:
    """Mean distance (px, 112x112) of the two eyes aligned from the landmarks `used` (detected on
    the chip, or guessed) from where the full image's detection puts them (the template's)."""
    template = get_template("arcface")
    m = estimate_similarity(np.asarray(used, dtype=np.float64), template.points)
    eyes = lm_chip[:2] @ m[:, :2].T + m[:, 2]
    return float(np.linalg.norm(eyes - template.points[:2], axis=1).mean())


def read_lfw(tgz: Path, sources: set[str]) -> dict[str, np.ndarray]:
    """source ("Name/Name_0001.jpg") -> RGB image, for the wanted sources of the LFW archive."""
    images = {}
    for path, member, archive in iter_files(tgz):
        source = str(path).partition("/")[2]
        if source in sources:
            data = np.frombuffer(archive.extractfile(member).read(), np.uint8)
            images[source] = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return images


# The chips the chain is measured on: (margin, size) as in `chip`. "chip": the 160x160 face chips
# the chip prior is measured on; "cut": a crop tighter than the detector's box (10% of its side
# cut off each side, 112x112), whose frame cuts the face: the framing where MTCNN misses faces.
CHAIN_FACES = 500  # faces of the odd half drawn for the chain (~4 MTCNN runs each: ~5 min on a busy 2-core machine)
CHAIN_CHIPS = {"chip": (CHIP_MARGIN, 160), "cut": (-0.1, 112)}


def fallback_chain(rows: list[dict], images: dict, margin: float, size: int, batch: int = 64) -> dict:
    """The build's own chain (stages.find_faces + align_images, on_no_face center-crop) on the
    chips of `rows`: per chip the step that aligned it and its eye error; and the padded
    re-detection alone on every chip."""
    config = BuildConfig(on_no_face="center-crop")
    template = get_template(config.template)
    steps, errors, sources, padded_errors, padded_missed = [], [], [], [], []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        state = ShardImages()
        truth = {}
        for row in chunk:
            m, lm = chip(row, margin=margin, size=size)
            state.images[row["source"]] = warp(images[row["source"]], m, (size, size))
            state.digests[row["source"]] = row["source"]
            truth[row["source"]] = lm
        find_faces(state, config)
        align_images(state, config, template)
        for sid, (_, _, info) in state.aligned.items():
            steps.append(info["align_mode"])
            sources.append(sid)
            errors.append(eye_error(info["source_landmarks"], truth[sid]))
        found = detector(config).detect_padded([state.images[r["source"]] for r in chunk])
        for row, faces in zip(chunk, found):
            face = select_face(faces, (size, size), config.multi_face)
            if face is None:
                padded_missed.append(row["source"])
            else:
                padded_errors.append(eye_error(face.landmarks, truth[row["source"]]))
    steps_a, errors_a = np.array(steps), np.array(errors)
    out = {
        "chain_faces": len(steps),
        "chain_steps": {k: int(np.sum(steps_a == k)) for k in ("detected", "detected-padded", "center-crop")},
        "eye_error_px_chain": _summary(errors_a),
        "within_6px_chain": round(float(np.mean(errors_a <= 6.0)), 4),
    }
    for mode in ("detected-padded", "center-crop"):
        picked = errors_a[steps_a == mode]
        out[f"eye_error_px_{mode.replace('-', '_')}"] = _summary(picked)
        out[f"within_6px_{mode.replace('-', '_')}"] = round(float(np.mean(picked <= 6.0)), 4) if picked.size else None
    # the chips the plain detection missed, with the step that aligned them (first 50)
    out["not_detected"] = [[s, k] for s, k in sorted(zip(sources, steps)) if k != "detected"][:50]
    padded = np.array(padded_errors)
    out["padded_alone"] = {
        "missed": len(padded_missed),
        "eye_error_px": _summary(padded),
        "within_6px": round(float(np.mean(padded <= 6.0)), 4) if padded.size else None,
    }
    return out


def fixture(args) -> int:
    rows = single_faces(Path(args.landmarks))
    odd = rows[1::2]  # the even half calibrates the chip prior (`framing`)
    rng = np.random.default_rng(0)
    sample = [odd[i] for i in sorted(rng.choice(len(odd), SAMPLE_FACES, replace=False))]
    for r in rows:
        r["yaw"] = round(float(estimate_pose(np.asarray(r["landmarks"]))["yaw"]), 2)
    turned = sorted(rows, key=lambda r: -abs(r["yaw"]))[:YAW_FACES]
    faces = [dict(r, set="sample") for r in sample] + [dict(r, set="yaw") for r in turned]
    doc = {
        "note": (
            "MTCNN detections (occsynth's detector, batch 1, min face 40) of LFW deep-funneled images with "
            f"one face: {SAMPLE_FACES} drawn from the odd half of them by source name (set 'sample'; the even half "
            f"calibrates faces/align.py's chip prior) and the {YAW_FACES} with the largest estimated |yaw| "
            "(set 'yaw'). Written by benchmarks/realism.py fixture."
        ),
        "faces": faces,
    }
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(doc, indent=0) + "\n")
    print(f"wrote {len(faces)} faces to {FIXTURE}")
    return 0


def framing(args) -> dict:
    rows = single_faces(Path(args.landmarks))
    template = get_template("arcface")
    fractions, offsets = [], []
    for row in rows[0::2]:
        _, lm = chip(row, size=1)
        m = similarity_matrix(template.points, lm)  # template pixels -> chip (unit side)
        centre = m[:, :2] @ np.array([template.width / 2, template.height / 2]) + m[:, 2]
        fractions.append(float(np.hypot(m[0, 0], m[1, 0])) * max(template.width, template.height))
        offsets.append(centre - 0.5)
    fraction, offset = float(np.median(fractions)), np.median(offsets, axis=0)
    test = rows[1::2]
    new = np.array([chip_eye_error(chip(r)[1], 160) for r in test])
    old = np.array([chip_eye_error(chip(r)[1], 160, framing="scene") for r in test])
    out = {
        "calibration_faces": len(rows[0::2]),
        "measured_fraction": round(fraction, 4),
        "measured_offset": [round(float(v), 4) for v in offset],
        "shipped": {"fraction": CHIP_CROP_FRACTION, "offset": list(CHIP_CROP_OFFSET)},
        "test_faces": len(test),
        "eye_error_px_chip_prior": _summary(new),
        "eye_error_px_lfw_prior": _summary(old),
        "within_6px_chip_prior": round(float(np.mean(new <= 6.0)), 4),
        "lfw_scene_prior": {"fraction": LFW_CROP_FRACTION, "offset": list(LFW_CROP_OFFSET)},
    }
    lfw = Path(args.lfw)
    if args.chain_faces and lfw.exists():
        rng = np.random.default_rng(0)
        picked = (
            test
            if args.chain_faces >= len(test)
            else [test[i] for i in sorted(rng.choice(len(test), args.chain_faces, replace=False))]
        )
        images = read_lfw(lfw, {r["source"] for r in picked})
        out["chain"] = {
            f"{name}_{size}px_margin_{margin}": fallback_chain(picked, images, margin, size)
            for name, (margin, size) in CHAIN_CHIPS.items()
        }
    elif args.chain_faces:
        out["chain"] = f"skipped: {lfw} not found (real LFW needed)"
    print(json.dumps(out, indent=2))
    return out


def _share(values, lo: float = 0.7, hi: float = 1.3) -> float | None:
    v = np.asarray(values, dtype=np.float64)
    return round(float(np.mean((v >= lo) & (v <= hi))), 4) if v.size else None


def _summary(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:  # nothing measurable (e.g. the Laplacian inside thin eyeglass frames)
        return {"n": 0}
    return {
        "n": int(v.size),
        "median": round(float(np.median(v)), 3),
        "p10": round(float(np.percentile(v, 10)), 3),
        "p90": round(float(np.percentile(v, 90)), 3),
    }


# ----------------------------------------------------------------------------- faces


def lens_centres(mask: np.ndarray, eyes: np.ndarray) -> np.ndarray:
    """One lens centre per eye: the centroid of the mask's pixels nearer that eye than the other,
    after a 3x3 opening (which drops the thin bridge and temples); foreshortened lenses that
    touch are still told apart (tests/test_objects.py measures the same)."""
    opened = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    ys, xs = np.nonzero(opened)
    points = np.stack([xs, ys], axis=1).astype(np.float64)
    side = np.linalg.norm(points[:, None] - np.asarray(eyes)[None], axis=2).argmin(axis=1)
    return np.array([points[side == k].mean(axis=0) for k in (0, 1)])


def measure(args) -> dict:
    # (aligned crop, its landmarks, fixture row): the tests' own reader of the fixture faces
    faces = [(f["crop"], f["aligned"], f) for f in load_lfw_faces(Path(args.lfw))]
    sample = [f for f in faces if f[2]["set"] == "sample"][: args.samples]
    turned = [f for f in faces if f[2]["set"] == "yaw"]
    results: dict = {"faces": len(sample), "sharpness": {}, "coverage": {}, "pose": {}}
    for name in FAMILIES:
        row = {}
        for harmonize in (False, True):
            occ = create_occluder(name, harmonize=harmonize, version=2)
            ratios, laps = [], []
            for i, (crop, lm, _) in enumerate(sample):
                out, mask, _ = occ(crop, np.zeros(crop.shape[:2], np.uint8), lm, make_rng(derive_seed(0, name, i)))
                r, lap = sharpness_ratio(out, mask > 0, lm), laplacian_ratio(out, mask > 0, lm)
                if r is not None:
                    ratios.append(r)
                if lap is not None:
                    laps.append(lap)
            key = "harmonized" if harmonize else "as_rendered"
            row[key] = {
                "sharpness_ratio": _summary(ratios),
                "sharpness_within_0.7_1.3": _share(ratios),
                "laplacian_variance_ratio": _summary(laps),
                "laplacian_within_0.7_1.3": _share(laps),
            }
        results["sharpness"][name] = row
        print(name, json.dumps(row), flush=True)
    for harmonize in (False, True):
        key = "harmonized" if harmonize else "as_rendered"
        rows = [results["sharpness"][name][key] for name in FAMILIES]
        measured = [r for r in rows if r["sharpness_ratio"]["n"]]
        n = sum(r["sharpness_ratio"]["n"] for r in measured)
        pooled = sum(r["sharpness_within_0.7_1.3"] * r["sharpness_ratio"]["n"] for r in measured)
        results["sharpness"][f"all_{key}_within_0.7_1.3"] = round(pooled / n, 4)
        results["sharpness"][f"all_{key}_measured"] = n
    for name, params in (("mask3d", {}), ("surgical_mask", {"split": "eval"}), ("surgical_mask", {"split": "train"})):
        hits = {"nose_tip": 0, "chin": 0, "eyes": 0}
        for i, (crop, lm, _) in enumerate(sample):
            _, mask, _ = create_occluder(name, **params)(crop, np.zeros((112, 112), np.uint8), lm, make_rng(i))
            chin = face_point(lm, [CHIN])[0]
            at = lambda p: bool(mask[int(round(p[1])), int(round(p[0]))] > 0)  # noqa: E731
            hits["nose_tip"] += at(lm[2])
            hits["chin"] += at(chin) if 0 <= chin[1] < 111.5 else 1  # below the crop: covered by the crop's edge
            hits["eyes"] += at(lm[0]) or at(lm[1])
        label = name + ("" if not params else f"[{params['split']}]")
        results["coverage"][label] = {k: round(v / len(sample), 4) for k, v in hits.items()}
    dists, yaws = [], []
    for i, (crop, lm, face) in enumerate(turned):
        occ = create_occluder("sunglasses", harmonize=False, version=2, scale=1.0, rotation=0.0, jitter=0.0)
        _, mask, _ = occ(crop, np.zeros((112, 112), np.uint8), lm, make_rng(i))
        dists.append(float(np.linalg.norm(lens_centres(mask > 0, lm[:2]) - lm[:2], axis=1).max()))
        yaws.append(face["yaw"])
    results["pose"] = {
        "faces": len(turned),
        "estimated_abs_yaw": _summary(np.abs(yaws)),
        "worst_eye_to_lens_centre_px": _summary(dists),
    }
    print(json.dumps(results["coverage"]), json.dumps(results["pose"]))
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixture")
    f.add_argument("--landmarks", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--lfw", default=str(LFW_TGZ))
    m.add_argument("--samples", type=int, default=SAMPLE_FACES)
    m.add_argument(
        "--landmarks",
        default=str(DETECTIONS),
        help="detections (landmarks.jsonl) for the framing measure; skipped when absent",
    )
    m.add_argument("--out", default=str(RESULT))
    m.add_argument("--chain-faces", type=int, default=CHAIN_FACES, help="as for framing")
    g = sub.add_parser("framing")
    g.add_argument("--landmarks", required=True)
    g.add_argument("--out", default=None)
    g.add_argument("--lfw", default=str(LFW_TGZ))
    g.add_argument(
        "--chain-faces",
        type=int,
        default=CHAIN_FACES,
        help="odd-half faces to run the build's detection/fallback chain on (0: none; >= their number: all)",
    )
    args = ap.parse_args(argv)
    if args.cmd == "fixture":
        return fixture(args)
    if args.cmd == "framing":
        result = framing(args)
        print("->", write_result("realism-framing", result, args.out))
        return 0
    if not Path(args.lfw).exists():
        print(f"SKIP: {args.lfw} not found (real LFW needed)")
        return 0
    result = measure(args)
    if Path(args.landmarks).exists():
        result["framing"] = framing(args)
    print("->", write_result("realism", result, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
