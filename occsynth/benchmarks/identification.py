"""Identification and real-occlusion sets built from user paths: MF1_occ, AR, MFR2.

These datasets are not redistributable; each builder reads the layout the user has and
writes protocol.json (gallery/probe/distractor keys) or pairs.jsonl beside the shards.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from occsynth.benchmarks.base import HARMONIZE_OPTION, Builder, BuildJob, harmonized, register_builder
from occsynth.benchmarks.protocols.ar import GALLERY_IMAGES, ar_protocol, parse_ar_name
from occsynth.benchmarks.protocols.identification import write_protocol_json
from occsynth.benchmarks.protocols.mf1 import GALLERY_MODES, mf1_protocol
from occsynth.benchmarks.protocols.mfr2 import read_mfr2_pairs
from occsynth.benchmarks.protocols.pairs import check_pairs_against, write_pairs_jsonl
from occsynth.build import BuildConfig, PlannedSample
from occsynth.io.dataset import Dataset
from occsynth.sources import open_source
from occsynth.sources.combined import CombinedSource


def one_sample_per_image(items, specs_of, tag: str, mask_known=lambda sid: True) -> list[PlannedSample]:
    """Keys are the running index over sorted sample ids; specs_of(sample_id) -> spec name;
    mask_known(sample_id) -> False for an image with real occlusion (its mask is unknown)."""
    items = sorted(items, key=lambda it: it.sample_id)
    width = max(6, len(str(len(items))))
    return [
        PlannedSample(
            f"{i:0{width}d}", f"{tag}/{it.sample_id}", it, specs_of(it.sample_id), mask_known=mask_known(it.sample_id)
        )
        for i, it in enumerate(items)
    ]


def ar_mask_known(sample_id: str) -> bool:
    """False for AR's sunglasses and scarf images (8-13, 21-26): real occlusions, no pixel mask."""
    image = parse_ar_name(sample_id)
    return image is None or not any(word in image.condition for word in ("sunglasses", "scarf"))


def parse_protocols(text: str) -> tuple[int, ...]:
    """'1,2' -> (1, 2); BadParameter for anything else."""
    try:
        numbers = tuple(dict.fromkeys(int(p) for p in text.split(",") if p.strip()))
    except ValueError:
        numbers = ()
    if not numbers or any(n not in GALLERY_IMAGES for n in numbers):
        raise click.BadParameter(
            f"expected AR protocols 1 and/or 2 such as 1,2, got {text!r}", param_hint="'--protocols'"
        )
    return numbers


