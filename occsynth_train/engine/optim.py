"""Optimisers from config and the learning-rate schedule as a pure function of the step
(nothing to checkpoint: a resumed run recomputes the LR from the global step).

A method's param groups may name their optimiser type ("optimizer": "sgd" | "adam" | "adamw";
default cfg.optim.name): ALOB trains its Trimmer with SGD and its Identifier with Adam. Groups of
one type share one torch optimiser; `OptimizerSet` holds them all and looks like one optimiser to
the trainer. Hyper-parameters per type come from `optim.by_type`, e.g.

    optim: {name: sgd, lr: 0.1, by_type: {adam: {lr: 1.0e-3, weight_decay: 0.0}}}

Every group's LR is base_lr * schedule factor, where base_lr = (its type's lr) * lr_scale. A group
naming a type other than optim.name needs an optim.by_type entry (its LR would otherwise be an
SGD-sized LR for Adam, or the reverse).
"""

from __future__ import annotations

import math

import torch

from ..config import OptimConfig

OPTIMIZERS = ("sgd", "adam", "adamw")
TYPE_KEYS = ("lr", "momentum", "nesterov", "betas", "weight_decay")


def _hyper(cfg: OptimConfig, kind: str) -> dict:
    """The hyper-parameters of optimiser type `kind`: cfg's, overridden by cfg.by_type[kind]."""
    extra = dict((cfg.by_type or {}).get(kind) or {})
    unknown = sorted(set(extra) - set(TYPE_KEYS))
    if unknown:
        raise ValueError(f"optim.by_type.{kind}: unknown key(s) {unknown}; known: {list(TYPE_KEYS)}")
    base = {k: getattr(cfg, k) for k in TYPE_KEYS}
    return {**base, **extra}


def _make(kind: str, groups: list[dict], h: dict) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(
            groups, lr=h["lr"], momentum=h["momentum"], nesterov=h["nesterov"], weight_decay=h["weight_decay"]
        )
    if kind == "adam":
        return torch.optim.Adam(groups, lr=h["lr"], betas=tuple(h["betas"]), weight_decay=h["weight_decay"])
    return torch.optim.AdamW(groups, lr=h["lr"], betas=tuple(h["betas"]), weight_decay=h["weight_decay"])


class OptimizerSet:
    """One torch optimiser per optimiser type used by the param groups, in first-use order.

    May hold none (a statistics-only stage such as PDSN's dictionary pass has nothing to train).
    The trainer steps each member through the GradScaler (`scaler.step(o) for o in .optimizers`).
    """

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.by_type = dict(optimizers)

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self.by_type.values())

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict:
        return {"optimizers": {k: o.state_dict() for k, o in self.by_type.items()}}

    def load_state_dict(self, state: dict) -> None:
        if "optimizers" not in state:  # a checkpoint written by a single plain optimiser
            if len(self.by_type) != 1:
                raise ValueError(f"checkpoint holds one optimiser, this run has {list(self.by_type)}")
            self.optimizers[0].load_state_dict(state)
            return
        saved = state["optimizers"]
        if set(saved) != set(self.by_type):
            raise ValueError(f"checkpoint optimisers {sorted(saved)} != this run's {sorted(self.by_type)}")
        for k, o in self.by_type.items():
            o.load_state_dict(saved[k])


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> OptimizerSet:
    """An OptimizerSet over the non-empty groups (keys "optimizer" and "lr_scale" are ours;
    torch keeps unknown group keys, so they stay visible in the optimiser's groups)."""
    by_kind: dict[str, list[dict]] = {}
    for g in groups:
        g = dict(g)
        g["params"] = list(g["params"])
        if not g["params"]:
            continue
        kind = g.setdefault("optimizer", cfg.name)
        if kind not in OPTIMIZERS:
            raise ValueError(f"param group {g.get('name', '?')!r}: unknown optimiser {kind!r}; known: {OPTIMIZERS}")
        if kind != cfg.name and kind not in (cfg.by_type or {}):  # never inherit another type's LR silently
            raise ValueError(
                f"param group {g.get('name', '?')!r} trains with {kind}, but optim.name is {cfg.name!r} "
                f"and optim.by_type has no {kind!r} entry: set e.g. optim.by_type.{kind}.lr"
            )
        h = _hyper(cfg, kind)
        g.setdefault("lr_scale", 1.0)
        g["base_lr"] = h["lr"] * g["lr_scale"]
        g["lr"] = g["base_lr"]
        by_kind.setdefault(kind, []).append(g)
    return OptimizerSet({k: _make(k, gs, _hyper(cfg, k)) for k, gs in by_kind.items()})


def lr_factor(step: int, total: int, cfg: OptimConfig, epochs: float | None = None) -> float:
    """Multiplier of every group's base LR at 0-based `step` of `total`: linear warmup, then the schedule.
    `epochs` (the run's train.epochs) places cfg.milestone_epochs at fractions m / epochs of `total`."""
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
        points = cfg.milestones
        if cfg.milestone_epochs is not None:
            if not epochs:
                raise ValueError("optim.milestone_epochs needs the run's epoch count (train.epochs)")
            points = [m / epochs for m in cfg.milestone_epochs]
        return cfg.gamma ** sum(step >= int(round(m * total)) for m in points)
    return 1.0


def set_lr(optimizer: OptimizerSet | torch.optim.Optimizer, factor: float) -> None:
    """Set every group's LR to its base LR times the schedule factor."""
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor
