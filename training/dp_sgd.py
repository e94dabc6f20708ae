"""DP-SGD through Opacus: example-level differential privacy for the server-side model.

What is private: every training *image* (one protected view of it) has its gradient clipped
to ``dp.max_grad_norm`` and Gaussian noise is added to the sum, with the noise multiplier
chosen by Opacus so that after the whole schedule the training run is
``(dp.epsilon, dp.delta)``-DP with respect to adding/removing one image (Poisson sampling,
RDP/PRV accountant). This is *example-level*, not identity-level, privacy: a person with 100
training images is protected at a weaker level (group privacy). The frontend's own
protection (e.g. DCTDP's per-image Laplace mechanism) is separate and composes with it.

Design decisions (see docs/training.md, "DP-SGD"):

* No BatchNorm: batch statistics mix samples, so per-sample gradients are undefined. We
  switch the backbone to ``norm: group`` (GroupNorm + per-sample embedding norm) before it
  is built and check the result with ``opacus.validators.ModuleValidator``; we do not
  patch a built model behind the config's back, so saved checkpoints rebuild exactly.
* The head must be the full-softmax cosine classifier (margin applied in the loss, which is
  outside the per-sample machinery); its closed-form per-sample gradient
  ``facepriv.models.cosine_classifier_grad_sample`` is registered with Opacus. Partial FC
  is refused (its cross-rank softmax has no per-sample decomposition here).
* The frontend's learnable parameters (DCTDP's budget-allocation logits) are *frozen*
  under DP-SGD. Training them would need per-sample gradients through the frontend's
  random noise and its own clipping; frozen, the frontend is a fixed (randomised)
  pre-processing of each image, which does not affect the DP-SGD guarantee. Train the
  allocation without DP-SGD first and fine-tune with it if both are wanted.
* One image must give one protected sample: PartialFace's training multiplier (r views per
  image) would put r gradients of the same image in a batch and break the accounting;
  set ``frontend.sample_multiplier: 1`` under DP-SGD (checked at every step).
* Single process only for now (Opacus' DPDDP needs a different sampler and noise split);
  a clear error says so under torchrun.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .config import ConfigError, TrainConfig
from .distributed import DistEnv

log = logging.getLogger(__name__)


def adapt_config_for_dp(cfg: TrainConfig) -> TrainConfig:
    """Return a copy with what DP-SGD needs: a BatchNorm-free backbone, full precision."""
    if not cfg.dp.enabled:
        return cfg
    cfg = copy.deepcopy(cfg)
    if cfg.model.get("norm", "batch") != "group":
        log.warning("dp.enabled: using model.norm=group (Opacus cannot compute per-sample gradients through BatchNorm)")
        cfg.model["norm"] = "group"
    if cfg.model.get("feature_norm") == "batch":
        cfg.model["feature_norm"] = "layer"
    head_type = cfg.head.get("type", "softmax")
    if head_type not in ("softmax", "full"):
        raise ConfigError(f"dp.enabled needs head.type: softmax (got {head_type!r}); Partial FC has no per-sample gradients")
    if cfg.optim.amp not in ("none", "auto"):
        log.warning("dp.enabled: mixed precision is disabled under DP-SGD (per-sample gradients in fp32)")
    cfg.optim.amp = "none"
    if cfg.frontend.get("name") == "partialface" and int(cfg.frontend.get("sample_multiplier", 3)) != 1:
        raise ConfigError("dp.enabled with PartialFace needs frontend.sample_multiplier: 1 "
                          "(several views of one image would share one privacy unit)")
    return cfg


class _PrivateNet(nn.Module):
    """What Opacus wraps: protected tensor -> input norm -> backbone -> cosine logits."""

    def __init__(self, input_norm: nn.Module | None, backbone: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.input_norm = input_norm if input_norm is not None else nn.Identity()
        self.backbone = backbone
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.backbone(self.input_norm(x)))


def register_cosine_grad_sampler() -> None:
    """Tell Opacus how to compute per-sample gradients of the CosineClassifier (idempotent)."""
    from opacus.grad_sample import register_grad_sampler

    from facepriv.models.heads import CosineClassifier, cosine_classifier_grad_sample

    register_grad_sampler(CosineClassifier)(cosine_classifier_grad_sample)


class DPSGD:
    """Opacus glue owned by the Trainer: builds the private module, optimiser and loader."""

    def __init__(self, cfg: TrainConfig, recognizer: nn.Module, num_classes: int, env: DistEnv) -> None:
        try:
            from opacus import PrivacyEngine
            from opacus.validators import ModuleValidator
        except ImportError as exc:  # pragma: no cover - opacus is installed in CI
            raise ImportError("dp.enabled needs Opacus: pip install 'facepriv[dp]'") from exc
        if env.distributed:
            raise NotImplementedError("DP-SGD runs in a single process (no torchrun/DDP) in this version")
        from facepriv.models import build_head

        self.cfg = cfg
        self.recognizer = recognizer
        self.frontend = recognizer.frontend
        for p in self.frontend.parameters():  # frozen under DP-SGD: see module docstring
            p.requires_grad_(False)
        from .components import embedding_size

        self.head = build_head(dict(cfg.head), embedding_size(recognizer), num_classes)
        classifier = getattr(self.head, "classifier", None)
        margin = getattr(self.head, "margin_loss", None)
        if classifier is None or margin is None:
            raise ConfigError("dp.enabled needs a softmax head (a cosine classifier + margin loss)")
        self.margin_loss = margin
        self.net = _PrivateNet(getattr(recognizer, "input_norm", None), recognizer.backbone, classifier)
        errors = ModuleValidator.validate(self.net, strict=False)
        if errors:
            raise ConfigError("the model is not DP-SGD compatible: " + "; ".join(str(e) for e in errors[:5]))
        register_cosine_grad_sampler()
        self.engine = PrivacyEngine(accountant=cfg.dp.accountant, secure_mode=cfg.dp.secure_mode)
        self.module: nn.Module | None = None
        self.noise_multiplier: float | None = None

    def make_private(self, optimizer: torch.optim.Optimizer, loader: DataLoader,
                     steps_per_epoch: int) -> tuple[torch.optim.Optimizer, DataLoader]:
        from .schedule import resolve_schedule

        total = resolve_schedule(self.cfg.schedule, steps_per_epoch).total_steps
        epochs = total / steps_per_epoch  # Opacus turns this back into steps = epochs / sample_rate
        module, dp_optimizer, dp_loader = self.engine.make_private_with_epsilon(
            module=self.net, optimizer=optimizer, data_loader=loader,
            target_epsilon=self.cfg.dp.epsilon, target_delta=self.cfg.dp.delta, epochs=epochs,
            max_grad_norm=self.cfg.dp.max_grad_norm, poisson_sampling=self.cfg.dp.poisson_sampling,
            grad_sample_mode="hooks",
        )
        self.module = module
        self.noise_multiplier = float(dp_optimizer.noise_multiplier)
        log.info("DP-SGD: noise multiplier %.4f for (%.3g, %.3g)-DP over %d steps at sample rate %.5f",
                 self.noise_multiplier, self.cfg.dp.epsilon, self.cfg.dp.delta, total, 1.0 / len(loader))
        return dp_optimizer, dp_loader

    def forward_loss(self, images: Tensor, labels: Tensor) -> Tensor:
        if self.module is None:
            raise RuntimeError("DPSGD.make_private must run before training")
        with torch.no_grad():  # the frontend is frozen: a fixed randomised pre-processing
            protected = self.frontend(images, labels)
        if protected.shape[0] != images.shape[0]:
            raise ValueError(f"under DP-SGD the frontend must emit one sample per image, got {protected.shape[0]} "
                             f"for {images.shape[0]} (PartialFace: set sample_multiplier: 1)")
        logits = self.module(protected)
        return self.margin_loss(logits, labels)

    def epsilon(self) -> float:
        eps = float(self.engine.get_epsilon(self.cfg.dp.delta))
        return eps if math.isfinite(eps) else float("inf")

    def state_dict(self) -> dict[str, Any]:
        return {"accountant": dict(self.engine.accountant.state_dict()), "noise_multiplier": self.noise_multiplier,
                "epsilon": self.epsilon(), "delta": self.cfg.dp.delta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.accountant.load_state_dict(state["accountant"])
