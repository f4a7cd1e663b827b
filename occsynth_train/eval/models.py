"""Which model `occsynth-train eval --model X` scores: the model kinds and their input conventions.

X is resolved by the first kind that matches it (KINDS, in order):

  run          a training run directory of occsynth_train (its newest intact checkpoint, or
               --checkpoint): the method itself is scored, pairwise and segmentation included;
               images are resized to the run's input size as its training batches were;
  onnx         an `.onnx` file, run by onnxruntime (`pip install 'occsynth[onnx]'`); the input
               size, batch size and dtype the file declares are used (a fixed batch is filled);
  torchscript  any other existing file: a TorchScript archive (`torch.jit.save`), loaded with
               `torch.jit.load`;
  factory      `package.module:factory`: the module is imported and `factory()` called; it
               returns a `torch.nn.Module` or a callable mapping a batch to embeddings (the
               attribute may also be an nn.Module instance).

Why these loaders are acceptable. `torch.load` unpickles arbitrary Python objects and is only
ever used here with `weights_only=True` (run checkpoints, engine/checkpoint.py). A TorchScript
archive is not a Python pickle of objects: `torch.jit.load` reads it with TorchScript's own
unpickler, which rebuilds tensors and TorchScript types only (it cannot call arbitrary Python),
and the model's code is TorchScript, run by the TorchScript interpreter. An ONNX file is an
operator graph. A factory is the user's own Python code. In all three cases the file or module
*is the model the user explicitly asked to run*: running it is the request, as with any
inference tool, so the question is not whether code runs but that nothing runs that the user
did not name; a data file (a checkpoint, a .bin benchmark) is never executed or unpickled freely.

Input conventions (the non-run kinds): insightface's by default: 112x112, RGB, (x - 127.5) /
127.5, NCHW float32. A model is fed [B, C, H, W] uint8 images converted to its convention
(`prepare_images`), then flipped for the flip-sum in NCHW, and put into its layout only when it
is called (`embed`), so NHWC models flip the right axis. A benchmark whose images differ from
the model's input size is refused (both sizes named) unless `resize` is set.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from occsynth.errors import UsageError

from ..config import config_from_dict, load_config
from ..engine.checkpoint import CheckpointError, load_checkpoint, load_latest_intact
from ..methods import create_method

log = logging.getLogger(__name__)

DEFAULT_SIZE = (112, 112)  # (H, W): insightface's aligned crop
COLORS = ("rgb", "bgr")
LAYOUTS = ("nchw", "nhwc")
FACTORY = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
)
CONVENTION_OPTIONS = ("size", "color", "mean", "std", "layout", "resize")


# ----------------------------------------------------------------------------- conventions
@dataclass(frozen=True)
class InputConventions:
    """How a model wants its input. size: (H, W), None = what the model file declares, else
    112x112; mean/std: one value or one per channel (in the model's channel order)."""

    size: tuple[int, int] | None = None
    color: str = "rgb"
    mean: tuple[float, ...] = (127.5,)
    std: tuple[float, ...] = (127.5,)
    layout: str = "nchw"
    resize: bool = False

    def __post_init__(self):
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise UsageError(f"input size must be two positive integers (H, W), got {self.size}")
        if self.color not in COLORS:
            raise UsageError(f"input color must be one of {', '.join(COLORS)}, got {self.color!r}")
        if self.layout not in LAYOUTS:
            raise UsageError(f"input layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, 3):
                raise UsageError(f"input {name} takes one value or three (one per channel), got {len(values)}")
            if not all(np.isfinite(v) for v in values):
                raise UsageError(f"input {name} must be finite, got {list(values)}")
        if any(v == 0 for v in self.std):
            raise UsageError(f"input std must not be 0, got {list(self.std)}")


def parse_size(text: str) -> tuple[int, int]:
    """'112x96' -> (112, 96): height x width, as the alignment templates are named."""
    parts = text.lower().split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"input size must read HEIGHTxWIDTH such as 112x112, got {text!r}") from None
    if h < 1 or w < 1:
        raise UsageError(f"input size must be positive, got {text!r}")
    return h, w


def parse_values(text: str, what: str) -> tuple[float, ...]:
    """'127.5' or '123.7,116.3,103.5' -> floats."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{what} must be one number or three comma-separated numbers, got {text!r}") from None


def size_text(size) -> str:
    return f"{size[0]}x{size[1]} (HxW)"


# ----------------------------------------------------------------------------- models
class EmbeddingModel:
    """What the evaluator needs of a model that is not an occsynth_train method: `input_size`
    (H, W), `prepare_images(uint8 [B, 3, H, W], device)` -> the model's normalised NCHW input,
    `embed(x)` -> float [B, D] (un-normalised; the evaluator flip-sums and L2-normalises).
    Subclasses implement `_forward(x in the model's layout) -> [B, D]`."""

    uses_gt_masks = False
    pairwise = False
    has_segmentation = False
    kind = ""

    def __init__(self, name: str, conventions: InputConventions, size: tuple[int, int], device: torch.device):
        self.name = name
        self.conventions = conventions
        self.input_size = (int(size[0]), int(size[1]))
        self.device = device
        self._mean = torch.tensor(conventions.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self._std = torch.tensor(conventions.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self._scale = 1.0 / self._std  # (x - mean) * (1 / std): one multiply instead of a divide

    def prepare_images(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        x = images.to(device, torch.float32, non_blocking=True, copy=True)  # our own copy: changed in place below
        if tuple(x.shape[-2:]) != self.input_size:
            if not self.conventions.resize:  # the evaluator checks sizes before any work; a guard
                raise ValueError(
                    f"model {self.name} expects {size_text(self.input_size)} input, got {size_text(x.shape[-2:])} "
                    "images (give --resize to resize them)"
                )
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        if self.conventions.color == "bgr":
            x = x.flip(1)
        return x.sub_(self._mean).mul_(self._scale)  # in place: x is this call's own float copy

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.conventions.layout == "nhwc":
            x = x.permute(0, 2, 3, 1)
        try:
            out = self._forward(x.contiguous())
        except Exception as exc:  # noqa: BLE001 - the user's model: its last line, the cause chained
            lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
            raise RuntimeError(
                f"model {self.name} failed on a {self.conventions.layout.upper()} batch of shape {tuple(x.shape)} "
                f"({lines[-1] if lines else type(exc).__name__}); check --input-size and --layout"
            ) from exc
        out = torch.from_numpy(np.ascontiguousarray(out)) if isinstance(out, np.ndarray) else out
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"model {self.name} returned {type(out).__name__}; expected the embeddings as a "
                "[batch, dim] tensor or array (wrap a model that returns several outputs)"
            )
        if out.ndim > 2 and all(d == 1 for d in out.shape[2:]):
            out = out.reshape(out.shape[0], -1)  # [B, D, 1, 1] heads
        if out.ndim != 2 or out.shape[0] != x.shape[0]:
            raise ValueError(
                f"model {self.name} returned shape {tuple(out.shape)} for {x.shape[0]} images; expected [batch, dim]"
            )
        return out.float()

    def _forward(self, x: torch.Tensor):
        raise NotImplementedError

    def info(self) -> dict:
        return {}


class TorchModel(EmbeddingModel):
    """A TorchScript module, an nn.Module or a callable from a factory, called on the device."""

    def __init__(self, name, fn: Callable, conventions, size, device, kind: str, details: dict | None = None):
        super().__init__(name, conventions, size, device)
        self.fn, self.kind, self.details = fn, kind, dict(details or {})

    def _forward(self, x):
        return self.fn(x)

    def info(self) -> dict:
        return dict(self.details)


class OnnxModel(EmbeddingModel):
    """An onnxruntime session: the first input, the first output; a fixed batch dimension is
    filled with zeros and the extra rows dropped."""

    kind = "onnx"

    def __init__(self, name, session, conventions, size, device, fixed_batch: int | None, dtype, details: dict):
        super().__init__(name, conventions, size, device)
        self.session, self.fixed_batch, self.dtype, self.details = session, fixed_batch, dtype, details
        self._input = session.get_inputs()[0].name
        self._output = session.get_outputs()[0].name

    def _run(self, array: np.ndarray) -> np.ndarray:
        return self.session.run([self._output], {self._input: array})[0]

    def _forward(self, x):
        array = x.detach().to("cpu").numpy().astype(self.dtype, copy=False)
        if self.fixed_batch is None or len(array) == self.fixed_batch:
            return self._run(array)
        outs = []
        for i in range(0, len(array), self.fixed_batch):
            chunk = array[i : i + self.fixed_batch]
            n = len(chunk)
            if n < self.fixed_batch:
                chunk = np.concatenate([chunk, np.zeros((self.fixed_batch - n, *chunk.shape[1:]), chunk.dtype)])
            outs.append(self._run(chunk)[:n])
        return np.concatenate(outs)

    def info(self) -> dict:
        return dict(self.details)


@dataclass
class LoadedModel:
    """A model ready for the evaluator and what the report says about it."""

    model: Any  # an occsynth_train Method (run) or an EmbeddingModel
    kind: str
    spec: str
    info: dict = field(default_factory=dict)  # kind-specific facts (checkpoint, providers, sha256...)
    input: dict = field(default_factory=dict)  # the input conventions applied

    @property
    def external(self) -> bool:
        return self.kind != "run"


# ----------------------------------------------------------------------------- loaders
def load_run(run_dir: str | Path, checkpoint: str | Path | None = None, device: str | torch.device = "cpu"):
    """(method in eval mode on `device`, config, checkpoint path, step) of a training run."""
    run_dir = Path(run_dir)
    if checkpoint:
        path, state = Path(checkpoint), load_checkpoint(checkpoint, map_location="cpu")
    else:
        path, state, skipped = load_latest_intact(run_dir, map_location="cpu")
        if path is None:
            raise CheckpointError(
                f"{run_dir}: no usable checkpoint in checkpoints/"
                + (f" ({len(skipped)} damaged; newest: {skipped[0][1]})" if skipped else "")
            )
    if not isinstance(state, dict) or "model" not in state or "num_classes" not in state:
        raise CheckpointError(f"{path}: not an occsynth-train checkpoint (no model / num_classes)")
    cfg = (
        load_config(run_dir / "config.yaml")
        if (run_dir / "config.yaml").exists()
        else config_from_dict(state["config"])
    )
    method = create_method(cfg.method, cfg, num_classes=state["num_classes"])
    method.load_state_dict(state["model"])
    return method.to(device).eval(), cfg, path, int(state["step"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _conventions(given: dict, size: tuple[int, int] | None) -> InputConventions:
    return InputConventions(**{**{k: v for k, v in given.items() if v is not None}, "size": size})


def _input_record(conv: InputConventions, size, size_from: str, dtype: str = "float32") -> dict:
    per_channel = lambda v: list(v) * 3 if len(v) == 1 else list(v)  # noqa: E731
    return {
        "size": list(size),
        "size_from": size_from,
        "color": conv.color.upper(),
        "mean": per_channel(conv.mean),
        "std": per_channel(conv.std),
        "normalize": "(x - mean) / std on 0..255 pixels",
        "layout": conv.layout.upper(),
        "dtype": dtype,
        "resize": "bilinear, antialiased, to the input size" if conv.resize else False,
    }


def _load_run_kind(spec: str, given: dict, device: torch.device, checkpoint=None) -> LoadedModel:
    if given:
        raise UsageError(
            f"--model {spec} is a training run: its input conventions come from its config; "
            f"{', '.join('--' + k.replace('_', '-') for k in sorted(given))} apply only to .onnx, TorchScript and "
            "package.module:factory models"
        )
    method, cfg, ckpt, step = load_run(spec, checkpoint, device)
    info = {"checkpoint": str(ckpt), "step": step, "method": cfg.method, "backbone": cfg.model.backbone}
    size = tuple(method.input_size)
    record = {
        "size": list(size),
        "size_from": "run config",
        "color": "RGB",
        "mean": [127.5] * 3,
        "std": [127.5] * 3,
        "normalize": "(x / 255 - 0.5) / 0.5",
        "layout": "NCHW",
        "dtype": "float32",
        "resize": "bilinear, antialiased, to the run's input size (as its training batches)",
    }
    return LoadedModel(method, "run", spec, info, record)


def _onnx_runtime():
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("scoring an .onnx model needs onnxruntime: pip install 'occsynth[onnx]'") from None
    return onnxruntime


_ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _load_onnx_kind(spec: str, given: dict, device: torch.device, checkpoint=None) -> LoadedModel:
    ort = _onnx_runtime()
    path = Path(spec)
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UsageError(
                f"--device {device} but this onnxruntime has no CUDA provider (available: "
                f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use --device cpu"
            )
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    elif device.type == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        raise UsageError(f"--device {device}: onnxruntime runs on cpu or cuda")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.intra_op_num_threads = torch.get_num_threads()  # one knob for torch and onnxruntime
    # onnxruntime's workers spin after each run by default and starve torch's own threads (the
    # batch collation and input conversion between runs): on a busy 2-core machine the eval path
    # ran 50 % slower than the bare session with spinning, 7 % without (DEVELOPERS.md)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a loadable ONNX model ({first})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ValueError(
            f"{path}: the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); expected one image batch"
        )
    inp = inputs[0]
    if inp.type not in _ONNX_DTYPES:
        raise ValueError(f"{path}: input {inp.name!r} is {inp.type}; expected a float tensor")
    shape = list(inp.shape)
    if len(shape) != 4:
        raise ValueError(f"{path}: input {inp.name!r} has shape {shape}; expected 4 dimensions (batch, image)")
    layout = given.get("layout") or "nchw"
    c_axis, hw_axes = (1, (2, 3)) if layout == "nchw" else (3, (1, 2))
    if isinstance(shape[c_axis], int) and shape[c_axis] != 3:
        hint = " (is it NHWC? give --layout nhwc)" if layout == "nchw" and shape[3] == 3 else ""
        raise ValueError(
            f"{path}: input {inp.name!r} has shape {shape}: {shape[c_axis]} channels in {layout.upper()}, expected 3{hint}"
        )
    declared = tuple(shape[a] for a in hw_axes)
    static = all(isinstance(d, int) and d > 0 for d in declared)
    asked = given.get("size")
    if static and asked is not None and tuple(asked) != declared:
        raise UsageError(f"--input-size {size_text(asked)} but {path} declares {size_text(declared)} input")
    size, size_from = (
        (declared, "model file") if static else (tuple(asked), "option") if asked else (DEFAULT_SIZE, "default")
    )
    fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    conv = _conventions(given, size)
    out = outputs[0]
    details = {
        "path": str(path.resolve()),
        "sha256": _sha256(path),
        "providers": session.get_providers(),
        "input": {"name": inp.name, "shape": shape, "type": inp.type},
        "output": {"name": out.name, "shape": list(out.shape), "type": out.type},
        "onnxruntime": ort.__version__,
        "session": {"intra_op_num_threads": options.intra_op_num_threads, "allow_spinning": False},
    }
    if fixed_batch is not None:
        details["fixed_batch"] = fixed_batch
    if len(outputs) > 1:
        details["outputs_ignored"] = [o.name for o in outputs[1:]]
    dtype = _ONNX_DTYPES[inp.type]
    model = OnnxModel(path.name, session, conv, size, device, fixed_batch, dtype, details)
    return LoadedModel(model, "onnx", spec, details, _input_record(conv, size, size_from, np.dtype(dtype).name))


def _load_torchscript_kind(spec: str, given: dict, device: torch.device, checkpoint=None) -> LoadedModel:
    path = Path(spec)
    # torch.save also writes zip archives; only torch.jit.load reads them here, and it refuses an
    # archive without TorchScript code. Nothing is ever unpickled with torch.load's full pickle.
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: not a TorchScript archive (torch.jit.save writes a zip file); give an .onnx file, a "
            "TorchScript export (torch.jit.script/trace, then save) or package.module:factory"
        )
    try:
        module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{path}: not a TorchScript archive ({first}); a pickled model or state dict is never unpickled "
            "here: export it with torch.jit.script/trace, or give package.module:factory"
        ) from None
    module.eval()
    size, size_from = (tuple(given["size"]), "option") if given.get("size") else (DEFAULT_SIZE, "default")
    conv = _conventions(given, size)
    details = {"path": str(path.resolve()), "sha256": _sha256(path), "loader": "torch.jit.load"}
    model = TorchModel(path.name, module, conv, size, device, "torchscript", details)
    return LoadedModel(model, "torchscript", spec, details, _input_record(conv, size, size_from))


def _load_factory_kind(spec: str, given: dict, device: torch.device, checkpoint=None) -> LoadedModel:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise UsageError(
                f"--model {spec}: cannot import {module_name!r} (no module {exc.name!r}); is it on PYTHONPATH? "
                f"e.g. PYTHONPATH=. occsynth-train eval --model {spec} ..."
            ) from None
        raise
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"--model {spec}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        made, how = obj, "module instance"
    elif callable(obj):
        made, how = obj(), "factory()"
    else:
        raise UsageError(f"--model {spec}: {attr} is a {type(obj).__name__}, not a factory or an nn.Module")
    if isinstance(made, nn.Module):
        made = made.to(device).eval()
        what = f"nn.Module {type(made).__name__}"
    elif callable(made):
        what = f"callable {getattr(made, '__qualname__', type(made).__name__)}"
    else:
        raise TypeError(f"--model {spec}: {attr}() returned a {type(made).__name__}, not an nn.Module or a callable")
    size, size_from = (tuple(given["size"]), "option") if given.get("size") else (DEFAULT_SIZE, "default")
    conv = _conventions(given, size)
    details = {"factory": spec, "called": how, "returned": what}
    model = TorchModel(spec, made, conv, size, device, "factory", details)
    return LoadedModel(model, "factory", spec, details, _input_record(conv, size, size_from))


def _is_run(spec: str) -> bool:
    return Path(spec).is_dir()


def _is_onnx(spec: str) -> bool:
    return Path(spec).is_file() and Path(spec).suffix.lower() == ".onnx"


def _is_file(spec: str) -> bool:
    return Path(spec).is_file()


def _is_factory(spec: str) -> bool:
    return bool(FACTORY.fullmatch(spec)) and not Path(spec).exists()


# kind -> (matches(spec), load(spec, given conventions, device, checkpoint)); the first match wins
KINDS: dict[str, tuple[Callable[[str], bool], Callable[..., LoadedModel]]] = {
    "run": (_is_run, _load_run_kind),
    "onnx": (_is_onnx, _load_onnx_kind),
    "torchscript": (_is_file, _load_torchscript_kind),
    "factory": (_is_factory, _load_factory_kind),
}


def model_kind(spec: str) -> str:
    for kind, (matches, _) in KINDS.items():
        if matches(spec):
            return kind
    raise UsageError(
        f"--model {spec!r}: no such file or directory, and not a package.module:factory spec "
        "(a run directory, an .onnx file, a TorchScript .pt, or package.module:factory)"
    )


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device {device!r}: {exc}") from None


def load_model(
    spec: str,
    conventions: dict | None = None,
    device: str | torch.device = "auto",
    checkpoint: str | Path | None = None,
) -> LoadedModel:
    """The model named by `spec` on `device`. `conventions`: the input options the user gave
    (keys of CONVENTION_OPTIONS; omitted or None = insightface's default or the file's)."""
    given = {k: v for k, v in (conventions or {}).items() if v is not None and v is not False}
    unknown = sorted(set(given) - set(CONVENTION_OPTIONS))
    if unknown:
        raise UsageError(f"unknown input convention(s) {unknown}; known: {', '.join(CONVENTION_OPTIONS)}")
    if "size" in given:
        given["size"] = tuple(int(v) for v in given["size"])
    InputConventions(**{k: v for k, v in given.items()})  # values checked before anything is loaded
    kind = model_kind(str(spec))
    if checkpoint and kind != "run":
        raise UsageError(f"--checkpoint applies to run directories; --model {spec} is {kind}")
    dev = resolve_device(device)
    loaded = KINDS[kind][1](str(spec), given, dev, checkpoint)
    log.info("model %s (%s) on %s, input %s", spec, kind, dev, loaded.input["size"])
    return loaded


__all__ = [
    "DEFAULT_SIZE",
    "EmbeddingModel",
    "InputConventions",
    "KINDS",
    "LoadedModel",
    "OnnxModel",
    "TorchModel",
    "load_model",
    "load_run",
    "model_kind",
    "parse_size",
    "parse_values",
    "resolve_device",
    "size_text",
]
