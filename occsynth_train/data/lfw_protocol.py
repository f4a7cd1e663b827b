"""The LFW mini-protocol split (PROTOCOL.md): train on LFW people with >= 2 images that do not
appear in the held-out fold of pairs.txt; test on that fold's 600 pairs. `test_fold` counts
from 1 as the LFW README does (occsynth's fold ids count from 0: fold 1 is `--folds 0`)."""

from __future__ import annotations

import json
import tarfile
import zlib
from collections import defaultdict
from pathlib import Path, PurePosixPath

from occsynth.benchmarks.protocols.lfw import read_lfw_pairs, write_pairs_txt
from occsynth.io.archive import iter_files, safe_extract
from occsynth.io.atomic import write_bytes, write_text


def lfw_images(lfw: str | Path) -> dict[str, list[str]]:
    """identity -> sorted relative image paths, from the tgz or an extracted folder."""
    lfw = Path(lfw)
    found: dict[str, list[str]] = defaultdict(list)
    if not lfw.is_dir() and not tarfile.is_tarfile(lfw):
        raise ValueError(f"{lfw}: neither an LFW tar archive (lfw-deepfunneled.tgz) nor an identity folder")
    if lfw.is_dir():
        for p in lfw.glob("*/*.jpg"):
            found[p.parent.name].append(f"{p.parent.name}/{p.name}")
    else:
        try:
            for path, _, _ in iter_files(lfw):
                parts = path.parts
                if path.suffix == ".jpg" and len(parts) == 3:
                    found[parts[1]].append(f"{parts[1]}/{parts[2]}")
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise ValueError(f"{lfw}: damaged archive ({exc})") from None
    return {k: sorted(v) for k, v in found.items()}


def write_split(
    pairs_path: str | Path, lfw: str | Path, out_dir: str | Path, test_fold: int = 1, extract: bool = True
) -> dict:
    out = Path(out_dir)
    pairs = read_lfw_pairs(pairs_path)  # strict parser; occsynth numbers folds from 0
    folds = sorted({p.fold for p in pairs})
    if not 1 <= test_fold <= len(folds):
        raise ValueError(f"test fold must be in 1..{len(folds)} (pairs.txt numbering)")
    test = [p for p in pairs if p.fold == folds[test_fold - 1]]
    test_people = {sid.split("/")[0] for p in test for sid in (p.a, p.b)}
    images = lfw_images(lfw)
    if not images:
        raise ValueError(f"{lfw}: no LFW images (<identity>/<name>.jpg) found")
    out.mkdir(parents=True, exist_ok=True)  # only once the inputs have been read
    train_ids = sorted(k for k, v in images.items() if len(v) >= 2 and k not in test_people)
    train_images = [img for k in train_ids for img in images[k]]
    write_text(out / "train_identities.txt", "".join(k + "\n" for k in train_ids))
    write_text(out / "train_images.txt", "".join(p + "\n" for p in train_images))
    write_pairs_txt(out / "test_pairs.txt", test, layout="lfw")  # pairs.txt format, one fold
    if extract:
        _extract(lfw, set(train_images), out / "train")
    summary = {
        "test_fold": test_fold,
        "test_pairs": len(test),
        "test_people": len(test_people),
        "train_identities": len(train_ids),
        "train_images": len(train_images),
    }
    write_text(out / "split.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _extract(lfw: Path, wanted: set[str], target: Path) -> None:
    lfw = Path(lfw)
    if lfw.is_dir():
        for rel in wanted:
            dst = target / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():  # written whole or not at all, so a rerun never keeps a cut copy
                write_bytes(dst, (lfw / rel).read_bytes())
        return

    def select(path: PurePosixPath) -> PurePosixPath | None:
        rel = PurePosixPath(*path.parts[1:]) if len(path.parts) > 1 else None  # drop the wrapper folder
        return rel if rel is not None and str(rel) in wanted else None

    safe_extract(lfw, target, select)
