"""One training step, and the training loss of a batch without a step.

One step, as data flows::

    uint8 batch -> device -> float [0,1] -> (h-flip) -> frontend (B or B*r views)
      -> input norm -> backbone -> embeddings -> margin head(labels expanded to the views)
      -> loss (+ distillation cosine loss, + frontend auxiliary loss) -> backward
      -> clip -> optimiser (frontend group has its own lr) -> LR schedule

Why its own module: the maths of a step (loss terms, AMP, gradient clipping, DP-SGD's
private step, what a non-finite gradient does) is what central training, federated
clients and the benchmarks all run, and it holds no progress of its own: the ``Trainer``
counts steps and epochs and checkpoints them (``persist.py``), this module only steps.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batches import Batch, apply_hflip, as_batch, flip_mask, images_to_float
from .config import TrainConfig
from .distributed import all_true

#: Consecutive steps with non-finite gradients after which training stops with an error.
MAX_NONFINITE_STREAK = 25


@dataclass
class StepResult:
    """What one ``train_step`` did. ``loss`` stays a device tensor (no host sync needed)."""

    loss: Tensor
    samples: int  # images in the batch (before PartialFace view expansion)
    skipped: bool = False  # optimiser step skipped (non-finite gradients / empty batch)
    grad_norm: float | None = None
    parts: dict[str, Tensor] = field(default_factory=dict)
    nonfinite: bool = False  # skipped because the gradients were NaN/inf (counted in checkpoints)


class Stepper:
    """Forward, loss, backward, clipping and the optimiser and schedule step for one batch.

    Args:
        cfg: the run's TrainConfig (flip, clipping, distillation weights).
        device: where batches go (the recognizer's device).
        recognizer: the FaceRecognizer; its ``frontend`` is looked up on every step, so a
            stand-in swapped into the recognizer (``eval/benchmarks/train.py``) is used.
        model / head_module: what the forward runs: the recognizer and head, or their DDP
            wrappers.
        optimizer / scheduler: stepped once per batch (DP-SGD's private optimiser included).
        distill / dp: DistillTargets and DPSGD, or None.
        amp_dtype / scaler: autocast dtype (None: fp32) and the fp16 GradScaler (or None).
    """

    def __init__(self, cfg: TrainConfig, device: torch.device, *, recognizer: nn.Module, model: nn.Module,
                 head_module: nn.Module | None, optimizer: torch.optim.Optimizer, scheduler: Any, distill: Any = None,
                 dp: Any = None, amp_dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None) -> None:
        self.cfg = cfg
        self.device = device
        self.recognizer = recognizer
        self.model = model
        self.head_module = head_module
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.distill = distill
        self.dp = dp
        self.amp_dtype = amp_dtype
        self.scaler = scaler
        self.nonfinite_streak = 0  # not checkpointed: a resumed run starts a fresh streak

    @property
    def frontend(self) -> nn.Module:
        return self.recognizer.frontend

    def autocast(self) -> contextlib.AbstractContextManager:
        """The step's mixed-precision context (a no-op in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def loss(self, images: Tensor, labels: Tensor, indices: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The training objective on float images already on the device, and its parts
        (``head``, ``distill``, ``frontend_aux``; DP-SGD reports none). Runs in whatever
        train/eval and grad mode the caller set; steps nothing."""
        if self.dp is not None:
            return self.dp.forward_loss(images, labels), {}
        parts: dict[str, Tensor] = {}
        frontend = self.frontend
        emb = self.model(images, labels)
        views = frontend.expand_labels(labels)
        if emb.shape[0] != views.shape[0]:
            raise RuntimeError(f"frontend emitted {emb.shape[0]} embeddings for {views.shape[0]} labels (expand_labels mismatch)")
        loss = emb.new_zeros((), dtype=torch.float32)
        if self.distill is not None:
            target = self.distill.targets(frontend.expand_labels(indices.to(self.device))).to(emb.device)
            parts["distill"] = 1.0 - F.cosine_similarity(emb.float(), target.float(), dim=1).mean()
            loss = loss + self.cfg.distill.cosine_weight * parts["distill"]
        if self.head_module is not None:
            parts["head"] = self.head_module(emb.float(), views).float()
            weight = self.cfg.distill.head_weight if self.distill is not None else 1.0
            loss = loss + weight * parts["head"]
        aux_fn = getattr(frontend, "auxiliary_loss", None)
        aux = aux_fn() if callable(aux_fn) else None
        if aux is not None:
            parts["frontend_aux"] = aux.float()
            loss = loss + parts["frontend_aux"]
        return loss, parts

    @torch.no_grad()
    def batch_loss(self, batch: Any) -> tuple[Tensor, int]:
        """``(mean training loss, images)`` of one batch with the recognizer in eval mode (as
        deployed: no flip, no gradients), without stepping: weights, optimiser, schedule and
        counters stay as they are. An empty batch gives ``(0, 0)``. The head keeps its mode."""
        b = as_batch(batch)
        n = int(b.labels.numel())
        if n == 0:
            return torch.zeros((), device=self.device), 0
        was = self.recognizer.training
        self.recognizer.eval()
        try:
            loss, _ = self.loss(images_to_float(b.images.to(self.device)), b.labels.to(self.device), b.indices)
        finally:
            self.recognizer.train(was)
        return loss.detach(), n

    def _clip_params(self) -> list[Tensor]:
        # Like insightface: clip the replicated model only. Partial FC's sharded centres would
        # need a cross-rank norm; their gradients are bounded by the margin loss anyway.
        return [p for p in self.recognizer.parameters() if p.grad is not None]

    def step(self, batch: Batch, *, epoch: int, step: int) -> StepResult:
        """One optimiser and schedule step on ``batch``. ``epoch`` seeds the flips; ``step`` is
        the number this step will have (for the error after too many non-finite steps)."""
        b = batch
        n = int(b.labels.numel())
        usable = n > 0 if self.dp is not None else all_true(n > 0, self.device)
        if not usable:  # every sample failed to load (or an empty Poisson batch): nothing to learn from
            if self.dp is not None:
                self.dp.noise_only_step(self.optimizer)  # DP-SGD still releases (and accounts) a noisy step
            self.scheduler.step()
            return StepResult(loss=torch.zeros((), device=self.device), samples=0, skipped=self.dp is None)

        images = images_to_float(b.images.to(self.device, non_blocking=True))
        labels = b.labels.to(self.device, non_blocking=True)
        if self.cfg.data.hflip:
            images = apply_hflip(images, flip_mask(b.indices, seed=self.cfg.seed, epoch=epoch))
        self.model.train()
        if self.head_module is not None:
            self.head_module.train()

        with self.autocast():
            loss, parts = self.loss(images, labels, b.indices)

        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()

        grad_norm: Tensor | None = None
        if self.dp is None:
            params = self._clip_params()
            max_norm = self.cfg.optim.clip_grad_norm or math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros(())
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the step itself on inf/NaN
            self.scaler.update()
            skipped = False
        elif grad_norm is not None and not bool(torch.isfinite(grad_norm)):
            skipped = True  # the same decision on every rank: gradients are all-reduced already
        else:
            self.optimizer.step()
            skipped = False
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

        if skipped:
            self.nonfinite_streak += 1
            if self.nonfinite_streak >= MAX_NONFINITE_STREAK:
                raise FloatingPointError(
                    f"{self.nonfinite_streak} consecutive steps had NaN/inf gradients (step {step}); "
                    "lower optim.lr, check the data, or enable optim.clip_grad_norm"
                )
        else:
            self.nonfinite_streak = 0
        return StepResult(loss=loss.detach(), samples=n, skipped=skipped,
                          grad_norm=None if grad_norm is None else float(grad_norm),
                          parts={k: v.detach() for k, v in parts.items()}, nonfinite=skipped)
