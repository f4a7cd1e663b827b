"""LFW pair benchmarks: LFW-OCC, LFW_block, LFW_poly, MSML's random blocks, LFW-Masked, one
category per benchmark.

All keep the 6,000 official View 2 pairs in their 10 folds: a pair whose image is missing or
failed is still listed in pairs.jsonl, flagged with the reason. Sample keys are
`[rr]PPPPs` (repeat, pair index, side a|b), so every pair side is its own sample with its own
seed, even when LFW uses one image in several pairs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from occsynth import contract
from occsynth.benchmarks.base import HARMONIZE_OPTION, Builder, BuildJob, harmonized, register_builder
from occsynth.benchmarks.protocols.lfw import read_lfw_pairs
from occsynth.build import BuildConfig, PlannedSample
from occsynth.build.stages import composer
from occsynth.io.atomic import write_text
from occsynth.io.dataset import Dataset
from occsynth.occluders.families.geometric import FILLS
from occsynth.occluders.families.importers import load_maskthefaces
from occsynth.sources import open_source

PAIRS_FILE = "pairs.jsonl"
DRAWS = ("percent", "uniform")  # lfw-randblock: how the block area is drawn from its range
MASK_STYLES = ("mask3d", "maskthefaces")  # lfw-masked


def lfw_inputs(lfw: str, pairs: str | None, folds: tuple[int, ...] = ()):
    """The LFW source and its pairs (pairs.txt beside the archive/folder when not given). The
    pairs and folds are checked first: a bad value fails before the archive is opened."""
    if pairs is None:
        candidate = Path(lfw).resolve().parent / "pairs.txt"
        if not candidate.exists():
            raise click.UsageError(f"--pairs not given and no pairs.txt beside {lfw}")
        pairs = str(candidate)
    protocol = read_lfw_pairs(pairs)
    if folds:
        available = sorted({p.fold for p in protocol})
        absent = sorted(set(folds) - set(available))
        if absent:
            raise click.BadParameter(
                f"fold(s) {', '.join(map(str, absent))} not in {pairs}, which has fold(s) "
                f"{', '.join(map(str, available))} (numbered from 0)",
                param_hint="'--folds'",
            )
        protocol = [p for p in protocol if p.fold in folds]
    return open_source(lfw), protocol, pairs


def parse_folds(text: str) -> tuple[int, ...]:
    """'0,1' -> (0, 1); BadParameter for anything but comma-separated integers >= 0."""
    try:
        folds = tuple(int(f) for f in text.split(",") if f.strip())
    except ValueError:
        raise click.BadParameter(
            f"expected fold numbers such as 0 or 0,1, got {text!r}", param_hint="'--folds'"
        ) from None
    if any(f < 0 for f in folds):
        raise click.BadParameter(f"fold numbers start at 0, got {text!r}", param_hint="'--folds'")
    return folds


def pair_plan(protocol, items_by_id: dict, specs: dict[str, str], tag: str, repeats: int = 1) -> list[PlannedSample]:
    """One sample per (repeat, pair, side) whose image exists; specs maps side -> spec name."""
    plan = []
    for repeat in range(repeats):
        for pair in protocol:
            for side, sid in (("a", pair.a), ("b", pair.b)):
                item = items_by_id.get(sid)
                if item is None:
                    continue  # flagged in pairs.jsonl by write_pairs
                extra = {"pair": pair.index, "fold": pair.fold, "side": side, "issame": pair.issame}
                if repeats > 1:
                    extra["repeat"] = repeat
                key = (f"{repeat:02d}" if repeats > 1 else "") + f"{pair.index:04d}{side}"
                plan.append(
                    PlannedSample(key, f"{tag}/r{repeat}/pair{pair.index}/{side}/{sid}", item, specs[side], extra)
                )
    return plan


def write_pairs(out: Path, protocol, items_by_id: dict, repeats: int = 1) -> dict:
    """pairs.jsonl: every protocol pair (x repeats), with keys, flagged when a side has no sample."""
    dataset = Dataset(out)
    built = {}
    for meta in dataset.index():
        extra = meta["extra"]
        built[(extra.get("repeat", 0), extra["pair"], extra["side"])] = meta["key"]
    failures = {f["key"]: f"{f['stage']}: {f['reason']}" for f in dataset.failures()}
    rows, flagged = [], 0
    for repeat in range(repeats):
        for pair in protocol:
            row = {"pair": pair.index, "fold": pair.fold, "issame": bool(pair.issame), "a_id": pair.a, "b_id": pair.b}
            if repeats > 1:
                row["repeat"] = repeat
            reasons = []
            for side, sid in (("a", pair.a), ("b", pair.b)):
                key = built.get((repeat, pair.index, side))
                row[side] = key
                if key is None:
                    planned_key = (f"{repeat:02d}" if repeats > 1 else "") + f"{pair.index:04d}{side}"
                    why = (
                        "image missing from the source"
                        if sid not in items_by_id
                        else failures.get(planned_key, "no sample")
                    )
                    reasons.append(f"{side}={sid}: {why}")
            row["flagged"], row["reason"] = bool(reasons), "; ".join(reasons)
            flagged += bool(reasons)
            rows.append(row)
    write_text(out / PAIRS_FILE, contract.dumps_lines(rows))
    return {"pairs": len(rows), "flagged_pairs": flagged, "folds": len({p.fold for p in protocol})}


def _achieved(out: Path, side: str | None = None) -> dict:
    ratios = [m["occlusion_ratio"] for m in Dataset(out).index() if side is None or m["extra"]["side"] == side]
    mean = sum(ratios) / len(ratios) if ratios else 0.0
    return {"mean_occlusion_ratio" + (f"_side_{side}" if side else ""): round(mean, 6)}


class LFWBuilder(Builder):
    """Shared LFW options and plumbing; subclasses give the occlusion of each side."""

    occluded_sides = ("b",)
    base_options = [
        click.option(
            "--lfw",
            required=True,
            type=click.Path(exists=True),
            help="LFW folder (<Name>/<Name>_0001.jpg) or lfw-deepfunneled.tgz / lfw.tgz.",
        ),
        click.option(
            "--pairs",
            type=click.Path(exists=True),
            default=None,
            help="LFW View 2 pairs.txt (default: pairs.txt beside --lfw).",
        ),
        click.option("--folds", default="", help="Only these folds, e.g. 0 or 0,1 (default: all 10)."),
        HARMONIZE_OPTION,
    ]

    def jobs(self, config: BuildConfig, lfw: str, pairs: str | None, folds: str, **options) -> list[BuildJob]:
        fold_ids = parse_folds(folds)
        levels, occluded_sides = self.levels(options), self.sides(options)  # bad options fail before any work
        levels = [(subdir, harmonized(spec, options.get("harmonize") is not False)) for subdir, spec in levels]
        for _, spec in levels:
            composer(spec)  # values first: before the source is listed or decompressed
        source, protocol, pairs_path = lfw_inputs(lfw, pairs, fold_ids)
        items_by_id = {item.sample_id: item for item in source.items()}
        repeats = int(options.get("repeats", 1))
        jobs = []
        for subdir, spec in levels:
            side_specs = {side: ("occ" if side in occluded_sides else "") for side in ("a", "b")}
            job_config = dataclasses.replace(config, name=self.name, specs={"": None, "occ": spec})
            plan = pair_plan(protocol, items_by_id, side_specs, tag=f"{self.name}/{subdir or 'all'}", repeats=repeats)

            def finish(out: Path, manifest: dict, protocol=protocol, repeats=repeats) -> dict:
                facts = write_pairs(out, protocol, items_by_id, repeats)
                for side in occluded_sides:
                    facts.update(_achieved(out, side))
                return facts

            jobs.append(
                BuildJob(
                    subdir,
                    job_config,
                    plan,
                    source,
                    finish,
                    facts={
                        "pairs_file": str(pairs_path),
                        "occluded_sides": list(occluded_sides),
                        "level": subdir or None,
                        "repeats": repeats,
                    },
                )
            )
        return jobs

    def levels(self, options: dict) -> list[tuple[str, Any]]:
        """[(dataset subdir, occlusion spec of the occluded sides)], one dataset each."""
        raise NotImplementedError

    def sides(self, options: dict) -> tuple[str, ...]:
        """The pair sides that get the occlusion ("a", "b" or both)."""
        return self.occluded_sides


@register_builder
class LFWOcc(LFWBuilder):
    name = "lfw-occ"
    help = (
        "LFW-OCC: the second image of every official pair occluded by realistic objects from the "
        "evaluation split, sized so the MEAN occluded area equals --ratio (0.43 -> LFW-OCC-2.0, "
        "43.09%; 0.52 -> LFW-OCC-3.0, 52.00%)."
    )
    options = LFWBuilder.base_options + [
        click.option(
            "--ratio",
            type=click.FloatRange(0.0, 1.0, min_open=True),
            default=0.43,
            show_default=True,
            help="Target mean occluded area (fraction of the aligned image).",
        ),
        click.option(
            "--spread",
            type=click.FloatRange(min=0.0),
            default=None,
            help="Per-image targets are uniform in ratio +- spread (default from the definition).",
        ),
    ]

    def target(self, ratio: float) -> tuple[float, str | None]:
        for variant in self.definition["variants"]:
            if abs(variant["ratio"] - ratio) < 0.005:
                return variant["mean_occluded_area"], variant["name"]
        return ratio, None

    def levels(self, options):
        target, _ = self.target(options["ratio"])
        spread = options.get("spread")
        spread = self.definition["defaults"]["spread"] if spread is None else spread
        if not (0.0 < target - spread and target + spread <= 1.0):
            raise click.BadParameter(
                f"per-image targets {target} +- {spread} must stay in (0, 1]; lower --spread",
                param_hint="'--ratio' / '--spread'",
            )
        occluder = {"name": "object", "params": dict(self.definition["defaults"]["object"])}
        spec = {"name": "fit_area", "params": {"ratio": [target - spread, target + spread], "occluder": occluder}}
        return [("", spec)]


@register_builder
class LFWBlock(LFWBuilder):
    name = "lfw-block"
    help = (
        "LFW_block (MSML's protocol): both images of every pair occluded by a black square covering "
        "level% of the image, one dataset per level under DIR/level-XX."
    )
    occluded_sides = ("a", "b")
    options = LFWBuilder.base_options + [
        click.option("--levels", default=None, help="Comma-separated percentages (default 0,10,...,90)."),
        click.option(
            "--repeats",
            type=click.IntRange(min=1),
            default=None,
            help="Repetitions with distinct seeds (default from the definition).",
        ),
        click.option("--fill", type=click.Choice(FILLS), default="black", show_default=True, help="Block fill."),
    ]
    shape = "block"

    def levels(self, options):
        defaults = self.definition["defaults"]
        levels = options.get("levels") or ",".join(str(v) for v in defaults["levels"])
        out = []
        try:
            values = [int(v) for v in str(levels).split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(
                f"expected percentages such as 10,20, got {levels!r}", param_hint="'--levels'"
            ) from None
        if not values:
            raise click.BadParameter("no level given", param_hint="'--levels'")
        for level in values:
            if not 0 <= level <= 100:
                raise click.BadParameter(f"level {level} is not a percentage in [0, 100]", param_hint="'--levels'")
            spec = (
                None
                if level == 0
                else {"name": self.shape, "params": {"ratio": level / 100, "fill": options.get("fill", "black")}}
            )
            out.append((f"level-{level:02d}", spec))
        return out

    def jobs(self, config, **options):
        if options.get("repeats") is None:
            options["repeats"] = self.definition["defaults"]["repeats"]
        return super().jobs(config, **options)


@register_builder
class LFWPoly(LFWBlock):
    name = "lfw-poly"
    help = (
        "LFW_poly: both images of every pair occluded by a random connected polygon covering level% "
        "of the image, one dataset per level under DIR/level-XX."
    )
    shape = "polygon"


@register_builder
class LFWRandBlock(LFWBuilder):
    name = "lfw-randblock"
    help = (
        "MSML's random-block set: both images of every pair occluded by one black square whose area "
        "is drawn per image from --range (1-40% of the image by default), at a uniform random position."
    )
    occluded_sides = ("a", "b")
    options = LFWBuilder.base_options + [
        click.option(
            "--range",
            "area_range",
            default=None,
            help="LO,HI: block area in percent of the image, both ends included (default 1,40).",
        ),
        click.option(
            "--draw",
            type=click.Choice(DRAWS),
            default=None,
            help="percent: whole percentages LO..HI equally likely (MSML's released code, default); "
            "uniform: any area in [LO, HI] percent.",
        ),
        click.option(
            "--repeats", type=int, default=None, help="Repetitions with distinct seeds (default from the definition)."
        ),
        click.option(
            "--fill",
            type=click.Choice(["black", "white", "noise", "mean"]),
            default=None,
            help="Block fill (default black, as MSML; its 'gauss' fill is closest to noise).",
        ),
    ]

    def levels(self, options):
        defaults = self.definition["defaults"]
        text = options.get("area_range") or ",".join(str(v) for v in defaults["range_percent"])
        try:
            lo, hi = (float(v) for v in text.split(","))
        except ValueError:
            raise click.BadParameter(f"--range expects LO,HI in percent such as 1,40, got {text!r}") from None
        if not 0 < lo <= hi <= 100:
            raise click.BadParameter(f"--range {text!r}: need 0 < LO <= HI <= 100 (percent of the image)")
        draw = options.get("draw") or defaults["draw"]
        if draw == "percent":
            if lo != int(lo) or hi != int(hi):
                raise click.BadParameter(f"--range {text!r}: --draw percent needs whole percentages")
            ratio: Any = {"choice": [round(p / 100.0, 2) for p in range(int(lo), int(hi) + 1)]}
        else:
            ratio = [lo / 100.0, hi / 100.0]
        return [("", {"name": "block", "params": {"ratio": ratio, "fill": options.get("fill") or defaults["fill"]}})]

    def jobs(self, config, **options):
        if options.get("repeats") is None:
            options["repeats"] = self.definition["defaults"]["repeats"]
        return super().jobs(config, **options)


@register_builder
class LFWMasked(LFWBuilder):
    name = "lfw-masked"
    help = (
        "LFW-Masked: the second image of every pair wears a face mask: 3D-rendered or template "
        "(--style mask3d, default), or MaskTheFace's templates as ALOB built it "
        "(--style maskthefaces --maskthefaces PATH)."
    )
    options = LFWBuilder.base_options + [
        click.option(
            "--style",
            type=click.Choice(MASK_STYLES),
            default="mask3d",
            show_default=True,
            help="mask3d: 3D masks and surgical templates; maskthefaces: MaskTheFace templates (ALOB).",
        ),
        click.option(
            "--maskthefaces",
            "maskthefaces_path",
            type=click.Path(exists=True),
            default=None,
            help="MaskTheFace checkout (the folder holding masks/masks.cfg); needed by --style maskthefaces.",
        ),
        click.option(
            "--mask-types",
            default=None,
            help="--style maskthefaces: comma-separated masks.cfg names (e.g. surgical), or random "
            "(default: each masked image draws one of the frontal templates, MaskTheFace's random).",
        ),
        click.option(
            "--masked-sides",
            type=click.Choice(["b", "both"]),
            default="b",
            show_default=True,
            help="Which image of a pair wears the mask.",
        ),
    ]

    def sides(self, options):
        return ("a", "b") if options.get("masked_sides") == "both" else ("b",)

    def levels(self, options):
        style = options.get("style") or "mask3d"
        path, types = options.get("maskthefaces_path"), options.get("mask_types")
        if style == "mask3d":
            if path or types:
                raise click.UsageError("--maskthefaces and --mask-types apply to --style maskthefaces only")
            return [("", self.definition["occlusion"])]
        if not path:
            raise click.UsageError(
                "--style maskthefaces needs --maskthefaces PATH: a MaskTheFace checkout "
                "(github.com/aqeelanwar/MaskTheFace) holding masks/masks.cfg and masks/templates/*.png"
            )
        root = str(Path(path).resolve())
        entries = load_maskthefaces(root)  # a clear error now when the folder is not MaskTheFace's
        params = dict(self.definition["styles"]["maskthefaces"]["params"], path=root)
        if types and types.strip() != "random":
            names = [t.strip() for t in types.split(",") if t.strip()]
            unknown = [n for n in names if n not in entries]
            if unknown:
                raise click.BadParameter(
                    f"--mask-types {', '.join(unknown)} not in {root}/masks/masks.cfg; known: {', '.join(sorted(entries))}"
                )
            params["mask"] = names[0] if len(names) == 1 else names
        return [("", {"name": "maskthefaces", "params": params})]


def _category_builder(category: str, label: str):
    class LFWCategory(LFWBuilder):
        name = f"lfw-occ-{category.replace('_', '-')}"
        help = (
            f"LFW with one occluder category on the second image of every pair: {label} (SOIDN's per-category table)."
        )
        options = LFWBuilder.base_options

        @property
        def definition_name(self) -> str:
            return "lfw-occ-category"

        def levels(self, options):
            params = dict(self.definition["defaults"]["object"], category=category)
            return [("", {"name": "object", "params": params})]

    LFWCategory.__name__ = f"LFWOcc_{category}"
    return register_builder(LFWCategory)


for _category, _label in (
    ("sunglasses", "sunglasses"),
    ("eye_mask", "party mask"),
    ("scarf", "scarf"),
    ("surgical_mask", "doctor mask"),
    ("cup", "cup"),
):
    _category_builder(_category, _label)
