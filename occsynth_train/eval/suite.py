"""Benchmark suites: `occsynth-train eval --model X --suite occlusion --suite-dir DIR [--lfw ...]`.

The `occlusion` suite is every LFW-pair benchmark occsynth builds, scored in one go: clean LFW
(lfw-block level 0), LFW-OCC-2.0 and 3.0 (lfw-occ --ratio 0.43 / 0.52), LFW_block 10..90,
LFW-Masked (lfw-masked) and the per-category sets (lfw-occ-sunglasses, -eye-mask, -scarf,
-surgical-mask, -cup). Each member lives in its own folder under DIR (MEMBERS); a folder whose
build finished (build_facts.json, written last by `occsynth build`) is reused, the others are
built with --lfw/--pairs by running `occsynth build` itself (so a killed suite resumes where
the build stopped, with the build's own identity checks). `--only` picks members; `--folds`
builds (and checks reused folders for) those LFW folds only.

Output beside the JSON report: `<out>.suite.md`, one markdown table (accuracy, TAR@FAR,
occluded area), and `<out>.suite.png`, accuracy vs occluded area: the LFW_block curve as MSML's
figure draws it, the other sets as labelled points. The area of a member is the mean occlusion
ratio of its occluded images (measured on the built samples, not the nominal level).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from occsynth.errors import UsageError
from occsynth.io.atomic import atomic_write, write_text

from .evaluate import default_out, score_model, write_report
from .models import DEFAULT_SIZE, load_model, size_text

log = logging.getLogger(__name__)

DONE = "build_facts.json"  # occsynth build writes it after the shards, pairs and card
BLOCK_LEVELS = tuple(range(0, 100, 10))


@dataclass(frozen=True)
class Member:
    name: str  # report key and --only name
    label: str  # table and plot label
    folder: str  # under the suite dir
    builder: str  # `occsynth build BUILDER`
    args: tuple[str, ...] = ()  # the builder's own options
    series: str = "sets"  # "block": the LFW_block curve; "sets": points


def _block(level: int) -> Member:
    name = "clean" if level == 0 else f"block-{level}"
    label = "LFW (clean)" if level == 0 else f"LFW_block {level}%"
    return Member(name, label, f"lfw-block/level-{level:02d}", "lfw-block", (), "block")


SUITES: dict[str, list[Member]] = {
    "occlusion": [
        *(_block(level) for level in BLOCK_LEVELS),
        Member("lfw-occ-2.0", "LFW-OCC-2.0", "lfw-occ-2.0", "lfw-occ", ("--ratio", "0.43")),
        Member("lfw-occ-3.0", "LFW-OCC-3.0", "lfw-occ-3.0", "lfw-occ", ("--ratio", "0.52")),
        Member("masked", "LFW-Masked", "lfw-masked", "lfw-masked"),
        *(
            Member(c, f"LFW + {c.replace('-', ' ')}", f"lfw-occ-{c}", f"lfw-occ-{c}")
            for c in ("sunglasses", "eye-mask", "scarf", "surgical-mask", "cup")
        ),
    ]
}


def suite_members(suite: str, only: str | None = None) -> list[Member]:
    if suite not in SUITES:
        raise UsageError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
    members = SUITES[suite]
    if not only:
        return list(members)
    names = [n.strip() for n in only.split(",") if n.strip()]
    known = {m.name for m in members}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UsageError(
            f"--only {only!r}: unknown member(s) {unknown}; {suite} has {', '.join(m.name for m in members)}"
        )
    return [m for m in members if m.name in names]


def _built_folds(folder: Path) -> list[int]:
    rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines() if line.strip()]
    return sorted({int(r["fold"]) for r in rows})


def _check_reused(member: Member, folder: Path, folds: tuple[int, ...]) -> None:
    if folds and (folder / "pairs.jsonl").exists():
        built = _built_folds(folder)
        if built != sorted(folds):
            raise UsageError(
                f"{folder} (suite member {member.name}) holds LFW fold(s) {built}, the suite asks for "
                f"{sorted(folds)}; use another --suite-dir"
            )


def build_command(
    member_builder: str, out: Path, args: tuple[str, ...], lfw, pairs, folds, workers, quiet
) -> list[str]:
    cmd = [sys.executable, "-m", "occsynth.cli", "build", member_builder, "--lfw", str(lfw), "--out", str(out)]
    if pairs:
        cmd += ["--pairs", str(pairs)]
    if folds:
        cmd += ["--folds", ",".join(str(f) for f in folds)]
    cmd += [*args, "--workers", str(workers)]
    return cmd + (["--quiet"] if quiet else [])


def prepare_suite(
    members: list[Member],
    suite_dir: str | Path,
    lfw: str | Path | None = None,
    pairs: str | Path | None = None,
    folds: tuple[int, ...] = (),
    workers: int = 2,
    quiet: bool = False,
) -> dict[str, dict]:
    """Member name -> {"folder", "builder", "state": reused|built}; builds what is missing by
    running `occsynth build` (resumable), or refuses (one line) when --lfw is not given."""
    root = Path(suite_dir)
    missing = [m for m in members if not (root / m.folder / DONE).exists()]
    if missing and lfw is None:
        raise UsageError(
            f"{root}: suite member(s) {', '.join(m.name for m in missing)} are not built (no "
            f"{', '.join(str(root / m.folder / DONE) for m in missing[:2])}{' ...' if len(missing) > 2 else ''}); "
            "give --lfw (and --pairs) to build them, or --only to score the built ones"
        )
    for m in members:
        if m not in missing:
            _check_reused(m, root / m.folder, folds)
    units: dict[tuple, list[Member]] = {}  # one `occsynth build` per builder, options and top folder
    for m in missing:
        units.setdefault((m.builder, m.args, m.folder.split("/")[0]), []).append(m)
    for (builder, args, top), group in units.items():
        if builder == "lfw-block":
            args = (*args, "--levels", ",".join(m.folder.rsplit("-", 1)[1].lstrip("0") or "0" for m in group))
        cmd = build_command(builder, root / top, args, lfw, pairs, folds, workers, quiet)
        log.info("building %s: %s", ", ".join(m.name for m in group), " ".join(cmd))
        done = subprocess.run(cmd, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"occsynth build {builder} for suite member(s) {', '.join(m.name for m in group)} failed "
                f"(exit {done.returncode}; its error is printed above); rerun to resume"
            )
        for m in group:
            if not (root / m.folder / DONE).exists():
                raise RuntimeError(f"occsynth build {builder} finished but {root / m.folder / DONE} is missing")
    return {
        m.name: {"folder": str(root / m.folder), "builder": m.builder, "state": "built" if m in missing else "reused"}
        for m in members
    }


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def suite_rows(members: list[Member], report: dict) -> list[dict]:
    rows = []
    for m in members:
        result = report["benchmarks"][m.name]
        v = result.get("verification", {})
        rows.append(
            {
                "name": m.name,
                "label": m.label,
                "series": m.series,
                "area": (result.get("occlusion") or {}).get("mean_ratio_occluded", 0.0),
                "accuracy": v.get("accuracy"),
                "accuracy_std": v.get("accuracy_std"),
                "tar_1e-3": (v.get("tar_at_far") or {}).get("1e-03", {}).get("tar"),
                "tar_1e-4": (v.get("tar_at_far") or {}).get("1e-04", {}).get("tar"),
                "auc": v.get("auc"),
                "pairs": v.get("pairs"),
                "flagged_pairs": v.get("flagged_pairs", 0),
            }
        )
    return rows


def suite_markdown(rows: list[dict], title: str) -> str:
    lines = [
        f"# {title}",
        "",
        "| benchmark | occluded area % | accuracy % | ± std | TAR@FAR=1e-3 % | TAR@FAR=1e-4 % | AUC | pairs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        auc = "n/a" if r["auc"] is None else f"{r['auc']:.4f}"
        lines.append(
            f"| {r['label']} | {_pct(r['area'])} | {_pct(r['accuracy'])} | {_pct(r['accuracy_std'])} | "
            f"{_pct(r['tar_1e-3'])} | {_pct(r['tar_1e-4'])} | {auc} | {r['pairs']} |"
        )
    lines += [
        "",
        "Occluded area: mean occlusion ratio of the occluded images (LFW_block: both images of a pair; "
        "the other sets: the second image). Accuracy: LFW 10-fold, mean ± std over the folds; TAR@FAR: "
        "insightface's rule, with the achieved FAR in the JSON report (with N negative pairs the smallest "
        "non-zero FAR is 1/N: LFW's 3,000 cannot resolve 1e-4).",
        "",
    ]
    return "\n".join(lines)


def plot_suite(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    block = sorted((r for r in rows if r["series"] == "block" and r["accuracy"] is not None), key=lambda r: r["area"])
    if block:
        ax.plot([100 * r["area"] for r in block], [100 * r["accuracy"] for r in block], "o-", lw=1.4, label="LFW_block")
    for r in rows:
        if r["series"] != "block" and r["accuracy"] is not None:
            x, y = 100 * r["area"], 100 * r["accuracy"]
            ax.plot([x], [y], "s", ms=5)
            ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel("occluded area (% of the aligned face)")
    ax.set_ylabel("verification accuracy (%)")
    ax.set_xlim(-2, 100)
    ax.set_title(title, fontsize=9)
    ax.grid(True, ls=":", lw=0.5)
    if block:
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)


def run_suite(
    model: str,
    suite: str = "occlusion",
    suite_dir: str | Path = "occsynth-suite",
    *,
    lfw: str | Path | None = None,
    pairs: str | Path | None = None,
    folds: tuple[int, ...] = (),
    only: str | None = None,
    build_workers: int = 2,
    quiet: bool = False,
    out: str | Path | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 256,
    num_workers: int = 2,
    flip: bool = True,
    conventions: dict | None = None,
) -> dict:
    """Score `model` on a suite (building its missing members first); writes the JSON report,
    the ROC plot, the markdown table and the accuracy-vs-area plot; returns the report."""
    members = suite_members(suite, only)
    if lfw is not None and not Path(lfw).exists():
        raise UsageError(f"--lfw {lfw}: no such file or directory")
    loaded = load_model(str(model), conventions, device, checkpoint)  # model errors before any build
    external = getattr(loaded.model, "conventions", None)
    if external is not None and not external.resize and tuple(loaded.model.input_size) != DEFAULT_SIZE:
        raise UsageError(  # the suite builds with the default arcface-112x112 template
            f"model {loaded.spec} takes {size_text(loaded.model.input_size)} input but the {suite} suite is "
            f"built at {size_text(DEFAULT_SIZE)}; give --resize to resize the images"
        )
    folders = prepare_suite(members, suite_dir, lfw, pairs, folds, build_workers, quiet)
    paths = [folders[m.name]["folder"] for m in members]
    report, curves = score_model(loaded, paths, [m.name for m in members], device, batch_size, num_workers, flip)
    out = Path(out) if out else default_out(loaded)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = suite_rows(members, report)
    title = f"{Path(str(model)).name}: {suite} suite"
    md, png = out.with_suffix(".suite.md"), out.with_suffix(".suite.png")
    write_text(md, suite_markdown(rows, title))
    plot_suite(rows, title, png)
    report["suite"] = {
        "name": suite,
        "dir": str(suite_dir),
        "members": folders,
        "folds": list(folds) or "all",
        "table_md": str(md),
        "plot_png": str(png),
        "rows": rows,
    }
    return write_report(report, curves, out)
