"""The `occsynth` command line. Each command is a thin layer over the module of the same idea:
align/demo -> build, verify/preview/card -> inspect, build NAME -> benchmarks, export -> io,
occluders -> occluders, make-templates/render-masks -> authoring.

The CLI owns the output: it configures the "occsynth" logger (-v, --quiet) and turns expected
errors into one `Error: ...` line: exit 2 for bad usage (click's own checks, occsynth.errors.
UsageError, unknown names), 1 for failed work (every other expected error); --debug shows the
traceback instead. Values are checked before any work: option ranges by click types, occlusion
specs by compiling them, the build config by BuildConfig.validate.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import sys
import threading
from pathlib import Path

import click

from occsynth import __version__, contract
from occsynth.benchmarks import BUILDERS, list_builders
from occsynth.build import BuildConfig, plan_align
from occsynth.build import build as run_build_pipeline
from occsynth.build.executor import create_executor
from occsynth.build.locks import compare_lock, make_lock
from occsynth.build.pipeline import DatasetBuild, build_all
from occsynth.build.stages import composer, stored_detections
from occsynth.clikit import OccsynthCommand, OccsynthGroup, setup_logging
from occsynth.faces.landmarks import LandmarkCache
from occsynth.faces.templates import DEFAULT_TEMPLATE, TEMPLATES
from occsynth.inspect.card import warm_up as card_warm_up
from occsynth.inspect.card import write_card
from occsynth.inspect.preview import write_preview
from occsynth.inspect.verify import verify_dataset
from occsynth.io.atomic import write_text
from occsynth.io.dataset import Dataset
from occsynth.io.export import FORMATS
from occsynth.io.export import export as run_export
from occsynth.occluders import list_occluders
from occsynth.sources import open_source
from occsynth.sources.fetch import fetch_dataset

log = logging.getLogger("occsynth")

DEMO_SPEC = (
    "0.2*clean | 0.2*block(ratio=0.2..0.4) | 0.2*ellipse(ratio=0.15..0.35, fill=noise) | 0.2*sunglasses | 0.2*mask3d"
)


def _command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["occsynth", *sys.argv[1:]])


def build_options(f, on_no_face: str = "skip"):
    """Options shared by every command that builds a dataset."""
    options = [
        click.option(
            "--template",
            type=click.Choice(sorted(TEMPLATES)),
            default=DEFAULT_TEMPLATE,
            show_default=True,
            help="Alignment template (output size and 5 reference points).",
        ),
        click.option(
            "--seed",
            type=int,
            default=0,
            show_default=True,
            help="Global seed; each sample's seed derives from it and the sample's id.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=1),
            default=2,
            show_default=True,
            help="Processes at work in parallel: this one and N-1 workers.",
        ),
        click.option(
            "--executor",
            type=click.Choice(["process", "serial", "ray"]),
            default="process",
            show_default=True,
            help="Where shard tasks run (ray: pip install 'occsynth[ray]').",
        ),
        click.option(
            "--shard-size", type=click.IntRange(min=1), default=1000, show_default=True, help="Samples per shard."
        ),
        click.option(
            "--on-no-face",
            type=click.Choice(["skip", "center-crop", "fail"]),
            default=on_no_face,
            show_default=True,
            help="No face found: skip (recorded in failures.jsonl), center-crop, or fail the run.",
        ),
        click.option(
            "--redetect",
            type=click.Choice(["padded", "none"]),
            default="padded",
            show_default=True,
            help="No face found: first detect again on the image padded to a 1.6x canvas (recorded as "
            "align_mode detected-padded), or none (builds made before it, byte for byte), then --on-no-face.",
        ),
        click.option(
            "--multi-face",
            type=click.Choice(["center", "largest"]),
            default="center",
            show_default=True,
            help="Several faces found: keep the one closest to the centre, or the largest.",
        ),
        click.option(
            "--format",
            "image_format",
            type=click.Choice(["png", "jpg"]),
            default="png",
            show_default=True,
            help="Image encoding inside the shards (masks are always PNG).",
        ),
        click.option(
            "--landmarks",
            "landmark_files",
            multiple=True,
            type=click.Path(exists=True),
            help="Reuse detections from a landmarks.jsonl (or a dataset dir holding one). Repeatable.",
        ),
        click.option(
            "--no-cache",
            is_flag=True,
            help="Do not read or update the detection cache ($OCCSYNTH_CACHE or ~/.cache/occsynth).",
        ),
        click.option("--device", default="cpu", show_default=True, help="Torch device for detection (cpu, cuda)."),
        click.option(
            "--min-face-size",
            type=click.IntRange(min=1),
            default=40,
            show_default=True,
            help="MTCNN minimum face size (px); 40 suits LFW-like crops, lower it for small faces.",
        ),
        click.option(
            "--detect-batch",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Images per MTCNN call. >1 is faster on GPU, but landmarks may then differ in the "
            "last digit with the batch-mates, so checksums depend on shard composition.",
        ),
        click.option(
            "--max-failure-rate",
            type=click.FloatRange(0.0, 1.0),
            default=None,
            help="Fail (exit 1) when more than this share of the planned samples could not be made "
            "(a build that makes none always fails).",
        ),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=OccsynthGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="occsynth")
@click.option("-v", "--verbose", count=True, help="More log output (-v: debug).")
@click.option("-q", "--quiet", "quiet_log", is_flag=True, help="Warnings and errors only.")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet_log: bool, debug: bool) -> None:
    """occsynth: occluded-face datasets with exact pixel masks.

    \b
    Typical flow:
      occsynth align lfw-deepfunneled.tgz --out lfw-aligned     # detect + align once
      occsynth build lfw-occ --lfw lfw-deepfunneled.tgz --ratio 0.43 --out lfw-occ-2.0
      occsynth verify lfw-occ-2.0 && occsynth preview lfw-occ-2.0 --out sheet.png
    Start with `occsynth demo`, which runs offline on photos shipped with the dependencies.
    """
    ctx.obj = {"debug": debug}
    setup_logging(verbose, quiet_log)


def make_config(opts: dict, *, name: str, spec=None, aligned: bool = False, keep_clean: bool = False):
    """A BuildConfig from the shared build options (plus the detection cache unless --no-cache)."""
    landmark_files = list(opts["landmark_files"])
    if not opts["no_cache"] and not aligned:
        cache = LandmarkCache()
        if cache.path.exists():
            # first: of two records of an image the later wins, and the files asked for by name
            # are the ones meant (another machine's detections, a lock's), not the cache's
            landmark_files.insert(0, str(cache.path))
    return BuildConfig(
        name=name,
        template=opts["template"],
        seed=opts["seed"],
        specs={"": spec},
        on_no_face=opts["on_no_face"],
        redetect=opts["redetect"],
        multi_face=opts["multi_face"],
        aligned_input=aligned,
        image_format=opts["image_format"],
        keep_clean=keep_clean,
        shard_size=opts["shard_size"],
        min_face_size=opts["min_face_size"],
        detect_batch=opts["detect_batch"],
        device=opts["device"],
        landmark_files=tuple(landmark_files),
    )


def remember_detections(config, out: Path, new_detections: int, opts: dict) -> None:
    """Merge a build's landmarks.jsonl into the detection cache (not with --no-cache), when it
    holds detections the cache may lack: some were run, or some came from --landmarks files."""
    if opts["no_cache"] or config.aligned_input:
        return
    cache = LandmarkCache()
    given = [f for f in config.landmark_files if Path(f).resolve() != cache.path.resolve()]
    if new_detections or given:
        cache.update_from(Path(out) / contract.LANDMARKS)


@contextlib.contextmanager
def started_workers(opts: dict, config: BuildConfig):
    """The build's executor, its workers started at once: they import and read the stored
    landmarks (~1 s) while the parent lists the source and plans, instead of after it."""
    warm = [(stored_detections, (config.landmark_files,))] if config.landmark_files else []
    with create_executor(opts["executor"], opts["workers"]) as runner:
        runner.start(preload=("occsynth.build.shard",), warm=warm)
        yield runner


def run_job(config, plan, source, out: Path, opts: dict, runner=None) -> dict:
    """Build (or resume) one dataset, then remember its detections in the cache. (No protocol
    file or card follows: the workers need not parse the index back, pipeline.build_all.)"""
    return run_build_pipeline(
        config,
        plan,
        source,
        out,
        workers=opts["workers"],
        executor=opts["executor"],
        runner=runner,
        command=_command_line(),
        progress=not opts["quiet"],
        max_failure_rate=opts.get("max_failure_rate"),
        on_built=lambda _, manifest, new: remember_detections(config, out, new, opts),
        parse_index=False,
    )


def run_build(
    source_spec: str, out: str, *, spec, variants: int, keep_clean: bool, aligned: bool, name: str, opts: dict
) -> dict:
    config = make_config(opts, name=name, spec=spec, aligned=aligned, keep_clean=keep_clean)
    config.validate()
    composer(spec)  # values first: a bad spec fails before the source is listed or decompressed
    with started_workers(opts, config) as runner:
        source = open_source(source_spec)
        plan = plan_align(source.items(), spec="", variants=variants)
        return run_job(config, plan, source, Path(out), opts, runner)


def _report(manifest: dict, out: str) -> None:
    totals, stats = manifest["totals"], manifest["stats"]
    click.echo(f"wrote {totals['samples']} samples in {totals['shards']} shard(s) to {out}")
    click.echo(
        f"  identities: {stats['identities']}, mean occlusion ratio: "
        f"{100 * stats['occlusion_ratio']['mean']:.2f}% ({stats['occluded_samples']} occluded)"
    )
    if stats.get("mask_unknown"):
        click.echo(f"  {stats['mask_unknown']} sample(s) with real occlusions and no pixel masks (mask_known: false)")
    if totals["failures"]:
        click.echo(
            f"  {totals['failures']} planned sample(s) could not be made, see {Path(out) / 'failures.jsonl'}: "
            + ", ".join(f"{k}: {v}" for k, v in stats["failure_reasons"].items())
        )


@main.command()
@click.argument("src")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output dataset directory.")
@click.option("--aligned", is_flag=True, help="Inputs are already aligned crops: skip detection.")
@click.option(
    "--occlude",
    "spec",
    default=None,
    help='Occlusion spec: a CLI string such as "block(ratio=0.3) | ellipse", a preset, or a .yaml/.json file.',
)
@click.option(
    "--variants", type=click.IntRange(min=1), default=1, show_default=True, help="Samples per source image (own seeds)."
)
@click.option("--keep-clean", is_flag=True, help="Also store the unoccluded face as <key>.clean.png.")
@build_options
def align(src, out, aligned, spec, variants, keep_clean, **opts):
    """Align the faces of SRC and write them as shards.

    SRC is a folder of <identity>/<image> files, a .tar/.tgz of one (LFW's
    lfw-deepfunneled.tgz works as is), or `embedded`. Detections are stored in
    DIR/landmarks.jsonl and in the cache, so later builds of the same images skip detection.
    """
    manifest = run_build(
        src, out, spec=spec, variants=variants, keep_clean=keep_clean, aligned=aligned, name="align", opts=opts
    )
    _report(manifest, out)


@main.command()
@click.option("--out", default="occsynth-demo", show_default=True, type=click.Path(file_okay=False))
@click.option(
    "--variants", type=click.IntRange(min=1), default=6, show_default=True, help="Occluded variants per photo."
)
@build_options
def demo(out, variants, **opts):
    """Offline demo on real photos shipped with scikit-image and matplotlib: align, occlude
    with several families, write shards, verify them and draw a preview sheet."""
    manifest = run_build(
        "embedded", out, spec=DEMO_SPEC, variants=variants, keep_clean=True, aligned=False, name="demo", opts=opts
    )
    _report(manifest, out)
    problems = verify_dataset(out)
    if problems:
        raise click.ClickException("demo output failed verification:\n" + "\n".join(problems))
    sheet = write_preview(out, Path(out) / "preview.png", limit=4 * variants, columns=variants)
    click.echo(f"verified; preview: {sheet}")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--no-decode", is_flag=True, help="Only check hashes and members, do not decode images.")
def verify(directory, no_decode):
    """Re-hash the shards of DIRECTORY and check every sample against the data contract."""
    problems = verify_dataset(directory, decode=not no_decode)
    if problems:
        for p in problems:
            click.echo(f"FAIL {p}", err=True)
        raise SystemExit(1)
    manifest = Dataset(directory).manifest
    click.echo(f"OK {directory}: {manifest['totals']['samples']} samples in {manifest['totals']['shards']} shards")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--limit", type=click.IntRange(min=1), default=32, show_default=True, help="Number of samples shown.")
@click.option("--columns", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True, help="Show every N-th sample.")
def preview(directory, out, limit, columns, every):
    """Contact sheet of DIRECTORY's samples: image, and image with the occlusion mask overlaid."""
    click.echo(f"wrote {write_preview(directory, out, limit=limit, columns=columns, every=every)}")


