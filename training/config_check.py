"""Config-time build check: a bad frontend, model or head option fails at load, in one line.

Why: the ``frontend``, ``model`` and ``head`` sections are free-form dicts owned by the
builders that consume them, so before this check a wrong value (``epsilon_mean: "4"``,
``width: 1e6``, an image size the backbone cannot take) surfaced as a traceback deep in
``Trainer.__init__`` — after the dataset had been indexed, which on a cluster can take
minutes. Here the real builders run once, at config load:

* the frontend is built for real on the CPU (it is small) after its options are
  type-checked against the frontend class's ``__init__`` annotations;
* backbone, input standardisation and head are built on PyTorch's ``meta`` device with
  weight initialisation skipped: shapes and every constructor check, no memory, no random
  draws, and a parameter count that refuses absurd sizes before any allocation.

Errors are ``ConfigError`` naming the section (``frontend.epsilon_mean: ...``).
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Literal, Union

import torch
from torch.overrides import TorchFunctionMode

from .config import ConfigError, TrainConfig, _coerce

#: A backbone above this many parameters is refused at config load (8 GB of fp32 weights,
#: before gradients and optimiser state); IResNet-100 has 65 M.
MAX_BACKBONE_PARAMETERS = 2_000_000_000


class _SkipInit(TorchFunctionMode):
    """Turns ``torch.nn.init.*`` and in-place random fills into no-ops while active.

    On the meta device they would only import torch's compiler stack (seconds) to produce
    nothing; the build check needs shapes, not values.
    """

    _RANDOM_FILLS = {torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.bernoulli_,
                     torch.Tensor.random_, torch.Tensor.exponential_, torch.Tensor.erfinv_}

    def __torch_function__(self, func: Any, types_: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in self._RANDOM_FILLS or getattr(func, "__module__", "") == "torch.nn.init":
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **kwargs)


def _checkable(tp: Any) -> bool:
    """Whether ``training.config._coerce`` can check a value against annotation ``tp``."""
    if tp in (Any, bool, int, float, str, type(None)):
        return True
    origin = typing.get_origin(tp)
    if origin is Literal:
        return True
    if origin in (Union, types.UnionType, list):
        return all(_checkable(a) for a in typing.get_args(tp))
    return origin is dict


def check_frontend_options(options: dict[str, Any]) -> None:
    """Type-check frontend options against the frontend class's ``__init__`` annotations."""
    from facepriv.frontends import FRONTENDS

    name = str(options.get("name", "")).lower()
    cls = FRONTENDS.get(name)
    if cls is None:
        raise ConfigError(f"frontend.name: unknown frontend {options.get('name')!r}; choose from {sorted(FRONTENDS)}")
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable annotations: the builder still checks values
        hints = {}
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for key, value in options.items():
        if key == "name":
            continue
        if key not in accepted:
            raise ConfigError(f"frontend.{key}: {name!r} has no such option; valid options: {sorted(accepted)}")
        if key in hints and _checkable(hints[key]):
            _coerce(value, hints[key], f"frontend.{key}")


def check_model_and_head_types(cfg: TrainConfig) -> None:
    """Scalar options of the backbone and head must have their documented type: their builders
    convert with ``float(...)``, which would accept ``width: "1e6"`` (YAML reads 1e6 without a
    dot as a string) and train something nobody asked for."""
    from facepriv.models.backbones import IRESNET_DEFAULTS, MOBILEFACENET_DEFAULTS

    defaults = MOBILEFACENET_DEFAULTS if cfg.model.get("name") == "mobilefacenet" else IRESNET_DEFAULTS
    for key, value in cfg.model.items():
        default = defaults.get(key)
        if default is not None and type(default) in (bool, int, float, str):
            _coerce(value, type(default), f"model.{key}")
    for key, tp in _HEAD_TYPES.items():
        if key in cfg.head:
            _coerce(cfg.head[key], tp, f"head.{key}")


#: Scalar head options (facepriv.models.heads / margins) and their types.
_HEAD_TYPES: dict[str, Any] = {"type": str, "margin": str, "s": float, "m": float, "m1": float, "m2": float,
                               "m3": float, "sample_rate": float, "seed": int}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _model_context(cfg: TrainConfig, backbone_cfg: dict[str, Any], exc: BaseException) -> str:
    """What the user set that explains a backbone error: the sizes the frontend implies, the width."""
    text = str(exc)
    if "input_size" in text or "in_channels" in text:
        size = backbone_cfg.get("input_size")
        return (f" (data.image_size={cfg.data.image_size} and frontend {cfg.frontend.get('name')!r} give "
                f"{size}x{size} maps with {backbone_cfg['in_channels']} channels)")
    if "size" in text and "width" in cfg.model:
        return f" (model.width={cfg.model['width']!r})"
    return ""


def check_builds(cfg: TrainConfig) -> None:
    """Build frontend, recogniser and head as the trainer would (model and head on ``meta``).

    The global RNGs (python, numpy, torch) are left exactly as they were: a check must not
    shift the random stream of a run it is called in (exact resume depends on it).
    """
    from .rng import capture_rng_state, restore_rng_state

    state = capture_rng_state()
    try:
        _check_builds(cfg)
    finally:
        restore_rng_state(state)


def _check_builds(cfg: TrainConfig) -> None:
    from facepriv.frontends import build_frontend
    from facepriv.models import build_head

    from .components import backbone_config, build_recognizer, embedding_size, frontend_config

    if cfg.dp.enabled:
        from .dp_sgd import adapt_config_for_dp

        cfg = adapt_config_for_dp(cfg, quiet=True)  # what the trainer will build (GroupNorm, ...)
    options = frontend_config(cfg)
    check_frontend_options(options)
    check_model_and_head_types(cfg)
    try:
        frontend = build_frontend(options)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"frontend: {_one_line(exc)}") from None
    try:
        backbone_cfg = backbone_config(cfg, frontend)
    except ValueError as exc:
        raise ConfigError(f"model: {_one_line(exc)}") from None
    try:
        with torch.device("meta"), _SkipInit():
            recognizer = build_recognizer(cfg, frontend)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"model: {_one_line(exc)}{_model_context(cfg, backbone_cfg, exc)}") from None
    count = sum(p.numel() for p in recognizer.backbone.parameters())
    if count > MAX_BACKBONE_PARAMETERS:
        raise ConfigError(f"model: {cfg.model.get('name')} with these options has {count:.3g} parameters "
                          f"(model.width={cfg.model.get('width', 1.0)!r}); the limit is {MAX_BACKBONE_PARAMETERS:.0e}")
    head_kwargs = {"distributed": False} if cfg.head.get("type") == "partial_fc" else {}
    try:
        with torch.device("meta"), _SkipInit():
            build_head(dict(cfg.head), embedding_size(recognizer), max(2, cfg.data.num_classes or 2), **head_kwargs)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"head: {_one_line(exc)}") from None
