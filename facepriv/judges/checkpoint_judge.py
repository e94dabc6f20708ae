"""A facepriv ``FaceRecognizer`` checkpoint as an identity judge.

Meant for an RGB model trained *separately* from the model under attack (e.g. the
``rgb`` baseline of the same training recipe): it is the closest stand-in for "a good
recogniser the attacker could train on public data". Loading goes through
``FaceRecognizer.load`` (``torch.load(weights_only=True)`` or safetensors), so a malicious
checkpoint is refused, never executed. A checkpoint whose frontend is not ``rgb`` is
accepted (its frontend then protects the reconstruction before embedding) and flagged in
``describe()``: such a judge measures what *that* model would match, not raw identity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from facepriv.judges.base import Judge, JudgeError

__all__ = ["CheckpointJudge"]


class CheckpointJudge(Judge):
    """Embeddings from ``FaceRecognizer.embed`` of a saved facepriv model."""

    kind = "checkpoint"

    def __init__(self, path: str | Path, *, device: str = "cpu", flip: bool = False, batch_size: int = 32) -> None:
        super().__init__(batch_size)
        from facepriv.models import CheckpointError, FaceRecognizer

        self.path = Path(path)
        try:
            self.model = FaceRecognizer.load(self.path, map_location=device)
        except (CheckpointError, OSError) as exc:
            raise JudgeError(f"checkpoint judge: cannot load {self.path}: {exc}") from exc
        self.model.eval()
        self.device = torch.device(device)
        self.flip = bool(flip)
        self.frontend_name = str(getattr(self.model.frontend, "name", type(self.model.frontend).__name__))

    @property
    def dim(self) -> int:
        return int(self.model.backbone.config["embedding_size"])

    def describe(self) -> dict[str, Any]:
        d = {
            "kind": self.kind,
            "model": str(self.path),
            "frontend": self.frontend_name,
            "backbone": self.model.backbone.config.get("name"),
            "flip_test": self.flip,
        }
        if self.frontend_name != "rgb":
            d["warning"] = (f"judge checkpoint uses the {self.frontend_name!r} frontend; identity scores then measure "
                            "what that protected model matches, not raw identity (use an RGB model)")
        return d

    def _embed_batch(self, images: Tensor) -> Tensor:
        size = self.model.image_size
        if images.shape[-2:] != (size, size):
            raise JudgeError(f"checkpoint judge: model expects {size}x{size} faces, got {tuple(images.shape[-2:])}")
        return self.model.embed(images.to(self.device), flip=self.flip).float().cpu()