class _BuildGroup(OccsynthGroup):
    """Subcommands come from the builder registry (occsynth/builders)."""

    def list_commands(self, ctx):
        return list(list_builders())

    def get_command(self, ctx, name):
        builder = list_builders().get(name)
        return None if builder is None else _builder_command(builder)

    def resolve_command(self, ctx, args):
        if args and not args[0].startswith("-") and self.get_command(ctx, args[0]) is None:
            raise click.UsageError(BUILDERS.unknown_message(args[0]), ctx)
        return super().resolve_command(ctx, args)


def _builder_command(builder):
    def run(**opts):
        out = Path(opts.pop("out"))
        check, write_lock = opts.pop("check"), opts.pop("write_lock")
        build_keys = {p.name for p in build_options(lambda: None).__click_params__}
        shared = {k: opts.pop(k) for k in list(opts) if k in build_keys}
        config = make_config(shared, name=builder.name)
        config.validate()
        with started_workers(shared, config) as runner:  # the workers import while the jobs are planned
            jobs = builder.jobs(config, **opts)
            targets = [out / job.subdir for job in jobs]

            def built(i: int, manifest: dict, new_detections: int) -> None:
                # runs while the workers go on with the next datasets' shards
                job, target = jobs[i], targets[i]
                remember_detections(job.config, target, new_detections, shared)
                achieved = job.finish(target, manifest)
                facts = {"benchmark": builder.name, "definition": builder.definition, **job.facts, "achieved": achieved}
                write_text(target / "build_facts.json", json.dumps(facts, indent=2, sort_keys=True, default=str) + "\n")
                write_card(target, facts)
                click.echo(
                    f"[{builder.name}{'/' + job.subdir if job.subdir else ''}] "
                    f"{manifest['totals']['samples']} samples, {manifest['totals']['failures']} failures; "
                    + ", ".join(f"{k}={v}" for k, v in achieved.items())
                )

            # one set of workers for every dataset of the build (lfw-block's levels); each dataset's
            # lock is held until its protocol files and card are written
            threading.Thread(target=card_warm_up, name="card-warm-up", daemon=True).start()
            build_all(
                [DatasetBuild(job.config, job.plan, job.source, target) for job, target in zip(jobs, targets)],
                workers=shared["workers"],
                executor=shared["executor"],
                runner=runner,
                command=_command_line(),
                progress=not shared["quiet"],
                max_failure_rate=shared.get("max_failure_rate"),
                on_built=built,
            )
        lock = make_lock(builder.name, {**opts, **shared}, out, [job.subdir for job in jobs])
        if write_lock:
            write_text(Path(write_lock), json.dumps(lock, indent=2, sort_keys=True) + "\n")
            click.echo(f"lock written to {write_lock}")
        if check:
            problems = compare_lock(json.loads(Path(check).read_text()), lock)
            if problems:
                raise click.ClickException(f"build differs from {check}:\n" + "\n".join(problems[:50]))
            click.echo(f"identical to {check}")

    command = OccsynthCommand(
        builder.name,
        callback=run,
        context_settings=CONTEXT,
        help=builder.help + "\n\n" + builder.definition.get("reproduces", ""),
    )
    params = [
        click.Option(["--out"], required=True, type=click.Path(file_okay=False), help="Output directory."),
        click.Option(
            ["--check"],
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="Compare the build's checksums with a lock file; exit 1 on any difference.",
        ),
        click.Option(
            ["--write-lock"],
            type=click.Path(dir_okay=False),
            default=None,
            help="Write the build's checksums to this lock file.",
        ),
    ]
    own = lambda: None  # noqa: E731  (a carrier for click's option decorators)
    for option in reversed(builder.options):
        own = option(own)
    shared = build_options(lambda: None, on_no_face=builder.on_no_face)
    command.params = params + own.__click_params__[::-1] + shared.__click_params__[::-1]
    return command


