"""The deployed path in three calls: ``facepriv.load(ckpt)`` -> ``.protect`` / ``.embed`` / ``.verify``.

Why a separate handle: :class:`~facepriv.models.FaceRecognizer` is the *trainable* model (its
``embed(images)`` runs the whole pipeline, pixels included, for evaluation). A deployment
splits that pipeline along the privacy boundary, and a newcomer should not have to know which
private pieces to call on which side. :class:`Recognizer` names the three steps:

* ``protect(images)``: client side, the only step that sees pixels; eval mode, so each image
  gets its own secure-random protection (PartialFace subset, DCTDP noise) and one view;
* ``embed(protected)``: server side, L2-normalised embeddings of protected tensors only;
* ``verify(a, b)``: cosine similarity of two embedding batches (row-wise), optionally
  thresholded.

Everything runs without gradients; the wrapped model is ``recognizer.model``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from facepriv.models.recognizer import FaceRecognizer

__all__ = ["Recognizer", "load"]


class Recognizer:
    """A trained recogniser split along the privacy boundary (see the module docstring)."""

    def __init__(self, model: FaceRecognizer, *, allow_fixed_inference_seed: bool = False) -> None:
        if not isinstance(model, FaceRecognizer):
            raise TypeError(f"Recognizer wraps a facepriv FaceRecognizer, got {type(model).__name__}")
        self.model = model.eval()
        self._allow_fixed_seed = bool(allow_fixed_inference_seed)

    @property
    def frontend_name(self) -> str:
        return str(getattr(self.model.frontend, "name", type(self.model.frontend).__name__))

    @property
    def device(self) -> torch.device:
        return next(self.model.backbone.parameters()).device

    @torch.no_grad()
    def protect(self, images: Tensor) -> Tensor:
        """Client side: ``B x 3 x H x W`` RGB in [0, 1] -> the ``B x C x h x w`` tensor that leaves the device.

        Refuses a frontend with a fixed ``inference_seed`` (its outputs would be reproducible
        by anyone who knows the seed) unless ``load(..., allow_fixed_inference_seed=True)``.
        """
        if not self._allow_fixed_seed:
            from facepriv.frontends.cli_args import fixed_inference_seed_error

            error = fixed_inference_seed_error(self.model.frontend, "protect images", "this checkpoint")
            if error:
                raise ValueError(f"{error} (Python: facepriv.load(..., allow_fixed_inference_seed=True))")
        _check_images(images, self.model.image_size)
        self.model.eval()
        return self.model.protect(images.to(self.device))

    @torch.no_grad()
    def embed(self, protected: Tensor, *, batch_size: int | None = None) -> Tensor:
        """Server side: L2-normalised ``B x D`` embeddings of protected tensors (never pixels)."""
        channels = int(self.model.frontend.out_channels)
        if protected.dim() != 4 or protected.shape[1] != channels:
            raise ValueError(
                f"embed expects protected tensors of shape B x {channels} x h x w from the {self.frontend_name} "
                f"frontend (Recognizer.protect), got {tuple(protected.shape)}"
            )
        self.model.eval()
        step = batch_size or max(1, protected.shape[0])
        rows = [self.model.embed_protected(protected[i : i + step].to(self.device)) for i in range(0, protected.shape[0], step)]
        if not rows:
            return protected.new_zeros((0, self.model.backbone.config["embedding_size"]), dtype=torch.float32)
        return F.normalize(torch.cat(rows).float(), dim=1)

    @staticmethod
    def verify(a: Tensor, b: Tensor, threshold: float | None = None) -> Tensor:
        """Row-wise cosine similarity of two ``B x D`` embedding batches (what ``facepriv eval``
        scores); with ``threshold``, the accept decisions ``score >= threshold``."""
        if a.shape != b.shape or a.dim() != 2:
            raise ValueError(f"verify expects two B x D embedding batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        scores = (F.normalize(a.float(), dim=1) * F.normalize(b.float(), dim=1)).sum(dim=1)
        return scores if threshold is None else scores >= float(threshold)

    def __repr__(self) -> str:
        return f"Recognizer(frontend={self.frontend_name!r}, embedding_size={self.model.backbone.config['embedding_size']})"


def load(
    checkpoint: str | os.PathLike[str],
    map_location: Any = "cpu",
    *,
    allow_fixed_inference_seed: bool = False,
) -> Recognizer:
    """Load a facepriv checkpoint (``.pt`` or ``.safetensors``) as a :class:`Recognizer`.

    The file holds the frontend's secrets: keep it with the model owner. Files with pickled
    code are refused (see :meth:`FaceRecognizer.load`).
    """
    return Recognizer(FaceRecognizer.load(checkpoint, map_location), allow_fixed_inference_seed=allow_fixed_inference_seed)


def _check_images(images: Tensor, size: int) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"protect expects a B x 3 x H x W RGB batch in [0, 1], got {shape}")
    if tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"protect expects aligned {size}x{size} faces (the model's image_size), got "
                         f"{images.shape[-2]}x{images.shape[-1]}; align with `facepriv data align`")
