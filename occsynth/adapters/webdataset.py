"""occsynth's occluders as a webdataset stage: occlude aligned samples on the fly.

    import webdataset as wds
    from occsynth.adapters.webdataset import OccludeSample, occlude

    ds = wds.WebDataset(urls, shardshuffle=False).decode("rgb8").map(OccludeSample("scarf | sunglasses", seed=0))
    ds = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(), wds.decode("rgb8"),
                          occlude("scarf | sunglasses", seed=0))

A sample is a decoded webdataset dict: the image under "png"/"jpg"/"jpeg" (or `image_key`) as
uint8 RGB HxWx3 (`.decode("rgb8")`), the landmarks from its occsynth metadata ("json":
"landmarks", the 5 points in image pixels; decoded or raw bytes), or `landmarks=` a function of
the sample, or `template=` for aligned crops. The stage returns a new dict: the image occluded,
"mask.png" the occlusion mask (uint8 HxW, 255 = occluded; united with the sample's own mask when
it has one, in that mask's shape), and the metadata (when present) with the new occluder
records appended to "occluders", "occlusion_ratio" updated and "online_seed" added.

Seeds: each sample's seed is `derive_seed(seed, sample["__key__"])` (occsynth.seeding), so a
sample gets the same occlusion whichever worker, shard order or epoch it comes in; its image is
exactly `occsynth.occlude(image, landmarks, spec, that seed)`. Give `epoch_seed=True` to make
it depend on a counter of calls instead (fresh occlusions every epoch, no longer reproducible
across workers).
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from occsynth import contract
from occsynth.adapters.landmarks import NEEDED, five_points, template_points
from occsynth.occluders.compose import Composer
from occsynth.seeding import derive_seed, make_rng

try:
    import webdataset as wds
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ImportError("occsynth.adapters.webdataset needs webdataset: pip install 'occsynth[webdataset]'") from None

__all__ = ["OccludeSample", "occlude"]

IMAGE_KEYS = ("png", "jpg", "jpeg")


class OccludeSample:
    """A callable for `WebDataset.map`: one decoded sample in, the occluded sample out."""

    def __init__(
        self,
        spec: Any,
        seed: int = 0,
        *,
        image_key: str | None = None,
        landmarks: Callable[[dict], Any] | None = None,
        template: str | None = None,
        mask_key: str = contract.EXT_MASK,
        meta_key: str = contract.EXT_META,
        epoch_seed: bool = False,
    ):
        self.spec, self.seed = spec, int(seed)
        self.composer = Composer(spec)  # a bad spec fails here, before the first sample
        self.image_key, self.landmarks, self.template = image_key, landmarks, template
        self.mask_key, self.meta_key, self.epoch_seed = mask_key, meta_key, epoch_seed
        self._calls = 0

    def sample_seed(self, key: str) -> int:
        if self.epoch_seed:
            self._calls += 1
            return derive_seed(self.seed, key, self._calls)
        return derive_seed(self.seed, key)

    def _image(self, sample: dict) -> str:
        key = self.image_key or next((k for k in IMAGE_KEYS if k in sample), None)
        if key is None or key not in sample:
            raise KeyError(f"sample {sample.get('__key__')!r}: no image under {self.image_key or IMAGE_KEYS}")
        image = sample[key]
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            what = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(
                f"sample {sample.get('__key__')!r}: image {key!r} is {what}; decode the samples as uint8 RGB "
                "first: .decode('rgb8')"
            )
        return key

    def _meta(self, sample: dict) -> dict | None:
        raw = sample.get(self.meta_key)
        if raw is None:
            return None
        return json.loads(raw) if isinstance(raw, (bytes, str)) else raw

    def _points(self, sample: dict, meta: dict | None, image: np.ndarray) -> np.ndarray:
        where = f"sample {sample.get('__key__')!r}"
        if self.landmarks is not None:
            return five_points(self.landmarks(sample), where)
        if self.template is not None:
            return template_points(self.template, *image.shape[:2])
        if meta is None or "landmarks" not in meta:
            raise KeyError(
                f"{where}: no {self.meta_key!r} metadata with 'landmarks'; give landmarks= or template= ({NEEDED})"
            )
        return five_points(meta["landmarks"], where)

    def __call__(self, sample: dict) -> dict:
        if "__key__" not in sample:
            raise KeyError("a webdataset sample without __key__: the per-sample seed derives from it")
        image_key = self._image(sample)
        image = sample[image_key]
        meta = self._meta(sample)
        seed = self.sample_seed(sample["__key__"])
        occlusion = self.composer(image, self._points(sample, meta, image), make_rng(seed))
        out = dict(sample)
        out[image_key] = occlusion.image
        occluded = occlusion.mask != contract.MASK_VISIBLE
        own = sample.get(self.mask_key)
        if isinstance(own, np.ndarray):
            if own.shape[:2] != occluded.shape:
                raise ValueError(
                    f"sample {sample['__key__']!r}: mask {own.shape[:2]} and image {occluded.shape} differ"
                )
            mask = own.copy()
            mask[occluded] = contract.MASK_OCCLUDED
            union = (mask if mask.ndim == 2 else mask[..., 0]) >= 128
        else:
            mask, union = occlusion.mask, occluded
        out[self.mask_key] = mask
        if meta is not None:
            meta = dict(meta)
            meta["occluders"] = list(meta.get("occluders") or []) + occlusion.records
            meta["occlusion_ratio"] = float(union.mean())
            meta["online_seed"] = seed
            raw = sample[self.meta_key]
            text = contract.dumps(meta)
            out[self.meta_key] = text.encode() if isinstance(raw, bytes) else text if isinstance(raw, str) else meta
        return out


def occlude(spec: Any, seed: int = 0, **options: Any):
    """The stage for `wds.DataPipeline(...)`: `wds.map(OccludeSample(spec, seed, **options))`."""
    return wds.map(OccludeSample(spec, seed, **options))
