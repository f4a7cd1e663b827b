"""The AR face database (Martinez & Benavente, "The AR Face Database", CVC Technical
Report #24, 1998) and the two identification protocols occluded-face papers report on it.

File names
----------
Each person was photographed in two sessions two weeks apart, 13 images per session::

    <sex>-<person>-<image>.<ext>       m-001-01.raw, w-060-26.bmp, M-001-01.bmp, F-12-8.bmp

``sex`` is m (men) or w (women); the official page spells the originals ``M-xx-yy.raw`` /
``F-xx-yy.raw`` (F = women), distributed copies use ``m-001-01`` / ``w-001-01`` (Idiap's
bob.db.arface reads the first 5 characters as the person and the rest as the image number).
All these spellings, upper or lower case, with any zero padding, are recognised; the identity is
normalised to ``m-001`` / ``w-001`` (F is mapped to w). The original ``.raw`` files are headerless
768x576 RGB and cannot be decoded as images: convert them first (a build records them as
decode failures, it does not skip them).

Image numbers (session 1; image k + 13 is the same condition in session 2)::

    1 neutral   2 smile   3 anger   4 scream   5 left light   6 right light   7 both lights
    8 sunglasses   9 sunglasses + left light   10 sunglasses + right light
    11 scarf      12 scarf + left light       13 scarf + right light

Protocols
---------
PDSN (Song et al., ICCV 2019) and FROM (Qiu et al., TPAMI 2021) evaluate rank-1 closed-set
identification on AR with two protocols, reporting the sunglasses and the scarf probe sets
separately. FROM's public evaluation script
(github.com/haibo-qiu/FROM, ``lib/core/ar_dataset.py``) uses a multi-image ``gallery`` for
protocol 1 and a single-image ``gallery_single`` for protocol 2, against all sunglasses
(``prob_glass_all``) and all scarf (``prob_scarf_all``) images. The image numbers inside those
folders are not published with the code, so occsynth fixes them here, explicitly:

* protocol 1: gallery = images 1-7 (the non-occluded images of session 1);
* protocol 2: gallery = image 1 (the neutral image of session 1: single sample per person);
* probes, both protocols: ``sunglasses`` = 8, 9, 10, 21, 22, 23 and ``scarf`` = 11, 12, 13, 24,
  25, 26, and the same split per session: ``sunglasses_s1`` (8-10), ``sunglasses_s2`` (21-23),
  ``scarf_s1`` (11-13), ``scarf_s2`` (24-26).

The numbers are recorded in the protocol's ``info`` (and so in protocol.json and the card), and
``gallery_images=`` / ``probe_sets=`` override them to reproduce another paper's split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from occsynth.benchmarks.protocols.identification import Protocol

__all__ = [
    "ARImage",
    "AR_CONDITIONS",
    "PROBE_SETS",
    "GALLERY_IMAGES",
    "ar_protocol",
    "parse_ar_name",
]

AR_CONDITIONS = {
    1: "neutral",
    2: "smile",
    3: "anger",
    4: "scream",
    5: "left light",
    6: "right light",
    7: "both side lights",
    8: "sunglasses",
    9: "sunglasses, left light",
    10: "sunglasses, right light",
    11: "scarf",
    12: "scarf, left light",
    13: "scarf, right light",
}
AR_IMAGES_PER_SESSION = 13

GALLERY_IMAGES = {1: (1, 2, 3, 4, 5, 6, 7), 2: (1,)}
PROBE_SETS = {
    "sunglasses": (8, 9, 10, 21, 22, 23),
    "scarf": (11, 12, 13, 24, 25, 26),
    "sunglasses_s1": (8, 9, 10),
    "sunglasses_s2": (21, 22, 23),
    "scarf_s1": (11, 12, 13),
    "scarf_s2": (24, 25, 26),
}

SOURCE = (
    "Martinez & Benavente, The AR Face Database, CVC Technical Report #24, 1998 (image numbers); "
    "protocols as evaluated by PDSN (Song et al., ICCV 2019) and FROM (Qiu et al., TPAMI 2021, "
    "github.com/haibo-qiu/FROM lib/core/ar_dataset.py): rank-1 identification, sunglasses and "
    "scarf probe sets reported separately"
)

_NAME_RE = re.compile(r"^(?P<sex>[mwfMWF])-(?P<person>\d{1,3})-(?P<number>\d{1,2})\.[A-Za-z0-9]+$")


@dataclass(frozen=True)
class ARImage:
    sample_id: str
    sex: str  # "m" or "w"
    person: int
    number: int  # 1..26

    @property
    def identity(self) -> str:
        return f"{self.sex}-{self.person:03d}"

    @property
    def session(self) -> int:
        return 1 if self.number <= AR_IMAGES_PER_SESSION else 2

    @property
    def condition(self) -> str:
        return AR_CONDITIONS[(self.number - 1) % AR_IMAGES_PER_SESSION + 1]


def parse_ar_name(sample_id: str) -> ARImage | None:
    """The AR image a sample id names (by its file name), or None if it is not an AR name."""
    m = _NAME_RE.match(sample_id.rpartition("/")[2])
    if not m:
        return None
    number = int(m["number"])
    if not 1 <= number <= 2 * AR_IMAGES_PER_SESSION:
        return None
    sex = "m" if m["sex"].lower() == "m" else "w"
    return ARImage(sample_id, sex, int(m["person"]), number)


def ar_protocol(
    sample_ids: Iterable[str],
    protocol: int = 1,
    *,
    gallery_images: Iterable[int] | None = None,
    probe_sets: Mapping[str, Iterable[int]] | None = None,
) -> Protocol:
    """AR protocol 1 or 2 over the given sample ids (see the module doc for the image numbers).

    Every input id ends up either in the protocol or in ``excluded`` with the reason (not an AR
    file name; identity without any gallery image), except the images the protocol does not use
    (e.g. the expression images under protocol 2), which are counted in ``info["unused"]``.
    Two files naming the same person and image (``m-001-01.bmp`` and ``m-001-01.raw``) are a
    ValueError: which one is meant is a guess.
    """
    if protocol not in GALLERY_IMAGES:
        raise ValueError(f"AR protocol must be 1 or 2, got {protocol!r}")
    gallery_numbers = tuple(sorted(set(gallery_images if gallery_images is not None else GALLERY_IMAGES[protocol])))
    sets = {name: tuple(sorted(set(nums))) for name, nums in (probe_sets or PROBE_SETS).items()}
    for nums in (gallery_numbers, *sets.values()):
        bad = [n for n in nums if not 1 <= n <= 2 * AR_IMAGES_PER_SESSION]
        if bad:
            raise ValueError(f"AR image numbers must be in 1..26, got {bad}")
    overlap = set(gallery_numbers) & {n for nums in sets.values() for n in nums}
    if overlap:
        raise ValueError(f"images {sorted(overlap)} are both gallery and probe")

    excluded: list[dict] = []
    images: dict[tuple[str, int], ARImage] = {}
    for sid in sorted(set(sample_ids)):
        image = parse_ar_name(sid)
        if image is None:
            excluded.append({"sample_id": sid, "reason": "not an AR file name (<m|w>-<person>-<1..26>.<ext>)"})
            continue
        slot = (image.identity, image.number)
        if slot in images:
            raise ValueError(
                f"{image.identity} image {image.number} appears twice: "
                f"{images[slot].sample_id} and {sid}; keep one of them"
            )
        images[slot] = image

    with_gallery = {ident for (ident, number) in images if number in gallery_numbers}
    gallery: list[str] = []
    probes: dict[str, list[str]] = {name: [] for name in sets}
    identity: dict[str, str] = {}
    unused = 0
    for (ident, number), image in sorted(images.items()):
        in_sets = [name for name, nums in sets.items() if number in nums]
        if number in gallery_numbers:
            gallery.append(image.sample_id)
        elif in_sets:
            if ident not in with_gallery:
                excluded.append(
                    {
                        "sample_id": image.sample_id,
                        "reason": f"identity {ident} has no gallery image (needs one of {list(gallery_numbers)})",
                    }
                )
                continue
            for name in in_sets:
                probes[name].append(image.sample_id)
        else:
            unused += 1
            continue
        identity[image.sample_id] = ident

    info = {
        "dataset": "AR",
        "protocol": protocol,
        "task": "closed-set identification, rank-1, each probe set reported separately",
        "gallery_images": list(gallery_numbers),
        "probe_sets": {name: list(nums) for name, nums in sets.items()},
        "conditions": {str(k): v for k, v in AR_CONDITIONS.items()},
        "identities": len(with_gallery),
        "unused": unused,
        "source": SOURCE,
    }
    return Protocol(
        name=f"ar-protocol-{protocol}", gallery=gallery, probes=probes, identity=identity, excluded=excluded, info=info
    )