def built_keys(out: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(source sample id -> key, source sample id -> failure reason) of a finished build."""
    dataset = Dataset(out)
    keys = {meta["source"]: meta["key"] for meta in dataset.index()}
    problems = {f["source"]: f"{f['stage']}: {f['reason']}" for f in dataset.failures()}
    return keys, problems


@register_builder
class MF1Occ(Builder):
    name = "mf1-occ"
    help = (
        "MF1_occ: a FaceScrub-style probe folder occluded with objects unseen in training, and a "
        "distractor folder passed through aligned (MegaFace challenge 1 style identification)."
    )
    options = [
        click.option(
            "--probes",
            required=True,
            type=click.Path(exists=True),
            help="Probe set <identity>/<images> (folder or archive).",
        ),
        click.option(
            "--distractors", required=True, type=click.Path(exists=True), help="Distractor images (folder or archive)."
        ),
        click.option(
            "--gallery-mode",
            type=click.Choice(GALLERY_MODES),
            default="rotate",
            show_default=True,
            help="rotate: each probe image in turn joins the distractors (MegaFace devkit); first: one round.",
        ),
        HARMONIZE_OPTION,
    ]

    def jobs(
        self, config: BuildConfig, probes: str, distractors: str, gallery_mode: str, harmonize: bool = True
    ) -> list[BuildJob]:
        source = CombinedSource({"probes": open_source(probes), "distractors": open_source(distractors)})
        ids = [it.sample_id for it in source.items()]
        protocol = mf1_protocol(
            [i for i in ids if i.startswith("probes/")],
            [i for i in ids if i.startswith("distractors/")],
            gallery_mode=gallery_mode,
        )
        spec = harmonized({"name": "object", "params": dict(self.definition["defaults"]["object"])}, harmonize)
        job_config = dataclasses.replace(config, name=self.name, specs={"": None, "occ": spec})
        plan = one_sample_per_image(source.items(), lambda sid: "occ" if sid.startswith("probes/") else "", self.name)

        def finish(out: Path, manifest: dict) -> dict:
            keys, problems = built_keys(out)
            doc = write_protocol_json(out / "protocol.json", protocol, keys, problems)
            return {
                "gallery": len(doc["gallery"]),
                "probes": {k: len(v) for k, v in doc["probes"].items()},
                "distractors": len(doc["distractors"]),
                "flagged": len(doc["flagged"]),
            }

        return [BuildJob("", job_config, plan, source, finish)]


@register_builder
class AR(Builder):
    name = "ar"
    help = (
        "AR face database protocols 1 (multi-image gallery) and 2 (single neutral gallery image) with "
        "real sunglasses and scarf probes; one dataset per protocol under DIR/protocol-N."
    )
    options = [
        click.option(
            "--ar",
            "ar_dir",
            required=True,
            type=click.Path(exists=True),
            help="AR images as distributed (m-001-01.bmp ...), in one folder or identity folders.",
        ),
        click.option("--protocols", default="1,2", show_default=True, help="Which protocols to build."),
    ]

    def jobs(self, config: BuildConfig, ar_dir: str, protocols: str) -> list[BuildJob]:
        numbers = parse_protocols(protocols)
        source = open_source(ar_dir)
        ids = [it.sample_id for it in source.items()]
        jobs = []
        for number in numbers:
            protocol = ar_protocol(ids, number)
            wanted = set(protocol.sample_ids())
            items = [it for it in source.items() if it.sample_id in wanted]
            # real sunglasses and scarves: their pixel masks are unknown (contract.MASK_KNOWN)
            plan = one_sample_per_image(items, lambda sid: "", f"{self.name}/p{number}", mask_known=ar_mask_known)

            def finish(out: Path, manifest: dict, protocol=protocol) -> dict:
                keys, problems = built_keys(out)
                doc = write_protocol_json(out / "protocol.json", protocol, keys, problems)
                return {
                    "gallery": len(doc["gallery"]),
                    "probes": {k: len(v) for k, v in doc["probes"].items()},
                    "flagged": len(doc["flagged"]),
                    "excluded": len(protocol.excluded),
                }

            jobs.append(
                BuildJob(
                    f"protocol-{number}",
                    dataclasses.replace(config, name=f"{self.name}-p{number}"),
                    plan,
                    source,
                    finish,
                )
            )
        return jobs


@register_builder
class MFR2(Builder):
    name = "mfr2"
    help = "MFR2: real masked faces, aligned, with their verification pairs (pairs.jsonl; flagged when an image is missing)."
    options = [
        click.option(
            "--mfr2", "mfr2_dir", required=True, type=click.Path(exists=True), help="MFR2 folder <identity>/<images>."
        ),
        click.option("--pairs", required=True, type=click.Path(exists=True), help="MFR2's pairs.txt."),
    ]

    def jobs(self, config: BuildConfig, mfr2_dir: str, pairs: str) -> list[BuildJob]:
        source = open_source(mfr2_dir)
        ids = [it.sample_id for it in source.items()]
        protocol = read_mfr2_pairs(pairs, ids)
        missing = {m.sample_id for m in check_pairs_against(protocol, ids)}
        # MFR2's faces wear real masks (some do not, which is not recorded): no pixel mask is known
        plan = one_sample_per_image(source.items(), lambda sid: "", self.name, mask_known=lambda sid: False)

        def finish(out: Path, manifest: dict) -> dict:
            keys, problems = built_keys(out)
            problems.update({sid: "image missing from the source" for sid in missing})
            rows = write_pairs_jsonl(out / "pairs.jsonl", protocol, keys, problems)
            return {"pairs": len(rows), "flagged_pairs": sum(r["flagged"] for r in rows)}

        return [BuildJob("", dataclasses.replace(config, name=self.name), plan, source, finish)]
