"""Training configuration: YAML data checked against typed sections (unknown keys are errors).

    method: baseline            # a name in occsynth_train.methods.METHODS
    seed: 0
    output: runs/baseline_r18   # run directory: config.yaml, labels.json, checkpoints/, logs
    device: auto                # auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)
    data:   {train: [DIR, ...], batch_size: 128 (per rank), num_workers, ...}
    model:  {backbone, backbone_kw, input_size, head, head_kw}
    optim:  {name, lr, momentum, weight_decay, schedule, warmup, milestones, gamma, clip_grad}
    train:  {steps | epochs, precision, channels_last, log_every, ckpt_every, ...}
    eval:   {benchmarks: [DIR, ...], batch_size}
    method_kw: {...}            # free-form options of the chosen method

Schedule points (warmup, milestones) are fractions of the total steps, so a config does not
change meaning with the dataset size or the GPU count; a step schedule may instead name its
points in epochs (optim.milestone_epochs, with train.epochs), as papers state them. `lr` is the
learning rate of the whole (global) batch; it is not rescaled when the GPU count changes.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from occsynth.io.atomic import write_text


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # occsynth dataset directories
    batch_size: int = 128  # per rank
    num_workers: int = 4
    shuffle_buffer: int = 2000
    interleave: int = 4  # shards each loader slot reads at once
    flip: bool = True
    pairing: bool | None = None  # attach clean counterparts (clean.png / same source);
    # null = when the method requires_clean (decoding costs)
    online_occlusion: Any = None  # occlusion spec for the on-device TorchOccluder
    prefetch_factor: int = 4
    max_bad_share: float = 0.01  # corrupt samples are skipped (logged with shard and key); the run
    # stops once the distinct skipped ones exceed this share of the samples (0: stop at the first)


@dataclass
class ModelConfig:
    backbone: str = "iresnet50"
    backbone_kw: dict = field(default_factory=dict)
    input_size: list[int] | None = None  # [H, W] fed to the model; None = the backbone's own
    head: str = "arcface"
    head_kw: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | poly | constant
    warmup: float = 0.0  # fraction of total steps, linear from 0
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75, 0.9])  # step schedule
    milestone_epochs: list[float] | None = None  # step schedule points in completed epochs (torch
    # MultiStepLR's convention: [10] = LR * gamma from the 11th epoch on); replaces milestones;
    # needs train.epochs
    gamma: float = 0.1
    power: float = 2.0  # poly schedule exponent (arcface_torch uses 2)
    min_lr: float = 0.0  # floor of cosine / poly, as a fraction of lr
    clip_grad: float | None = 5.0  # max global grad norm; null disables
    by_type: dict = field(default_factory=dict)  # per-optimiser-type overrides for param groups that
    # name their optimiser, e.g. {adam: {lr: 1.0e-3}} (see engine/optim.py)


@dataclass
class TrainConfig:
    steps: int | None = None  # total optimiser steps ...
    epochs: float | None = None  # ... or epochs over the training set (one of the two)
    precision: str = "bf16"  # fp32 | bf16 | fp16 (fp16 uses a GradScaler)
    channels_last: bool = True
    log_every: int = 50
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    nan_guard: bool = True
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    progress: bool = True  # tqdm bar on rank 0
    init_from: str | None = None  # checkpoint (or state dict) loaded non-strictly into a fresh run's
    # model: a previous stage / pretrained trunk; ignored on resume


@dataclass
class EvalConfig:
    benchmarks: list[str] = field(default_factory=list)  # evaluated after training
    batch_size: int = 256
    num_workers: int = 2
    flip: bool = True


@dataclass
class Config:
    method: str = "baseline"
    seed: int = 0
    output: str = "runs/default"
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method_kw: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        if (self.train.steps is None) == (self.train.epochs is None):
            raise ValueError("set exactly one of train.steps and train.epochs")
        if self.train.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"train.precision must be fp32, bf16 or fp16, got {self.train.precision!r}")
        if self.optim.name not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optim.name must be sgd, adam or adamw, got {self.optim.name!r}")
        bad = sorted(set(self.optim.by_type or {}) - {"sgd", "adam", "adamw"})
        if bad:
            raise ValueError(f"optim.by_type keys must be sgd, adam or adamw, got {bad}")
        if self.optim.schedule not in ("cosine", "step", "poly", "constant"):
            raise ValueError(f"optim.schedule must be cosine, step, poly or constant, got {self.optim.schedule!r}")
        if not 0.0 <= self.optim.warmup < 1.0:
            raise ValueError("optim.warmup is a fraction of the total steps, in [0, 1)")
        if any(not 0.0 < m < 1.0 for m in self.optim.milestones):
            raise ValueError("optim.milestones are fractions of the total steps, each in (0, 1)")
        share = self.data.max_bad_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share < 1.0:
            raise ValueError(f"data.max_bad_share must be in [0, 1), got {self.data.max_bad_share!r}")
        if self.optim.milestone_epochs is not None:
            if self.optim.schedule != "step" or self.train.epochs is None:
                raise ValueError("optim.milestone_epochs needs optim.schedule=step and train.epochs")
            if any(not 0.0 < m < self.train.epochs for m in self.optim.milestone_epochs):
                raise ValueError(f"optim.milestone_epochs must each lie in (0, train.epochs={self.train.epochs})")
        if self.data.batch_size < 1:
            raise ValueError("data.batch_size must be >= 1")
        if not self.data.train:
            raise ValueError("data.train is empty: list occsynth dataset directories (or --set data.train=[DIR])")


def _build(cls, data: dict, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where or 'config'}; known: {sorted(known)}")
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        default = known[name].default_factory() if known[name].default_factory is not dataclasses.MISSING else None
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, key)
        else:
            kwargs[name] = _as_floats(value, hints[name], key)
    return cls(**kwargs)


def _float_field(hint) -> str:
    """'scalar' for float / float | None, 'list' for list[float], '' for any other type."""
    args = typing.get_args(hint)
    if hint is float or (
        typing.get_origin(hint) in (typing.Union, types.UnionType) and set(args) == {float, type(None)}
    ):
        return "scalar"
    if typing.get_origin(hint) is list and args == (float,):
        return "list"
    return ""


def _number(value: Any, key: str) -> Any:
    """A float field's value: numbers as they are, numeric strings as floats (PyYAML reads YAML 1.1,
    where `1e-3` without a dot is a string); anything else is an error naming the key."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise ValueError(f"{key} must be a number, got {value!r}")


def _as_floats(value: Any, hint, key: str) -> Any:
    kind = _float_field(hint)
    if kind == "scalar" and value is not None:
        return _number(value, key)
    if kind == "list":
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} must be a list of numbers, got {value!r}")
        return [_number(v, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def config_from_dict(data: dict) -> Config:
    cfg = _build(Config, copy.deepcopy(data), "")
    cfg.data.train = [str(p) for p in cfg.data.train]
    cfg.eval.benchmarks = [str(p) for p in cfg.eval.benchmarks]
    return cfg


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` strings (value parsed as YAML) applied to a nested dict."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must be key.path=value")
        path, value = item.split("=", 1)
        node = data
        parts = path.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return data


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    data = yaml.safe_load(Path(path).read_text()) if path else {}
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"a config is a mapping of keys and sections, got a {type(data).__name__}")
    cfg = config_from_dict(apply_overrides(data or {}, list(overrides)))
    cfg.validate()
    return cfg


def dump_config(cfg: Config, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
