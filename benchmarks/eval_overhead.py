"""Overhead of `occsynth-train eval` on an external model: images/s of the evaluation path vs
calling onnxruntime (or the torch module) directly on the same batches, in the same run.

    python benchmarks/eval_overhead.py                  # IResNet-50 (w600k_r50's network) and a tiny net
    python benchmarks/eval_overhead.py --rows r50 --images 64 --repeats 5 --threads 4 --flip

Each row is one network with random weights (speed does not depend on them), at insightface's
input (112x112, 512-d for IResNet-50), exported to ONNX and loaded twice over the same objects:
  * direct: the onnxruntime session's `run` (or the nn.Module under no_grad) on float32 batches
    normalised beforehand, outside the timing (and their mirror images when --flip): the model alone;
  * eval: the evaluator's own `embed_dataset` (occsynth_train/eval/evaluate.py) over the same
    uint8 images held in memory, one batch per call (so a DataLoader is even built per batch,
    which overstates the real path a little): batching, the input conventions (float conversion,
    (x - 127.5) / 127.5), the model call through the adapter (models.py), the flip-sum when
    --flip, L2 normalisation, concatenation.
Decoding the benchmark's PNGs is left out of both (it is the same for any reader of the shards;
it runs in DataLoader workers). With 0 loader workers the two are timed batch by batch, back to
back, alternating which goes first, --repeats times over the batches; with workers (the CLI's
default is 2) whole passes are alternated, worker start-up included. After a warm-up of each,
the overhead is the median of the paired ratios eval / direct - 1 (robust to the load of a shared
machine changing under the run) and, for reference, the ratio of the total times. Each
THREADSxWORKERS configuration (--configs) runs both rows. The load average is recorded.
Output: benchmarks/results/eval_overhead-<device>.json (and .md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import write_result  # noqa: E402

from occsynth_train.eval.evaluate import _flip, embed_dataset  # noqa: E402
from occsynth_train.eval.models import load_model  # noqa: E402
from occsynth_train.models.backbones import create_backbone  # noqa: E402

ROWS = {  # name -> (label, backbone, backbone kwargs, default images, default batch)
    "r50": (
        "IResNet-50, 512-d (the network of insightface's w600k_r50)",
        "iresnet50",
        {"embedding_size": 512},
        16,
        8,
    ),
    "tiny": (
        "IResNet-18 at 1/4 width, 128-d (worst case: little model time)",
        "iresnet18",
        {"width": 16, "embedding_size": 128},
        128,
        32,
    ),
}


class _Memory(torch.utils.data.Dataset):
    """uint8 images already in memory, in the evaluator's sample format."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {
            "index": i,
            "image": self.images[i],
            "mask": torch.zeros(1, 1, 1, dtype=torch.uint8),
            "mask_known": True,
        }


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(row: str, images: torch.Tensor, batch: int, repeats: int, flip: bool, workers: int, workdir: Path) -> dict:
    label, backbone, kwargs = ROWS[row][:3]
    net = create_backbone(backbone, input_size=(112, 112), **kwargs).eval()
    onnx_path = workdir / f"{row}.onnx"
    with torch.no_grad():
        torch.onnx.export(
            net,
            (torch.randn(2, 3, 112, 112),),
            str(onnx_path),
            input_names=["input"],
            output_names=["embedding"],
            dynamic_axes={"input": {0: "n"}, "embedding": {0: "n"}},
            dynamo=False,
        )
    batches = [images[i : i + batch] for i in range(0, len(images), batch)]
    # the direct path's input, prepared outside the timing: normalised float32 (+ mirror images)
    ready = []
    for b in batches:
        x = (b.float() - 127.5) / 127.5
        ready.append([x] + ([_flip(x)] if flip else []))
    out: dict = {
        "label": label,
        "backbone": backbone,
        "backbone_kw": kwargs,
        "images": len(images),
        "batch_size": batch,
        "threads": torch.get_num_threads(),
        "workers": workers,
        "paths": {},
    }

    onnx = load_model(str(onnx_path), None, "cpu").model
    session, name = onnx.session, onnx.session.get_inputs()[0].name
    arrays = [[v.numpy() for v in views] for views in ready]
    # package.module:attr for the factory path: a module object holding the network
    holder = type(sys)("_eval_overhead_net")
    holder.net = net
    sys.modules[holder.__name__] = holder
    module = load_model(f"{holder.__name__}:net", None, "cpu").model

    def direct_onnx(i):
        for a in arrays[i]:
            session.run(None, {name: a})

    def direct_module(i):
        with torch.no_grad():
            for v in ready[i]:
                net(v)

    for path, model, direct in (("onnxruntime", onnx, direct_onnx), ("torch module", module, direct_module)):
        # workers = 0: one batch per call, alternating batch by batch; workers > 0: whole passes
        # (the evaluator's DataLoader collates in its worker processes, as the CLI does by default)
        units = [[i] for i in range(len(batches))] if workers == 0 else [list(range(len(batches)))]

        def direct_unit(unit, direct=direct):
            for i in unit:
                direct(i)

        def through_eval(unit, model=model):
            data = _Memory(torch.cat([batches[i] for i in unit]))
            embed_dataset(model, data, torch.device("cpu"), batch_size=batch, num_workers=workers, flip=flip)

        direct_unit(units[0])  # warm-up, both
        through_eval(units[0])
        t_direct, t_eval = [], []
        for r in range(repeats):  # alternating which goes first
            for j, unit in enumerate(units):
                first, second = ((direct_unit, t_direct), (through_eval, t_eval))[:: 1 if (r + j) % 2 == 0 else -1]
                for fn, sink in (first, second):
                    sink.append(_time(lambda: fn(unit)))
        ratios = [e / d for d, e in zip(t_direct, t_eval)]
        n = len(images) * repeats
        out["paths"][path] = {
            "direct_images_per_s": round(n / sum(t_direct), 2),
            "eval_images_per_s": round(n / sum(t_eval), 2),
            "overhead_median_pair": round(statistics.median(ratios) - 1.0, 4),
            "overhead_total": round(sum(t_eval) / sum(t_direct) - 1.0, 4),
            "pairs": len(ratios),
            "direct_seconds": [round(t, 4) for t in t_direct],
            "eval_seconds": [round(t, 4) for t in t_eval],
        }
        p = out["paths"][path]
        print(
            f"{row:5s} {torch.get_num_threads()} thread(s) {workers} worker(s) {path:13s} direct {p['direct_images_per_s']:8.1f} img/s  eval {p['eval_images_per_s']:8.1f} img/s  "
            f"overhead: median pair {100 * p['overhead_median_pair']:+.1f}%, total {100 * p['overhead_total']:+.1f}%",
            flush=True,
        )
    return out