@main.group(cls=_BuildGroup, context_settings=CONTEXT)
def build():
    """Build a named benchmark or training set (see `occsynth build NAME --help`).

    Each definition, with the facts it reproduces and its source paper, is data in
    occsynth/benchmarks/definitions/NAME.yaml. Every build writes shards, pairs.jsonl or protocol.json,
    card.md with plots, and can be checked against a committed lock (--check).
    """


@main.command()
@click.argument("name", type=click.Choice(["lfw"]))
@click.option("--to", "to_dir", required=True, type=click.Path(file_okay=False), help="Download directory.")
@click.option("--base-url", default=None, help="Mirror to download from instead of the official addresses.")
def fetch(name, to_dir, base_url):
    """Download a public dataset's official archives with checksum verification and resume."""
    for file_name, path in fetch_dataset(name, to_dir, base_url=base_url).items():
        click.echo(f"{file_name}: {path}")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(), help="Output file (insightface-bin, parquet) or folder.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True)
def export(directory, out, fmt):
    """Export a dataset for other tools: arcface_torch's .bin, plain folders, or parquet."""
    summary = run_export(directory, out, fmt)
    click.echo(json.dumps(summary, indent=2, default=str))


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def card(directory):
    """(Re)write DIRECTORY/card.md and its plots from the manifest, index and shards."""
    facts_path = Path(directory) / "build_facts.json"
    facts = json.loads(facts_path.read_text()) if facts_path.exists() else None
    click.echo(f"wrote {write_card(directory, facts)}")


