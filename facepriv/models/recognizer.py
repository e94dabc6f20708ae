"""``FaceRecognizer``: privacy frontend + input standardisation + backbone, as one model.

The frontend is a first-class, trainable part of the model (DCTDP learns its noise budget),
so training, checkpoints and evaluation all handle the three pieces together: one
``state_dict``, one config, one file. On a deployment the pieces split along the privacy
boundary: ``protect`` (client, sees pixels) and ``embed_protected`` (server, sees only the
protected tensor).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facepriv.models.backbones import build_backbone
from facepriv.models.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from facepriv.models.input_norm import ChannelStandardize, build_input_norm, input_norm_spec
from facepriv.models.layers import strided_stages_for

FrontendFactory = Callable[[dict[str, Any]], nn.Module]


def _default_frontend_factory(config: dict[str, Any]) -> nn.Module:
    from facepriv.frontends import build_frontend  # lazy: frontends and models evolve separately

    return build_frontend(config)


class FaceRecognizer(nn.Module):
    """``images (B x 3 x H x W, RGB in [0, 1]) -> embeddings (B' x D)``.

    ``forward`` returns raw embeddings for the frontend's output batch — in training mode a
    frontend may emit several protected views per image, so ``B' = r * B``; align labels with
    ``expand_labels``. ``embed`` is the inference entry point: eval mode, no grad,
    L2-normalised, one row per image.
    """

    def __init__(
        self,
        frontend: nn.Module,
        backbone: nn.Module,
        input_norm: nn.Module | None = None,
        *,
        image_size: int = 112,
    ) -> None:
        super().__init__()
        for attr in ("out_channels", "config", "expand_labels", "output_size"):
            if not hasattr(frontend, attr):
                raise TypeError(f"FaceRecognizer: frontend {type(frontend).__name__} lacks {attr!r} (see facepriv.frontends.Frontend)")
        bcfg = getattr(backbone, "config", None)
        if not isinstance(bcfg, dict) or "in_channels" not in bcfg:
            raise TypeError("FaceRecognizer: backbone must expose a config dict with 'in_channels' (use build_backbone)")
        channels = int(frontend.out_channels)
        if bcfg["in_channels"] != channels:
            raise ValueError(
                f"FaceRecognizer: frontend {getattr(frontend, 'name', type(frontend).__name__)!r} emits {channels} channels "
                f"but the backbone expects in_channels={bcfg['in_channels']}"
            )
        if input_norm is not None and input_norm.num_channels != channels:
            raise ValueError(
                f"FaceRecognizer: input_norm has {input_norm.num_channels} channels, frontend emits {channels}"
            )
        out_hw = tuple(frontend.output_size(image_size, image_size))
        size = bcfg.get("input_size")
        if size is not None and out_hw != (size, size):
            raise ValueError(
                f"FaceRecognizer: frontend turns {image_size}x{image_size} images into {out_hw[0]}x{out_hw[1]} maps, "
                f"but the backbone expects {size}x{size} (set backbone input_size)"
            )
        self.frontend = frontend
        self.input_norm = input_norm
        self.backbone = backbone
        self.image_size = int(image_size)
        #: ``extra`` dict of the checkpoint this model was loaded from (empty otherwise).
        self.extra: dict[str, Any] = {}

    # ---- construction ---------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild the architecture, frontend secrets included."""
        return {
            "frontend": self.frontend.config,
            "backbone": self.backbone.config,
            "input_norm": None if self.input_norm is None else self.input_norm.config,
            "image_size": self.image_size,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], frontend_factory: FrontendFactory | None = None) -> FaceRecognizer:
        """Build an (untrained) model from ``config`` — the one place the model-building policy
        lives (training, checkpoints, federated sites and the API all come through here).

        What only the frontend knows is filled in: the backbone's ``in_channels`` (its
        ``out_channels``) and ``input_size`` (its output map for ``image_size`` faces: 112 in
        the TFace layout, 28/14 in the compact ones). ``input_norm`` is a mode (``"auto"``,
        ``"standardize"``, ``"per_sample"``, ``"none"``; see ``input_norm_kind``), ``True``
        ("standardise those channels"), or a resolved dict from a checkpoint.
        """
        frontend = (frontend_factory or _default_frontend_factory)(dict(config["frontend"]))
        image_size = int(config.get("image_size", 112))
        backbone = build_backbone(backbone_for(frontend, config["backbone"], image_size))
        input_norm = build_input_norm(input_norm_spec(config.get("input_norm"), frontend))
        return cls(frontend, backbone, input_norm, image_size=image_size)

    # ---- the two halves of the pipeline ---------------------------------------------
    def protect(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        """Client side: the protected tensor that leaves the device."""
        return self.frontend(images, labels)

    def embed_protected(self, protected: Tensor) -> Tensor:
        """Server side: raw embeddings of already-protected tensors."""
        if self.input_norm is not None:
            protected = self.input_norm(protected)
        return self.backbone(protected)

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.embed_protected(self.protect(images, labels))

    def expand_labels(self, labels: Tensor) -> Tensor:
        """Labels aligned with ``forward``'s output rows (PartialFace's r views in training)."""
        return self.frontend.expand_labels(labels)

    @torch.no_grad()
    def embed(self, images: Tensor, *, flip: bool = False, batch_size: int | None = None) -> Tensor:
        """L2-normalised ``B x D`` embeddings in eval mode.

        ``flip``: also embed the horizontally flipped face (through the frontend, as a client
        would protect it) and sum the two raw embeddings before normalising — the standard
        flip-test, usually worth a few tenths of a percent of verification accuracy.
        """
        was_training = self.training
        self.eval()
        try:
            step = batch_size or max(1, images.shape[0])
            out = [self._embed_chunk(images[i : i + step], flip) for i in range(0, images.shape[0], step)]
        finally:
            self.train(was_training)
        if not out:
            return images.new_zeros((0, self.backbone.config["embedding_size"]), dtype=torch.float32)
        return torch.cat(out)

    def _embed_chunk(self, images: Tensor, flip: bool) -> Tensor:
        emb = self(images)
        if emb.shape[0] != images.shape[0]:
            raise RuntimeError(
                f"FaceRecognizer.embed: frontend returned {emb.shape[0]} rows for {images.shape[0]} images in eval mode "
                "(a frontend must emit one view per image at inference)"
            )
        if flip:
            emb = emb + self(images.flip(-1))
        return F.normalize(emb.float(), dim=1)

    @torch.no_grad()
    def calibrate_input_norm(self, image_batches: Iterable[Any], *, max_batches: int | None = None, distributed: bool = False) -> ChannelStandardize:
        """Fit ``input_norm`` to the frontend's output on ``image_batches`` (images, or
        ``(images, labels, ...)`` tuples as a DataLoader yields; labels reach the frontend,
        which PartialFace needs in training mode), creating it if absent. The frontend runs in its current
        mode, so call this in the mode whose statistics you want (training mode includes the
        training-time noise/views)."""
        if self.input_norm is None:
            ref = next(self.backbone.parameters())
            self.input_norm = ChannelStandardize(int(self.frontend.out_channels)).to(ref.device)

        def protected() -> Iterable[Tensor]:
            for batch in image_batches:
                if isinstance(batch, (tuple, list)):
                    labels = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
                    yield self.frontend(batch[0], labels)
                else:
                    yield self.frontend(batch)

        self.input_norm.calibrate(protected(), max_batches=max_batches, distributed=distributed)
        return self.input_norm

    # ---- checkpoints -------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        """Write config (frontend secrets included), weights, versions and ``extra``.

        ``.safetensors`` suffix: safetensors with JSON metadata; otherwise a ``torch.save``
        dict of plain types and tensors. ``extra`` holds plain values and tensors
        (training step, metrics, DP epsilon spent, ...). The file contains the frontend's
        secrets: keep it with the server's credentials, not with protected data.
        """
        return write_checkpoint(path, self.config, self.state_dict(), extra)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        map_location: Any = "cpu",
        *,
        frontend_factory: FrontendFactory | None = None,
    ) -> FaceRecognizer:
        """Rebuild a model saved by ``save``. Only ``torch.load(weights_only=True)`` and
        safetensors are used, so a file with pickled code is refused, never run.
        ``frontend_factory`` (default ``facepriv.frontends.build_frontend``) lets third-party
        frontends be rebuilt from their config. The checkpoint's ``extra`` is on ``model.extra``."""
        data = read_checkpoint(path, map_location)
        try:
            model = cls.from_config(data["config"], frontend_factory)
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: cannot rebuild the model from the checkpoint's config: {type(e).__name__}: {e}") from e
        try:
            model.load_state_dict(data["state_dict"], strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not match the model described by its config: {e}") from e
        device = _device_of(map_location)
        if device is not None:
            model.to(device)
        model.extra = data["extra"]
        return model


def backbone_for(frontend: nn.Module, backbone: dict[str, Any], image_size: int) -> dict[str, Any]:
    """``backbone`` with ``in_channels`` and ``input_size`` taken from the frontend when unset;
    a value that contradicts the frontend is refused here, naming both."""
    cfg = dict(backbone)
    channels = int(frontend.out_channels)
    if "in_channels" in cfg and cfg["in_channels"] is not None and int(cfg["in_channels"]) != channels:
        raise ValueError(
            f"model.in_channels={cfg['in_channels']} but frontend {getattr(frontend, 'name', type(frontend).__name__)!r} "
            f"emits {channels} channels; leave model.in_channels unset (it is filled in from the frontend)"
        )
    cfg["in_channels"] = channels
    if cfg.get("input_size") is None:
        cfg["input_size"] = int(frontend.output_size(image_size, image_size)[0])
    if cfg.get("strided_stages") is None and int(cfg["input_size"]) < image_size:
        cfg["strided_stages"] = strided_stages_for(image_size, int(cfg["input_size"]))
    return cfg


def _device_of(map_location: Any) -> torch.device | None:
    if isinstance(map_location, torch.device):
        return map_location
    if isinstance(map_location, str):
        return torch.device(map_location)
    return None
