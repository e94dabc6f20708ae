"""MobileFaceNet (insightface ``arcface_torch`` "mbf") with an any-channel stem.

A small (about 1M parameter at 3 input channels) embedding network for devices and CPU runs:
a stride-2 3x3 stem, inverted-residual depthwise-separable bottlenecks
(1x1 expand -> 3x3 depthwise -> 1x1 linear project), and a GDC head — a global *depthwise*
convolution over the final 7x7 map instead of average pooling, because on aligned faces the
centre and the border of the map are not equally informative and GDC learns that weighting.

Layout follows insightface (``blocks=(1, 4, 6, 2)``, ``scale=2``; ``blocks=(2, 8, 12, 4)``,
``scale=4`` is their "mbf_large"), with facepriv's ``in_channels``, ``width`` multiplier and
``norm="group"`` (no BatchNorm, for Opacus DP-SGD) on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from facepriv.models.layers import (
    FEATURE_NORM_KINDS,
    BackboneConfigMixin,
    check_norm,
    default_feature_norm,
    feature_norm,
    group_count,
    norm2d,
    resolve_strided_stages,
    scaled,
    stage_strides,
)



class ConvBlock(nn.Module):
    """conv -> norm -> PReLU."""

    def __init__(
        self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1,
        *, norm: str = "batch", norm_groups: int = 32,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False)
        self.norm = norm2d(norm, out_c, norm_groups)
        self.act = nn.PReLU(out_c)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class LinearBlock(nn.Module):
    """conv -> norm, no activation (the linear bottleneck of MobileNetV2)."""

    def __init__(
        self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1,
        *, norm: str = "batch", norm_groups: int = 32,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False)
        self.norm = norm2d(norm, out_c, norm_groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``hidden`` -> 3x3 depthwise -> 1x1 project."""

    def __init__(
        self, in_c: int, out_c: int, hidden: int, *, stride: int = 1, residual: bool = False,
        norm: str = "batch", norm_groups: int = 32,
    ) -> None:
        super().__init__()
        if residual and (in_c != out_c or stride != 1):
            raise ValueError("DepthWise: a residual bottleneck needs in_c == out_c and stride 1")
        kw = {"norm": norm, "norm_groups": norm_groups}
        self.residual = residual
        self.expand = ConvBlock(in_c, hidden, 1, **kw)
        self.depthwise = ConvBlock(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, **kw)
        self.project = LinearBlock(hidden, out_c, 1, **kw)

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


def _residual_stage(channels: int, blocks: int, hidden: int, **kw: Any) -> nn.Sequential:
    return nn.Sequential(*[DepthWise(channels, channels, hidden, residual=True, **kw) for _ in range(blocks)])


class MobileFaceNet(BackboneConfigMixin, nn.Module):
    """MobileFaceNet: ``B x in_channels x S x S`` -> raw ``B x embedding_size`` embedding."""

    def __init__(
        self,
        *,
        in_channels: int = 3,
        embedding_size: int = 512,
        width: float = 1.0,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
        norm: str = "batch",
        norm_groups: int = 32,
        feature_norm_kind: str | None = None,
        dropout: float = 0.0,
        input_size: int = 112,
        strided_stages: int | None = None,
        name: str = "mobilefacenet",
    ) -> None:
        super().__init__()
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"MobileFaceNet: blocks must be 4 positive counts, got {blocks}")
        if in_channels < 1 or embedding_size < 1 or scale < 1:
            raise ValueError(
                f"MobileFaceNet: in_channels, embedding_size and scale must be >= 1, got {in_channels}, {embedding_size}, {scale}"
            )
        strided = resolve_strided_stages(int(input_size), strided_stages, "MobileFaceNet")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MobileFaceNet: dropout must be in [0, 1), got {dropout}")
        check_norm(norm)
        fnorm = feature_norm_kind or default_feature_norm(norm)
        if fnorm not in FEATURE_NORM_KINDS:
            raise ValueError(f"MobileFaceNet: feature_norm must be one of {FEATURE_NORM_KINDS}, got {fnorm!r}")
        self._config: dict[str, Any] = {
            "name": name,
            "in_channels": int(in_channels),
            "embedding_size": int(embedding_size),
            "width": float(width),
            "se": False,
            "norm": norm,
            "dropout": float(dropout),
            "input_size": int(input_size),
            "strided_stages": strided,
            "blocks": list(blocks),
            "scale": int(scale),
            "norm_groups": int(norm_groups),
            "feature_norm": fnorm,
        }
        kw = {"norm": norm, "norm_groups": norm_groups}
        c1 = scaled(64 * scale, width)
        c2 = scaled(128 * scale, width)
        h128, h256, h512 = scaled(128, width), scaled(256, width), scaled(512, width)
        # insightface's second layer is a *grouped* (not fully depthwise) 3x3 conv with 64
        # groups; keep the ratio under the width multiplier, snapping to a divisor of c1.
        g = group_count(c1, scaled(64, width))

        s0, s1, s2, s3 = stage_strides(strided)  # compact layouts: the first ones run at stride 1
        layers: list[nn.Module] = [ConvBlock(in_channels, c1, 3, stride=s0, padding=1, **kw)]
        if blocks[0] == 1:
            layers.append(ConvBlock(c1, c1, 3, stride=1, padding=1, groups=g, **kw))
        else:
            layers.append(_residual_stage(c1, blocks[0], h128, **kw))
        layers += [
            DepthWise(c1, c1, h128, stride=s1, **kw),
            _residual_stage(c1, blocks[1], h128, **kw),
            DepthWise(c1, c2, h256, stride=s2, **kw),
            _residual_stage(c2, blocks[2], h256, **kw),
            DepthWise(c2, c2, h512, stride=s3, **kw),
            _residual_stage(c2, blocks[3], h256, **kw),
        ]
        self.layers = nn.Sequential(*layers)
        c_sep = scaled(512, width)
        self.conv_sep = ConvBlock(c2, c_sep, 1, **kw)
        spatial = input_size // 2**strided
        # GDC: one spatial filter per channel over the whole final map.
        self.gdc = LinearBlock(c_sep, c_sep, spatial, groups=c_sep, **kw)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(c_sep, embedding_size, bias=False)
        self.features = feature_norm(fnorm, embedding_size, freeze_scale=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # insightface mbf: Kaiming-normal (fan_out) convs and Linear, unit/zero norms.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        x = self.conv_sep(self.layers(x))
        x = self.dropout(self.gdc(x)).flatten(1)
        return self.features(self.fc(x))