@main.command("make-templates")
@click.option(
    "--out",
    default=None,
    type=click.Path(file_okay=False),
    help="Bank directory (default: the package's occsynth/assets/templates).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--variants",
    type=click.IntRange(min=1),
    default=None,
    help="Templates per category (default: the bank's own counts, 10 per category, 20 surgical masks).",
)
def make_templates(out, seed, variants):
    """Regenerate the object template bank (3D meshes rendered with pyrender); the same seed
    gives the same files byte for byte."""
    from occsynth.authoring.objects import (
        build_template_bank,  # trimesh + pyrender: authoring only
    )

    index = build_template_bank(out, seed=seed, variants=variants)
    click.echo(f"wrote {len(index['templates'])} templates")


@main.command("render-masks")
@click.option(
    "--out",
    default=None,
    type=click.Path(file_okay=False),
    help="Pose bank directory (default: the package's occsynth/assets/mask3d).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--size",
    type=click.FloatRange(min=0.0, min_open=True),
    default=56.0,
    show_default=True,
    help="Inter-ocular distance of the renders (px).",
)
def render_masks(out, seed, size):
    """Pre-render 3D face masks (surgical, N95, KN95, cloth) over a yaw/pitch grid; builds use
    the nearest pose, so no rendering happens per image (mask3d mode=bank)."""
    from occsynth.authoring.masks import (
        render_mask_bank,  # trimesh + pyrender: authoring only
    )

    index = render_mask_bank(out, seed=seed, size=size)
    click.echo(f"wrote {len(index['renders'])} renders")


@main.command("occluders")
@click.option("--family", default=None, help="Only this family.")
def list_occluders_cmd(family):
    """List the registered occluders with their parameters and defaults."""
    families = sorted({cls.family for cls in list_occluders().values()})
    if family is not None and family not in families:
        raise click.BadParameter(f"unknown family {family!r}; choose from {', '.join(families)}", param_hint="--family")
    for name, cls in list_occluders(family).items():
        params = ", ".join(f"{k}={v!r}" for k, v in cls.defaults.items())
        click.echo(f"{cls.family:10s} {name:16s} {params}")


if __name__ == "__main__":  # pragma: no cover
    main()
