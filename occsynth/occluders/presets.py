"""Named occlusion specs: `load_spec("shapes")`, `load_spec("preset:msml-train")`, the CLI atom
`preset:NAME` (or a bare preset name) and the data form {"preset": NAME} all resolve here.

Presets are plain data specs (see compose.py); get_preset returns a fresh copy. A preset that
names occluders not registered (yet) fails when compiled, with the registry's KeyError.

    block-0.3          LFW_block at 30%: one black square of 0.3 * W * H, uniform position
    lfw-block-<level>  LFW_block at any level: <level> is a percentage (lfw-block-40) or a
                       fraction (lfw-block-0.25)
    shapes             one geometric shape (block, rectangle, ellipse, polygon, blob or pieces,
                       equally likely), ratio uniform in [0.1, 0.4], fill black, white, mean,
                       noise or texture
    msml-train         the MSML training mix: 20% a 3D-rendered mask (surgical, N95, KN95, cloth
                       equally); of the other 80%, half clean and half one of shapes / glasses
                       (sunglasses or eyeglasses) / scarf / objects (cup, hand, phone, book,
                       microphone, hat, eye mask), 10% each
    from-train         FROM's training occlusion (Qiu et al., TPAMI 2021): one image in three
                       stays clean (their ratio=3); otherwise one random object template at a
                       uniformly random place, scaled by a factor drawn from 1:0.5:5.
    pdsn-train-25      PDSN's training occlusion at 25% of the face (Song et al., ICCV 2019): one
                       occluder covering 25% of the aligned image at a random place; equally
                       likely a geometric shape (block, rectangle, ellipse, polygon, blob; any
                       fill of `shapes`) or a training-split object template sized to 25% by
                       fit_area. Occluded samples only: pair it with clean ones through
                       `occsynth build occ-train --ratio 1:1 --occlude pdsn-train-25 --keep-clean`.

How from-train reads "1:0.5:5": MATLAB start:step:stop, i.e. the nine factors 1, 1.5, ..., 5
(FROM's code draws np.linspace(1, 5, 9)); each is equally likely and multiplies the template's
natural, landmark-anchored size times FROM_BASE_SCALE (0.3): FROM multiplies its occluder
images' small pixel size, so its factor 1 is a small object; ours starts at 0.3x a face-sized
template and ends at 1.5x. The place is the object occluder's region "random": a uniform centre over the face, from
forehead to chin and cheek to cheek (FROM draws the centre over the whole image), the template
cut by the border where it overhangs.

How pdsn-train-25 reads "25%-area" (PDSN's paper could not be read offline: not verified):
PDSN learns its mask dictionary from pairs occluded on one cell of a 5x5 grid (the pdsn-pairs
build: one cell is 4% of the face, with its 4-neighbours at most 20%) and trains/tests the
final model on faces with random partial occlusions. No union of grid cells is 25% of the face
(a cell is 1/25), so "25%-area" is read as the occluded fraction of the aligned image of ONE
random occluder, PDSN_AREA = 0.25 exactly (geometric shapes: exact pixel counts; objects:
fit_area to within its 0.002 tolerance), placed independently of the grid: shapes uniformly over
the image (wholly inside it), objects with their centre uniform over the face (region
"random", as from-train; the template may be cut by the border, fit_area then grows it back to
25%). The grid-cell reading is the pdsn-pairs build itself.
"""

from __future__ import annotations

import copy
import re
from typing import Any

SHAPE_FILLS = {"choice": ["black", "white", "mean", "noise", "texture"]}
SHAPE_NAMES = ("block", "rectangle", "ellipse", "polygon", "blob", "pieces")
FROM_SIZE_FACTORS = [1.0 + 0.5 * i for i in range(9)]  # 1:0.5:5
PDSN_AREA = 0.25  # pdsn-train-25: the occluded fraction of the aligned image
PDSN_SHAPES = ("block", "rectangle", "ellipse", "polygon", "blob")  # one connected occluder each


