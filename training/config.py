"""Training configuration: YAML files mapped onto dataclasses.

Why dataclasses and a strict loader: a typo in a 20-hour cluster job's config (``optim.lrr``)
must fail in the first second with the offending key named, not silently train with the
default. Every section is a dataclass whose fields are the only accepted keys; the sections
that belong to other packages (``frontend``, ``model``, ``head``) stay plain dicts and are
validated by the builders that consume them (``build_frontend``, ``build_backbone``,
``build_head``).

Overrides use dotted paths (``--set optim.lr=0.1 --set frontend.r=3``); values are parsed as
YAML scalars, so ``0.1`` is a float, ``true`` a bool, ``[1, 2]`` a list and ``null`` None.
The fully resolved config is written to ``<run dir>/config.yaml`` so that a run can be
reproduced from its folder alone.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from facepriv.io import atomic_write


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key (and file)."""


# --------------------------------------------------------------------------- sections


@dataclass
class DataConfig:
    """Where the training images come from and how they are batched.

    ``batch_size`` is per process (per GPU); the global batch is ``batch_size x world_size``.
    """

    #: "folder" (one sub-folder per identity), "recordio" (MXNet .rec/.idx, e.g. MS1MV2),
    #: or "synthetic" (generated identities, no files needed; see ``synthetic``).
    format: Literal["folder", "recordio", "synthetic"] = "folder"
    #: dataset root (folder), .rec file or folder holding train.rec/train.idx (recordio).
    path: str | None = None
    batch_size: int = 128
    num_workers: int = 2
    #: side length of the aligned, square input images fed to the frontend.
    image_size: int = 112
    #: random horizontal flip of training images (decided per sample from (seed, epoch,
    #: sample index): no RNG state, exact resume, the same flips at any world size).
    hflip: bool = True
    pin_memory: bool = True
    #: "uint8" keeps decoded images at 1 byte per value until they reach the device.
    dtype: Literal["uint8", "float"] = "uint8"
    #: decode every image once before training and drop unreadable files (slow on big sets;
    #: without it a file that fails at run time is substituted and counted).
    scan: bool = False
    #: override the number of identities (normally read from the dataset).
    num_classes: int | None = None
    #: keyword arguments for the synthetic generator when ``format: synthetic``.
    synthetic: dict[str, Any] = field(default_factory=dict)
    #: use only the first N samples (smoke tests, debugging); None for all.
    max_samples: int | None = None


