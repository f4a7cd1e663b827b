"""MegaFace challenge 1 style identification: a probe set laid out ``<identity>/<images>``
(FaceScrub in the challenge) and a distractor set (MegaFace's 1M images; flat or nested, the
distractors' identities are not used).

Convention (the MegaFace devkit's, as reimplemented e.g. by FaceX-Zoo's
``test_protocol/megaface/megaface_evaluator.py``: "Add Mi to megaface and test other M-1
photos"): for each probe identity with M images, each image in turn is added to the distractor
gallery and the other M-1 images of that identity are its probes; rank-1 identification over
all such (gallery image, probe) tests. This is ``gallery_mode="rotate"`` (the default): every
probe image is both a gallery candidate and a probe, and :func:`rotations` enumerates the
tests. ``gallery_mode="first"`` is the single-round simplification: the first image of each
identity (sorted by sample id) is the gallery image, the rest are probes.

An identity with a single image cannot take part (no probe is left once it is the gallery): its
image goes to ``excluded`` with that reason.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from occsynth.benchmarks.protocols.identification import Protocol

__all__ = ["GALLERY_MODES", "mf1_protocol", "rotations"]

GALLERY_MODES = ("rotate", "first")
SOURCE = (
    "MegaFace challenge 1 (Kemelmacher-Shlizerman et al., CVPR 2016), FaceScrub probes; "
    "rank-1 identification with each probe image in turn added to the distractors"
)


def mf1_protocol(
    probe_ids: Iterable[str],
    distractor_ids: Iterable[str],
    *,
    gallery_mode: str = "rotate",
) -> Protocol:
    """Build the protocol from the sample ids of the probe source (identity = first path
    component, as :mod:`occsynth.sources` assigns it) and of the distractor source.

    The two id lists must not share an id: a builder reading both from one dataset must give
    them distinct prefixes (e.g. "facescrub/..." and "megaface/...").
    """
    if gallery_mode not in GALLERY_MODES:
        raise ValueError(f"gallery_mode must be one of {GALLERY_MODES}, got {gallery_mode!r}")
    probe_ids = sorted(set(probe_ids))
    distractors = sorted(set(distractor_ids))
    shared = sorted(set(probe_ids) & set(distractors))
    if shared:
        raise ValueError(
            f"{len(shared)} id(s) are both probe and distractor, e.g. {shared[:3]}; prefix the two sources differently"
        )

    by_identity: dict[str, list[str]] = {}
    excluded: list[dict] = []
    for sid in probe_ids:
        identity, slash, _ = sid.partition("/")
        if not slash:
            excluded.append({"sample_id": sid, "reason": "probe image outside an identity folder"})
            continue
        by_identity.setdefault(identity, []).append(sid)

    gallery: list[str] = []
    probes: list[str] = []
    identity_of: dict[str, str] = {}
    for identity, ids in sorted(by_identity.items()):
        if len(ids) < 2:
            excluded.append(
                {
                    "sample_id": ids[0],
                    "reason": f"identity {identity} has a single image: no probe is left once it is the gallery",
                }
            )
            continue
        if gallery_mode == "rotate":
            gallery.extend(ids)
            probes.extend(ids)
        else:
            gallery.append(ids[0])
            probes.extend(ids[1:])
        for sid in ids:
            identity_of[sid] = identity

    info = {
        "dataset": "MegaFace challenge 1 style",
        "task": "rank-1 identification against the distractors",
        "gallery_mode": gallery_mode,
        "rule": (
            "rotate: each probe image in turn is the gallery image of its identity (added to the "
            "distractors); the identity's other images are its probes"
            if gallery_mode == "rotate"
            else "first: the first image (by sample id) of each identity is its gallery image; the others are probes"
        ),
        "identities": sum(1 for ids in by_identity.values() if len(ids) >= 2),
        "distractors": len(distractors),
        "source": SOURCE,
    }
    return Protocol(
        name=f"mf1-{gallery_mode}",
        gallery=gallery,
        probes={"probes": probes},
        identity=identity_of,
        distractors=distractors,
        excluded=excluded,
        info=info,
    )


def rotations(protocol: Protocol) -> Iterator[tuple[str, list[str]]]:
    """(gallery image, its probes) for every test of the protocol, in a stable order.

    rotate: M tests per identity of M images; first: one test per identity."""
    by_identity: dict[str, list[str]] = {}
    for sid in protocol.probes["probes"]:
        by_identity.setdefault(protocol.identity[sid], []).append(sid)
    for sid in protocol.gallery:
        identity = protocol.identity[sid]
        yield sid, [p for p in by_identity.get(identity, []) if p != sid]
