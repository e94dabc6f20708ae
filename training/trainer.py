"""The one trainer: central training (1 process, torchrun DDP, multi-node) and federated clients.

``Trainer`` is the orchestrator and the owner of a run's progress (step, epoch, position,
counters). What it orchestrates lives in its own modules:

* ``build.py``: data, model, distillation, head, DP-SGD, optimiser, loader, schedule, AMP,
  input calibration, DDP wrappers, built once in a fixed order;
* ``step.py``: one optimiser step on one batch (loss terms, AMP, clipping, DP-SGD,
  non-finite gradients) and the loss of a batch without a step;
* ``evaluate.py``: verification during training (rank 0 scores, results logged);
* ``persist.py``: ``state_dict`` / ``load_state_dict``, checkpoints, resume and fork,
  lineage, the exported model.

Reading order: ``Trainer.__init__`` builds everything from a TrainConfig; ``train_step``
is one optimiser step on one batch; ``run_steps(n)`` pulls n batches and steps (what a
federated client calls each round); ``fit()`` is the central loop with logging,
verification and checkpoints around ``run_steps``.

Exact resume: data order is a pure function of (seed, epoch, position), flips of
(seed, step, rank); every stateful RNG (python, numpy, torch, CUDA, the frontend's
generators) is in the checkpoint. An interrupted run resumed from a checkpoint therefore
ends with bit-identical weights on CPU (tested).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from . import persist
from .batches import as_batch
from .build import build_parts, calibrate_inputs, wrap_ddp
from .components import dataset_failure_count
from .config import TrainConfig, config_to_dict, save_config
from .distributed import DistEnv, all_reduce_mean, all_reduce_sum, all_true, init_distributed
from .evaluate import TrainingEvaluator
from .metrics_log import RunLogger
from .rng import derive_seed, seed_everything
from .step import MAX_NONFINITE_STREAK, StepResult, Stepper

__all__ = ["MAX_NONFINITE_STREAK", "StepResult", "Trainer"]

log = logging.getLogger(__name__)


class _OnStepper:
    """A Trainer attribute stored on its ``Stepper``: one copy, so what the trainer holds (and
    what resume, a fork or a caller assigns) is what the next step uses."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        return self if obj is None else getattr(obj.stepper, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj.stepper, self.name, value)


