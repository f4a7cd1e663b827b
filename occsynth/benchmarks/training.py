"""Training sets from any identity-folder dataset (CASIA-WebFace / MS1M layout) or a
`train.rec`: occluded variants for FROM/ALOB-style training, and PDSN's grid pairs."""

from __future__ import annotations

import dataclasses

import click

from occsynth.benchmarks.base import HARMONIZE_OPTION, Builder, BuildJob, harmonized, register_builder
from occsynth.build import BuildConfig, PlannedSample
from occsynth.build.stages import composer
from occsynth.occluders import load_spec
from occsynth.occluders.families.geometric import FILLS
from occsynth.sources import open_source

SRC_OPTIONS = [
    click.option(
        "--src",
        required=True,
        type=click.Path(exists=True),
        help="Identity folders, a .tar/.tgz of them, or an insightface train.rec (train.idx beside it).",
    ),
    click.option(
        "--aligned", is_flag=True, help="Inputs are already aligned crops (e.g. a train.rec): skip detection."
    ),
    click.option("--keep-clean", is_flag=True, help="Store the unoccluded face beside each occluded one (.clean.png)."),
]


def variant_plan(items, tag: str, clean: int, occluded: int, occluded_spec: str = "occ") -> list[PlannedSample]:
    """Per source image: `clean` clean samples then `occluded` occluded ones, each with its own seed.
    Samples of one image are adjacent and share `extra.group` (the clean/occluded pairing)."""
    per = clean + occluded
    items = sorted(items, key=lambda it: it.sample_id)
    width = max(7, len(str(len(items) * per)))
    plan = []
    for i, item in enumerate(items):
        for v in range(per):
            is_clean = v < clean
            plan.append(
                PlannedSample(
                    f"{i * per + v:0{width}d}",
                    f"{tag}/{item.sample_id}#{v}",
                    item,
                    "" if is_clean else occluded_spec,
                    {"group": i, "variant": v, "clean": is_clean},
                )
            )
    return plan


def identities_over(items, n: int) -> list:
    """The items of identities with more than `n` items (source images), e.g. SOIDN's CASIA-WebFace
    identities with more than 50 images."""
    items = list(items)
    counts: dict[str, int] = {}
    for item in items:
        counts[item.identity] = counts.get(item.identity, 0) + 1
    return [item for item in items if counts[item.identity] > n]


def parse_ratio(text: str) -> tuple[int, int]:
    try:
        clean, occluded = (int(v) for v in text.split(":"))
    except ValueError:
        raise click.BadParameter(f"expected CLEAN:OCCLUDED such as 1:2, got {text!r}") from None
    if clean < 0 or occluded < 0 or clean + occluded == 0:
        raise click.BadParameter(f"{text!r}: counts must be >= 0 and not both 0")
    return clean, occluded


@register_builder
class OccTrain(Builder):
    name = "occ-train"
    help = (
        "Occluded training set (OCC-CASIA-WebFace style): each image CLEAN times clean and OCCLUDED "
        "times occluded (--ratio 1:2 by default, FROM/ALOB), with training-split occluders."
    )
    on_no_face = "skip"
    options = SRC_OPTIONS + [
        click.option(
            "--ratio",
            "clean_occluded",
            default="1:2",
            show_default=True,
            help="Clean:occluded samples per source image.",
        ),
        click.option("--occlude", "spec", default=None, help="Occlusion spec (default: the definition's preset)."),
        click.option(
            "--identity-images-over",
            "identity_images_over",
            type=click.IntRange(min=0),
            default=None,
            help="Keep only identities with more than N source images (SOIDN: 50).",
        ),
        HARMONIZE_OPTION,
    ]

    def jobs(
        self,
        config: BuildConfig,
        src: str,
        aligned: bool,
        keep_clean: bool,
        clean_occluded: str,
        spec: str | None,
        identity_images_over: int | None = None,
        harmonize: bool = True,
    ) -> list[BuildJob]:
        clean, occluded = parse_ratio(clean_occluded)
        if identity_images_over is not None and identity_images_over < 0:
            raise ValueError(f"identity_images_over must be >= 0, got {identity_images_over}")
        spec = harmonized(load_spec(spec or self.definition["defaults"]["spec"]), harmonize)
        composer(spec)  # values first: a bad spec fails before the source is listed
        source = open_source(src)
        items = source.items()
        facts: dict = {"clean_per_image": clean, "occluded_per_image": occluded}
        if identity_images_over is not None:
            items = identities_over(items, identity_images_over)
            if not items:
                raise ValueError(f"{src}: no identity has more than {identity_images_over} images")
            facts |= {"identity_images_over": identity_images_over, "identities": len({i.identity for i in items})}
        job_config = dataclasses.replace(
            config, name=self.name, aligned_input=aligned, keep_clean=keep_clean, specs={"": None, "occ": spec}
        )
        plan = variant_plan(items, self.name, clean, occluded)
        return [BuildJob("", job_config, plan, source, facts=facts)]


@register_builder
class PDSNPairs(Builder):
    name = "pdsn-pairs"
    help = (
        "PDSN mask-generator pairs: each image clean, plus variants with one cell of the 5x5 grid "
        "occluded (optionally with its 4-neighbours); the cell index is in the occluder record."
    )
    on_no_face = "skip"
    options = SRC_OPTIONS + [
        click.option(
            "--cells",
            type=click.Choice(["all", "central"]),
            default="all",
            show_default=True,
            help="Draw the occluded cell from all 25 or from the 9 central cells.",
        ),
        click.option("--with-neighbours", is_flag=True, help="Also occlude the cell's 4-neighbours."),
        click.option(
            "--variants", type=click.IntRange(min=1), default=1, show_default=True, help="Occluded variants per image."
        ),
        click.option("--fill", type=click.Choice(FILLS), default="black", show_default=True, help="Cell fill."),
    ]

    def jobs(
        self,
        config: BuildConfig,
        src: str,
        aligned: bool,
        keep_clean: bool,
        cells: str,
        with_neighbours: bool,
        variants: int,
        fill: str,
    ) -> list[BuildJob]:
        source = open_source(src)
        spec = {
            "name": "grid_cell",
            "params": {
                "cell": cells,
                "grid": self.definition["defaults"]["grid"],
                "with_neighbours": with_neighbours,
                "fill": fill,
            },
        }
        job_config = dataclasses.replace(
            config, name=self.name, aligned_input=aligned, keep_clean=keep_clean, specs={"": None, "occ": spec}
        )
        return [BuildJob("", job_config, variant_plan(source.items(), self.name, 1, variants), source)]
