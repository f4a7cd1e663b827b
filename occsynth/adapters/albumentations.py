"""occsynth's occluders as an albumentations transform.

    import albumentations as A
    from occsynth.albumentations import Occlude

    pipeline = A.Compose(
        [Occlude("0.5*clean | 0.5*sunglasses(split=train)", p=0.8), A.HorizontalFlip()],
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
        seed=0,
    )
    out = pipeline(image=face, mask=np.zeros(face.shape[:2], np.uint8), keypoints=landmarks)

Targets. `image`: uint8 RGB HxWx3, occluded. `mask`: the occluded pixels are set to `fill_mask`
(default 255, occsynth's "occluded"; None leaves masks as they are, as albumentations'
CoarseDropout does), so an all-zero mask comes out as exactly the occlusion mask. `keypoints`:
the 5 landmarks the occluders are placed by (left eye, right eye, nose, left and right mouth
corners, in that order; pass `remove_invisible=False` so none is dropped), returned unchanged,
as are bboxes. Aligned crops without landmarks use `template="arcface-112x112"` instead.

Params. One draw per call from albumentations' own generator (so `A.Compose(seed=...)` makes
runs reproducible): `seed`, plus the `landmarks` used. `ReplayCompose` records them and
`ReplayCompose.replay(...)` re-applies them (same occluders at the same places, on the replayed
image); `A.to_dict`/`from_dict` rebuild the transform from its spec. With these params the image
and mask are exactly `occsynth.occlude(image, landmarks, spec, seed)`'s. Put Occlude before
flips and crops: they move the keypoints without re-ordering left and right.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from occsynth.adapters.landmarks import NEEDED, five_points, template_points
from occsynth.contract import MASK_VISIBLE
from occsynth.occluders.compose import Composer
from occsynth.seeding import make_rng

try:
    import albumentations as A
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ImportError("occsynth.albumentations needs albumentations: pip install 'occsynth[albumentations]'") from None

__all__ = ["Occlude"]


class Occlude(A.DualTransform):
    """Occlude the face with an occsynth spec (see the module doc)."""

    def __init__(self, spec: Any, template: str | None = None, fill_mask: float | None = 255, p: float = 0.5):
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"Occlude: p must be in [0, 1], got {p}")
        super().__init__(p=p)
        self.spec = spec
        self.template = template
        self.fill_mask = fill_mask
        self._composer = Composer(spec)  # a bad spec is one SpecError line here, before any image

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("spec", "template", "fill_mask")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        keypoints = data.get("keypoints")
        if keypoints is not None and len(keypoints):
            landmarks = five_points(np.asarray(keypoints)[:, :2], "Occlude keypoints")
        elif self.template is not None:
            landmarks = template_points(self.template, height, width)
        else:
            raise ValueError(
                f"Occlude needs {NEEDED}: pass keypoints= with "
                "keypoint_params=A.KeypointParams(format='xy', remove_invisible=False)"
            )
        seed = int(self.random_generator.integers(0, 2**63 - 1))
        return {"seed": seed, "landmarks": landmarks.tolist()}

    def _occlude(self, image: np.ndarray, seed: int, landmarks):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            what = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"Occlude works on uint8 RGB images (HxWx3), got {what}: put it before Normalize")
        return self._composer(image, np.asarray(landmarks, dtype=np.float64), make_rng(int(seed)))

    def apply_with_params(self, params: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Occlude `image` once, then every other target with that occlusion (masks filled,
        keypoints and bboxes unchanged); extra image targets get the same params."""
        image = kwargs.get("image")
        if image is None:
            raise ValueError("Occlude needs image= (batches of images are not supported)")
        occlusion = self._occlude(image, params["seed"], params["landmarks"])
        rest = {k: v for k, v in kwargs.items() if k != "image"}
        out = super().apply_with_params({**params, "occlusion": occlusion}, *args, **rest)
        out["image"] = occlusion.image
        return {k: out[k] for k in kwargs}

    def apply(self, img: np.ndarray, seed: int, landmarks, **params: Any) -> np.ndarray:
        return self._occlude(img, seed, landmarks).image

    def apply_to_mask(self, mask: np.ndarray, occlusion=None, **params: Any) -> np.ndarray:
        if self.fill_mask is None:
            return mask
        if occlusion is None:  # only apply_with_params knows the occlusion
            raise ValueError("Occlude: a mask target needs the image target in the same call")
        occluded = occlusion.mask != MASK_VISIBLE
        if mask.shape[:2] != occluded.shape:
            raise ValueError(f"Occlude: mask {mask.shape[:2]} and image {occluded.shape} differ in size")
        out = mask.copy()
        out[occluded] = self.fill_mask  # every channel of an HxWxC mask
        return out

    def apply_to_keypoints(self, keypoints: np.ndarray, **params: Any) -> np.ndarray:
        return keypoints

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes
