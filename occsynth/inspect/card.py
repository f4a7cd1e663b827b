"""Dataset cards: ``card.md`` plus plots, written into a built dataset's directory.

``write_card(dataset_dir, facts)`` reads ``manifest.json``, ``index.jsonl``, ``failures.jsonl``,
``pairs.jsonl`` (when present) and the shards' occlusion sums, and writes:

* ``card.md``: the exact command, seed, tool version, template, source, totals, occlusion
  statistics, per-family / per-occluder counts, failures summary, pairs summary (pairs.jsonl),
  identification protocol summary (protocol.json), shard checksums, and — when ``facts`` are given — the benchmark's protocol, its source paper and each
  target value next to the value achieved by this build;
* ``card_occlusion_ratio.png``: histogram of the per-sample occlusion ratio;
* ``card_occlusion_heatmap.png``: per-pixel occlusion frequency over the aligned face (the mean of
  all masks, 1 = occluded in every sample), alone and over the mean face image; from the sums
  each shard's build gathered (``NNNNN.maps.npy``), or by decoding the shards when a dataset
  has none (see :func:`occlusion_frequency`);
* ``card_occluders.png``: counts per occluder family and per occluder;
* ``card_occlusion_frequency.npy``: the heat map values (float64, HxW), so the numbers behind the
  picture can be checked or reused.

``facts`` (all keys optional)::

    {"benchmark": "LFW-OCC", "source": "Author et al., Venue Year",
     "protocol": "LFW View 2, 6,000 pairs, 10 folds; one side occluded",
     "targets": {"mean_occlusion_ratio_occluded": 0.4309},
     "notes": ["..."]}

Target names the card can measure: see :data:`MEASURES`; others are listed as "not measured".
Plots are drawn with matplotlib's Agg canvas directly (no pyplot, no global backend change).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from occsynth import __version__, contract
from occsynth.benchmarks.protocols.identification import PROTOCOL_FILE
from occsynth.benchmarks.protocols.pairs import PAIRS_FILE, read_pairs_jsonl
from occsynth.io.atomic import atomic_write, write_text
from occsynth.io.dataset import Dataset, DatasetError
from occsynth.io.images import decode_image, decode_mask

__all__ = ["CARD", "MEASURES", "OcclusionMaps", "measure", "occlusion_frequency", "warm_up", "write_card"]

CARD = "card.md"
PLOT_RATIO = "card_occlusion_ratio.png"
PLOT_HEATMAP = "card_occlusion_heatmap.png"
PLOT_OCCLUDERS = "card_occluders.png"
FREQUENCY_NPY = "card_occlusion_frequency.npy"

MEASURES = {
    "mean_occlusion_ratio": "mean occlusion ratio over all samples",
    "mean_occlusion_ratio_occluded": "mean occlusion ratio over occluded samples",
    "occluded_fraction": "fraction of samples with any occlusion",
    "samples": "samples written",
    "identities": "identities",
    "failures": "inputs that produced no sample",
    "mask_unknown_samples": "samples with real occlusions and no pixel mask (mask_known: false)",
    "pairs": "pairs in the protocol",
    "matched_pairs": "matched pairs",
    "mismatched_pairs": "mismatched pairs",
    "flagged_pairs": "flagged pairs (missing or failed image)",
    "folds": "folds",
}


@dataclass
class OcclusionMaps:
    frequency: np.ndarray  # HxW float64, mean of masks / 255 (1 = always occluded)
    mean_face: np.ndarray  # HxWx3 float64, mean RGB image
    mean_landmarks: np.ndarray | None  # 5x2 mean landmarks in the image, None when absent
    count: int  # samples averaged
    size: tuple[int, int]  # (width, height)
    other_sizes: int  # samples of another size, not averaged (said in the card)


def occlusion_frequency(dataset_dir: str | os.PathLike, *, decode: bool = False) -> OcclusionMaps:
    """Mean mask and mean image over every sample of the most common image size (with a
    known mask).

    From the per-shard sums the build gathered while writing (`NNNNN.maps.npy`) when every
    shard has them and they count the samples index.jsonl lists; otherwise, or with
    decode=True, by decoding every sample's mask and image from the shards. The heat map is the
    same either way (sums of integers); the mean face differs only for JPEG datasets, where the
    sums hold the images before encoding."""
    dataset = Dataset(dataset_dir)
    sizes: Counter = Counter()
    for meta in _index(Path(dataset_dir)):
        if contract.mask_known(meta):  # a real occlusion's mask is unknown: it would count as clean
            sizes[tuple(meta["image_size"])] += 1
    if not sizes:
        raise ValueError(f"{dataset_dir}: the dataset has no samples with known masks")
    size = sizes.most_common(1)[0][0]
    maps = None if decode else _summed_maps(dataset, size, sizes[size])
    if maps is None:
        maps = _decoded_maps(dataset, size, sizes[size])
    maps.other_sizes = sum(sizes.values()) - sizes[size]
    return maps


def _summed_maps(dataset: Dataset, size: tuple[int, int], expected: int) -> OcclusionMaps | None:
    """The maps from the shards' sums; None when a shard has none or they do not add up."""
    width, height = size
    mask_sum = np.zeros((height, width), np.int64)
    rgb_sum = np.zeros((height, width, 3), np.int64)
    lm_sum, lm_count, count = np.zeros((5, 2)), 0, 0
    for shard in dataset.shards:
        path = dataset.root / contract.shard_maps_name(int(shard.name.split(".")[0]))
        try:
            record = np.load(path, allow_pickle=False)
            if tuple(int(v) for v in record["size"]) != (width, height):
                return None
        except (OSError, ValueError, KeyError, IndexError):
            return None  # absent (made before sums were kept) or not ours: decode instead
        mask_sum += record["mask"]
        rgb_sum += record["rgb"]
        lm_sum += record["landmarks"]
        lm_count += int(record["landmark_count"])
        count += int(record["count"])
    if count != expected or count == 0:
        return None
    return OcclusionMaps(
        frequency=mask_sum / (count * float(contract.MASK_OCCLUDED)),
        mean_face=rgb_sum / count,
        mean_landmarks=lm_sum / lm_count if lm_count else None,
        count=count,
        size=size,
        other_sizes=0,
    )


