"""IResNet backbones (insightface ``arcface_torch`` architecture) with an any-channel stem.

The layout follows insightface so that recipes, learning rates and published numbers carry
over: a stride-1 3x3 stem (the 112x112 face is already small), "improved" residual blocks
``BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN`` with the down-sampling in the
second conv, four stages of 64/128/256/512 channels, and a flattening head
``BN2d -> dropout -> FC(512*7*7 -> 512) -> BN1d`` that keeps spatial layout information a
global pool would throw away (faces are aligned, so position matters).

What facepriv adds:

* ``in_channels``: the protected tensors have 3 (RGB), 27 (PartialFace), 189 (DCTDP) or 192
  (full DCT) channels at 112x112, all fed to the same stride-1 stem;
* ``width``: a channel multiplier (0.5 gives a CPU-friendly half-width model);
* ``strided_stages``: compact frequency layouts (28x28 or 14x14 maps) run the first stages at
  stride 1 instead of up-sampling, so the final map is 7x7 and every weight keeps its shape;
* ``norm="group"``: GroupNorm everywhere and a per-sample embedding norm, so the model has no
  BatchNorm and trains under Opacus DP-SGD;
* optional squeeze-and-excitation blocks (insightface's older ``-SE`` variants).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from facepriv.models.layers import (
    FEATURE_NORM_KINDS,
    BackboneConfigMixin,
    check_norm,
    default_feature_norm,
    feature_norm,
    norm2d,
    resolve_strided_stages,
    scaled,
    stage_strides,
)

#: Blocks per stage for the named depths.
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}

STAGE_CHANNELS = (64, 128, 256, 512)


class SEModule(nn.Module):
    """Squeeze-and-excitation: re-weight channels from their global average.

    Built from 1x1 convolutions (not Linear on pooled vectors) so Opacus' Conv2d per-sample
    gradient rule applies unchanged.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.act = nn.PReLU(hidden)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        w = self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))
        return x * w


class IBasicBlock(nn.Module):
    """insightface's improved residual block (pre-BN, PReLU, stride in the second conv)."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        *,
        norm: str = "batch",
        norm_groups: int = 32,
        se: bool = False,
        se_reduction: int = 16,
        project: bool = False,
    ) -> None:
        super().__init__()
        self.bn1 = norm2d(norm, inplanes, norm_groups)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm2d(norm, planes, norm_groups)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = norm2d(norm, planes, norm_groups)
        self.se = SEModule(planes, se_reduction) if se else None
        self.downsample: nn.Module | None = None
        # ``project``: a stage's first block keeps its 1x1 shortcut even at stride 1 (compact
        # layouts), so its weights exist in every layout and warm starts transfer them.
        if stride != 1 or inplanes != planes or project:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                norm2d(norm, planes, norm_groups),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        if self.se is not None:
            out = self.se(out)
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(BackboneConfigMixin, nn.Module):
    """IResNet feature extractor: ``B x in_channels x S x S`` -> ``B x embedding_size``.

    Returns the raw (un-normalised) embedding, as insightface does; the margin heads and
    ``FaceRecognizer.embed`` normalise it.
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        in_channels: int = 3,
        embedding_size: int = 512,
        width: float = 1.0,
        se: bool = False,
        se_reduction: int = 16,
        norm: str = "batch",
        norm_groups: int = 32,
        feature_norm_kind: str | None = None,
        dropout: float = 0.0,
        input_size: int = 112,
        strided_stages: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        layers = tuple(int(n) for n in layers)
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"IResNet: layers must be 4 positive block counts, got {layers}")
        if in_channels < 1 or embedding_size < 1:
            raise ValueError(f"IResNet: in_channels and embedding_size must be >= 1, got {in_channels}, {embedding_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"IResNet: dropout must be in [0, 1), got {dropout}")
        strided = resolve_strided_stages(int(input_size), strided_stages, "IResNet")
        check_norm(norm)
        fnorm = feature_norm_kind or default_feature_norm(norm)
        if fnorm not in FEATURE_NORM_KINDS:
            raise ValueError(f"IResNet: feature_norm must be one of {FEATURE_NORM_KINDS}, got {fnorm!r}")
        if name is None:
            name = next((k for k, v in IRESNET_LAYERS.items() if v == layers), "iresnet")

        self._config: dict[str, Any] = {
            "name": name,
            "in_channels": int(in_channels),
            "embedding_size": int(embedding_size),
            "width": float(width),
            "se": bool(se),
            "norm": norm,
            "dropout": float(dropout),
            "input_size": int(input_size),
            "strided_stages": strided,
            "layers": list(layers),
            "norm_groups": int(norm_groups),
            "feature_norm": fnorm,
            "se_reduction": int(se_reduction),
        }

        channels = [scaled(c, width) for c in STAGE_CHANNELS]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = norm2d(norm, channels[0], norm_groups)
        self.prelu = nn.PReLU(channels[0])
        block_kw = {"norm": norm, "norm_groups": norm_groups, "se": se, "se_reduction": se_reduction}
        inplanes = channels[0]
        stages = []
        for planes, blocks, stride in zip(channels, layers, stage_strides(strided)):
            stage = [IBasicBlock(inplanes, planes, stride=stride, project=True, **block_kw)]
            stage += [IBasicBlock(planes, planes, stride=1, **block_kw) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = norm2d(norm, channels[-1], norm_groups)
        self.dropout = nn.Dropout(p=dropout)
        spatial = input_size // 2**strided
        self.fc = nn.Linear(channels[-1] * spatial * spatial, embedding_size)
        self.features = feature_norm(fnorm, embedding_size, freeze_scale=True)
        self._init_weights()

    def _init_weights(self) -> None:
        # insightface: N(0, 0.1) convolutions, unit-scale/zero-shift norms, default Linear.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x))
        x = torch.flatten(x, 1)
        return self.features(self.fc(x))
