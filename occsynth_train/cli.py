"""occsynth-train: `occsynth-train <method> --config cfg.yaml`, `occsynth-train eval ...`.

Every registered method (occsynth_train.methods) is a subcommand with the same options;
the config's `method` key is set to the subcommand's name.

The library logs through `logging` and never configures it; this command line owns the
handler: messages of the occsynth_train and occsynth loggers go to stderr as
`occsynth-train: message`, at INFO (default), DEBUG (-v/--verbose) or WARNING (--quiet).

Errors are handled as by the `occsynth` command (occsynth.clikit.OccsynthGroup, one implementation): an
expected error is one `Error: ...` line on stderr, exit code 2 for bad usage (options, the
config and --set values: nothing was run) and 1 for failed work; a non-finite loss exits with 3;
--debug shows the traceback instead. A DataLoader worker's error, which torch re-raises with the
worker's traceback in its message, is reported by its last line.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

import click
import yaml

from occsynth.clikit import OccsynthGroup, one_line

from . import __version__
from .config import load_config
from .data.lfw_protocol import write_split
from .engine.trainer import NonFiniteLossError, train
from .eval.evaluate import evaluate_model
from .eval.models import parse_size, parse_values
from .eval.suite import run_suite
from .methods import list_methods
from .models import list_heads
from .models.backbones import list_backbones

CONTEXT = {"help_option_names": ["-h", "--help"]}
LOGGERS = ("occsynth_train", "occsynth")
LOG_FORMAT = "occsynth-train: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """A stream handler writing to the sys.stderr of the moment (not the one at creation: click's
    test runner and other wrappers swap it)."""

    def __init__(self, level: int = logging.NOTSET):
        logging.Handler.__init__(self, level)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


def configure_logging(level: int) -> Callable[[], None]:
    """Send the library's log records at `level` and above to stderr; returns the undo."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    loggers = [logging.getLogger(name) for name in LOGGERS]
    saved = [(logger, logger.level) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(level)

    def restore() -> None:
        for logger, old in saved:
            logger.removeHandler(handler)
            logger.setLevel(old)

    return restore


class ConfigError(click.ClickException):
    """A config file or --set value that cannot be used: one `Error:` line, exit code 2 (usage)."""

    exit_code = 2


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and (ctx.find_root().obj or {}).get("debug"))


def _worker_message(exc: BaseException) -> str | None:
    """The original error line of an exception a DataLoader worker raised (torch re-raises it in
    the main process with the worker's whole traceback as its message), else None."""
    text = str(exc.args[0]) if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return None
    head = text.splitlines()[0].removeprefix("Caught ").rstrip(".")  # "ValueError in DataLoader worker process 0"
    last = [line for line in text.splitlines() if line.strip()][-1].strip()
    kind = type(exc)
    for prefix in (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: "):
        last = last.removeprefix(prefix)
    return f"{last} ({head.partition(' ')[2]})"


@contextmanager
def _worker_errors() -> Iterator[None]:
    """Re-raise a DataLoader worker's error with its own one-line message (same type)."""
    try:
        yield
    except Exception as exc:
        message = _worker_message(exc)
        if message is None or _debug():
            raise
        try:
            rebuilt = type(exc)(message)
        except Exception:  # noqa: BLE001 - a type that takes other arguments
            rebuilt = RuntimeError(message)
        raise rebuilt from None


def _method_command(name: str) -> click.Command:
    @click.command(
        name=name, help=f"Train the {name!r} method (resumes when OUTPUT holds checkpoints).", context_settings=CONTEXT
    )
    @click.option(
        "--config",
        "config_path",
        type=click.Path(exists=True, dir_okay=False),
        required=True,
        help="YAML training config (see configs/).",
    )
    @click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config value, e.g. --set optim.lr=0.05 (repeatable).",
    )
    @click.option("--output", default=None, help="Run directory (overrides the config's `output`).")
    @click.option(
        "--stop-after",
        type=int,
        default=None,
        help="Stop after this many steps in this invocation (checkpointed; rerun to resume).",
    )
    def command(config_path, overrides, output, stop_after):
        overrides = [f"method={name}", *overrides] + ([f"output={output}"] if output else [])
        if stop_after is not None and stop_after < 1:
            raise click.BadParameter("must be >= 1", param_hint="--stop-after")
        try:
            cfg = load_config(config_path, overrides)
        except (ValueError, TypeError, LookupError, yaml.YAMLError) as exc:
            if _debug():
                raise
            raise ConfigError(f"{config_path}: {one_line(exc)}") from None
        try:
            with _worker_errors():
                run_dir = train(cfg, stop_after=stop_after)
        except NonFiniteLossError as exc:
            if _debug():
                raise
            click.echo(f"Error: {one_line(exc)}", err=True)
            sys.exit(3)
        click.echo(f"run: {run_dir}")

    return command


