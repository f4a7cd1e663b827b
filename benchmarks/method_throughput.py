"""Training throughput of each occlusion method relative to its plain backbone, in the same run.

    python benchmarks/method_throughput.py            # GPU: paper configs, batch 128, bf16, channels_last
    python benchmarks/method_throughput.py --cpu      # CPU: batch 8, fp32, 3 timed steps (slow, ~10 min)

Each row times full training steps (forward, every loss term, backward, the method's optimiser
step(s)) of a method built from its paper-default config (configs/*.yaml), and of the plain
baseline with the same backbone, input size and margin head (the "reference"), on synthetic
batches already on the device: random images, a random occluded block per image (mask), a clean
counterpart, 10,572 identities (CASIA-WebFace). So the ratio is the model cost of a method, not
of its data pipeline (benchmarks/train_throughput.py times the loader). Reference and method are
timed alternately, `--repeats` times each, and the median is reported.
Output: benchmarks/results/method_throughput-<device>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import write_result  # noqa: E402

from occsynth_train.config import load_config  # noqa: E402
from occsynth_train.data.batch import Batch  # noqa: E402
from occsynth_train.engine.optim import build_optimizer  # noqa: E402
from occsynth_train.engine.trainer import autocast_context  # noqa: E402
from occsynth_train.methods import create_method  # noqa: E402

NUM_CLASSES = 10572
CONFIGS = ROOT / "configs"
ROWS = [  # (label, config file, overrides)
    ("MSML IResNet-50", "msml_r50.yaml", []),
    ("PDSN IResNet-50, stage masks (9 generators + U-Net)", "pdsn_r50.yaml", ["method_kw.stage=masks"]),
    ("PDSN IResNet-50, stage finetune (FDM)", "pdsn_r50.yaml", ["method_kw.stage=finetune"]),
    ("ALOB IResNet-50 (Identifier + Trimmer)", "alob_r50.yaml", []),
    ("SOIDN VGG16 + FCN-8s", "soidn_vgg16.yaml", []),
    ("LCD IResNet-50", "lcd_r50.yaml", []),
]


def reference_overrides(cfg) -> list[str]:
    """The plain baseline with the method's backbone, input size and head."""
    m = cfg.model
    return [
        "method=baseline",
        "method_kw={}",
        f"model.backbone={m.backbone}",
        f"model.backbone_kw={json.dumps(m.backbone_kw)}",
        f"model.input_size={json.dumps(m.input_size)}",
        f"model.head={m.head}",
        f"model.head_kw={json.dumps(m.head_kw)}",
    ]


