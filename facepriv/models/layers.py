"""Normalisation-layer factory shared by the backbones.

Why a factory: the same architecture must run with BatchNorm (ordinary training, the
insightface recipe) and with GroupNorm (DP-SGD under Opacus, which forbids BatchNorm because
batch statistics mix samples and break per-sample gradients). Building every norm through
these helpers makes "no BatchNorm anywhere" a one-flag property of the model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

NORM_KINDS = ("batch", "group")
FEATURE_NORM_KINDS = ("batch", "layer", "none")

#: insightface's BatchNorm epsilon (also used for GroupNorm/LayerNorm).
NORM_EPS = 1e-5


def check_norm(norm: str) -> str:
    if norm not in NORM_KINDS:
        raise ValueError(f"norm must be one of {NORM_KINDS}, got {norm!r}")
    return norm


def group_count(channels: int, max_groups: int) -> int:
    """Largest divisor of ``channels`` that is at most ``max_groups``.

    Width multipliers produce channel counts such as 16 or 48 that 32 does not divide; we
    fall back to the nearest smaller group count instead of refusing the width.
    """
    if channels < 1 or max_groups < 1:
        raise ValueError(f"group_count: channels and max_groups must be >= 1, got {channels}, {max_groups}")
    for g in range(min(channels, max_groups), 0, -1):
        if channels % g == 0:
            return g
    return 1  # unreachable: 1 divides everything


def norm2d(kind: str, channels: int, groups: int = 32) -> nn.Module:
    """A 2-D normalisation layer over ``channels`` feature maps."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, eps=NORM_EPS)
    if kind == "group":
        return nn.GroupNorm(group_count(channels, groups), channels, eps=NORM_EPS)
    raise ValueError(f"norm must be one of {NORM_KINDS}, got {kind!r}")


def feature_norm(kind: str, features: int, *, freeze_scale: bool = True) -> nn.Module:
    """The normalisation applied to the final embedding (insightface: BatchNorm1d).

    ``"layer"`` normalises each embedding on its own (a GroupNorm with one group, which Opacus
    supports), ``"none"`` leaves the FC output untouched. With ``freeze_scale`` (the
    insightface IResNet recipe) the scale is fixed at 1: the embedding is L2-normalised
    downstream, so a learned per-feature scale only re-weights dimensions. insightface's
    MobileFaceNet keeps it trainable, hence the flag.
    """
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        layer: nn.Module = nn.BatchNorm1d(features, eps=NORM_EPS)
    elif kind == "layer":
        layer = nn.GroupNorm(1, features, eps=NORM_EPS)
    else:
        raise ValueError(f"feature_norm must be one of {FEATURE_NORM_KINDS}, got {kind!r}")
    nn.init.constant_(layer.weight, 1.0)
    nn.init.constant_(layer.bias, 0.0)
    if freeze_scale:
        layer.weight.requires_grad_(False)
    return layer


def default_feature_norm(norm: str) -> str:
    """The embedding norm that matches a backbone norm: BatchNorm1d, or per-sample for DP."""
    return "batch" if check_norm(norm) == "batch" else "layer"


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1 (width multiplier for slim variants)."""
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    return max(1, int(round(channels * width)))


class BackboneConfigMixin:
    """The ``config`` contract every backbone shares, kept in one place.

    A backbone stores its fully resolved constructor arguments in ``self._config`` (a plain
    attribute, not a buffer: it never enters the state dict, so checkpoints are unchanged)
    and exposes a copy as ``config``, which ``build_backbone(model.config)`` turns back into
    the same architecture. Use it before ``nn.Module`` in the bases
    (``class IResNet(BackboneConfigMixin, nn.Module)``).
    """

    _config: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        """Resolved config; ``build_backbone(model.config)`` rebuilds this architecture.

        A copy (lists included), so a caller editing it cannot change what the model reports.
        """
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._config.items()}

    def check_input(self, x: object) -> None:
        """:func:`check_backbone_input` against this backbone's channels and input size."""
        cfg = self._config
        check_backbone_input(x, cfg["in_channels"], cfg["input_size"], cfg["name"])


def check_backbone_input(x: object, in_channels: int, input_size: int, name: str) -> None:
    """Refuse inputs the FC head cannot take, with a message that says what was expected.

    The flattened FC (IResNet) and the global depthwise conv (MobileFaceNet) are sized for one
    spatial resolution, so a wrong size would otherwise surface as an opaque matmul error.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a B x C x H x W tensor, got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{name}: expected {in_channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)}); "
            "build the backbone with in_channels = frontend.out_channels"
        )
    if x.shape[-2] != input_size or x.shape[-1] != input_size:
        raise ValueError(
            f"{name}: expected {input_size} x {input_size} inputs, got {x.shape[-2]} x {x.shape[-1]} "
            "(set input_size in the backbone config to the frontend's output size)"
        )
