"""Parameters and FLOPs of the occlusion methods at their paper input sizes.

    python benchmarks/method_table.py   # -> benchmarks/results/method_table.{json,md}

How things are counted:
  * params: trainable + frozen parameters of the modules a method builds, WITHOUT the identity
    classifier (margin-head weight matrices scale with the training identities, 10572 for
    CASIA-WebFace, and are dropped at test time). "params (test)" counts only what embed() runs.
  * FLOPs: multiply-adds (MACs) of one `embed` call at batch 1 (no flip), counted with
    torch.utils.flop_counter.FlopCounterMode (which reports 2 FLOPs per multiply-add; we divide
    by 2, the convention of the face-recognition papers' tables). Convs, linears, matmuls and
    transposed convs are counted; BN, activations, pooling and interpolation are not.
  * Reference: MSML's Table 6 (ArcFace-R18 24.02M / 2.60G, OSB-R18 11.43M / 0.94G) beside our
    IResNet-18 baseline and our ResNet-18 U-Net occlusion-segmentation branch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from occsynth_train.config import load_config  # noqa: E402
from occsynth_train.methods import create_method  # noqa: E402
from occsynth_train.methods._common import scaled_unet  # noqa: E402

NUM_CLASSES = 10572
OUT = ROOT / "benchmarks" / "results"

ROWS = [  # (label, config, overrides)
    ("baseline IResNet-18 (ArcFace-R18)", "baseline_r18.yaml", []),
    ("MSML IResNet-18", "msml_r50.yaml", ["model.backbone=iresnet18"]),
    ("MSML IResNet-50", "msml_r50.yaml", []),
    ("PDSN IResNet-50 (finetune, FDM)", "pdsn_r50.yaml", ["method_kw.stage=finetune"]),
    ("ALOB IResNet-50 (Identifier + Trimmer)", "alob_r50.yaml", []),
    ("SOIDN VGG16 + FCN-8s", "soidn_vgg16.yaml", []),
    ("LCD IResNet-50", "lcd_r50.yaml", []),
]
PAPER = {
    "baseline IResNet-18 (ArcFace-R18)": {"params_m": 24.02, "gmacs": 2.60},
    "occlusion segmentation branch (ResNet-18 U-Net)": {"params_m": 11.43, "gmacs": 0.94},
}


def _is_classifier(name: str) -> bool:
    return name.startswith("head.") or name.startswith("trimmer_head.")


def count_params(method) -> float:
    return sum(p.numel() for n, p in method.named_parameters() if not _is_classifier(n)) / 1e6


def test_params(method, x) -> float:
    """Parameters of the modules that run in embed() (forward hooks record them)."""
    used, hooks = set(), []
    for module in method.modules():
        hooks.append(module.register_forward_hook(lambda m, i, o: used.add(id(m))))
    with torch.no_grad():
        method.embed(x)
    for h in hooks:
        h.remove()
    seen, total = set(), 0
    for module in method.modules():
        if id(module) in used:
            for p in module.parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
    return total / 1e6


def gmacs(fn, x) -> float:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn(x)
    return counter.get_total_flops() / 2 / 1e9


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for label, cfg_name, overrides in ROWS:
        cfg = load_config(ROOT / "configs" / cfg_name, ["data.train=[x]", *overrides])
        torch.manual_seed(0)
        method = create_method(cfg.method, cfg, NUM_CLASSES).eval()
        if cfg.method == "pdsn":
            method.dict_count.fill_(1)  # a filled dictionary so the FDM path runs
        h, w = method.input_size
        x = torch.randn(1, 3, h, w)
        rows.append(
            {
                "method": label,
                "config": cfg_name,
                "overrides": overrides,
                "input": [h, w],
                "params_m": round(count_params(method), 2),
                "params_test_m": round(test_params(method, x), 2),
                "gmacs": round(gmacs(method.embed, x), 2),
                "paper": PAPER.get(label),
            }
        )
        print(rows[-1])
        del method
    seg = scaled_unet(64, 2, (112, 112)).eval()
    x = torch.randn(1, 3, 112, 112)
    rows.append(
        {
            "method": "occlusion segmentation branch (ResNet-18 U-Net)",
            "config": "-",
            "overrides": [],
            "input": [112, 112],
            "params_m": round(sum(p.numel() for p in seg.parameters()) / 1e6, 2),
            "params_test_m": round(sum(p.numel() for p in seg.parameters()) / 1e6, 2),
            "gmacs": round(gmacs(seg, x), 2),
            "paper": PAPER["occlusion segmentation branch (ResNet-18 U-Net)"],
        }
    )
    print(rows[-1])
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {
        "counting": "params without identity classifiers; GMACs = FlopCounterMode FLOPs / 2 of one embed() at "
        "batch 1, no flip",
        "torch": torch.__version__,
        "num_classes_for_build": NUM_CLASSES,
    }
    (OUT / "method_table.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "| method | input | params (M) | params at test (M) | GMACs (embed, bs 1) | MSML Table 6 (M / G) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = f"{r['paper']['params_m']} / {r['paper']['gmacs']}" if r["paper"] else ""
        lines.append(
            f"| {r['method']} | {r['input'][0]}x{r['input'][1]} | {r['params_m']} | {r['params_test_m']} | "
            f"{r['gmacs']} | {ref} |"
        )
    lines += [
        "",
        "Params exclude the identity classifiers (margin-head weights). GMACs = multiply-adds counted by "
        "torch.utils.flop_counter.FlopCounterMode (its FLOPs / 2) for one embed() at batch 1; BN, activations, "
        "pooling and interpolation are not counted.",
    ]
    (OUT / "method_table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