@dataclass
class InputNormConfig:
    """Per-channel standardisation between frontend and backbone.

    Frequency-domain frontends emit channels whose scales differ by orders of magnitude (the
    DC coefficient vs. high frequencies); a ChannelStandardize layer calibrated from a few
    batches of frontend output puts them on one scale before the stem convolution.
    """

    #: "auto": none for plain RGB, "per_sample" for frontends whose channel meaning changes per
    #: query (PartialFace), "standardize" for the other frequency frontends; or one of
    #: "standardize" (fixed statistics calibrated from a few batches), "per_sample" (each
    #: channel of each sample on its own spatial mean/variance), "none".
    mode: Literal["auto", "standardize", "per_sample", "none"] = "auto"
    calibration_batches: int = 8


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    #: learning rate / weight decay of the frontend's learnable parameters (e.g. DCTDP's
    #: budget-allocation logits); None = same as ``lr``. They get their own param group
    #: because they act on the input's privacy/utility trade-off, not on features.
    frontend_lr: float | None = None
    frontend_weight_decay: float = 0.0
    #: multiply the head's (class centres') learning rate.
    head_lr_scale: float = 1.0
    #: clip the global gradient norm (model + head); None or 0 disables.
    clip_grad_norm: float | None = 5.0
    #: mixed precision: "auto" (bf16 on a CUDA GPU that supports it, else fp16 on GPU,
    #: none on CPU), "bf16", "fp16" (with GradScaler), "none".
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: linear warm-up, then polynomial or step decay.

    Lengths are in epochs (resolved to steps with the per-epoch step count) unless the
    ``*_steps`` variant is set, which wins.
    """

    type: Literal["poly", "step", "constant"] = "poly"
    epochs: float = 20.0
    max_steps: int | None = None
    warmup_epochs: float = 0.0
    warmup_steps: int | None = None
    #: exponent of the polynomial decay (2 = insightface arcface_torch default).
    power: float = 2.0
    #: step schedule: epochs at which lr is multiplied by ``gamma``.
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1
    #: final learning rate as a fraction of the peak (poly).
    min_lr_ratio: float = 0.0


@dataclass
class CheckpointConfig:
    #: write a resumable checkpoint every N optimiser steps (0: only at the end).
    every_steps: int = 1000
    #: keep the newest K checkpoints (older ones are deleted once a newer one is complete).
    keep_last: int = 2
    #: also export the final model with FaceRecognizer.save (what eval/deployment load).
    save_model: bool = True


@dataclass
class VerificationSetConfig:
    #: name used in logs (e.g. "lfw").
    name: str = ""
    #: path to an insightface-style .bin, or a pairs.txt (with ``root`` for the images).
    path: str = ""
    format: Literal["auto", "bin", "pairs"] = "auto"
    #: image root for pairs.txt files.
    root: str | None = None


@dataclass
class EvalConfig:
    #: run verification every N steps (0: only at the end; requires ``sets``).
    every_steps: int = 2000
    sets: list[VerificationSetConfig] = field(default_factory=list)
    batch_size: int = 128
    folds: int = 10
    #: also embed horizontally flipped images and add the embeddings (insightface protocol).
    flip: bool = False
    #: evaluate on at most this many pairs per set (None: all).
    max_pairs: int | None = None


@dataclass
class DPConfig:
    """DP-SGD through Opacus (example-level differential privacy of the backbone + head)."""

    enabled: bool = False
    epsilon: float = 8.0
    #: None: 1 / (10 N) for N training images (a delta of 1/N or more is allowed with a warning).
    delta: float | None = None
    max_grad_norm: float = 1.0
    accountant: Literal["rdp", "prv", "gdp"] = "rdp"
    #: Poisson sampling is what the accountant assumes; turning it off breaks the guarantee.
    poisson_sampling: bool = True
    #: noise and Poisson sampling from keyed SHAKE-256 (a CSPRNG) with Opacus' floating-point
    #: mitigation instead of torch's generators (slower). Either way the randomness is seeded
    #: from the OS CSPRNG, never from ``seed`` (see facepriv.training.dp_random).
    secure_mode: bool = False


@dataclass
class DistillConfig:
    """Distillation: a teacher sees raw images once; the student sees only protected tensors."""

    enabled: bool = False
    #: facepriv checkpoint of the teacher (or pass any callable to the Trainer via the API).
    teacher: str | None = None
    #: where the teacher embeddings are cached (.safetensors); default <run dir>/teacher_embeddings.safetensors.
    cache: str | None = None
    cosine_weight: float = 1.0
    #: weight of the margin head loss added to the cosine loss (0: pure distillation).
    head_weight: float = 0.0
    #: subtract the teacher's mean embedding over the training set and re-normalise before
    #: distilling (identity lives in the deviations; see facepriv.training.distill.center_embeddings).
    center: bool = True
    batch_size: int = 64


@dataclass
class LoggingConfig:
    every_steps: int = 10
    csv: bool = True
    tensorboard: bool = False
    progress: bool = True


@dataclass
class DistributedConfig:
    #: DDP options; the process group itself comes from torchrun's environment.
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    find_unused_parameters: bool = False
    broadcast_buffers: bool = True
    timeout_minutes: float = 30.0


@dataclass
class TrainConfig:
    """Everything one training run needs. See docs/training.md for a reference."""

    name: str = "run"
    seed: int = 0
    #: run folder; CLI ``--out`` overrides; default ./runs/<name>-<timestamp>.
    output_dir: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: ask torch for deterministic kernels (slower on GPU; CPU is deterministic anyway).
    deterministic: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    #: passed to facepriv.frontends.build_frontend (``name`` plus the frontend's own keys).
    frontend: dict[str, Any] = field(default_factory=lambda: {"name": "rgb"})
    #: passed to facepriv.models.build_backbone; ``in_channels`` is filled in from the frontend.
    model: dict[str, Any] = field(default_factory=lambda: {"name": "iresnet18", "embedding_size": 512})
    #: warm start: a FaceRecognizer checkpoint (e.g. a trained RGB model) whose backbone
    #: tensors are copied wherever shapes agree; the stem for other channels starts fresh
    #: (training/warm_start.py). Ignored when resuming (the checkpoint has everything).
    init_from: str | None = None
    input_norm: InputNormConfig = field(default_factory=InputNormConfig)
    #: passed to facepriv.models.build_head: type softmax|partial_fc, margin arcface|cosface|combined,
    #: s, m (or m1/m2/m3), and for partial_fc sample_rate, seed.
    head: dict[str, Any] = field(default_factory=lambda: {"type": "softmax", "margin": "arcface", "s": 64.0, "m": 0.5})
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where lossless (int->float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, where)
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = args or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return copy.deepcopy(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {tp!r}")  # pragma: no cover - programming error


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys for section {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            hint = difflib.get_close_matches(str(key), list(fields), n=1)
            suggestion = f" (did you mean {(where + '.' if where else '') + hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"unknown config key {path!r}{suggestion}; valid keys{' in ' + repr(where) if where else ''}: "
                + ", ".join(sorted(fields))
            )
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _nonfinite(value: Any, where: str) -> str | None:
    """The dotted path of the first NaN/inf number anywhere in ``value`` (free-form sections too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for path, item in items:
        found = _nonfinite(item, path)
        if found is not None:
            return found
    return None


def config_from_dict(data: dict[str, Any], *, source: str | None = None, check_builds: bool = True) -> TrainConfig:
    """Build a TrainConfig from a plain mapping: strict keys and types, value ranges, then
    (``check_builds``) the frontend, model and head are built on the meta device so that a
    bad option fails here, in one line naming the key, before any data is touched."""
    try:
        bad = _nonfinite(data, "")
        if bad is not None:
            raise ConfigError(f"{bad}: expected a finite number, got {_lookup(data, bad)!r}")
        cfg = _from_dict(TrainConfig, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}" if source else str(exc)) from None
    validate_config(cfg, source=source, check_builds=check_builds)
    return cfg


def _lookup(data: Any, path: str) -> Any:
    import re

    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        data = data[int(part[1:-1])] if part.startswith("[") else data[part]
    return data


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.1"`` -> (["optim", "lr"], 0.1); the value is a YAML scalar/list/map."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. optim.lr=0.1")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key component in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides to a raw config mapping (returns a copy)."""
    data = copy.deepcopy(data) if data else {}
    for text in overrides or []:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[: i + 1])!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML config (or start from defaults when ``path`` is None) and apply overrides."""
    data = _read_yaml(Path(path)) if path is not None else {}
    data = apply_overrides(data, overrides)
    return config_from_dict(data, source=str(path) if path is not None else None)


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg: TrainConfig, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config atomically (a crash never leaves a half-written file)."""
    return atomic_write(path, dump_config(cfg))


