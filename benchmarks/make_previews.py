"""Preview sheets of the occluder families on real faces, with the mask beside each sample.

    python benchmarks/make_previews.py [--lfw PATH] [--third-party PATH] [--out docs/previews]

Faces: LFW deep-funneled images (../shared/data/lfw/lfw-deepfunneled.tgz), landmarks by the
project's MTCNN detector, aligned to the ArcFace 112x112 template by a similarity; without
the detector a fixed crop of the deep-funneled centre is used with the template's points.
Writes <out>/objects.png (one row per category) and <out>/mask3d.png (bank and direct mode).
The importers sheet shows third-party templates, which must not be shipped in assets/, so it
goes to --importers-out (default out/previews, git-ignored) and only when the sets exist.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from occsynth.assets.catalog import CATEGORIES  # noqa: E402
from occsynth.faces.geometry import similarity_matrix  # noqa: E402
from occsynth.faces.templates import get_template  # noqa: E402
from occsynth.inspect.preview import overlay_mask  # noqa: E402
from occsynth.io.archive import iter_files  # noqa: E402
from occsynth.occluders import create_occluder  # noqa: E402
from occsynth.seeding import derive_seed, make_rng  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
PEOPLE = (
    "Aaron_Peirsol",
    "Abdullah_Gul",
    "Alejandro_Toledo",
    "Ana_Palacio",
    "Bill_Gates",
    "Angelina_Jolie",
    "Laura_Bush",
    "Serena_Williams",
    "Colin_Powell",
    "Gloria_Macapagal_Arroyo",
)
LABEL_W = 96


def lfw_faces(tgz: Path, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(aligned 112x112 RGB, landmarks) for the first image of `count` of PEOPLE."""
    wanted = {f"lfw-deepfunneled/{p}/{p}_0001.jpg": p for p in PEOPLE[:count]}
    raw = {}
    for path, member, archive in iter_files(tgz):
        if str(path) in wanted:
            data = np.frombuffer(archive.extractfile(member).read(), np.uint8)
            raw[wanted[str(path)]] = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            if len(raw) == len(wanted):
                break
    images = [raw[p] for p in PEOPLE[:count] if p in raw]
    ref = get_template("arcface").points
    try:
        import torch

        from occsynth.faces.detect import FaceDetector

        torch.set_num_threads(1)
        found = FaceDetector().detect(images)
        points = [max(f, key=lambda x: x.area).landmarks if f else None for f in found]
    except Exception as exc:  # no detector: the deep-funneled centre is roughly aligned already
        print(f"detector unavailable ({exc}); using a fixed centre crop", file=sys.stderr)
        points = [None] * len(images)
    faces = []
    for image, lm in zip(images, points):
        if lm is None:
            lm = (ref - 56.0) * (100.0 / 112.0) * 1.05 + 125.0  # crude: the funneled face centre
        m = similarity_matrix(lm, ref)
        face = cv2.warpAffine(image, m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        faces.append((face, np.asarray(lm, float) @ m[:, :2].T + m[:, 2]))
    return faces


def cell(occluder, face, landmarks, seed) -> np.ndarray:
    out, mask, _ = occluder(face, np.zeros(face.shape[:2], np.uint8), landmarks, make_rng(seed))
    return np.concatenate([out, overlay_mask(out, mask)], axis=1)


def row(label: str, occluder, faces, seed_key) -> np.ndarray:
    cells = [cell(occluder, f, lm, derive_seed(0, "preview", seed_key, i)) for i, (f, lm) in enumerate(faces)]
    strip = np.full((112, LABEL_W, 3), 255, np.uint8)
    for k, part in enumerate(label.split("\n")):
        cv2.putText(strip, part, (4, 50 + 16 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    gap = np.full((112, 4, 3), 255, np.uint8)
    parts = [strip]
    for c in cells:
        parts += [c, gap]
    return np.concatenate(parts, axis=1)


def sheet(rows: list[np.ndarray]) -> np.ndarray:
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    out = []
    for r in rows:
        out += [r, gap]
    return np.concatenate(out, axis=0)


def save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {path}")


def objects_sheet(faces) -> np.ndarray:
    return sheet([row(c, create_occluder(c), faces, c) for c in CATEGORIES])


def mask3d_sheet(faces, direct: bool) -> np.ndarray:
    rows = [
        row(f"mask3d bank\n{k}", create_occluder("mask3d", kind=k), faces, f"m3d-{k}")
        for k in ("surgical", "n95", "kn95", "cloth")
    ]
    if direct:
        rows.append(row("mask3d direct\nany kind", create_occluder("mask3d", mode="direct"), faces, "m3d-direct"))
    return sheet(rows)


def importers_sheet(faces, third_party: Path) -> np.ndarray:
    ocfr, mtf = third_party / "ocfr2022", third_party / "maskthefaces"
    rows = []
    for region in ("eye", "upper_face", "lower_face"):
        rows.append(
            row(f"ocfr2022\n{region}", create_occluder("ocfr2022", path=str(ocfr), region=region), faces, region)
        )
    rows.append(
        row(
            "ocfr2022\ntop_face (off)",
            create_occluder("ocfr2022", path=str(ocfr), region="top_face", include_disabled=True),
            faces,
            "top",
        )
    )
    rows.append(row("maskthefaces", create_occluder("maskthefaces", path=str(mtf)), faces, "mtf"))
    rows.append(
        row(
            "template_folder\nFROM-style",
            create_occluder("template_folder", path=str(ocfr / "occluders" / "lower_face")),
            faces,
            "folder",
        )
    )
    return sheet(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lfw", type=Path, default=SHARED / "lfw" / "lfw-deepfunneled.tgz")
    ap.add_argument("--third-party", type=Path, default=SHARED / "third_party")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "previews")
    ap.add_argument("--importers-out", type=Path, default=ROOT / "out" / "previews")
    ap.add_argument("--faces", type=int, default=4)
    ap.add_argument("--no-direct", action="store_true", help="skip the per-image 3D rendering row")
    args = ap.parse_args(argv)
    if not args.lfw.exists():
        print(f"LFW not found at {args.lfw}", file=sys.stderr)
        return 1
    faces = lfw_faces(args.lfw, args.faces)
    save(args.out / "objects.png", objects_sheet(faces))
    save(args.out / "mask3d.png", mask3d_sheet(faces, direct=not args.no_direct))
    if args.third_party.exists():
        save(args.importers_out / "importers.png", importers_sheet(faces, args.third_party))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