class Trainer:
    """Builds model, head, optimiser, schedule and data from a TrainConfig and trains them.

    Args:
        config: the resolved TrainConfig.
        run_dir: where checkpoints, logs and the final model go (None: nothing is written,
            e.g. inside a federated client).
        resume: a checkpoint folder, a run folder (its newest complete checkpoint) or
            "auto" (= run_dir) to continue exactly where that run stopped. The config must
            match the checkpoint's (see facepriv.training.lineage.FREE_KEYS for what may differ).
        fork: continue ``resume``'s state with changed optimiser / schedule / DP-budget
            settings in a new ``run_dir`` (the LR schedule is rebuilt at the checkpoint's step).
        dataset: a map-style dataset returning ``(image, label)``; default from ``config.data``.
        recognizer / head: pre-built modules (federated clients, tests); default from config.
        teacher: distillation teacher, any ``Callable[[Tensor], Tensor]`` on RGB [0, 1]
            batches (overrides ``distill.teacher``).
        dist_env: force a process layout (default: read torchrun's environment).
    """

    recognizer = _OnStepper()
    model = _OnStepper()  # the recognizer, or its DDP wrapper
    head_module = _OnStepper()  # the head, its DDP wrapper, or None
    optimizer = _OnStepper()
    scheduler = _OnStepper()
    scaler = _OnStepper()
    amp_dtype = _OnStepper()
    distill = _OnStepper()
    dp = _OnStepper()

    def __init__(
        self,
        config: TrainConfig,
        *,
        run_dir: str | Path | None = None,
        resume: str | Path | None = None,
        dataset: Dataset | None = None,
        recognizer: nn.Module | None = None,
        head: nn.Module | None = None,
        teacher: Callable[[Tensor], Tensor] | None = None,
        dist_env: DistEnv | None = None,
        fork: bool = False,
    ) -> None:
        if config.dp.enabled:
            from .dp_sgd import adapt_config_for_dp

            config = adapt_config_for_dp(config)  # GroupNorm backbone, fp32 (see dp_sgd.py)
        self.cfg = cfg = config
        self.env = dist_env or init_distributed(cfg.device, cfg.distributed.backend, cfg.distributed.timeout_minutes)
        self.device = self.env.device
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        seed_everything(derive_seed("global", cfg.seed, self.env.rank))
        #: fresh, resume or fork, and the checkpoint continued (never pruned by this run)
        self.start = persist.open_start(cfg, self.env, self.run_dir, resume, fork)

        parts = build_parts(cfg, self.env, run_dir=self.run_dir, shared=self.start.shared,
                            resuming=self.start.checkpoint is not None, dataset=dataset, recognizer=recognizer,
                            head=head, teacher=teacher)
        self.dataset = parts.dataset
        self.num_classes = parts.num_classes
        self.sampler = parts.sampler
        self.steps_per_epoch = parts.steps_per_epoch
        self.frontend = parts.recognizer.frontend
        #: what ``init_from`` transferred (None: no warm start, e.g. a resumed run)
        self.warm_start = parts.warm_start
        self.head = parts.head
        self.loader = parts.loader
        self._loader_generator = parts.loader_generator
        #: what next_batch positions: the sharded order, or DP-SGD's secret Poisson draws
        self._batch_sampler = parts.batch_sampler
        self.schedule = parts.schedule
        # the modules, optimiser and schedule a step uses live on the stepper (see _OnStepper);
        # model / head_module become the DDP wrappers once calibration or restore is done
        self.stepper = Stepper(cfg, self.device, recognizer=parts.recognizer, model=parts.recognizer,
                               head_module=parts.head, optimizer=parts.optimizer, scheduler=parts.scheduler,
                               distill=parts.distill, dp=parts.dp, amp_dtype=parts.amp_dtype, scaler=parts.scaler)

        # ---- progress
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.bad_samples = 0  # dropped by SafeDataset (this rank)
        self.failures_before_resume = 0  # data-package substitutions counted by earlier attempts
        self.nonfinite_steps = 0
        self._iter: Iterator[Any] | None = None
        self.stopped_early = False

        if self.start.checkpoint is not None:
            persist.restore(self, self.start.checkpoint, self.start.shared)
        else:
            calibrate_inputs(cfg, self.env, self.recognizer, self.dataset)

        # ---- DDP (after calibration/restore: DDP broadcasts rank 0's parameters and buffers)
        self.model, self.head_module = wrap_ddp(cfg, self.env, self.recognizer, self.head)

        persist.begin_lineage(self)  # only now that the start is accepted: set aside other lineages' checkpoints
        self.logger = RunLogger(self.run_dir, csv_enabled=cfg.logging.csv, tensorboard=cfg.logging.tensorboard,
                                enabled=self.env.is_main)
        if self.start.checkpoint is not None:
            self.logger.truncate_after(self.step)
        self.evaluator = TrainingEvaluator(cfg.eval, cfg.data.image_size, seed=cfg.seed, env=self.env,
                                           logger=self.logger)
        self.verifier = self.evaluator.runner

    @property
    def last_eval(self) -> dict[str, dict[str, Any]]:
        """The newest verification results per set (empty before the first evaluation)."""
        return self.evaluator.last

    # ------------------------------------------------------------------ one step

    def train_step(self, batch: Any) -> StepResult:
        """One optimiser step on one batch (a ``Batch``, or an ``(images, labels)`` tuple)."""
        b = as_batch(batch)
        self.bad_samples += b.num_bad
        result = self.stepper.step(b, epoch=self.epoch, step=self.step + 1)
        self.step += 1
        self.nonfinite_steps += int(result.nonfinite)
        return result

    def batch_loss(self, batch: Any) -> tuple[Tensor, int]:
        """``(mean training loss, images)`` of one batch without a step: the recognizer in
        eval mode, no gradients; weights, optimiser, schedule and progress are untouched
        (what a federated site reports for the global model). See ``Stepper.batch_loss``."""
        return self.stepper.batch_loss(batch)

    # ------------------------------------------------------------------ batches and loops

    def next_batch(self) -> Any:
        """The next batch of this rank's shard; epochs roll over automatically."""
        for _ in range(2):
            if self._iter is None:
                # both samplers are pure functions of their position (DP-SGD's also of a secret key)
                self._batch_sampler.set_epoch(self.epoch, self.batch_in_epoch)
                self._loader_generator.manual_seed(derive_seed("loader", self.cfg.seed, self.epoch, self.env.rank))
                self._iter = iter(self.loader)
            try:
                batch = next(self._iter)
            except StopIteration:
                self._iter = None
                self.epoch += 1
                self.batch_in_epoch = 0
                continue
            self.batch_in_epoch += 1
            return batch
        raise RuntimeError("the training data loader produced no batches")

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps

    def run_steps(self, num_steps: int, *, on_step: Callable[[StepResult], None] | None = None) -> list[StepResult]:
        """Run ``num_steps`` optimiser steps (the federated client's local training)."""
        results = []
        for _ in range(num_steps):
            result = self.train_step(self.next_batch())
            results.append(result)
            if on_step is not None:
                on_step(result)
        return results

    def fit(self, max_steps: int | None = None, *, stop_after_s: float | None = None) -> dict[str, Any]:
        """Central training until the schedule ends (or ``max_steps`` more steps), then save.

        ``stop_after_s``: wall-clock budget in seconds; when it runs out the run stops at the
        next step boundary (every rank together), writes a checkpoint and can be resumed —
        for job schedulers' time limits (SLURM ``--time``) and the quickstart's budgets.
        """
        from tqdm import tqdm

        cfg = self.cfg
        target = self.total_steps if max_steps is None else min(self.total_steps, self.step + max_steps)
        if self.env.is_main and self.run_dir is not None:
            self.write_config()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (self.env.is_main and cfg.logging.progress))
        window: list[Tensor] = []
        t0, samples0, start = time.perf_counter(), 0, time.perf_counter()
        deadline = None if stop_after_s is None else start + stop_after_s
        self.stopped_early = False

        def on_step(r: StepResult) -> None:
            nonlocal t0, samples0
            window.append(r.loss.float())
            samples0 += r.samples
            bar.update(1)
            step = self.step
            if step % cfg.logging.every_steps == 0 or step == target:
                elapsed = time.perf_counter() - t0
                row = self._log_row(window, samples0, elapsed, time.perf_counter() - start, r.grad_norm)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.3g}", ips=f"{row['images_per_s']:.1f}")
                window.clear()
                t0, samples0 = time.perf_counter(), 0
            if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step != target:
                self.evaluate()
            if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0 and step != target:
                self.save_checkpoint()

        try:
            while self.step < target:
                on_step(self.train_step(self.next_batch()))
                if deadline is not None and not all_true(time.perf_counter() < deadline, self.device):
                    self.stopped_early = self.step < target
                    if self.stopped_early:
                        log.warning("time budget of %.0f s used up at step %d of %d; checkpointing (resume with --resume)",
                                    stop_after_s, self.step, self.total_steps)
                    break
        finally:
            bar.close()
        persist.check_finite_weights(self)
        self.save_checkpoint()
        # a run stopped by its time budget skips verification: the job must exit in time
        results = self.evaluate() if self.evaluator.enabled and not self.stopped_early else {}
        summary = self.summary()
        summary["stopped_early"] = self.stopped_early
        if self.env.is_main and self.run_dir is not None:
            if cfg.checkpoint.save_model and self.step >= self.total_steps:
                self.export_model(self.run_dir / "model.pt")
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        self.logger.close()
        summary["verification"] = {k: v["flat"] for k, v in results.items()}
        return summary

    # ------------------------------------------------------------------ logging / eval

    def current_lrs(self) -> dict[str, float]:
        return {g.get("name", str(i)): float(g["lr"]) for i, g in enumerate(self.optimizer.param_groups)}

    def bad_samples_total(self) -> int:
        """Samples this rank could not use so far (dropped + substituted), across resumes."""
        return self.bad_samples + self.failures_before_resume + dataset_failure_count(self.dataset)

    def epsilon(self) -> float | None:
        return self.dp.epsilon() if self.dp is not None else None

    def _log_row(self, window: list[Tensor], samples: int, elapsed: float, total_elapsed: float,
                 grad_norm: float | None) -> dict[str, Any]:
        loss = float(torch.stack(window).mean()) if window else float("nan")
        bad = self.bad_samples_total()
        loss, = all_reduce_mean([loss], self.device)
        samples_all, bad_all = all_reduce_sum([float(samples), float(bad)], self.device)
        lrs = self.current_lrs()
        row = {
            "step": self.step, "epoch": self.step / max(1, self.steps_per_epoch), "loss": loss,
            "lr": lrs.get("backbone", next(iter(lrs.values()), float("nan"))), "frontend_lr": lrs.get("frontend"),
            "images_per_s": samples_all / max(elapsed, 1e-9), "bad_samples_total": int(bad_all),
            "nonfinite_steps": self.nonfinite_steps, "epsilon": self.epsilon(), "grad_norm": grad_norm,
            "elapsed_s": total_elapsed,
        }
        self.logger.log_train(row)
        return row

    def evaluate(self) -> dict[str, dict[str, Any]]:
        """Verification on the configured sets (rank 0 computes, the others wait)."""
        return self.evaluator.run(self.recognizer, self.device, self.step)

    def summary(self) -> dict[str, Any]:
        return {
            "step": self.step, "epoch": self.epoch, "total_steps": self.total_steps,
            "world_size": self.env.world_size, "num_classes": self.num_classes, "num_samples": len(self.dataset),
            "bad_samples": self.bad_samples_total(),
            "nonfinite_steps": self.nonfinite_steps, "epsilon": self.epsilon(),
            "dp_sgd": self.dp.report() if self.dp is not None else None,
            "privacy_report": _safe_privacy_report(self.frontend),
            "warm_start": self.warm_start,
            "verification": self.evaluator.last_flat(),
        }

    def write_config(self) -> Path | None:
        """The resolved config, with the frontend as built (secrets omitted: they live in checkpoints)."""
        if self.run_dir is None:
            return None
        resolved = config_to_dict(self.cfg)
        fe_cfg = dict(getattr(self.frontend, "config", resolved["frontend"]))
        for key in getattr(self.frontend, "secret_keys", ()):
            fe_cfg.pop(key, None)
        resolved["frontend"] = fe_cfg
        from .config import config_from_dict

        return save_config(config_from_dict(resolved, check_builds=False), self.run_dir / "config.yaml")

    # ------------------------------------------------------------------ state and files (persist.py)

    def save_checkpoint(self) -> Path | None:
        """Atomically write a resumable checkpoint of the current step (all ranks call this)."""
        return persist.save_checkpoint(self)

    def state_dict(self) -> dict[str, Any]:
        """This process's private training state: everything besides the model weights that an
        exact continuation needs (head, optimiser, GradScaler, LR schedule, position, every
        RNG state, counters, and DP-SGD's accountant with its *secret* noise/sampling state).

        Checkpoint rank files are this dict; a federated site keeps it in its private site
        state. It holds secrets: never put it in configs, logs or messages to a server.
        """
        return persist.trainer_state(self)

    def load_state_dict(self, state: dict[str, Any], *, where: str = "trainer state") -> None:
        """Inverse of ``state_dict`` (the model weights are restored separately)."""
        persist.load_trainer_state(self, state, where=where)
        self._iter = None

    def export_model(self, path: str | Path) -> Path:
        """The deployable FaceRecognizer file (what ``facepriv eval`` and clients load)."""
        self.recognizer.save(path, extra=persist.model_extra(self))
        return Path(path)

    def close(self) -> None:
        self.logger.close()
        self._iter = None


def _safe_privacy_report(frontend: nn.Module) -> Any:
    fn = getattr(frontend, "privacy_report", None)
    try:
        return fn() if callable(fn) else None
    except Exception as exc:  # noqa: BLE001 - a report must never fail a finished run
        return {"error": str(exc)}