# --------------------------------------------------------------------------- validation


def validate_config(cfg: TrainConfig, *, source: str | None = None, check_builds: bool = True) -> None:
    """Cross-field checks and value ranges the type system cannot express, then (``check_builds``)
    ``facepriv.training.config_check.check_builds``. Every error is one line naming the key."""
    prefix = f"{source}: " if source else ""

    def fail(msg: str) -> None:
        raise ConfigError(prefix + msg)

    for section, name in ((cfg.frontend, "frontend"), (cfg.model, "model")):
        if not isinstance(section.get("name"), str):
            fail(f"{name}.name must be set (a string), got {section.get('name')!r}")
    if cfg.data.format in ("folder", "recordio") and not cfg.data.path:
        fail(f"data.path is required for data.format {cfg.data.format!r}")
    if cfg.data.image_size < 8 or cfg.data.image_size % 8:
        fail(f"data.image_size must be a positive multiple of 8 (block DCT), got {cfg.data.image_size}")
    for key, ok, rule in _RULES:
        value = _get(cfg, key)
        if not ok(value):
            fail(f"{key} must be {rule}, got {value!r}")
    if cfg.schedule.max_steps is None and cfg.schedule.epochs <= 0:
        fail(f"schedule.epochs must be > 0 (or set schedule.max_steps), got {cfg.schedule.epochs}")
    if cfg.optim.nesterov and cfg.optim.momentum <= 0:
        fail(f"optim.nesterov needs optim.momentum > 0, got {cfg.optim.momentum}")
    if len(cfg.optim.betas) != 2:
        fail(f"optim.betas must be two numbers [beta1, beta2], got {cfg.optim.betas}")
    for i, vs in enumerate(cfg.eval.sets):
        if not vs.path:
            fail(f"eval.sets[{i}].path is required")
    if cfg.dp.enabled and cfg.distill.enabled:
        fail("dp.enabled and distill.enabled cannot be combined (the teacher's embeddings are not privatised)")
    if cfg.distill.enabled and cfg.distill.cosine_weight <= 0 and cfg.distill.head_weight <= 0:
        fail("distill: at least one of cosine_weight and head_weight must be > 0")
    if check_builds:
        from .config_check import check_builds as _check_builds

        try:
            _check_builds(cfg)
        except ConfigError as exc:
            raise ConfigError(prefix + str(exc)) from None


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _optional(check: Any) -> Any:
    return lambda v: v is None or check(v)