def _one(name: str, **params: Any) -> dict:
    return {"name": name, "params": params}


def _uniform(*specs: Any) -> dict:
    return {"mix": [{"p": 1.0, "spec": s} for s in specs]}


SHAPES = _uniform(*(_one(n, ratio=[0.1, 0.4], fill=SHAPE_FILLS) for n in SHAPE_NAMES))

MSML_TRAIN = {
    "mix": [
        *({"p": 0.05, "spec": _one("mask3d", kind=kind)} for kind in ("surgical", "n95", "kn95", "cloth")),
        {"p": 0.40, "spec": None},
        {"p": 0.10, "spec": SHAPES},
        {"p": 0.10, "spec": _uniform(_one("sunglasses", split="train"), _one("eyeglasses", split="train"))},
        {"p": 0.10, "spec": _one("scarf", split="train")},
        {
            "p": 0.10,
            "spec": _uniform(
                *(_one(n, split="train") for n in ("cup", "hand", "phone", "book", "microphone", "hat", "eye_mask"))
            ),
        },
    ]
}

# FROM's factor 1 is a small occluder; ours is a face-sized template. Scaling the factors by
# FROM_BASE_SCALE keeps factor 1 at ~a third of the natural size and factor 5 at 1.5x, instead
# of burying the face (measured: with the raw factors 1 in 5 samples were fully covered).
FROM_BASE_SCALE = 0.3
FROM_OCCLUDER = _one(
    "object",
    region="random",
    split="train",
    scale={"choice": [round(FROM_BASE_SCALE * f, 3) for f in FROM_SIZE_FACTORS]},
)
FROM_TRAIN = {"mix": [{"p": 1.0, "spec": None}, {"p": 2.0, "spec": FROM_OCCLUDER}]}

PDSN_TRAIN_25 = {
    "mix": [
        {"p": 0.5, "spec": _uniform(*(_one(n, ratio=PDSN_AREA, fill=SHAPE_FILLS) for n in PDSN_SHAPES))},
        {"p": 0.5, "spec": _one("fit_area", ratio=PDSN_AREA, occluder=_one("object", split="train", region="random"))},
    ]
}

PRESETS: dict[str, Any] = {
    "block-0.3": _one("block", ratio=0.3, fill="black"),
    "shapes": SHAPES,
    "msml-train": MSML_TRAIN,
    "from-train": FROM_TRAIN,
    "from-occluder": FROM_OCCLUDER,  # the occluded branch alone (occ-train sets the 1:2 itself)
    "pdsn-train-25": PDSN_TRAIN_25,
    # the usual LFW_block levels, listed; any other level resolves through the pattern below
    **{f"lfw-block-{p}": _one("block", ratio=p / 100.0, fill="black") for p in (10, 20, 30, 40, 50)},
}

_LFW_BLOCK = re.compile(r"^lfw-block-(\d+(?:\.\d+)?)$")
PREFIX = "preset:"


def list_presets() -> list[str]:
    return sorted(PRESETS)


def is_preset(name: str) -> bool:
    name = name.strip()
    if name.startswith(PREFIX):
        return True
    return name in PRESETS or _LFW_BLOCK.match(name) is not None


def get_preset(name: str) -> Any:
    """The data spec of a preset (a copy); accepts an optional "preset:" prefix."""
    key = name.strip()
    if key.startswith(PREFIX):
        key = key[len(PREFIX) :].strip()
    if key in PRESETS:
        return copy.deepcopy(PRESETS[key])
    m = _LFW_BLOCK.match(key)
    if m:
        level = float(m.group(1))
        ratio = level if "." in m.group(1) else level / 100.0
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"lfw-block level must be a percentage in (0, 100] or a fraction in (0, 1]: {name!r}")
        return _one("block", ratio=ratio, fill="black")
    raise KeyError(f"unknown preset {name!r}; known: {', '.join(list_presets())}, lfw-block-<level>")
