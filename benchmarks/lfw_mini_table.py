"""The LFW mini-protocol table: baseline (trained clean / with occlusion) vs the five methods, each
evaluated on fold 1 clean, with 30 % blocks, LFW-OCC-2.0 style objects and face masks.

    python benchmarks/lfw_mini_table.py                       # every row (a GPU: hours, not minutes)
    python benchmarks/lfw_mini_table.py --methods baseline,msml
    python benchmarks/lfw_mini_table.py --set train.epochs=10 # overrides for every run

Data and commands to build it: occsynth_train/PROTOCOL.md. Every row trains from
configs/lfw_mini_r18_occ.yaml (IResNet-18, CosFace s=30 m=0.35, the same recipe and epochs) with
the method switched and only what the method needs added (ROWS below); SOIDN is defined on VGG16,
so its row trains a batch-norm VGG16 with the same head; PDSN keeps the 112x112 input of the
benchmarks (its paper used 112x96 crops; resizing would squash the faces). PDSN runs its four stages in sequence, each
started from the previous stage's checkpoint (train.init_from): trunk (the full budget), masks on
`occsynth build pdsn-pairs` shards (a quarter), dictionary (a statistics pass), finetune (a
quarter). Runs live in --runs/<row>; an existing finished run is only re-evaluated, an
unfinished one resumes, so the script can be stopped and restarted.
Output: benchmarks/results/lfw_mini-<device>.json (every report) and .md (the table).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import write_result  # noqa: E402

from occsynth_train.config import load_config  # noqa: E402
from occsynth_train.engine.checkpoint import list_checkpoints  # noqa: E402
from occsynth_train.engine.trainer import train  # noqa: E402

CONDITIONS = {  # column -> benchmark directory under --bench
    "clean": "block/level-00",
    "block 30%": "block/level-30",
    "LFW-OCC-2.0 style": "occ2",
    "masked": "masked",
}
ROWS = {  # row (also its run directory) -> (label, overrides of the base config)
    "baseline_clean": ("baseline, trained without occlusion", ["method=baseline", "data.train=[{train_clean}]"]),
    "baseline": ("baseline", ["method=baseline"]),
    "msml": ("MSML", ["method=msml", "method_kw={seg_width: 64, seg_classes: 2, variant: FRS}"]),
    "pdsn": ("PDSN (segmentation-predicted FDM)", ["method=pdsn", "method_kw={blocks: central, seg_width: 64}"]),
    "alob": ("ALOB", ["method=alob", "optim.by_type={adam: {lr: 1.0e-3, weight_decay: 5.0e-4}}"]),
    "soidn": (
        "SOIDN (VGG16-BN)",
        [
            "method=soidn",
            "model.backbone=vgg16",
            "model.backbone_kw={embedding_size: 512, batch_norm: true, dropout: 0.2}",
            "method_kw={fcn_hidden: 1024}",
        ],
    ),
    "lcd": ("LCD", ["method=lcd"]),
}
PDSN_STAGES = (("trunk", 1.0), ("masks", 0.25), ("dictionary", None), ("finetune", 0.25))
DICTIONARY_STEPS = 200


def _budget(cfg, fraction: float) -> list[str]:
    if cfg.train.steps is not None:
        return [f"train.steps={max(1, math.ceil(cfg.train.steps * fraction))}", "train.epochs=null"]
    return [f"train.epochs={cfg.train.epochs * fraction}", "train.steps=null"]


def _last(run: Path) -> Path:
    ckpts = list_checkpoints(run)
    if not ckpts:
        raise RuntimeError(f"{run} has no checkpoint")
    return ckpts[-1]


def run_row(name: str, args, extra: list[str]) -> Path:
    """Train (or resume / re-evaluate) one row; returns the run whose eval_report.json it wrote."""
    rows = [o.replace("{train_clean}", str(args.train_clean)) for o in ROWS[name][1]]
    benches = [str(args.bench / d) for d in CONDITIONS.values() if (args.bench / d).exists()]
    common = [f"data.train=[{args.train}]", f"eval.benchmarks={json.dumps(benches)}"]
    if name != "pdsn":
        cfg = load_config(args.config, common + rows + extra + [f"output={args.runs / name}"])
        return train(cfg)
    base = load_config(args.config, common + rows + extra)
    prev = None
    for stage, fraction in PDSN_STAGES:
        budget = (
            [f"train.steps={DICTIONARY_STEPS}", "train.epochs=null"] if fraction is None else _budget(base, fraction)
        )
        stage_set = [f"method_kw.stage={stage}", f"output={args.runs / f'pdsn_{stage}'}", *budget]
        if stage in ("masks", "dictionary"):
            stage_set.append(f"data.train=[{args.pdsn_pairs}]")
        if stage != "finetune":
            stage_set.append("eval.benchmarks=[]")
        if prev is not None:
            stage_set.append(f"train.init_from={prev}")
        cfg = load_config(args.config, common + rows + extra + stage_set)  # the stage's budget wins
        run = train(cfg)
        prev = _last(run)
    return run


def summarise(report: dict) -> dict:
    out = {}
    for cond, rel in CONDITIONS.items():
        for key, bench in report["benchmarks"].items():
            if bench["benchmark"].rstrip("/").endswith(rel):
                v = bench["verification"]
                out[cond] = {
                    "accuracy": v["accuracy"],
                    "std": v["accuracy_std"],
                    "auc": v.get("auc"),
                    "pairs": v["pairs"],
                    "scoring": v.get("scoring", "embeddings"),
                }
    return out


def markdown(result: dict) -> str:
    conds = [c for c in CONDITIONS if any(c in r["summary"] for r in result["rows"].values())]
    lines = [
        f"# LFW mini-protocol, fold 1 (600 pairs) — {result['device_name']}",
        "",
        "10-fold accuracy (%) ± std over the fold's pairs split by index; AUC in the JSON. "
        "Training: `configs/lfw_mini_r18_occ.yaml` (see occsynth_train/PROTOCOL.md).",
        "",
        "| method | " + " | ".join(conds) + " |",
        "|---|" + "---:|" * len(conds),
    ]
    for r in result["rows"].values():
        cells = [
            f"{100 * r['summary'][c]['accuracy']:.2f} ± {100 * r['summary'][c]['std']:.2f}"
            if c in r["summary"]
            else "–"
            for c in conds
        ]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "lfw_mini_r18_occ.yaml")
    parser.add_argument("--train", type=Path, default=Path("out/lfw_mini/train_occ"))
    parser.add_argument("--train-clean", type=Path, default=Path("out/lfw_mini/train_clean"))
    parser.add_argument("--pdsn-pairs", type=Path, default=Path("out/lfw_mini/train_pdsn_pairs"))
    parser.add_argument("--bench", type=Path, default=Path("out/lfw_mini/bench"))
    parser.add_argument("--runs", type=Path, default=Path("runs/lfw_mini"))
    parser.add_argument("--methods", default=",".join(ROWS), help=f"Rows, comma-separated: {', '.join(ROWS)}.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key.path=value for every run.")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    names = {m.strip() for m in args.methods.split(",") if m.strip()}
    unknown = names - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}")
    needed = (
        [args.train, args.bench]
        + ([args.train_clean] if "baseline_clean" in names else [])
        + ([args.pdsn_pairs] if "pdsn" in names else [])
    )
    missing = [str(p) for p in needed if not Path(p).exists()]
    if missing:
        parser.error(f"missing {missing}: build them with the commands in occsynth_train/PROTOCOL.md")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "config": str(args.config),
        "overrides": args.overrides,
        "rows": {},
    }
    for name in [r for r in ROWS if r in names]:
        run = run_row(name, args, args.overrides)
        report = json.loads((run / "eval_report.json").read_text())
        result["rows"][name] = {"label": ROWS[name][0], "run": str(run), "summary": summarise(report), "report": report}
        print(name, json.dumps(result["rows"][name]["summary"]), flush=True)
    out = write_result(
        "lfw_mini", result, args.out, slug=result["device_name"].lower().replace(" ", "-"), markdown=markdown(result)
    )
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
