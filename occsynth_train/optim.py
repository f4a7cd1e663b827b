"""Optimiser from config and the learning-rate schedule as a pure function of the step
(nothing to checkpoint: a resumed run recomputes the LR from the global step)."""
from __future__ import annotations

import math

import torch

from .config import OptimConfig


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = [dict(g) for g in groups]
    for g in groups:
        g.setdefault("lr_scale", 1.0)
        g["lr"] = cfg.lr * g["lr_scale"]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimiser {cfg.name!r}")


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of cfg.lr at 0-based `step` of `total`: linear warmup, then the schedule."""
    warmup = int(round(cfg.warmup * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = cfg.min_lr
    if cfg.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "poly":
        return floor + (1 - floor) * (1 - progress) ** cfg.power
    if cfg.schedule == "step":
        return cfg.gamma ** sum(step >= int(round(m * total)) for m in cfg.milestones)
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
