"""`occsynth preview DIR --out sheet.png`: a contact sheet of samples with the mask overlaid.

A sample with real occlusions and no pixel mask (contract.MASK_KNOWN) is shown without an
overlay and labelled "real occlusion, mask unknown", never as a clean 0% face."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from occsynth import contract
from occsynth.errors import UsageError
from occsynth.io.dataset import Dataset
from occsynth.io.images import decode_image, decode_mask

OVERLAY_COLOUR = np.array([255, 0, 64], dtype=np.float32)  # RGB; occluded pixels tinted


def overlay_mask(image: np.ndarray, mask: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The image with occluded pixels tinted and the mask outline drawn."""
    out = image.astype(np.float32)
    occluded = mask >= 128
    out[occluded] = (1 - alpha) * out[occluded] + alpha * OVERLAY_COLOUR
    out = out.round().astype(np.uint8)
    contours, _ = cv2.findContours(occluded.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 255, 0), 1)
    return out


def read_samples(out_dir: str | Path, limit: int, every: int = 1) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    if limit < 1 or every < 1:
        raise UsageError(f"limit and every must be >= 1, got limit={limit}, every={every}")
    samples = []
    for seen, (key, members) in enumerate(Dataset(out_dir).iter_samples()):
        if seen % every:
            continue
        image_ext = contract.EXT_IMAGE_PNG if contract.EXT_IMAGE_PNG in members else contract.EXT_IMAGE_JPG
        samples.append(
            (
                json.loads(members[contract.EXT_META]),
                decode_image(members[image_ext]),
                decode_mask(members[contract.EXT_MASK]),
            )
        )
        if len(samples) >= limit:
            break
    return samples


def contact_sheet(
    samples: list[tuple[dict, np.ndarray, np.ndarray]], columns: int = 8, cell: int = 128, show_image: bool = True
) -> np.ndarray:
    """Grid of cells; each cell is the image and, beside it, the image with the mask overlay."""
    if not samples:
        raise ValueError("no samples to preview")
    if columns < 1:
        raise UsageError(f"columns must be >= 1, got {columns}")
    per = 2 if show_image else 1
    label_h = 14
    rows = (len(samples) + columns - 1) // columns
    sheet = np.full((rows * (cell + label_h), columns * cell * per, 3), 24, dtype=np.uint8)
    for i, (meta, image, mask) in enumerate(samples):
        r, c = divmod(i, columns)
        known = contract.mask_known(meta)
        # a real occlusion's mask is unknown: no overlay, which would claim a clean face
        panels = ([image] if show_image else []) + [overlay_mask(image, mask) if known else image]
        for j, panel in enumerate(panels):
            h, w = panel.shape[:2]
            scale = cell / max(h, w)
            resized = cv2.resize(panel, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_AREA)
            y0, x0 = r * (cell + label_h), (c * per + j) * cell
            sheet[y0 : y0 + resized.shape[0], x0 : x0 + resized.shape[1]] = resized
        # objects show their category ("object" alone says little)
        names = (
            "+".join(
                o["params"].get("category") or o["params"].get("kind") or o["name"] for o in meta.get("occluders", [])
            )
            or "clean"
        )
        label = f"{names} {100 * meta.get('occlusion_ratio', 0):.0f}%" if known else "real occlusion, mask unknown"
        cv2.putText(
            sheet,
            label[: 3 * per * cell // 16],
            (c * per * cell + 2, r * (cell + label_h) + cell + 11),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.35,
            (230, 230, 230),
            1,
            cv2.LINE_AA,
        )
    return sheet


def write_preview(out_dir: str | Path, out_png: str | Path, limit: int = 32, columns: int = 8, every: int = 1) -> Path:
    sheet = contact_sheet(read_samples(out_dir, limit, every), columns=columns)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_png), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {out_png}")
    return out_png
