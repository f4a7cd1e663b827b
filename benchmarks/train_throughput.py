"""Training throughput of occsynth_train: samples/s of IResNet-18/-50 + ArcFace training steps
with data from occsynth shards vs synthetic on-device tensors, and the shard loader alone.

    python benchmarks/train_throughput.py                  # GPU: batch 256, bf16, channels_last
    python benchmarks/train_throughput.py --quick          # CPU check: tiny batch, few steps
    python benchmarks/train_throughput.py --data DIR       # time real shards instead of generated ones

Measured (each after warm-up steps, with device synchronisation around the timed region):
  * loader     images/s of ShardStream + DataLoader (decode, flip, collate), no model;
  * synthetic  samples/s of full training steps (forward, loss, backward, SGD step) on random
               tensors already on the device: the model's ceiling;
  * shards     samples/s of the same steps fed by the loader (host->device copy, normalisation
               and the data pipeline included): what a run gets.
Without --data, a dataset of 112x112 PNG faces is generated in a temporary folder (crops of
scikit-image's astronaut with jitter and random black blocks, so PNG decoding costs about
what real faces cost) with 2,000 identities for the head.
Targets reported against (one H100, batch 256, bf16 + channels_last): >= 3,000 samples/s for
IResNet-50 and >= 8,000 for IResNet-18. The JSON records the machine (GPU, torch, CUDA) and says
whether a GPU was measured at all.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import RESULTS, machine_info  # noqa: E402

from occsynth_train.config import config_from_dict  # noqa: E402
from occsynth_train.data.batch import Batch, prepare_batch  # noqa: E402
from occsynth_train.data.labels import LabelMap  # noqa: E402
from occsynth_train.data.loaders import make_train_loader  # noqa: E402
from occsynth_train.data.stream import ShardStream  # noqa: E402
from occsynth_train.engine.optim import build_optimizer  # noqa: E402
from occsynth_train.engine.trainer import autocast_context  # noqa: E402
from occsynth_train.methods import create_method  # noqa: E402

TARGETS = {"iresnet50": 3000, "iresnet18": 8000}


def make_dataset(out: Path, samples: int, identities: int, seed: int = 0) -> Path:
    """112x112 PNG faces in contract shards (see module doc)."""
    import cv2
    import webdataset as wds
    from skimage import data

    from occsynth import contract

    rng = np.random.default_rng(seed)
    face = data.astronaut()[20:220, 150:330]
    out.mkdir(parents=True, exist_ok=True)
    shards, metas, shard_size = [], [], 1000
    for start in range(0, samples, shard_size):
        path = out / contract.shard_name(start // shard_size)
        with open(path, "wb") as f:
            writer = wds.TarWriter(f)
            for i in range(start, min(samples, start + shard_size)):
                s = 112 / 180 * rng.uniform(0.9, 1.1)
                m = np.array([[s, 0, rng.uniform(-8, 8)], [0, s, rng.uniform(-8, 8) - 4]])
                img = cv2.warpAffine(face, m, (112, 112), borderMode=cv2.BORDER_REFLECT)
                mask = np.zeros((112, 112), np.uint8)
                if rng.random() < 0.5:
                    x, y = rng.integers(0, 60, size=2)
                    img[y : y + 50, x : x + 50] = 0
                    mask[y : y + 50, x : x + 50] = 255
                key = f"{i:07d}"
                meta = {
                    "key": key,
                    "sample_id": key,
                    "identity": f"id{i % identities:05d}",
                    "source": key,
                    "template": "arcface-112x112",
                    "image_size": [112, 112],
                    "landmarks": [[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]],
                    "seed": i,
                    "occluders": [],
                    "occlusion_ratio": float(mask.mean() / 255),
                }
                writer.write(
                    {
                        "__key__": key,
                        "png": cv2.imencode(".png", img[:, :, ::-1])[1].tobytes(),
                        "mask.png": cv2.imencode(".png", mask)[1].tobytes(),
                        "json": contract.dumps(meta).encode(),
                    }
                )
                metas.append(meta)
            writer.close()
        shards.append({"name": path.name, "num_samples": min(samples, start + shard_size) - start})
    (out / contract.MANIFEST).write_text(json.dumps({"shards": shards, "image_size": [112, 112]}))
    (out / contract.INDEX).write_text(contract.dumps_lines(metas))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_loader(stream: ShardStream, workers: int, batches: int, warmup: int) -> dict:
    loader = iter(make_train_loader(stream, workers, pin_memory=torch.cuda.is_available()))
    for _ in range(warmup):
        next(loader)
    t = time.perf_counter()
    for _ in range(batches):
        next(loader)
    dt = time.perf_counter() - t
    return {"images_per_s": round(batches * stream.batch_size / dt, 1), "batches": batches, "workers": workers}


def time_training(backbone: str, args, device: torch.device, num_classes: int, stream: ShardStream | None) -> float:
    cfg = config_from_dict(
        {
            "method": "baseline",
            "model": {"backbone": backbone, "head": "arcface"},
            "optim": {"name": "sgd", "lr": 0.01},
            "train": {"steps": 1},
            "data": {"batch_size": args.batch_size},
        }
    )
    torch.manual_seed(0)
    method = create_method("baseline", cfg, num_classes).to(device)
    if args.channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(method.param_groups(), cfg.optim)
    b = args.batch_size
    if stream is None:
        images = torch.randn(b, 3, 112, 112, device=device)
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        raw = {"images": images, "labels": torch.randint(0, num_classes, (b,), device=device)}
        batches = iter(lambda: raw, None)
    else:
        batches = iter(make_train_loader(stream, args.workers, pin_memory=device.type == "cuda"))

    def step() -> None:
        raw = next(batches)
        if stream is None:
            batch = Batch(raw["images"], None, raw["labels"], None, None, None, [])
        else:
            batch = prepare_batch(raw, device, input_size=(112, 112), channels_last=args.channels_last)
        with autocast_context(device, args.precision):
            loss = method(batch, 0)["id"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    return round(args.steps * b / (time.perf_counter() - t), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU check: batch 4, 2 timed steps, 1 thread.")
    parser.add_argument("--data", type=Path, default=None, help="An occsynth dataset directory (default: generated).")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbones", default="iresnet18,iresnet50")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "bf16", "fp16"],
        help="Default: bf16 on CUDA, fp32 on CPU (CPUs without bf16 units emulate it, ~50x slower).",
    )
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.quick:
        torch.set_num_threads(1)
    defaults = (4, 2, 1, 1) if args.quick else (256, 50, 10, 8)
    args.batch_size = args.batch_size or defaults[0]
    args.steps = args.steps or defaults[1]
    args.warmup = args.warmup or defaults[2]
    args.workers = args.workers if args.workers is not None else defaults[3]
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    loader_batch = 64 if args.quick else args.batch_size

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or make_dataset(
            Path(tmp) / "ds", samples=400 if args.quick else 20000, identities=40 if args.quick else 2000
        )
        labels = LabelMap.from_datasets([root])
        stream = lambda b=args.batch_size: ShardStream([root], labels, b, seed=0, shuffle_buffer=256)  # noqa: E731
        results: dict = {"loader": time_loader(stream(loader_batch), args.workers, batches=20, warmup=2)}
        results["loader"]["batch_size"] = loader_batch
        for name in args.backbones.split(","):
            results[name] = {
                "synthetic_samples_per_s": time_training(name, args, device, len(labels), None),
                "shards_samples_per_s": time_training(name, args, device, len(labels), stream()),
            }
            if name in TARGETS:
                results[name]["target_samples_per_s_h100"] = TARGETS[name]
            print(name, results[name], flush=True)
        print("loader", results["loader"])

    report = {
        "benchmark": "train_throughput",
        "quick": args.quick,
        "machine": machine_info(),
        "device": str(device),
        "gpu_measured": device.type == "cuda",
        "settings": {
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "precision": args.precision,
            "channels_last": args.channels_last,
            "workers": args.workers,
            "torch_threads": torch.get_num_threads(),
            "classes": len(labels),
            "data": str(args.data) if args.data else "generated 112x112 PNG faces",
        },
        "results": results,
    }
    if device.type != "cuda":
        report["note"] = (
            "CPU run: GPU throughput was NOT measured; these figures only show that the script "
            "works. Compare against the H100 targets only with a CUDA run."
        )
    slug = (
        "quick-cpu"
        if args.quick and device.type != "cuda"
        else ((torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu").lower().replace(" ", "-"))
    )
    out = args.out or RESULTS / f"train_throughput-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