def _decoded_maps(dataset: Dataset, size: tuple[int, int], expected: int) -> OcclusionMaps:
    width, height = size
    mask_sum = np.zeros((height, width), np.float64)
    face_sum = np.zeros((height, width, 3), np.float64)
    lm_sum, lm_count, count = np.zeros((5, 2)), 0, 0
    for key, members in dataset.iter_samples():
        meta = json.loads(members[contract.EXT_META])
        if tuple(meta["image_size"]) != size or not contract.mask_known(meta):
            continue
        mask = decode_mask(members[contract.EXT_MASK])
        ext = contract.EXT_IMAGE_PNG if contract.EXT_IMAGE_PNG in members else contract.EXT_IMAGE_JPG
        image = decode_image(members[ext])
        if mask.shape != (height, width) or image.shape[:2] != (height, width):
            raise ValueError(
                f"sample {key}: image {image.shape[1::-1]} / mask {mask.shape[::-1]} differ "
                f"from image_size {list(size)}"
            )
        mask_sum += mask
        face_sum += image
        count += 1
        landmarks = np.asarray(meta.get("landmarks", []), np.float64)
        if landmarks.shape == (5, 2):
            lm_sum += landmarks
            lm_count += 1
    if count == 0:
        raise ValueError(f"{dataset.root}: index.jsonl lists {expected} samples of {width}x{height}, the shards none")
    return OcclusionMaps(
        frequency=mask_sum / (count * float(contract.MASK_OCCLUDED)),
        mean_face=face_sum / count,
        mean_landmarks=lm_sum / lm_count if lm_count else None,
        count=count,
        size=size,
        other_sizes=0,
    )


