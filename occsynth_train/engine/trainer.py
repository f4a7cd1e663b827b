"""The shared training loop (arcface_torch-lean): one method, its optimiser(s), an endless shard stream.

    occsynth-train baseline --config configs/tiny_cpu.yaml
    torchrun --nproc_per_node 8 -m occsynth_train.cli baseline --config configs/baseline_r50.yaml

Run directory (cfg.output): config.yaml, labels.json, checkpoints/step_*.pt, train_log.csv,
tb/ (when tensorboard is installed). Starting a run whose directory already holds checkpoints
resumes from the newest one: model, optimiser, scaler, global step and samples seen are
restored, the LR is recomputed from the step, and the data stream is repositioned from samples
seen (exactly when the GPU/worker layout is unchanged; see data/stream.py). RNG states are restored
per rank when the world size is unchanged, otherwise re-derived from (seed, step, rank).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from occsynth.io.atomic import write_text
from occsynth.seeding import derive_seed

from .. import __version__
from ..config import Config, dump_config
from ..data.batch import load_online_occluder, prepare_batch
from ..data.labels import LABELS_FILE, LabelMap
from ..data.loaders import make_train_loader
from ..data.stream import BadSamples, ShardStream
from ..eval.evaluate import evaluate_run
from ..methods import create_method
from .checkpoint import (
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    load_latest_intact,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .distributed import (
    DistInfo,
    all_gather_object,
    any_true,
    barrier,
    cleanup,
    init_distributed,
)
from .optim import build_optimizer, lr_factor, set_lr
from .runlog import RunLog

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised by the NaN guard; the message names the step and the offending loss term(s)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def total_steps(cfg: Config, num_samples: int, world_size: int) -> int:
    if cfg.train.steps is not None:
        return int(cfg.train.steps)
    return max(1, math.ceil(cfg.train.epochs * num_samples / (cfg.data.batch_size * world_size)))


def check_finite(terms: dict[str, torch.Tensor], loss: torch.Tensor, step: int, info: DistInfo) -> None:
    bad_here = not bool(torch.isfinite(loss.detach()).item())
    if not any_true(info, bad_here, loss.device):
        return
    if bad_here:
        bad = [f"{k}={v.item()}" for k, v in terms.items() if not torch.isfinite(v.detach()).all()]
        where = f"loss term(s) {', '.join(bad)}" if bad else f"total loss={loss.item()}"
    else:
        where = "a loss term on another rank"
    raise NonFiniteLossError(
        f"non-finite loss at step {step} (rank {info.rank}): {where}. "
        "Stopped before the update; the last checkpoint is intact. Lower the LR, "
        "check the data, or use bf16/fp32."
    )


def init_weights(method: torch.nn.Module, path: str | Path) -> dict:
    """Load a checkpoint (ours: its "model") or a bare state dict into `method`, non-strictly:
    tensors whose name and shape match are loaded, the rest reported (not silently dropped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"train.init_from: no such checkpoint {path}")
    state = load_checkpoint(path, map_location="cpu")
    if not isinstance(state, dict):
        raise CheckpointError(f"train.init_from: {path} holds a {type(state).__name__}, not a state dict")
    state = state.get("model", state) if isinstance(state, dict) else state
    own = method.state_dict()
    fits = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    method.load_state_dict(fits, strict=False)
    return {
        "path": str(path),
        "loaded": sorted(fits),
        "missing": sorted(set(own) - set(state)),
        "unexpected": sorted(set(state) - set(own)),
        "skipped_shape": sorted(k for k in state if k in own and k not in fits),
    }


def check_required(report: dict, required: tuple[str, ...], method: torch.nn.Module) -> None:
    """Refuse an init_from that did not load every tensor the method requires from it."""
    if not required:
        return
    loaded = set(report["loaded"])
    absent = [k for k in method.state_dict() if k.startswith(required) and k not in loaded]
    if absent:
        shape = [k for k in absent if k in report["skipped_shape"]]
        why = (
            f"{len(shape)} with another shape (e.g. {shape[0]}: trained on other identities or another model?)"
            if shape
            else f"e.g. {absent[0]} is not in the checkpoint"
        )
        raise ValueError(f"train.init_from={report['path']} leaves {len(absent)} required tensor(s) unloaded, {why}")


def train(cfg: Config, *, stop_after: int | None = None) -> Path:
    """Train (or resume) the run in cfg.output. `stop_after` ends this invocation after that many
    steps (a time-sliced job), leaving a checkpoint to resume from."""
    cfg.validate()
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info, stop_after)
    finally:
        cleanup(info)


