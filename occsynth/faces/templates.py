"""Alignment templates: output size and the 5 reference landmarks.

Landmark order everywhere in occsynth: left eye, right eye, nose tip, left mouth corner,
right mouth corner (left/right as seen in the image).

The reference points are the public ones used by SphereFace/CosFace (112x96) and
insightface/ArcFace (112x112, the 112x96 points shifted +8 px in x). 128x128 and 224x224
are the ArcFace points scaled by 128/112 and 224/112 (the convention of LightCNN- and
VGG-sized pipelines that reuse the ArcFace crop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_POINTS_112x96 = np.array(
    [
        [30.2946, 51.6963],
        [65.5318, 51.5014],
        [48.0252, 71.7366],
        [33.5493, 92.3655],
        [62.7299, 92.2041],
    ],
    dtype=np.float64,
)
_POINTS_ARCFACE = _POINTS_112x96 + np.array([8.0, 0.0])


@dataclass(frozen=True)
class AlignTemplate:
    name: str
    width: int
    height: int
    points: np.ndarray  # (5, 2) x, y in output pixels

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


TEMPLATES: dict[str, AlignTemplate] = {
    t.name: t
    for t in (
        AlignTemplate("arcface-112x112", 112, 112, _POINTS_ARCFACE),
        AlignTemplate("112x96", 96, 112, _POINTS_112x96),
        AlignTemplate("128x128", 128, 128, _POINTS_ARCFACE * (128.0 / 112.0)),
        AlignTemplate("224x224", 224, 224, _POINTS_ARCFACE * (224.0 / 112.0)),
    )
}
ALIASES = {"112x112": "arcface-112x112", "arcface": "arcface-112x112", "sphereface-112x96": "112x96"}
DEFAULT_TEMPLATE = "arcface-112x112"


def get_template(name: str) -> AlignTemplate:
    key = ALIASES.get(name, name)
    if key not in TEMPLATES:
        raise KeyError(f"unknown template {name!r}; choose from {', '.join(TEMPLATES)}")
    return TEMPLATES[key]
