"""The judge contract: aligned faces in, L2-normalised identity embeddings out.

A judge is a face recogniser the *defender did not train*: if a reconstruction from a
protected tensor is matched to the right person by an independent recogniser, identity has
leaked no matter how the defender's own model behaves. Every judge takes the project's image
convention (``B x 3 x H x W`` RGB float in [0, 1], aligned with the ArcFace 5-point
template, 112 x 112 normally) and returns unit-length float32 rows, so scores are cosines and
judges are interchangeable in ``facepriv.judges.leakage``.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from facepriv.frontends import validate_images

__all__ = ["Judge", "JudgeError"]


class JudgeError(RuntimeError):
    """A judge cannot be built or run (missing optional package, bad model file, ...)."""


class Judge(abc.ABC):
    """Base class: subclasses implement ``_embed_batch`` on uint8 / float batches."""

    #: Short identifier written into reports ("dlib", "onnx", "checkpoint").
    kind: str = ""

    def __init__(self, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)

    @abc.abstractmethod
    def _embed_batch(self, images: Tensor) -> Tensor:
        """Raw (un-normalised) embeddings ``B x D`` of a validated CPU float batch."""

    def describe(self) -> dict[str, Any]:
        """What the report says about this judge (name, model file, preprocessing)."""
        return {"kind": self.kind}

    @torch.no_grad()
    def embed(self, images: Tensor, *, progress: bool = False, desc: str = "judge") -> Tensor:
        """L2-normalised ``N x D`` float32 embeddings (CPU), computed in batches.

        Images are clamped to [0, 1] first: reconstructions may overshoot slightly, and a
        judge must score what a person would see, not crash on it.
        """
        if not isinstance(images, Tensor):
            raise TypeError(f"{type(self).__name__}.embed: expected a tensor, got {type(images).__name__}")
        if images.is_floating_point():
            if images.numel() and not bool(torch.isfinite(images).all()):
                raise ValueError(f"{type(self).__name__}.embed: images contain NaN or infinite values")
            images = images.clamp(0, 1)
        validate_images(images, multiple_of=1, name=f"{type(self).__name__}.embed images")
        from tqdm import tqdm

        chunks = []
        starts = range(0, images.shape[0], self.batch_size)
        for i in tqdm(starts, desc=desc, unit="batch", disable=not progress or len(starts) < 2, leave=False):
            raw = self._embed_batch(images[i : i + self.batch_size].detach().float().cpu())
            if raw.dim() != 2 or raw.shape[0] != min(self.batch_size, images.shape[0] - i):
                raise JudgeError(f"{type(self).__name__}: model returned shape {tuple(raw.shape)} for a batch of "
                                 f"{min(self.batch_size, images.shape[0] - i)} images")
            if not bool(torch.isfinite(raw).all()):
                raise JudgeError(f"{type(self).__name__}: model produced NaN/inf embeddings")
            chunks.append(F.normalize(raw.float(), dim=1))
        if not chunks:
            return torch.zeros(0, self.dim, dtype=torch.float32)
        return torch.cat(chunks)

    @property
    def dim(self) -> int:
        """Embedding size (probed with one blank image if the subclass does not know)."""
        return int(self._embed_batch(torch.zeros(1, 3, 112, 112)).shape[1])