def measure(dataset_dir: str | os.PathLike) -> dict:
    """The values of :data:`MEASURES` for a dataset (pair measures only when it has pairs)."""
    dataset_dir = Path(dataset_dir)
    metas = _index(dataset_dir)
    ratios = np.array([m["occlusion_ratio"] for m in metas if contract.mask_known(m)], np.float64)
    occluded = ratios[ratios > 0]
    values = {
        "mean_occlusion_ratio": float(ratios.mean()) if len(ratios) else 0.0,
        "mean_occlusion_ratio_occluded": float(occluded.mean()) if len(occluded) else 0.0,
        "occluded_fraction": float(len(occluded) / len(ratios)) if len(ratios) else 0.0,
        "samples": len(metas),
        "identities": len({m["identity"] for m in metas}),
        "failures": len(_failures(dataset_dir)),
        "mask_unknown_samples": sum(not contract.mask_known(m) for m in metas),
    }
    if (dataset_dir / PAIRS_FILE).exists():
        rows = read_pairs_jsonl(dataset_dir / PAIRS_FILE)
        values.update(
            pairs=len(rows),
            matched_pairs=sum(bool(r["issame"]) for r in rows),
            mismatched_pairs=sum(not r["issame"] for r in rows),
            flagged_pairs=sum(bool(r["flagged"]) for r in rows),
            folds=len({r["fold"] for r in rows}),
        )
    return values


def write_card(dataset_dir: str | os.PathLike, facts: dict | None = None) -> Path:
    """Write card.md and its plots into ``dataset_dir``; returns the card's path."""
    dataset_dir = Path(dataset_dir)
    manifest = Dataset(dataset_dir).manifest
    metas = _index(dataset_dir)
    failures = _failures(dataset_dir)
    values = measure(dataset_dir)
    facts = facts or {}

    known = [m for m in metas if contract.mask_known(m)]
    maps = occlusion_frequency(dataset_dir) if known else None
    if maps is not None:
        _save_npy(dataset_dir / FREQUENCY_NPY, maps.frequency)
        _plot_heatmap(dataset_dir / PLOT_HEATMAP, maps)
    ratios = np.array([m["occlusion_ratio"] for m in known], np.float64)
    _plot_ratios(dataset_dir / PLOT_RATIO, ratios, facts.get("targets", {}))
    families = Counter(o["family"] for m in metas for o in m["occluders"])
    names = Counter(o["name"] for m in metas for o in m["occluders"])
    _plot_counts(dataset_dir / PLOT_OCCLUDERS, families, names)

    text = _card_text(dataset_dir, manifest, metas, failures, values, facts, maps, families, names)
    return write_text(dataset_dir / CARD, text)


# ------------------------------------------------------------------------ reading
def _index(dataset_dir: Path) -> list[dict]:
    dataset = Dataset(dataset_dir)
    if not dataset.has_index():
        raise DatasetError(f"{dataset_dir / contract.INDEX} is missing")
    return dataset.index()


def _failures(dataset_dir: Path) -> list[dict]:
    return Dataset(dataset_dir).failures()


