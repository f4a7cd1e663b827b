"""Preview sheets of the occluder families on real faces: each face as the occluder is rendered
(harmonize=false), harmonised (the default), and its mask.

    python benchmarks/make_previews.py [--lfw PATH] [--third-party PATH] [--out docs/previews]

Faces: LFW deep-funneled images chosen for varied skin tone, lighting and pose (FACES), with
the project's MTCNN landmarks stored in tests/data/lfw_faces.json (no detector run here),
aligned to the ArcFace 112x112 template. Every cell holds three images: as rendered, harmonised,
the harmonised mask (the same mask either way). Writes <out>/objects.png (one row per category),
<out>/mask3d.png (each kind from the bank, and a direct-mode row) and <out>/pose.png (worn
objects on turned faces: version 1's similarity placement against version 2's head pose, both
harmonised). The importers sheet shows third-party templates, which must not be shipped, so it
goes to --importers-out (default out/previews, git-ignored) and only when the sets exist.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from occsynth.assets.catalog import CATEGORIES  # noqa: E402
from occsynth.faces.align import align_face  # noqa: E402
from occsynth.faces.templates import get_template  # noqa: E402
from occsynth.inspect.preview import overlay_mask  # noqa: E402
from occsynth.io.archive import iter_files  # noqa: E402
from occsynth.occluders import create_occluder, list_occluders  # noqa: E402
from occsynth.seeding import derive_seed, make_rng  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
FIXTURE = ROOT / "tests" / "data" / "lfw_faces.json"
# dark skin in dim light; East Asian, soft light; light skin, warm light; dark skin, bright light;
# back-lit, turned; older, low contrast; side-lit, turned 40 degrees
FACES = (
    "Charles_Moose/Charles_Moose_0005.jpg",
    "Miyako_Miyazaki/Miyako_Miyazaki_0002.jpg",
    "Avril_Lavigne/Avril_Lavigne_0001.jpg",
    "Serena_Williams/Serena_Williams_0024.jpg",
    "Brady_Rodgers/Brady_Rodgers_0001.jpg",
    "Ascencion_Barajas/Ascencion_Barajas_0001.jpg",
    "Tony_Blair/Tony_Blair_0060.jpg",
)
TURNED = (  # the fixture's faces turned the most, and two half-turned ones
    "Tony_Blair/Tony_Blair_0060.jpg",
    "Jacques_Chirac/Jacques_Chirac_0006.jpg",
    "Jacques_Chirac/Jacques_Chirac_0010.jpg",
    "Bill_Simon/Bill_Simon_0006.jpg",
    "Stephen_Silas/Stephen_Silas_0001.jpg",
)
LABEL_W = 96


def lfw_faces(tgz: Path, sources) -> list[tuple[np.ndarray, np.ndarray]]:
    """(aligned 112x112 RGB, landmarks) of each source, with its stored MTCNN landmarks."""
    stored = {f["source"]: f for f in json.loads(FIXTURE.read_text())["faces"]}
    missing = [s for s in sources if s not in stored]
    if missing:
        raise SystemExit(f"not in {FIXTURE}: {missing}")
    wanted = {f"lfw-deepfunneled/{s}": s for s in sources}
    raw = {}
    for path, member, archive in iter_files(tgz):
        if str(path) in wanted:
            data = np.frombuffer(archive.extractfile(member).read(), np.uint8)
            raw[wanted[str(path)]] = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    template = get_template("arcface")
    out = []
    for s in sources:
        crop, _, lm = align_face(raw[s], np.asarray(stored[s]["landmarks"]), template)
        out.append((crop, lm))
    return out


def cell(name: str, params: dict, face, landmarks, seed, before: dict | None = None) -> np.ndarray:
    """[as rendered (or `before`'s occluder) | harmonised | harmonised mask]."""
    empty = np.zeros(face.shape[:2], np.uint8)
    if before is None:  # as rendered: the current version without harmonisation
        versioned = "version" in list_occluders()[name].defaults
        before = {"harmonize": False, **({"version": 2} if versioned else {})}
    plain = create_occluder(name, **{**params, **before})
    raw, _, _ = plain(face, empty, landmarks, make_rng(seed))
    out, mask, _ = create_occluder(name, **params)(face, empty, landmarks, make_rng(seed))
    return np.concatenate([raw, out, overlay_mask(out, mask)], axis=1)


def row(label: str, name: str, params: dict, faces, seed_key, before: dict | None = None) -> np.ndarray:
    cells = [
        cell(name, params, f, lm, derive_seed(0, "preview", seed_key, i), before) for i, (f, lm) in enumerate(faces)
    ]
    strip = np.full((112, LABEL_W, 3), 255, np.uint8)
    for k, part in enumerate(label.split("\n")):
        cv2.putText(strip, part, (4, 40 + 16 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    gap = np.full((112, 6, 3), 255, np.uint8)
    parts = [strip]
    for c in cells:
        parts += [c, gap]
    return np.concatenate(parts, axis=1)


def header(width: int, count: int, titles=("as rendered", "harmonised", "mask")) -> np.ndarray:
    strip = np.full((18, width, 3), 255, np.uint8)
    for i in range(count):
        for j, title in enumerate(titles):
            x = LABEL_W + i * (3 * 112 + 6) + j * 112 + 4
            cv2.putText(strip, title, (x, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def sheet(rows: list[np.ndarray], count: int, titles=("as rendered", "harmonised", "mask")) -> np.ndarray:
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    out = [header(rows[0].shape[1], count, titles), gap]
    for r in rows:
        out += [r, gap]
    return np.concatenate(out, axis=0)


def save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {path}")


def objects_sheet(faces) -> np.ndarray:
    return sheet([row(c, c, {}, faces, c) for c in CATEGORIES], len(faces))


def mask3d_sheet(faces, direct: bool) -> np.ndarray:
    rows = [
        row(f"mask3d bank\n{k}", "mask3d", {"kind": k}, faces, f"m3d-{k}-{i}")
        for i, k in enumerate(("surgical", "n95", "kn95", "cloth", "cloth"))
    ]
    if direct:
        rows.append(row("mask3d direct\nany kind", "mask3d", {"mode": "direct"}, faces, "m3d-direct"))
    return sheet(rows, len(faces))


def pose_sheet(faces) -> np.ndarray:
    """Worn objects on turned faces: version 1 (similarity on the landmarks) | version 2 (head pose)."""
    still = {"scale": 1.0, "rotation": 0.0, "jitter": 0.0}
    rows = [
        row(f"{c}\nv1 | v2", c, still, faces, f"pose-{c}", before={"version": 1})
        for c in ("sunglasses", "eyeglasses", "eye_mask", "hat", "scarf", "surgical_mask")
    ]
    rows.append(row("mask3d\nv1 | v2", "mask3d", {}, faces, "pose-mask3d", before={"version": 1}))
    return sheet(rows, len(faces), titles=("version 1", "version 2", "mask"))


def importers_sheet(faces, third_party: Path) -> np.ndarray:
    ocfr, mtf = third_party / "ocfr2022", third_party / "maskthefaces"
    rows = []
    for region in ("eye", "upper_face", "lower_face"):
        rows.append(row(f"ocfr2022\n{region}", "ocfr2022", {"path": str(ocfr), "region": region}, faces, region))
    rows.append(row("maskthefaces", "maskthefaces", {"path": str(mtf)}, faces, "mtf"))
    rows.append(
        row(
            "template_folder\nFROM-style",
            "template_folder",
            {"path": str(ocfr / "occluders" / "lower_face")},
            faces,
            "folder",
        )
    )
    return sheet(rows, len(faces))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lfw", type=Path, default=SHARED / "lfw" / "lfw-deepfunneled.tgz")
    ap.add_argument("--third-party", type=Path, default=SHARED / "third_party")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "previews")
    ap.add_argument("--importers-out", type=Path, default=ROOT / "out" / "previews")
    ap.add_argument("--no-direct", action="store_true", help="skip the per-image 3D rendering row")
    args = ap.parse_args(argv)
    if not args.lfw.exists():
        print(f"LFW not found at {args.lfw}", file=sys.stderr)
        return 1
    faces = lfw_faces(args.lfw, FACES)
    save(args.out / "objects.png", objects_sheet(faces))
    save(args.out / "mask3d.png", mask3d_sheet(faces, direct=not args.no_direct))
    save(args.out / "pose.png", pose_sheet(lfw_faces(args.lfw, TURNED)))
    if args.third_party.exists():
        save(args.importers_out / "importers.png", importers_sheet(faces, args.third_party))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