class MethodGroup(OccsynthGroup):
    """The registered methods as subcommands; errors as the occsynth command reports them."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(list_methods()))

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        return _method_command(name) if name in list_methods() else None


@click.group(cls=MethodGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="occsynth-train")
@click.option("-v", "--verbose", is_flag=True, help="Also print debug messages.")
@click.option("--quiet", is_flag=True, help="Print warnings and errors only.")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.pass_context
def main(ctx: click.Context, verbose: bool, quiet: bool, debug: bool) -> None:
    """Train and evaluate occluded-face recognition methods on occsynth shards."""
    ctx.obj = {"debug": debug}
    if verbose and quiet:
        raise click.UsageError("--verbose and --quiet exclude each other")
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    ctx.call_on_close(configure_logging(level))


@main.command("methods", context_settings=CONTEXT)
def methods_cmd() -> None:
    """List the registered methods, backbones and heads."""
    click.echo("methods:   " + ", ".join(list_methods()))
    click.echo("backbones: " + ", ".join(list_backbones()))
    click.echo("heads:     " + ", ".join(list_heads()))


def _parse(parser, text, hint):
    """A convention option's value, or click's BadParameter (exit 2) naming the option."""
    if text is None:
        return None
    try:
        return parser(text)
    except ValueError as exc:
        raise click.BadParameter(one_line(exc), param_hint=hint) from None


@main.command("eval", context_settings=CONTEXT)
@click.option(
    "--model",
    "model",
    required=True,
    metavar="RUN|FILE.onnx|FILE.pt|pkg.module:factory",
    help="A training run directory, an ONNX model (pip install 'occsynth[onnx]'), a TorchScript archive, "
    "or package.module:factory returning an nn.Module or a callable that maps a batch to embeddings.",
)
@click.option(
    "--benchmark",
    "benchmarks",
    type=click.Path(exists=True),
    multiple=True,
    help="Benchmark dataset directory or insightface .bin pair file (repeatable).",
)
@click.option("--suite", default=None, help="Score a named suite instead: occlusion (see --suite-dir, --lfw).")
@click.option(
    "--suite-dir",
    type=click.Path(file_okay=False),
    default="occsynth-suite",
    show_default=True,
    help="Where the suite's benchmarks are (or get built, resuming).",
)
@click.option("--lfw", type=click.Path(exists=True), default=None, help="LFW archive/folder to build missing members.")
@click.option("--pairs", type=click.Path(exists=True, dir_okay=False), default=None, help="LFW pairs.txt for builds.")
@click.option("--folds", default="", help="Suite: only these LFW folds (e.g. 0), for builds and reused folders.")
@click.option("--only", default=None, help="Suite: comma-separated members (e.g. clean,block-30,lfw-occ-2.0).")
@click.option("--build-workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSON report (default RUN/eval_report.json for a run, ./eval_report.json otherwise).",
)
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), default=None, help="Default: the newest.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--no-flip", is_flag=True, help="Embed the image only (no flip-sum).")
@click.option("--input-size", default=None, metavar="HxW", help="Model input (default: the file's, else 112x112).")
@click.option("--color", type=click.Choice(["rgb", "bgr"]), default=None, help="Channel order [default: rgb].")
@click.option("--mean", default=None, help="Subtracted from 0..255 pixels: one value or R,G,B [default: 127.5].")
@click.option("--std", default=None, help="Divides after the mean: one value or three [default: 127.5].")
@click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default=None, help="Input layout [default: nchw].")
@click.option("--resize", is_flag=True, help="Resize benchmark images to the model's input size when they differ.")
def eval_cmd(
    model,
    benchmarks,
    suite,
    suite_dir,
    lfw,
    pairs,
    folds,
    only,
    build_workers,
    out,
    checkpoint,
    batch_size,
    workers,
    device,
    no_flip,
    input_size,
    color,
    mean,
    std,
    layout,
    resize,
) -> None:
    """Score a model: verification, identification, mask IoU; JSON + ROC PNG (+ suite table and plot).

    Any model: a run of occsynth-train, an .onnx file, a TorchScript .pt, or package.module:factory.
    Input conventions default to insightface's (112x112, RGB, (x - 127.5) / 127.5, NCHW).
    """
    if batch_size < 1 or workers < 0:
        raise click.UsageError("--batch-size must be >= 1 and --workers >= 0")
    if bool(benchmarks) == bool(suite):
        raise click.UsageError("give --benchmark (repeatable) or --suite NAME, not both and not neither")
    if not suite and (lfw or pairs or folds or only):
        raise click.UsageError("--lfw, --pairs, --folds and --only apply to --suite")
    conventions = {
        "size": _parse(parse_size, input_size, "'--input-size'"),
        "color": color,
        "mean": _parse(lambda t: parse_values(t, "--mean"), mean, "'--mean'"),
        "std": _parse(lambda t: parse_values(t, "--std"), std, "'--std'"),
        "layout": layout,
        "resize": resize,
    }
    common = dict(
        checkpoint=checkpoint,
        device=device,
        batch_size=batch_size,
        num_workers=workers,
        flip=not no_flip,
        conventions=conventions,
    )
    with _worker_errors():
        if suite:
            report = run_suite(
                model,
                suite,
                suite_dir,
                lfw=lfw,
                pairs=pairs,
                folds=_parse(parse_folds, folds, "'--folds'") or (),
                only=only,
                build_workers=build_workers,
                quiet=logging.getLogger("occsynth_train").getEffectiveLevel() > logging.INFO,
                out=out,
                **common,
            )
        else:
            report = evaluate_model(model, list(benchmarks), out=out, **common)
    for name, result in report["benchmarks"].items():
        parts = [name]
        if "verification" in result:
            v = result["verification"]
            tar = v["tar_at_far"]
            parts.append(
                f"acc {v['accuracy']:.4f}+-{v['accuracy_std']:.4f}  "
                + "  ".join(f"TAR@FAR={k} {t['tar']:.4f}" for k, t in tar.items())
            )
        if "identification" in result:
            parts.append(f"rank-1 {result['identification']['rank1']:.4f}")
        if "segmentation" in result and result["segmentation"]["miou"] is not None:
            parts.append(f"mIoU {result['segmentation']['miou']:.4f}")
        click.echo("  ".join(parts))
    if "suite" in report:
        click.echo(f"table: {report['suite']['table_md']}  plot: {report['suite']['plot_png']}")


def parse_folds(text: str) -> tuple[int, ...]:
    """'0,1' -> (0, 1): LFW folds numbered from 0, as `occsynth build --folds`."""
    folds = tuple(int(f) for f in text.split(",") if f.strip())
    if any(f < 0 for f in folds):
        raise ValueError(f"fold numbers start at 0, got {text!r}")
    return folds


@main.command("lfw-mini-split", context_settings=CONTEXT)
@click.option(
    "--pairs", "pairs_path", type=click.Path(exists=True, dir_okay=False), required=True, help="LFW pairs.txt"
)
@click.option(
    "--lfw",
    "lfw_path",
    type=click.Path(exists=True),
    required=True,
    help="lfw-deepfunneled.tgz or an extracted identity folder.",
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True)
@click.option("--test-fold", type=int, default=1, show_default=True, help="1-based fold of pairs.txt held out.")
@click.option(
    "--extract/--no-extract",
    default=True,
    show_default=True,
    help="Also extract the training images into OUT/train/<identity>/ (an identity-folder source).",
)
def lfw_mini_split_cmd(pairs_path, lfw_path, out_dir, test_fold, extract) -> None:
    """Write the LFW mini-protocol split (see occsynth_train/PROTOCOL.md)."""
    summary = write_split(pairs_path, lfw_path, out_dir, test_fold=test_fold, extract=extract)
    click.echo(" ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
