"""A small fake LFW for builds that need no real data: 6 people x 3 images (250x250 colour
gradients, no face, so builds centre-crop) and a pairs file in the official layout with one fold
of N matched + N mismatched pairs. Shared by the builder and eval-suite tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

PEOPLE = [f"Fake_Person{i}" for i in range(6)]  # 3 images each
MATCHED = [(0, 1, 2), (1, 1, 3), (2, 2, 3), (3, 1, 2), (4, 1, 3)]
MISMATCHED = [(0, 3, 1, 2), (1, 2, 2, 1), (2, 1, 3, 3), (3, 3, 4, 2), (4, 2, 5, 1)]
N = len(MATCHED)


def write_fake_lfw(root: Path) -> tuple[Path, Path]:
    """Writes <root>/lfw/<Name>/<Name>_000k.jpg and <root>/pairs_fake.txt (not pairs.txt, which
    would be checked as the official file); returns both paths."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.0, 1.0, 250)[None, :, None]
    for name in PEOPLE:
        for k in (1, 2, 3):
            lo, hi = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            image = np.broadcast_to(lo + (hi - lo) * ramp, (250, 250, 3)).astype(np.uint8)
            path = root / "lfw" / name / f"{name}_{k:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="JPEG", quality=95)
            path.write_bytes(buf.getvalue())
    lines = [str(N)]
    lines += [f"{PEOPLE[p]}\t{a}\t{b}" for p, a, b in MATCHED]
    lines += [f"{PEOPLE[p]}\t{a}\t{PEOPLE[q]}\t{b}" for p, a, q, b in MISMATCHED]
    (root / "pairs_fake.txt").write_text("\n".join(lines) + "\n")
    return root / "lfw", root / "pairs_fake.txt"
