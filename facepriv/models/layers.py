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


#: The four down-sampling points of both backbones take 112 x 112 faces to a 7 x 7 map.
STRIDE_POINTS = 4
FINAL_MAP = 7


def resolve_strided_stages(input_size: int, strided_stages: int | None, name: str) -> int:
    """How many of the four stride-2 points actually down-sample, for ``input_size`` inputs.

    Why: the TFace layout feeds 112 x 112 frequency maps (an x8 up-sampled face), the compact
    layouts 28 x 28 (x2) or 14 x 14 (x1). Rather than up-sample inside the network, the
    *first* stride points run at stride 1 so the map still ends at 7 x 7: every weight keeps
    its shape (a protected student can warm-start from the RGB model) and the cost falls with
    the map size. ``None``: four for every multiple of 16 (as before), else as many as end
    the map at exactly 7 x 7 (56 -> 3, 28 -> 2, 14 -> 1); any other size must say.
    ``FaceRecognizer.from_config`` sets it from the layout instead (``strided_stages_for``).
    """
    if strided_stages is None:
        if input_size > 0 and input_size % 2**STRIDE_POINTS == 0:
            strided_stages = STRIDE_POINTS
        else:
            strided_stages = next((k for k in range(STRIDE_POINTS, -1, -1) if input_size == FINAL_MAP * 2**k), None)
        if strided_stages is None:
            raise ValueError(f"{name}: input_size {input_size} is not divisible by 2**strided_stages = "
                             f"{2**STRIDE_POINTS} nor a compact 7 x 2**k map; set strided_stages explicitly")
    k = int(strided_stages)
    if not 0 <= k <= STRIDE_POINTS:
        raise ValueError(f"{name}: strided_stages must be in 0..{STRIDE_POINTS}, got {strided_stages!r}")
    if input_size < 2**k or input_size % 2**k:
        raise ValueError(f"{name}: input_size {input_size} is not divisible by 2**strided_stages = {2**k}; "
                         f"use an input_size that is a multiple of {2**k} or fewer strided_stages")
    return k


def strided_stages_for(image_size: int, map_size: int) -> int | None:
    """The stride points a frontend's ``map_size`` output needs to end where the TFace layout
    (map = face size) ends: one fewer per halving (x2 layout of a 112 face: 28 -> 2). None
    when the map is not a power-of-two fraction of the face (the backbone's rule applies)."""
    if map_size <= 0 or image_size % map_size:
        return None
    ratio = image_size // map_size
    if ratio & (ratio - 1) or ratio > 2**STRIDE_POINTS:
        return None
    return STRIDE_POINTS - (ratio.bit_length() - 1)


def stage_strides(strided_stages: int) -> tuple[int, ...]:
    """Stride of each of the four down-sampling points: the last ``strided_stages`` are 2."""
    return tuple(1 if i < STRIDE_POINTS - strided_stages else 2 for i in range(STRIDE_POINTS))


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
