"""The `Frontend` contract shared by every privacy frontend.

A frontend is the only code that sees raw pixels. It runs on the client (phone, partner
site, capture device) and turns an aligned face into the tensor that leaves the device.
Everything downstream (training, federated clients, evaluation, attacks) consumes the
same objects through this small interface, so a new frontend plugs in everywhere at once.
"""

from __future__ import annotations

import abc
import copy
import logging
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

#: Tolerance for the [0, 1] range check: images decoded to float and resized may overshoot
#: by rounding, but anything beyond this is a caller using the wrong convention (0-255, [-1,1]).
RANGE_TOLERANCE = 1e-4

log = logging.getLogger(__name__)

#: Frontend classes already warned about a fixed ``inference_seed`` (once per process: the
#: evaluation protocol builds one seeded copy per repetition and would repeat the warning).
_WARNED_FIXED_INFERENCE_SEED: set[str] = set()


def validate_images(images: Any, *, multiple_of: int = 8, name: str = "images") -> Tensor:
    """Check the input convention every frontend shares and explain any violation.

    Convention: a float tensor ``B x 3 x H x W`` with RGB values in [0, 1] and H, W
    multiples of ``multiple_of`` (8 for the block DCT). We refuse rather than guess:
    silently accepting a 0-255 image or BGR order would produce a model that works in
    tests and fails in deployment.
    """
    if not isinstance(images, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(
            f"{name}: expected rank 4 (B x 3 x H x W), got rank {images.dim()} with shape {tuple(images.shape)}"
        )
    if images.shape[1] != 3:
        raise ValueError(
            f"{name}: expected 3 RGB channels in dim 1 (B x 3 x H x W), got {images.shape[1]} "
            f"(shape {tuple(images.shape)}; channels-last input must be permuted first)"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"{name}: expected a floating-point tensor with values in [0, 1], got dtype {images.dtype} "
            "(convert uint8 images with images.float() / 255)"
        )
    h, w = images.shape[-2:]
    if h % multiple_of or w % multiple_of or h == 0 or w == 0:
        raise ValueError(f"{name}: height and width must be positive multiples of {multiple_of}, got {h} x {w}")
    if images.numel():
        finite = torch.isfinite(images)
        if not bool(finite.all()):
            bad = (~finite).sum().item()
            raise ValueError(f"{name}: contains {bad} NaN or infinite values")
        lo, hi = torch.aminmax(images)
        if lo.item() < -RANGE_TOLERANCE or hi.item() > 1 + RANGE_TOLERANCE:
            raise ValueError(
                f"{name}: values must be RGB in [0, 1], found range [{lo.item():.4g}, {hi.item():.4g}] "
                "(0-255 input? divide by 255; [-1, 1] input? use x * 0.5 + 0.5)"
            )
    return images


class Frontend(nn.Module, abc.ABC):
    """Base class: image batch in, protected tensor out.

    Subclasses set ``name`` (the registry key) and implement ``forward``, ``out_channels``
    and ``config``. Randomness is drawn from an explicit source: a seeded
    ``torch.Generator`` while training (reproducible, resumable) and, at inference,
    operating-system entropy unless the caller passes a seed.
    """

    name: ClassVar[str] = ""
    #: keys of ``config`` that are secrets: kept in checkpoints, never written next to
    #: protected tensors that leave the device. ``public_config`` writes ``"<secret>"`` and
    #: ``build_frontend`` refuses such a config: without the secret the frontend cannot be
    #: rebuilt (PartialFace's subset table).
    secret_keys: ClassVar[tuple[str, ...]] = ()
    #: keys of ``config`` that are secret but not needed to rebuild the frontend: a fixed
    #: ``inference_seed`` makes deployment randomness (DCTDP's noise, PartialFace's subset
    #: choice) predictable, i.e. removable by whoever knows it. ``public_config`` resets them
    #: to ``None``, their default (the OS-entropy source), so a public config still builds a
    #: working frontend, one whose inference randomness is fresh and secure.
    reseed_keys: ClassVar[tuple[str, ...]] = ("inference_seed",)
    #: True when output channel ``c`` carries different content from query to query (PartialFace:
    #: a secret subset and order per query). The model then needs a per-sample input
    #: normalisation; fixed per-channel statistics would average unrelated frequencies.
    channels_vary_per_query: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def out_channels(self) -> int:
        """Channels of the protected tensor (3 RGB, 192 DCT, 27 PartialFace, 189 DCTDP)."""

    @abc.abstractmethod
    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the protected tensor for an input of ``height x width``."""

    @property
    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict; ``build_frontend(f.config)`` rebuilds this frontend
        (learned parameters and calibrated buffers travel in the state dict)."""

    @abc.abstractmethod
    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        """Protect a batch ``B x 3 x H x W`` RGB in [0, 1]."""

    def expand_labels(self, labels: Tensor) -> Tensor:
        """Labels aligned with ``forward``'s output batch.

        Frontends that emit several protected views per image in training mode (the
        PartialFace sample multiplier) repeat labels to match; the default is identity.
        """
        return labels

    def get_rng_state(self) -> dict[str, Tensor]:
        """State of the training-time generator (``_train_generator``), for exact resume."""
        generator = getattr(self, "_train_generator", None)
        return {} if generator is None else {"train_generator": generator.get_state()}

    def set_rng_state(self, state: dict[str, Tensor]) -> None:
        generator = getattr(self, "_train_generator", None)
        if generator is not None and "train_generator" in state:
            generator.set_state(state["train_generator"])

    def public_config(self) -> dict[str, Any]:
        """``config`` without secrets: what may travel with protected tensors.

        ``secret_keys`` become ``"<secret>"``; ``reseed_keys`` become ``None`` (see there).
        """
        cfg = copy.deepcopy(self.config)
        for key in self.secret_keys:
            if key in cfg:
                cfg[key] = "<secret>"
        for key in self.reseed_keys:
            if key in cfg:
                cfg[key] = None
        return cfg

    def _warn_if_fixed_inference_seed(self) -> None:
        """Call on every eval-mode draw: logs once per process and class if the inference
        randomness comes from a fixed seed (deployment noise/choices are then reproducible by
        anyone who knows the seed). A warning, not an error: seeded evaluation and tests rely on it."""
        if getattr(self, "inference_seed", None) is None or self.training:
            return
        key = type(self).__name__
        if key in _WARNED_FIXED_INFERENCE_SEED:
            return
        _WARNED_FIXED_INFERENCE_SEED.add(key)
        log.warning(
            "%s runs in eval mode with a fixed inference_seed: its deployment randomness is reproducible by "
            "anyone who knows the seed (fine for a reproducible evaluation, not for deployment; leave "
            "inference_seed unset to draw from the OS CSPRNG). Logged once per process.",
            key,
        )

    def privacy_report(self) -> dict[str, Any]:
        """What protection this frontend gives, stated so a reviewer can check it."""
        return {"frontend": self.name, "mechanism": "none", "formal_guarantee": None}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.public_config().items() if k != "name")
