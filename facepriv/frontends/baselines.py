"""Unprotected baselines: they go through the same code path as the private frontends so
every comparison (accuracy, attacks) measures what a frontend adds over sending the image."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from facepriv.frontends.base import Frontend, validate_images
from facepriv.frontends.dct import FULL_CHANNELS, block_dct


class RGBFrontend(Frontend):
    """No protection: the aligned RGB face, scaled to [-1, 1] as insightface models expect."""

    name = "rgb"

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = bool(normalize)

    @property
    def out_channels(self) -> int:
        return 3

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "normalize": self.normalize}

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        validate_images(images)
        return images * 2.0 - 1.0 if self.normalize else images

    def privacy_report(self) -> dict[str, Any]:
        return {"frontend": self.name, "mechanism": "none (raw image leaves the device)", "formal_guarantee": None}


class DCTFrontend(Frontend):
    """No protection: the full block-DCT layout (192 channels, DC kept). Invertible exactly."""

    name = "dct"

    def __init__(self, upsample: int = 8) -> None:
        super().__init__()
        self.upsample = int(upsample)

    @property
    def out_channels(self) -> int:
        return FULL_CHANNELS

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height * self.upsample // 8, width * self.upsample // 8

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "upsample": self.upsample}

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        return block_dct(images, self.upsample)

    def privacy_report(self) -> dict[str, Any]:
        return {
            "frontend": self.name,
            "mechanism": "none (invertible linear transform of the image)",
            "formal_guarantee": None,
        }