def markdown(result: dict) -> str:
    lines = [
        "# Eval overhead: `occsynth-train eval` vs calling the model directly",
        "",
        f"112x112 images, flip-sum {'on' if result['flip'] else 'off'}; each batch timed through both paths, "
        f"alternating which goes first, {result['repeats']} times; load average "
        f"{result['load_average_1m_start']} at the start, {result['load_average_1m_end']} at the end "
        f"({result['machine_cores']} cores).",
        "",
        "| network | threads | loader workers | images x batch | path | direct img/s | eval img/s | "
        "overhead (median of pairs) | overhead (totals) |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        for path, p in row["paths"].items():
            lines.append(
                f"| {row['label']} | {row['threads']} | {row['workers']} | {row['images']} x {row['batch_size']} | {path} | "
                f"{p['direct_images_per_s']:.1f} | {p['eval_images_per_s']:.1f} | "
                f"{100 * p['overhead_median_pair']:+.1f}% | {100 * p['overhead_total']:+.1f}% |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="r50,tiny", help=f"comma-separated: {', '.join(ROWS)}")
    parser.add_argument("--images", type=int, default=None, help="images per row (default: the row's)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the row's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--configs",
        default="1x0,2x0,2x2",
        help="THREADSxWORKERS to run: intra-op threads (torch and onnxruntime) x the evaluator's DataLoader workers",
    )
    parser.add_argument("--flip", action="store_true", help="flip-sum on both sides (twice the model calls)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",") if c.strip()]
    result = {
        "load_average_1m_start": round(os.getloadavg()[0], 2),
        "machine_cores": os.cpu_count(),
        "repeats": args.repeats,
        "flip": args.flip,
        "decode": "excluded from both paths (PNG decoding runs in DataLoader workers for any reader)",
        "rows": [],
    }
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for count, workers in configs:
            torch.set_num_threads(count)  # the onnxruntime sessions take the same count (models.py)
            for row in rows:
                n = args.images or ROWS[row][3]
                images = torch.from_numpy(rng.integers(0, 256, (n, 3, 112, 112), dtype=np.uint8))
                batch = args.batch_size or ROWS[row][4]
                result["rows"].append(measure(row, images, batch, args.repeats, args.flip, workers, Path(tmp)))
    import onnxruntime

    result["onnxruntime"] = onnxruntime.__version__
    result["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    path = write_result("eval_overhead", result, args.out, slug="cpu", markdown=markdown(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
