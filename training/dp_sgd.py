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
* The noise and the Poisson sampling never come from ``cfg.seed``: ``DPRandomness``
  (training/dp_random.py) draws its key and generator seed from the OS CSPRNG, and its
  state is part of ``DPSGD.state_dict`` (the private rank checkpoint / a federated site's
  private state). Poisson batches are a pure function of (key, epoch, step), so resume is
  exact. ``dp.secure_mode`` derives all of it from keyed SHAKE-256 instead of torch's PRNGs
  (no ``torchcsprng`` needed).
* ``dp.delta`` left unset means ``1 / (10 N)`` for N training images; a configured delta
  of at least ``1/N`` is allowed with a warning (a mechanism that publishes one random image
  in the clear satisfies delta = 1/N, so such a delta says little).
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .config import ConfigError, TrainConfig
from .distributed import DistEnv
from .dp_random import DPRandomness
from .sampler import PoissonBatchSampler

log = logging.getLogger(__name__)


def adapt_config_for_dp(cfg: TrainConfig, *, quiet: bool = False) -> TrainConfig:
    """Return a copy with what DP-SGD needs: a BatchNorm-free backbone, full precision.

    ``quiet``: no warnings (the config-load check builds the adapted model; the trainer warns).
    """
    if not cfg.dp.enabled:
        return cfg
    cfg = copy.deepcopy(cfg)
    if cfg.model.get("norm", "batch") != "group":
        if not quiet:
            log.warning("dp.enabled: using model.norm=group (Opacus cannot compute per-sample gradients through BatchNorm)")
        cfg.model["norm"] = "group"
    if cfg.model.get("feature_norm") == "batch":
        cfg.model["feature_norm"] = "layer"
    head_type = cfg.head.get("type", "softmax")
    if head_type not in ("softmax", "full"):
        raise ConfigError(f"dp.enabled needs head.type: softmax (got {head_type!r}); Partial FC has no per-sample gradients")
    if cfg.optim.amp not in ("none", "auto") and not quiet:
        log.warning("dp.enabled: mixed precision is disabled under DP-SGD (per-sample gradients in fp32)")
    cfg.optim.amp = "none"
    if cfg.frontend.get("name") in ("partialface", "minusface") and int(cfg.frontend.get("sample_multiplier", 3)) != 1:
        raise ConfigError(f"dp.enabled with {cfg.frontend['name']} needs frontend.sample_multiplier: 1 "
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


def resolve_delta(configured: float | None, num_samples: int) -> float:
    """``dp.delta``, or ``1 / (10 N)`` when unset; warns when a configured delta is >= 1/N."""
    if num_samples < 1:
        raise ValueError(f"DP-SGD needs at least one training sample, got {num_samples}")
    if configured is None:
        delta = 1.0 / (10.0 * num_samples)
        log.info("dp.delta not set: using 1/(10 N) = %.3g for N = %d training images", delta, num_samples)
        return delta
    if configured >= 1.0 / num_samples:
        log.warning("dp.delta=%g is not below 1/N = %.3g (N = %d training images): a mechanism that publishes "
                    "one random image in the clear meets this delta; leave dp.delta unset for 1/(10 N)",
                    configured, 1.0 / num_samples, num_samples)
    return float(configured)


def _secure_noise_optimizer(dp_optimizer: Any, randomness: DPRandomness) -> Any:
    """Re-wrap Opacus' DPOptimizer so its noise comes from ``randomness.secure_noise``."""
    from opacus.optimizers import DPOptimizer
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    class SecureNoiseDPOptimizer(DPOptimizer):
        """DPOptimizer whose Gaussian noise is keyed SHAKE-256 output (secure_mode)."""

        def add_noise(self) -> None:
            std = self.noise_multiplier * self.max_grad_norm
            for index, p in enumerate(self.params):
                _check_processed_flag(p.summed_grad)
                noise = randomness.secure_noise(p.summed_grad, std, index) if std > 0 else 0.0
                p.grad = (p.summed_grad + noise).view_as(p)
                _mark_as_processed(p.summed_grad)
            randomness.noise_draws += 1

    wrapped = SecureNoiseDPOptimizer(
        dp_optimizer.original_optimizer, noise_multiplier=dp_optimizer.noise_multiplier,
        max_grad_norm=dp_optimizer.max_grad_norm, expected_batch_size=dp_optimizer.expected_batch_size,
        loss_reduction=dp_optimizer.loss_reduction, secure_mode=True,
    )
    wrapped.attach_step_hook(dp_optimizer.step_hook)  # the accountant
    return wrapped


class DPSGD:
    """Opacus glue owned by the Trainer: builds the private module, optimiser and loader.

    ``num_samples`` (N, the training images) sets the default delta and the Poisson masks.
    """

    def __init__(self, cfg: TrainConfig, recognizer: nn.Module, num_classes: int, env: DistEnv,
                 num_samples: int) -> None:
        try:
            from opacus import PrivacyEngine
            from opacus.validators import ModuleValidator
        except ImportError as exc:  # pragma: no cover - opacus is installed in CI
            raise ImportError("dp.enabled needs Opacus: pip install 'facepriv[dp]'") from exc
        if env.distributed:
            raise NotImplementedError("DP-SGD runs in a single process (no torchrun/DDP) in this version")
        from facepriv.models import build_head

        self.cfg = cfg
        self.num_samples = int(num_samples)
        self.delta = resolve_delta(cfg.dp.delta, self.num_samples)
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
        #: the secret randomness (OS CSPRNG); checkpointed privately through state_dict
        self.randomness = DPRandomness(env.device, secure=cfg.dp.secure_mode)
        with warnings.catch_warnings():
            # Opacus' "Secure RNG turned off" warning is about its own seeding, which we replace
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            self.engine = PrivacyEngine(accountant=cfg.dp.accountant, secure_mode=False)
        self.module: nn.Module | None = None
        self.noise_multiplier: float | None = None
        self.sampler: PoissonBatchSampler | None = None

    def _poisson_loader(self, loader: DataLoader, steps_per_epoch: int) -> DataLoader:
        """``loader`` with its batches replaced by secret Poisson draws (rate 1/steps_per_epoch)."""
        self.sampler = PoissonBatchSampler(len(loader.dataset), steps_per_epoch,  # type: ignore[arg-type]
                                           self.randomness.poisson_mask)
        workers = loader.num_workers
        return DataLoader(loader.dataset, batch_sampler=self.sampler, num_workers=workers,
                          collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                          persistent_workers=workers > 0, prefetch_factor=loader.prefetch_factor,
                          generator=loader.generator)

    def make_private(self, optimizer: torch.optim.Optimizer, loader: DataLoader,
                     steps_per_epoch: int) -> tuple[torch.optim.Optimizer, DataLoader]:
        from .schedule import resolve_schedule

        total = resolve_schedule(self.cfg.schedule, steps_per_epoch).total_steps
        epochs = total / steps_per_epoch  # Opacus turns this back into steps = epochs / sample_rate
        poisson = self.cfg.dp.poisson_sampling
        if poisson:
            loader = self._poisson_loader(loader, steps_per_epoch)
        else:
            log.warning("dp.poisson_sampling: false: the reported epsilon assumes Poisson sampling and does "
                        "not hold for these shuffled fixed-size batches")
        module, dp_optimizer, dp_loader = self.engine.make_private_with_epsilon(
            module=self.net, optimizer=optimizer, data_loader=loader,
            target_epsilon=self.cfg.dp.epsilon, target_delta=self.delta, epochs=epochs,
            max_grad_norm=self.cfg.dp.max_grad_norm, poisson_sampling=False,  # our sampler, above
            noise_generator=None if self.randomness.secure else self.randomness.noise_generator,
            grad_sample_mode="hooks",
        )
        if poisson:
            module.forbid_grad_accumulation()  # what Opacus does for its own Poisson loader
        if self.randomness.secure:
            dp_optimizer = _secure_noise_optimizer(dp_optimizer, self.randomness)
        self.module = module
        self.noise_multiplier = float(dp_optimizer.noise_multiplier)
        log.info("DP-SGD: noise multiplier %.4f for (%.3g, %.3g)-DP over %d steps at sample rate %.5f%s",
                 self.noise_multiplier, self.cfg.dp.epsilon, self.delta, total, 1.0 / len(dp_loader),
                 " (secure mode: SHAKE-256 noise and sampling)" if self.randomness.secure else "")
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

    def noise_only_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The DP-SGD step for an empty Poisson batch: no gradient, but noise is added and the
        accountant counts the step, exactly as the analysis assumes. Skipping the step instead
        would reveal that the batch was empty, which depends on who is in the dataset."""
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def epsilon(self) -> float:
        eps = float(self.engine.get_epsilon(self.delta))
        return eps if math.isfinite(eps) else float("inf")

    def report(self) -> dict[str, Any]:
        """What the guarantee is, in numbers and words (summary.json)."""
        return {
            "epsilon_spent": self.epsilon(), "epsilon_target": self.cfg.dp.epsilon, "delta": self.delta,
            "noise_multiplier": self.noise_multiplier, "max_grad_norm": self.cfg.dp.max_grad_norm,
            "accountant": self.cfg.dp.accountant, "poisson_sampling": self.cfg.dp.poisson_sampling,
            "secure_mode": self.randomness.secure,
            "covers": "example-level (epsilon, delta)-DP of the backbone + head weights w.r.t. adding/removing "
                      "one training image, under Poisson sampling; not identity-level; the frontend's own "
                      "protection is separate",
        }

    def state_dict(self) -> dict[str, Any]:
        """Accountant history plus the *secret* noise/sampling state (private checkpoints only)."""
        return {"accountant": dict(self.engine.accountant.state_dict()), "noise_multiplier": self.noise_multiplier,
                "epsilon": self.epsilon(), "delta": self.delta, "randomness": self.randomness.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.accountant.load_state_dict(state["accountant"])
        if state.get("randomness") is not None:
            self.randomness.load_state_dict(state["randomness"])
        else:  # written before the secret state was checkpointed: continue with fresh OS randomness
            log.warning("DP-SGD state has no noise/sampling state (older checkpoint); continuing with fresh "
                        "OS randomness, so this continuation is not bitwise reproducible")