def _train(cfg: Config, info: DistInfo, stop_after: int | None) -> Path:
    device = info.device
    run_dir = Path(cfg.output)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier(info)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # labels: fixed by the first start of the run, reused on resume
    labels_path = run_dir / LABELS_FILE
    if labels_path.exists():
        labels = LabelMap.load(labels_path)
    else:
        labels = LabelMap.from_datasets(cfg.data.train)
        if info.is_main:
            labels.save(labels_path)
    barrier(info)

    seed_everything(derive_seed(cfg.seed, "init"))  # identical initial weights on every rank
    method = create_method(cfg.method, cfg, num_classes=len(labels)).to(device)
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(method.param_groups(), cfg.optim)
    if not optimizer.optimizers and info.world_size > 1:
        raise ValueError(
            f"{cfg.method}: nothing to train in this configuration (a statistics-only stage); "
            "run it in one process, not under torchrun, so its statistics are not split over ranks"
        )
    use_scaler = cfg.train.precision == "fp16"
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    if cfg.train.precision == "fp16" and device.type == "cpu":
        log.warning("fp16 autocast on CPU is slow and poorly supported; consider bf16 or fp32")

    step, samples_seen = 0, 0
    ckpt, state, skipped = load_latest_intact(run_dir, map_location=device)
    if ckpt is None and skipped:
        raise CheckpointError(
            f"{run_dir}: none of its {len(skipped)} checkpoint(s) can be resumed "
            f"(newest: {skipped[0][1]}); move them away to start over"
        )
    barrier(info)  # every rank has looked before the main one moves damaged files aside
    if info.is_main:
        for bad, why in skipped:
            # moved aside so it neither shadows the resumed run's next save nor counts in keep=
            bad.replace(bad.with_name(bad.name + ".damaged"))
            log.warning("skipped damaged checkpoint %s (kept as %s.damaged): %s", bad.name, bad.name, why)
    if ckpt is not None:
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, samples_seen = int(state["step"]), int(state["samples_seen"])
        rngs = state.get("rng") or []
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank])
        else:
            seed_everything(derive_seed(cfg.seed, "rank", info.rank, "step", step))
        if info.is_main:
            layout = "" if len(rngs) == info.world_size else f", world size {len(rngs)} -> {info.world_size}"
            log.info("resuming %s from %s (step %d, %d samples seen%s)", run_dir, ckpt.name, step, samples_seen, layout)
    else:
        required = tuple(getattr(method, "init_required", ()))
        if required and not cfg.train.init_from:
            raise ValueError(
                f"{cfg.method}: this stage continues a previous run ({', '.join(required)} must be "
                "loaded): set train.init_from=<the previous stage's checkpoint>"
            )
        if cfg.train.init_from:
            report = init_weights(method, cfg.train.init_from)
            check_required(report, required, method)
            if info.is_main:
                write_text(run_dir / "init_from.json", json.dumps(report, indent=2) + "\n")
                log.info(
                    "initialised from %s: %d tensors loaded, %d missing, %d skipped (shape)",
                    cfg.train.init_from,
                    len(report["loaded"]),
                    len(report["missing"]),
                    len(report["skipped_shape"]),
                )
        if info.is_main:
            dump_config(cfg, run_dir / "config.yaml")
        seed_everything(derive_seed(cfg.seed, "rank", info.rank, "step", 0))

    pairing = method.requires_clean if cfg.data.pairing is None else cfg.data.pairing
    stream = ShardStream(
        cfg.data.train,
        labels,
        cfg.data.batch_size,
        seed=cfg.seed,
        rank=info.rank,
        world_size=info.world_size,
        shuffle_buffer=cfg.data.shuffle_buffer,
        interleave=cfg.data.interleave,
        flip=cfg.data.flip,
        pairing=pairing,
        samples_seen=samples_seen,
        bad_seen=state.get("bad_samples") if ckpt is not None else None,
        need_masks=f"method {cfg.method!r}" if method.has_segmentation or method.uses_gt_masks else None,
    )
    bad = BadSamples(
        cfg.data.max_bad_share,
        stream.num_samples,
        world_size=info.world_size,
        rank=info.rank,
        state=state.get("bad_samples") if ckpt is not None else None,
    )
    total = total_steps(cfg, stream.num_samples, info.world_size)
    loader = make_train_loader(
        stream, cfg.data.num_workers, pin_memory=device.type == "cuda", prefetch_factor=cfg.data.prefetch_factor
    )
    occluder = load_online_occluder(cfg.data.online_occlusion, device) if cfg.data.online_occlusion else None
    if method.requires_clean and not pairing and occluder is None:
        raise ValueError(
            f"method {cfg.method!r} needs clean/occluded pairs: set data.pairing: true "
            "(datasets with clean.png or clean variants) or data.online_occlusion"
        )

    model = method
    if info.enabled:
        model = DistributedDataParallel(
            method,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=method.find_unused_parameters,
        )
    global_batch = cfg.data.batch_size * info.world_size
    run_log = RunLog(run_dir, enabled=info.is_main)
    run_log.truncate_after(step)
    bar = None
    if info.is_main and cfg.train.progress:
        bar = tqdm(total=total, initial=step, desc=f"{cfg.method}", unit="step", dynamic_ncols=True)

    saved_at = step if ckpt is not None else -1

    def save() -> None:
        nonlocal saved_at
        saved_at = step
        rngs = all_gather_object(info, rng_state())
        bad_states = all_gather_object(info, bad.state())
        if info.is_main:
            payload = {
                "step": step,
                "samples_seen": samples_seen,
                "world_size": info.world_size,
                "model": method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rngs,
                "bad_samples": BadSamples.merge(bad_states),
                "config": cfg.to_dict(),
                "num_classes": len(labels),
                "version": __version__,
            }
            save_checkpoint(checkpoint_path(run_dir, step), payload, keep=cfg.train.keep_checkpoints)
        barrier(info)

    method.train()
    sums: dict[str, torch.Tensor] = {}
    count, t_log, start_step = 0, time.perf_counter(), step
    end = total if stop_after is None else min(total, start_step + stop_after)
    try:
        for raw in loader if step < end else ():  # a finished run only re-evaluates
            if step >= end:
                break
            if any_true(info, bad.account(raw), device):  # corrupt samples were skipped; too many stop
                raise bad.error()
            method.on_step_start(step, total)
            factor = lr_factor(step, total, cfg.optim, cfg.train.epochs)
            set_lr(optimizer, factor)
            lr = cfg.optim.lr * factor  # the logged LR: cfg.optim.lr's schedule (groups scale it)
            generator = None
            if occluder is not None:
                generator = torch.Generator(device=device).manual_seed(
                    derive_seed(cfg.seed, "occlude", step, info.rank)
                )
            batch = prepare_batch(
                raw,
                device,
                input_size=method.input_size,
                occluder=occluder,
                generator=generator,
                channels_last=cfg.train.channels_last,
            )
            with autocast_context(device, cfg.train.precision):
                terms = model(batch, step)
            loss = sum(
                (v.float() for k, v in terms.items() if not k.startswith("log/")), torch.zeros((), device=device)
            )
            if cfg.train.nan_guard:
                check_finite(terms, loss, step, info)
            if loss.requires_grad:
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.optim.clip_grad:
                    for o in optimizer.optimizers:
                        scaler.unscale_(o)
                    torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.optim.clip_grad)
                for o in optimizer.optimizers:
                    scaler.step(o)
                scaler.update()
            elif optimizer.optimizers:
                raise RuntimeError(
                    f"step {step}: the loss of {cfg.method!r} has no gradient although the method has "
                    "trainable parameters (a method must return loss terms built from them)"
                )
            step += 1
            samples_seen += global_batch

            for k, v in {"loss": loss, **terms}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            count += 1
            if bar is not None:
                bar.update(1)
            if step % cfg.train.log_every == 0 or step == total:
                now = time.perf_counter()
                row = {
                    "step": step,
                    "samples_seen": samples_seen,
                    "epoch": round(samples_seen / stream.num_samples, 4),
                    "lr": lr,
                    **{k: round(float(v) / count, 6) for k, v in sums.items()},
                    "samples_per_s": round(count * global_batch / max(now - t_log, 1e-9), 1),
                }
                run_log.write(row)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.3g}")
                sums, count, t_log = {}, 0, now
            if step % cfg.train.ckpt_every == 0:
                save()
        if saved_at != step:
            save()
    finally:
        if bar is not None:
            bar.close()
        run_log.close()
    if step >= total and info.is_main and cfg.eval.benchmarks:
        evaluate_run(
            run_dir,
            cfg.eval.benchmarks,
            out=run_dir / "eval_report.json",
            device=device,
            batch_size=cfg.eval.batch_size,
            num_workers=cfg.eval.num_workers,
            flip=cfg.eval.flip,
        )
    return run_dir