def synthetic_batch(b: int, size: tuple[int, int], device: torch.device, channels_last: bool) -> Batch:
    g = torch.Generator().manual_seed(0)
    h, w = size
    images = torch.rand(b, 3, h, w, generator=g) * 2 - 1
    masks = torch.zeros(b, 1, h, w)
    for i in range(b):  # one block of a fifth of each side, anywhere
        y, x = (
            int(torch.randint(0, h - h // 5, (1,), generator=g)),
            int(torch.randint(0, w - w // 5, (1,), generator=g)),
        )
        masks[i, :, y : y + h // 5, x : x + w // 5] = 1
    clean = torch.where(masks.bool(), torch.rand(b, 3, h, w, generator=g) * 2 - 1, images)
    images, clean = images.to(device), clean.to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
        clean = clean.contiguous(memory_format=torch.channels_last)
    return Batch(
        images,
        masks.to(device),
        torch.randint(0, NUM_CLASSES, (b,), generator=g).to(device),
        torch.zeros(b, 5, 2, device=device),
        clean,
        torch.ones(b, dtype=torch.bool, device=device),
        [f"{i}" for i in range(b)],
        [{} for _ in range(b)],
    )


class Timed:
    """A method, its optimiser set and a batch, ready to time training steps."""

    def __init__(self, config: Path, overrides: list[str], args, device: torch.device):
        self.cfg = load_config(config, ["data.train=[unused]", *overrides])
        torch.manual_seed(0)
        self.method = create_method(self.cfg.method, self.cfg, NUM_CLASSES).to(device)
        if args.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.method.train()
        self.optimizer = build_optimizer(self.method.param_groups(), self.cfg.optim)
        self.batch = synthetic_batch(args.batch_size, tuple(self.method.input_size), device, args.channels_last)
        self.args, self.device = args, device
        self.params_m = sum(p.numel() for p in self.method.parameters()) / 1e6

    def step(self, i: int) -> None:
        with autocast_context(self.device, self.args.precision):
            terms = self.method(self.batch, i)
        loss = sum(v.float() for k, v in terms.items() if not k.startswith("log/"))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def samples_per_s(self, steps: int) -> float:
        _sync(self.device)
        t = time.perf_counter()
        for i in range(steps):
            self.step(i)
        _sync(self.device)
        return self.args.batch_size * steps / (time.perf_counter() - t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(label: str, config: str, overrides: list[str], args, device: torch.device) -> dict:
    method = Timed(CONFIGS / config, overrides, args, device)
    ref = Timed(CONFIGS / config, overrides + reference_overrides(method.cfg), args, device)
    for t in (ref, method):
        for i in range(args.warmup):
            t.step(i)
    runs = {"reference": [], "method": []}
    for _ in range(args.repeats):  # alternate, so drift of the machine hits both alike
        runs["reference"].append(ref.samples_per_s(args.steps))
        runs["method"].append(method.samples_per_s(args.steps))
    r, m = statistics.median(runs["reference"]), statistics.median(runs["method"])
    row = {
        "label": label,
        "config": config,
        "overrides": overrides,
        "reference": f"baseline {method.cfg.model.backbone} + {method.cfg.model.head} at "
        f"{'x'.join(map(str, method.method.input_size))}",
        "method_samples_per_s": round(m, 2),
        "reference_samples_per_s": round(r, 2),
        "relative_throughput": round(m / r, 3),
        "method_params_m": round(method.params_m, 2),
        "reference_params_m": round(ref.params_m, 2),
        "runs": {k: [round(v, 2) for v in vs] for k, vs in runs.items()},
    }
    if device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
    del method, ref
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"# Training throughput relative to the plain backbone ({report['device_name']})",
        "",
        f"Batch {s['batch_size']}, {s['precision']}, channels_last={s['channels_last']}, "
        f"{s['steps']} timed steps x {s['repeats']} repeats (median), synthetic batches on the device, "
        f"{NUM_CLASSES} classes. `python benchmarks/method_throughput.py{' --cpu' if s['cpu'] else ''}`.",
        "",
        "| method | samples/s | reference | ref. samples/s | relative | params (M) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['label']} | {r['method_samples_per_s']:.1f} | {r['reference']} | "
            f"{r['reference_samples_per_s']:.1f} | {r['relative_throughput']:.2f} | {r['method_params_m']:.1f} |"
        )
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="CPU run: batch 8, fp32, 1 warm-up + 3 timed steps.")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--only", default=None, help="Comma-separated substrings of row labels to run.")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.cpu:
        args.device = "cpu"
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cpu = device.type == "cpu"
    args.batch_size = args.batch_size or (8 if cpu else 128)
    args.steps = args.steps or (3 if cpu else 20)
    args.warmup = args.warmup or (1 if cpu else 5)
    args.repeats = args.repeats or (2 if cpu else 3)
    args.precision = args.precision or ("fp32" if cpu else "bf16")
    args.channels_last = not cpu
    rows = [r for r in ROWS if not args.only or any(s.strip().lower() in r[0].lower() for s in args.only.split(","))]
    results = []
    for label, config, overrides in rows:
        results.append(measure(label, config, overrides, args, device))
        print(json.dumps(results[-1]), flush=True)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    report = {
        "device": str(device),
        "device_name": name,
        "gpu_measured": device.type == "cuda",
        "settings": {
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "precision": args.precision,
            "channels_last": args.channels_last,
            "torch_threads": torch.get_num_threads(),
            "cpu": cpu,
        },
        "rows": results,
    }
    if cpu:
        report["note"] = (
            "CPU run (no GPU was lent): relative costs on this CPU only; GPU ratios differ "
            "(different kernels, bf16, larger batches) and were not measured."
        )
    out = write_result(
        "method_throughput", report, args.out, slug=name.lower().replace(" ", "-"), markdown=markdown(report)
    )
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