#: (key, accepted?, the rule in words). Types are already checked; these are the ranges.
_RULES: list[tuple[str, Any, str]] = [
    ("seed", lambda v: 0 <= v < 2**63, "in [0, 2^63)"),
    ("data.batch_size", lambda v: v >= 1, ">= 1"),
    ("data.num_workers", lambda v: v >= 0, ">= 0"),
    ("data.num_classes", _optional(lambda v: v >= 1), ">= 1 or null"),
    ("data.max_samples", _optional(lambda v: v >= 1), ">= 1 or null"),
    ("input_norm.calibration_batches", lambda v: v >= 1, ">= 1"),
    ("optim.lr", lambda v: v > 0, "> 0"),
    ("optim.momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.weight_decay", lambda v: v >= 0, ">= 0"),
    ("optim.betas", lambda v: all(0 <= b < 1 for b in v), "in [0, 1) each"),
    ("optim.eps", lambda v: v > 0, "> 0"),
    ("optim.frontend_lr", _optional(lambda v: v >= 0), ">= 0 or null"),
    ("optim.frontend_weight_decay", lambda v: v >= 0, ">= 0"),
    ("optim.head_lr_scale", lambda v: v >= 0, ">= 0"),
    ("optim.clip_grad_norm", _optional(lambda v: v >= 0), "> 0 (or 0 / null to disable clipping)"),
    ("schedule.epochs", lambda v: v >= 0, ">= 0"),
    ("schedule.max_steps", _optional(lambda v: v >= 1), ">= 1 or null"),
    ("schedule.warmup_epochs", lambda v: v >= 0, ">= 0"),
    ("schedule.warmup_steps", _optional(lambda v: v >= 0), ">= 0 or null"),
    ("schedule.power", lambda v: v > 0, "> 0"),
    ("schedule.milestones", lambda v: all(m >= 0 for m in v), ">= 0 each"),
    ("schedule.gamma", lambda v: v > 0, "> 0"),
    ("schedule.min_lr_ratio", lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    ("checkpoint.every_steps", lambda v: v >= 0, ">= 0 (0: only at the end)"),
    ("checkpoint.keep_last", lambda v: v >= 1, ">= 1"),
    ("eval.every_steps", lambda v: v >= 0, ">= 0 (0: only at the end)"),
    ("eval.batch_size", lambda v: v >= 1, ">= 1"),
    ("eval.folds", lambda v: v >= 2, ">= 2"),
    ("eval.max_pairs", _optional(lambda v: v >= 1), ">= 1 or null"),
    ("dp.epsilon", lambda v: v > 0, "> 0"),
    ("dp.delta", _optional(lambda v: 0 < v < 1), "in (0, 1), or null for 1/(10 N)"),
    ("dp.max_grad_norm", lambda v: v > 0, "> 0"),
    ("distill.cosine_weight", lambda v: v >= 0, ">= 0"),
    ("distill.head_weight", lambda v: v >= 0, ">= 0"),
    ("distill.batch_size", lambda v: v >= 1, ">= 1"),
    ("logging.every_steps", lambda v: v >= 1, ">= 1"),
    ("distributed.timeout_minutes", lambda v: v > 0, "> 0"),
]