# ------------------------------------------------------------------------ plots
def warm_up() -> None:
    """Import what drawing a card needs (~1 s): a builder calls it in a background thread while
    its workers build the shards, so the card at the end does not wait for it."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401


def _figure(width: float, height: float):
    # matplotlib is imported when a card is drawn, not when the CLI starts (~1 s saved per
    # command that writes no card: align, verify, ...)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


# The plots are laid out by hand, in inches, from what their labels hold (digits, characters at
# 10 pt): matplotlib's constrained layout measures every text first and was ~40% of drawing a
# card (~0.35 s of ~0.9 s a dataset; lfw-block draws ten).
CHAR_IN = 0.085  # the widest characters of DejaVu Sans at 10 pt ('m', 'w' ~0.086; digits 0.088 in)
DIGIT_IN = 0.09
LINE_IN = 0.2  # a line of 10-pt text with its padding


def _axes(fig, left: float, bottom: float, right: float, top: float, x0: float = 0.0, width: float | None = None):
    """Axes with these margins (inches) inside the band [x0, x0 + width] of the figure."""
    fw, fh = fig.get_size_inches()
    width = fw - x0 if width is None else width
    return fig.add_axes(
        [(x0 + left) / fw, bottom / fh, max(width - left - right, 0.5) / fw, max(fh - bottom - top, 0.5) / fh]
    )


def _digits(value: float) -> int:
    """The digits of the largest tick label an axis up to `value` may get (a round number above it)."""
    return len(str(max(int(value * 1.25), 1)))


def _save(fig, path: Path) -> None:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", metadata={"Software": None})


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path, "wb") as f:
        np.save(f, array)


def _plot_ratios(path: Path, ratios: np.ndarray, targets: dict) -> None:
    fig = _figure(6, 3.5)
    counts = np.histogram(ratios, bins=20, range=(0.0, 1.0))[0] if len(ratios) else np.zeros(1)
    ax = _axes(
        fig, left=DIGIT_IN * _digits(counts.max()) + 0.35, bottom=2 * LINE_IN + 0.1, right=0.2, top=LINE_IN + 0.15
    )
    ax.hist(ratios, bins=20, range=(0.0, 1.0), color="#4477aa", edgecolor="white")
    if len(ratios):
        ax.axvline(ratios.mean(), color="#cc3311", linestyle="-", label=f"mean {ratios.mean():.2%}")
        occluded = ratios[ratios > 0]
        if len(occluded) and len(occluded) != len(ratios):
            ax.axvline(
                occluded.mean(), color="#ee7733", linestyle="--", label=f"mean of occluded {occluded.mean():.2%}"
            )
    for name in ("mean_occlusion_ratio", "mean_occlusion_ratio_occluded"):
        if isinstance(targets.get(name), (int, float)):
            ax.axvline(targets[name], color="black", linestyle=":", label=f"target {name} {targets[name]:.2%}")
    ax.set_xlabel("occlusion ratio (occluded pixels / image pixels)")
    ax.set_ylabel("samples")
    ax.set_title(f"Occlusion ratio, {len(ratios):,} samples")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    _save(fig, path)


def _plot_heatmap(path: Path, maps: OcclusionMaps) -> None:
    fig = _figure(9, 4.2)
    side = 4.2 - 0.15 - 2 * LINE_IN - 0.35  # the images' height: suptitle and titles above
    left = fig.add_axes([0.35 / 9, 0.15 / 4.2, side / 9, side / 4.2])
    bar = fig.add_axes([(0.35 + side + 0.15) / 9, 0.15 / 4.2, 0.15 / 9, side / 4.2])
    right = fig.add_axes([(9 - 0.35 - side) / 9, 0.15 / 4.2, side / 9, side / 4.2])
    im = left.imshow(maps.frequency, cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
    left.set_title("per-pixel occlusion frequency")
    fig.colorbar(im, cax=bar)
    right.imshow(np.clip(maps.mean_face, 0, 255).astype(np.uint8), interpolation="nearest")
    right.imshow(maps.frequency, cmap="magma", vmin=0.0, vmax=1.0, alpha=0.55, interpolation="nearest")
    if maps.mean_landmarks is not None:
        right.scatter(maps.mean_landmarks[:, 0], maps.mean_landmarks[:, 1], s=12, c="#33bbee", marker="x")
    right.set_title("over the mean face (x = mean landmarks)")
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{maps.count:,} samples, {maps.size[0]}x{maps.size[1]}", y=1 - 0.08 / 4.2, va="top")
    _save(fig, path)


def _plot_counts(path: Path, families: Counter, names: Counter) -> None:
    fig = _figure(9, max(2.5, 0.3 * max(len(families), len(names), 1) + 1.2))
    for i, (title, counts) in enumerate((("per family", families), ("per occluder", names))):
        items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        widest = max((len(str(k)) for k, _ in items), default=0)
        ax = _axes(
            fig,
            left=CHAR_IN * widest + 0.2,
            bottom=2 * LINE_IN + 0.1,
            right=DIGIT_IN * _digits(max((v for _, v in items), default=1)) / 2 + 0.15,
            top=LINE_IN + 0.15,
            x0=4.5 * i,
            width=4.5,
        )
        if items:
            labels, values = zip(*items)
            ax.barh(range(len(values)), values, color="#4477aa")
            ax.set_yticks(range(len(values)), labels)
            ax.invert_yaxis()
            ax.locator_params(axis="x", nbins=4)  # six-digit counts side by side would run together
        else:
            ax.text(0.5, 0.5, "no occluders", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"occluder uses {title}")
        ax.set_xlabel("uses")
    _save(fig, path)


# ------------------------------------------------------------------------ text
def _fmt(name: str, value) -> str:
    if isinstance(value, float) and ("ratio" in name or "fraction" in name):
        return f"{value:.2%}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _card_text(dataset_dir, manifest, metas, failures, values, facts, maps, families, names) -> str:
    title = facts.get("benchmark") or manifest.get("name") or dataset_dir.name
    totals = manifest.get("totals", {})
    lines = [
        f"# {title}",
        "",
        f"Dataset card written by occsynth {__version__} from `{contract.MANIFEST}`, `{contract.INDEX}`, "
        f"`{contract.FAILURES}` and the shards.",
        "",
    ]

    if facts:
        lines += ["## Benchmark", ""]
        for label, key in (("Protocol", "protocol"), ("Source paper", "source")):
            if facts.get(key):
                lines.append(f"- **{label}:** {facts[key]}")
        for note in facts.get("notes", []):
            lines.append(f"- {note}")
        targets = facts.get("targets", {})
        if targets:
            rows = []
            for name, target in targets.items():
                if name in values:
                    achieved = values[name]
                    diff = (achieved - target) if isinstance(target, (int, float)) else None
                    rows.append(
                        [
                            MEASURES.get(name, name),
                            f"`{name}`",
                            _fmt(name, target),
                            _fmt(name, achieved),
                            ""
                            if diff is None
                            else (
                                f"{diff:+.2%}"
                                if isinstance(achieved, float) and ("ratio" in name or "fraction" in name)
                                else f"{diff:+,}"
                            ),
                        ]
                    )
                else:
                    rows.append([name, f"`{name}`", _fmt(name, target), "not measured by occsynth", ""])
            lines += ["", *_table(["quantity", "name", "target (paper)", "achieved (this build)", "difference"], rows)]
        lines.append("")

    source = manifest.get("source", {})
    lines += [
        "## Build",
        "",
        f"- **Command:** `{manifest.get('command', '')}`",
        f"- **Seed:** {manifest.get('seed')}",
        f"- **Tool:** {manifest.get('tool', 'occsynth')} {manifest.get('version', '')}",
        f"- **Template:** {manifest.get('template')} ({'x'.join(str(v) for v in manifest.get('image_size', []))})",
        f"- **Source:** {source.get('description', '')} (fingerprint `{source.get('fingerprint', '')}`)",
        "",
    ]
    lines += [
        "## Totals",
        "",
        *_table(
            ["planned", "samples", "failures", "shards", "identities"],
            [
                [
                    _fmt("n", totals.get("planned", len(metas) + len(failures))),
                    _fmt("n", len(metas)),
                    _fmt("n", len(failures)),
                    _fmt("n", totals.get("shards", len(manifest.get("shards", [])))),
                    _fmt("n", values["identities"]),
                ]
            ],
        ),
        "",
    ]

    ratios = np.array([m["occlusion_ratio"] for m in metas if contract.mask_known(m)], np.float64)
    unknown = values["mask_unknown_samples"]
    lines += ["## Occlusion", ""]
    if unknown:
        lines += [
            f"**Real occlusions, no pixel masks:** {unknown:,} of {len(metas):,} samples (`mask_known: false`) "
            "show real occlusions (face masks, sunglasses, scarves) that no mask records: their mask members "
            "are all 0 only because nothing synthetic was added. The statistics, plots and heat map below "
            + ("leave them out." if len(ratios) else "are therefore not given."),
            "",
        ]
    if len(ratios):
        lines += _table(
            ["mean", "mean (occluded only)", "occluded samples", "std", "min", "max"],
            [
                [
                    f"{ratios.mean():.2%}",
                    f"{values['mean_occlusion_ratio_occluded']:.2%}",
                    f"{int((ratios > 0).sum()):,} ({values['occluded_fraction']:.1%})",
                    f"{ratios.std():.2%}",
                    f"{ratios.min():.2%}",
                    f"{ratios.max():.2%}",
                ]
            ],
        )
    lines += ["", f"![occlusion ratio histogram]({PLOT_RATIO})", ""]
    if maps is not None:
        lines += [
            f"![occlusion frequency heat map]({PLOT_HEATMAP})",
            "",
            f"Heat map: mean of the masks of {maps.count:,} samples of {maps.size[0]}x{maps.size[1]} "
            f"(values in `{FREQUENCY_NPY}`); highest per-pixel frequency {maps.frequency.max():.2%}, "
            f"mean {maps.frequency.mean():.2%}.",
        ]
        if maps.other_sizes:
            lines.append(f"{maps.other_sizes:,} samples of other sizes are not part of the heat map.")
        lines.append("")
    lines += [f"![occluder counts]({PLOT_OCCLUDERS})", ""]
    if families or names:
        lines += _table(["family", "uses"], [[k, f"{v:,}"] for k, v in sorted(families.items())]) + [""]
        lines += _table(["occluder", "uses"], [[k, f"{v:,}"] for k, v in sorted(names.items())]) + [""]
    elif unknown:
        lines += ["No synthetic occluders (the real occlusions above have no masks).", ""]
    else:
        lines += ["No occluders: every sample is clean.", ""]

    lines += ["## Failures", ""]
    if failures:
        stages = Counter(f["stage"] for f in failures)
        reasons = Counter(f["reason"] for f in failures)
        lines += _table(["stage", "inputs"], [[k, f"{v:,}"] for k, v in sorted(stages.items())]) + [""]
        lines += _table(
            ["reason (most common first)", "inputs"],
            [[r.replace("|", "\\|"), f"{n:,}"] for r, n in reasons.most_common(10)],
        )
        if len(reasons) > 10:
            lines.append(f"\n... and {len(reasons) - 10} other reasons; see `{contract.FAILURES}`.")
    else:
        lines.append("None: every planned sample was written.")
    lines.append("")

    if "pairs" in values:
        lines += [
            "## Pairs",
            "",
            *_table(
                ["pairs", "matched", "mismatched", "folds", "flagged"],
                [
                    [
                        f"{values['pairs']:,}",
                        f"{values['matched_pairs']:,}",
                        f"{values['mismatched_pairs']:,}",
                        f"{values['folds']:,}",
                        f"{values['flagged_pairs']:,}",
                    ]
                ],
            ),
            "",
            f"Flagged pairs stay in `{PAIRS_FILE}` with their reason; they are never removed.",
            "",
        ]

    protocol_path = dataset_dir / PROTOCOL_FILE
    if protocol_path.exists():
        doc = json.loads(protocol_path.read_text())
        info = doc.get("info", {})
        lines += ["## Protocol", "", f"- **Protocol:** `{doc.get('protocol')}` ({info.get('task', '')})"]
        if info.get("source"):
            lines.append(f"- **Convention:** {info['source']}")
        for name in ("gallery_images", "probe_sets", "gallery_mode", "rule"):
            if name in info:
                lines.append(
                    f"- **{name}:** `{json.dumps(info[name])}`"
                    if not isinstance(info[name], str)
                    else f"- **{name}:** {info[name]}"
                )
        rows = [["gallery", f"{len(doc.get('gallery', [])):,}"]]
        rows += [[f"probes: {k}", f"{len(v):,}"] for k, v in doc.get("probes", {}).items()]
        rows += [
            ["distractors", f"{len(doc.get('distractors', [])):,}"],
            ["flagged (listed, no sample)", f"{len(doc.get('flagged', [])):,}"],
            ["excluded source images", f"{len(doc.get('excluded', [])):,}"],
        ]
        lines += ["", *_table(["role", "samples"], rows), ""]

    shard_rows = [
        [f"`{s['name']}`", f"`{s['sha256']}`", f"{s.get('num_samples', '')}", f"{s.get('num_failures', '')}"]
        for s in manifest.get("shards", [])
    ]
    lines += ["## Shards", "", *_table(["shard", "sha256", "samples", "failures"], shard_rows), ""]
    return "\n".join(lines)
