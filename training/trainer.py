"""The one trainer: central training (1 process, torchrun DDP, multi-node) and federated clients.

Reading order: ``Trainer.__init__`` builds everything from a TrainConfig; ``train_step``
is one optimiser step on one batch; ``run_steps(n)`` pulls n batches and steps (what a
federated client calls each round); ``fit()`` is the central loop with logging,
verification and checkpoints around ``run_steps``.

One step, as data flows::

    uint8 batch -> device -> float [0,1] -> (h-flip) -> frontend (B or B*r views)
      -> input norm -> backbone -> embeddings -> margin head(labels expanded to the views)
      -> loss (+ distillation cosine loss, + frontend auxiliary loss) -> backward
      -> clip -> optimiser (frontend group has its own lr) -> LR schedule

Exact resume: data order is a pure function of (seed, epoch, position), flips of
(seed, step, rank); every stateful RNG (python, numpy, torch, CUDA, the frontend's
generators) is in the checkpoint. An interrupted run resumed from a checkpoint therefore
ends with bit-identical weights on CPU (tested).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from . import checkpoint as ckpt
from . import lineage
from .batches import Batch, SafeDataset, apply_hflip, as_batch, collate_samples, flip_mask, images_to_float
from .components import (
    build_margin_head,
    build_optimizer,
    build_recognizer,
    dataset_failure_count,
    build_train_dataset,
    embedding_size,
    frontend_config,
    infer_num_classes,
    is_sharded_head,
    param_groups,
    resolve_amp,
)
from .config import TrainConfig, config_to_dict, save_config
from .distributed import DistEnv, all_reduce_mean, all_reduce_sum, all_true, barrier, broadcast_object, init_distributed
from .metrics_log import RunLogger
from .rng import capture_rng_state, derive_seed, module_generators, restore_rng_state, seed_everything
from .sampler import ShardedBatchSampler
from .schedule import build_scheduler, position_scheduler
from .verification import VerificationRunner

log = logging.getLogger(__name__)

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

        resume_dir = ckpt.resolve_resume(resume, self.run_dir) if resume is not None else None
        if fork and (resume_dir is None or self.run_dir is None or lineage.same_folder(resume_dir, self.run_dir)):
            raise lineage.ResumeError("a fork continues a checkpoint (resume=...) in a new run folder (run_dir, not "
                                      "the checkpoint's own run folder)")
        self._fork = fork
        self._start_checkpoint = resume_dir  # never pruned by this run
        shared = self._load_shared(resume_dir) if resume_dir is not None else None
        self._settings_changed = lineage.check_resume_settings(
            resume_dir / "shared.pt", shared["config"], config_to_dict(cfg), fork=fork) if shared is not None else {}

        # ---- data
        failure_log = self.run_dir / f"data_failures.rank{self.env.rank}.jsonl" if self.run_dir else None
        raw = dataset if dataset is not None else build_train_dataset(cfg.data, failure_log=failure_log)
        self.dataset = SafeDataset(raw, image_size=cfg.data.image_size, max_samples=cfg.data.max_samples)
        self.num_classes = int(shared["num_classes"]) if shared else infer_num_classes(raw, cfg.data.num_classes)
        self.sampler = ShardedBatchSampler(len(self.dataset), cfg.data.batch_size, world_size=self.env.world_size,
                                           rank=self.env.rank, seed=cfg.seed)
        self.steps_per_epoch = self.sampler.batches_per_epoch

        # ---- model: one frontend config on every rank (PartialFace draws its secret at construction)
        built_here = recognizer is None
        if recognizer is None:
            recognizer = self._build_recognizer(shared)
        #: what ``init_from`` transferred (None: no warm start, e.g. a resumed run)
        self.warm_start: dict[str, Any] | None = None
        if cfg.init_from and built_here and resume_dir is None:
            from .warm_start import warm_start_backbone

            self.warm_start = warm_start_backbone(recognizer, cfg.init_from)
        self.recognizer = recognizer.to(self.device)
        self.frontend = recognizer.frontend
        if self.env.distributed:  # independent frontend randomness per rank (noise, subset draws)
            for name, g in module_generators(self.frontend, "frontend").items():
                g.manual_seed(derive_seed("frontend", name, cfg.seed, self.env.rank))

        # ---- distillation (teacher embeddings of the training images, computed once)
        self.distill = None
        if cfg.distill.enabled:
            from .distill import DistillTargets

            self.distill = DistillTargets.prepare(cfg, self.dataset, teacher=teacher, run_dir=self.run_dir,
                                                  env=self.env, device=self.device)
            self.distill.check_embedding_size(embedding_size(self.recognizer))
        use_head = not (self.distill is not None and cfg.distill.head_weight <= 0)

        # ---- head, DP-SGD, optimiser, schedule, AMP
        self.dp = None
        if cfg.dp.enabled:
            from .dp_sgd import DPSGD

            self.dp = DPSGD(cfg, self.recognizer, self.num_classes, self.env, num_samples=len(self.dataset))
            head = self.dp.head
        elif use_head and head is None:
            head = build_margin_head(cfg, embedding_size(self.recognizer), self.num_classes)
        self.head = head.to(self.device) if head is not None else None
        self.optimizer = build_optimizer(cfg.optim, param_groups(cfg.optim, self.recognizer, self.head))
        self.loader = self._build_loader()
        if self.dp is not None:
            self.optimizer, self.loader = self.dp.make_private(self.optimizer, self.loader, self.steps_per_epoch)
            self.steps_per_epoch = len(self.loader)
        #: what next_batch positions: the sharded order, or DP-SGD's secret Poisson draws
        self._batch_sampler = self.loader.batch_sampler
        self.scheduler, self.schedule = build_scheduler(self.optimizer, cfg.schedule, self.steps_per_epoch)
        self.amp_dtype = None if self.dp is not None else resolve_amp(cfg.optim.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

        # ---- progress
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.bad_samples = 0  # dropped by SafeDataset (this rank)
        self._failures_before_resume = 0  # data-package substitutions counted by earlier attempts
        self.nonfinite_steps = 0
        self._nonfinite_streak = 0
        self._iter: Iterator[Any] | None = None
        self.last_eval: dict[str, dict[str, Any]] = {}
        self.stopped_early = False

        if resume_dir is not None:
            self._restore(resume_dir, shared)
        else:
            self._calibrate_inputs()

        # ---- DDP (after calibration/restore: DDP broadcasts rank 0's parameters and buffers)
        self.model, self.head_module = self._wrap_ddp()

        self._begin_lineage()  # only now that the start is accepted: set aside other lineages' checkpoints
        self.logger = RunLogger(self.run_dir, csv_enabled=cfg.logging.csv, tensorboard=cfg.logging.tensorboard,
                                enabled=self.env.is_main)
        if resume_dir is not None:
            self.logger.truncate_after(self.step)
        self.verifier = VerificationRunner(cfg.eval, cfg.data.image_size, seed=cfg.seed)

    # ------------------------------------------------------------------ building blocks

    def _wrap_ddp(self) -> tuple[nn.Module, nn.Module | None]:
        """DDP for the replicated model and a full-softmax head; Partial FC stays unwrapped."""
        if not self.env.distributed:
            return self.recognizer, self.head
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_kw: dict[str, Any] = {"find_unused_parameters": self.cfg.distributed.find_unused_parameters}
        # torch >= 2.13 renamed broadcast_buffers (buffer sync before each forward)
        sync_key = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters \
            else "broadcast_buffers"
        ddp_kw[sync_key] = self.cfg.distributed.broadcast_buffers
        if self.device.type == "cuda":
            ddp_kw["device_ids"] = [self.device.index]
        model = DDP(self.recognizer, **ddp_kw)
        head = self.head
        if head is not None and not is_sharded_head(head) and any(p.requires_grad for p in head.parameters()):
            head = DDP(head, **ddp_kw)
        return model, head

    def _rng_roots(self) -> dict[str, nn.Module | None]:
        """Modules whose generator attributes are checkpointed (frontend draws, head sampling)."""
        return {"frontend": self.frontend, "head": self.head}

    def _build_recognizer(self, shared: dict[str, Any] | None) -> nn.Module:
        from facepriv.frontends import build_frontend

        if shared is not None:
            frontend_cfg = shared["frontend_config"]
        else:
            frontend_cfg = build_frontend(frontend_config(self.cfg)).config if self.env.is_main else None
            frontend_cfg = broadcast_object(frontend_cfg)
        return build_recognizer(self.cfg, build_frontend(frontend_cfg))

    def _build_loader(self) -> DataLoader:
        cfg = self.cfg.data
        self._loader_generator = torch.Generator()
        workers = cfg.num_workers
        return DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            collate_fn=collate_samples,
            pin_memory=cfg.pin_memory and self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            generator=self._loader_generator,
        )

    @torch.no_grad()
    def _calibration_images(self) -> Iterator[Batch]:
        """A few batches in a fixed order of their own (the training order is not disturbed)."""
        n = max(1, self.cfg.input_norm.calibration_batches)
        sampler = ShardedBatchSampler(len(self.dataset), self.cfg.data.batch_size, world_size=self.env.world_size,
                                      rank=self.env.rank, seed=derive_seed("calibration", self.cfg.seed))
        g = torch.Generator()  # keeps DataLoader start-up off the global RNG
        g.manual_seed(derive_seed("calibration-loader", self.cfg.seed, self.env.rank))
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.cfg.data.num_workers,
                            collate_fn=collate_samples, generator=g)
        for i, batch in enumerate(loader):
            if i >= n:
                break
            if batch.labels.numel():
                yield Batch(images_to_float(batch.images.to(self.device)), batch.labels.to(self.device),
                            batch.indices, batch.num_bad)

    @torch.no_grad()
    def _calibrate_inputs(self) -> None:
        """Fresh start only: data-dependent frontend bounds, then the input standardisation."""
        fe = self.frontend
        if callable(getattr(fe, "calibrate", None)) and getattr(fe, "clip", None) == "calibrated" \
                and not bool(getattr(fe, "calibrated", True)):
            if self.env.is_main:
                fe.calibrate(b.images for b in self._calibration_images())
            self._broadcast_buffers(fe)
            log.info("calibrated the frontend's clipping bounds from %d batches", self.cfg.input_norm.calibration_batches)
        norm = getattr(self.recognizer, "input_norm", None)
        if norm is not None and callable(getattr(norm, "calibrate", None)) and not bool(getattr(norm, "calibrated", True)):
            was = fe.training
            fe.train()
            outputs = (fe(b.images, b.labels).float() for b in self._calibration_images())
            norm.calibrate(outputs, distributed=self.env.distributed)
            fe.train(was)
            log.info("calibrated input standardisation from %d batches of %s output", self.cfg.input_norm.calibration_batches,
                     getattr(fe, "name", "frontend"))

    def _broadcast_buffers(self, module: nn.Module) -> None:
        if not self.env.distributed:
            return
        import torch.distributed as dist

        for buf in module.buffers():
            dist.broadcast(buf.data, src=0)

    # ------------------------------------------------------------------ one step

    def _forward_loss(self, images: Tensor, labels: Tensor, indices: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if self.dp is not None:
            return self.dp.forward_loss(images, labels), {}
        parts: dict[str, Tensor] = {}
        emb = self.model(images, labels)
        views = self.frontend.expand_labels(labels)
        if emb.shape[0] != views.shape[0]:
            raise RuntimeError(f"frontend emitted {emb.shape[0]} embeddings for {views.shape[0]} labels (expand_labels mismatch)")
        loss = emb.new_zeros((), dtype=torch.float32)
        if self.distill is not None:
            target = self.distill.targets(self.frontend.expand_labels(indices.to(self.device))).to(emb.device)
            parts["distill"] = 1.0 - F.cosine_similarity(emb.float(), target.float(), dim=1).mean()
            loss = loss + self.cfg.distill.cosine_weight * parts["distill"]
        if self.head_module is not None:
            parts["head"] = self.head_module(emb.float(), views).float()
            weight = self.cfg.distill.head_weight if self.distill is not None else 1.0
            loss = loss + weight * parts["head"]
        aux_fn = getattr(self.frontend, "auxiliary_loss", None)
        aux = aux_fn() if callable(aux_fn) else None
        if aux is not None:
            parts["frontend_aux"] = aux.float()
            loss = loss + parts["frontend_aux"]
        return loss, parts

    def _clip_params(self) -> list[Tensor]:
        # Like insightface: clip the replicated model only. Partial FC's sharded centres would
        # need a cross-rank norm; their gradients are bounded by the margin loss anyway.
        return [p for p in self.recognizer.parameters() if p.grad is not None]

    def train_step(self, batch: Any) -> StepResult:
        """One optimiser step on one batch (a ``Batch``, or an ``(images, labels)`` tuple)."""
        b = as_batch(batch)
        self.bad_samples += b.num_bad
        n = int(b.labels.numel())
        usable = n > 0 if self.dp is not None else all_true(n > 0, self.device)
        if not usable:  # every sample failed to load (or an empty Poisson batch): nothing to learn from
            if self.dp is not None:
                self.dp.noise_only_step(self.optimizer)  # DP-SGD still releases (and accounts) a noisy step
            self.scheduler.step()
            self.step += 1
            return StepResult(loss=torch.zeros((), device=self.device), samples=0, skipped=self.dp is None)

        images = images_to_float(b.images.to(self.device, non_blocking=True))
        labels = b.labels.to(self.device, non_blocking=True)
        if self.cfg.data.hflip:
            images = apply_hflip(images, flip_mask(b.indices, seed=self.cfg.seed, epoch=self.epoch))
        self.model.train()
        if self.head_module is not None:
            self.head_module.train()

        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            loss, parts = self._forward_loss(images, labels, b.indices)

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
        self.step += 1

        if skipped:
            self.nonfinite_steps += 1
            self._nonfinite_streak += 1
            if self._nonfinite_streak >= MAX_NONFINITE_STREAK:
                raise FloatingPointError(
                    f"{self._nonfinite_streak} consecutive steps had NaN/inf gradients (step {self.step}); "
                    "lower optim.lr, check the data, or enable optim.clip_grad_norm"
                )
        else:
            self._nonfinite_streak = 0
        return StepResult(loss=loss.detach(), samples=n, skipped=skipped,
                          grad_norm=None if grad_norm is None else float(grad_norm),
                          parts={k: v.detach() for k, v in parts.items()})

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
        self._check_finite_weights()
        self.save_checkpoint()
        # a run stopped by its time budget skips verification: the job must exit in time
        results = self.evaluate() if self.verifier.enabled and not self.stopped_early else {}
        summary = self.summary()
        summary["stopped_early"] = self.stopped_early
        if self.env.is_main and self.run_dir is not None:
            if cfg.checkpoint.save_model and self.step >= self.total_steps:
                self.export_model(self.run_dir / "model.pt")
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        self.logger.close()
        summary["verification"] = {k: v["flat"] for k, v in results.items()}
        return summary

    def _check_finite_weights(self) -> None:
        """Refuse to checkpoint or export a model whose weights went NaN/inf (e.g. a huge lr):
        the run fails loudly instead of exiting 0 with a useless model; the last good
        checkpoint stays the newest."""
        bad = [name for name, p in self.recognizer.named_parameters() if not bool(torch.isfinite(p).all())]
        if self.head is not None:
            bad += [f"head.{name}" for name, p in self.head.named_parameters() if not bool(torch.isfinite(p).all())]
        if not all_true(not bad, self.device):  # one decision on every rank (Partial FC shards differ)
            where = f"{len(bad)} tensors, e.g. {bad[0]}" if bad else "on another rank"
            raise FloatingPointError(
                f"the model's weights are NaN/inf at step {self.step} ({where}); "
                "not writing a checkpoint or model.pt. Lower optim.lr or enable optim.clip_grad_norm"
            )

    # ------------------------------------------------------------------ logging / eval

    def current_lrs(self) -> dict[str, float]:
        return {g.get("name", str(i)): float(g["lr"]) for i, g in enumerate(self.optimizer.param_groups)}

    def bad_samples_total(self) -> int:
        """Samples this rank could not use so far (dropped + substituted), across resumes."""
        return self.bad_samples + self._failures_before_resume + dataset_failure_count(self.dataset)

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
        results: dict[str, dict[str, Any]] = {}
        if self.env.is_main and self.verifier.enabled:
            results = self.verifier.evaluate(self.recognizer, self.device)
            for name, res in results.items():
                self.logger.log_eval(self.step, name, res["flat"])
                log.info("step %d verify %s: %s", self.step, name,
                         ", ".join(f"{k}={v:.4f}" for k, v in res["flat"].items() if isinstance(v, float)))
            self.last_eval = results
        barrier()
        return results

    def summary(self) -> dict[str, Any]:
        return {
            "step": self.step, "epoch": self.epoch, "total_steps": self.total_steps,
            "world_size": self.env.world_size, "num_classes": self.num_classes, "num_samples": len(self.dataset),
            "bad_samples": self.bad_samples_total(),
            "nonfinite_steps": self.nonfinite_steps, "epsilon": self.epsilon(),
            "dp_sgd": self.dp.report() if self.dp is not None else None,
            "privacy_report": _safe_privacy_report(self.frontend),
            "warm_start": self.warm_start,
            "verification": {k: v["flat"] for k, v in self.last_eval.items()},
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

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path | None:
        """Atomically write a resumable checkpoint of the current step (all ranks call this)."""
        if self.run_dir is None:
            return None
        staging = ckpt.begin_checkpoint(self.run_dir, self.step)
        barrier()
        rank_state = {"format": ckpt.FORMAT, "version": ckpt.VERSION, "rank": self.env.rank, **self.state_dict()}
        ckpt.atomic_torch_save(rank_state, ckpt.rank_file(staging, self.env.rank))
        if self.env.is_main:
            # the weights go in FaceRecognizer format: every checkpoint is directly usable by
            # `facepriv eval` / attacks, and there is one copy of them on disk
            self.recognizer.save(staging / "model.pt", extra=self._model_extra())
            shared = {
                "format": ckpt.FORMAT, "version": ckpt.VERSION,
                "frontend_config": dict(self.frontend.config),
                "backbone_config": dict(getattr(self.recognizer.backbone, "config", {}) or {}),
                "scheduler": self.scheduler.state_dict(),
                "progress": {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch},
                "world_size": self.env.world_size, "num_classes": self.num_classes,
                "num_samples": len(self.dataset), "config": config_to_dict(self.cfg),
                "epsilon": self.epsilon(),
                "lineage": {"started_from": str(self._start_checkpoint) if self._start_checkpoint else None,
                            "fork": self._fork},
            }
            ckpt.atomic_torch_save(shared, staging / "shared.pt")
        barrier()
        final = None
        if self.env.is_main:
            final = ckpt.commit_checkpoint(staging, self.cfg.checkpoint.keep_last, protect=(self._start_checkpoint,))
            log.info("checkpoint written: %s", final)
        barrier()
        return final if final is not None else ckpt.checkpoint_dir(self.run_dir, self.step)

    def state_dict(self) -> dict[str, Any]:
        """This process's private training state: everything besides the model weights that an
        exact continuation needs (head, optimiser, GradScaler, LR schedule, position, every
        RNG state, counters, and DP-SGD's accountant with its *secret* noise/sampling state).

        Checkpoint rank files are this dict; a federated site keeps it in its private site
        state. It holds secrets: never put it in configs, logs or messages to a server.
        """
        return {
            "head": self.head.state_dict() if self.head is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "scheduler": self.scheduler.state_dict(),
            "progress": {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch},
            "rng": capture_rng_state(self._rng_roots()),
            "sampler": self.sampler.state_dict(),
            "bad_samples": self.bad_samples,
            "substituted_samples": self._failures_before_resume + dataset_failure_count(self.dataset),
            "nonfinite_steps": self.nonfinite_steps,
            "dp": self.dp.state_dict() if self.dp is not None else None,
            "distill": self.distill.identity() if self.distill is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any], *, where: str = "trainer state") -> None:
        """Inverse of ``state_dict`` (the model weights are restored separately)."""
        if self.head is not None:
            if state.get("head") is None:
                raise RuntimeError(f"{where}: has no head state")
            self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        progress = state["progress"]
        self.step, self.epoch, self.batch_in_epoch = int(progress["step"]), int(progress["epoch"]), int(progress["batch_in_epoch"])
        self._iter = None
        sampler_state = state.get("sampler")
        if sampler_state is not None and int(sampler_state["seed"]) != self.cfg.seed:
            raise RuntimeError(f"{where}: written with seed {sampler_state['seed']}, config says {self.cfg.seed}")
        self.bad_samples = int(state.get("bad_samples", 0))
        self._failures_before_resume = int(state.get("substituted_samples", 0))
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        restore_rng_state(state["rng"], self._rng_roots())
        if self.dp is not None:
            if state.get("dp") is None:
                raise RuntimeError(f"{where}: has no DP-SGD state (accountant), but dp.enabled is true")
            self.dp.load_state_dict(state["dp"])

    def _begin_lineage(self) -> None:
        """Rank 0: move this run folder's checkpoints that are not on the new line of descent
        to ``abandoned/`` and record the start in ``lineage.json`` (see training/lineage.py)."""
        if self.run_dir is None:
            return
        if self.env.is_main:
            start = self._start_checkpoint
            kind = "fork" if self._fork else ("resume" if start is not None else "fresh")
            keep = start if start is not None and lineage.same_folder(start, self.run_dir) else None
            self.run_dir.mkdir(parents=True, exist_ok=True)
            moved = lineage.abandon(self.run_dir, keep, reason=f"before-{kind}-at-step-{self.step}")
            if moved is not None:
                log.warning("%s start at step %d: checkpoints of %s that this run does not continue were moved to %s "
                            "(a plain --resume continues this run from now on)", kind, self.step, self.run_dir, moved)
            lineage.record_start(self.run_dir, kind, start, self.step, moved, self._settings_changed)
        barrier()

    def _load_shared(self, path: Path) -> dict[str, Any]:
        shared = ckpt.safe_load(path / "shared.pt")
        ckpt.check_format(shared, path / "shared.pt")
        if int(shared["world_size"]) != self.env.world_size:
            raise RuntimeError(
                f"{path}: written by {shared['world_size']} processes, resuming with {self.env.world_size}; "
                "exact resume needs the same world size (data shards and Partial FC shards depend on it)"
            )
        return shared

    def _restore(self, path: Path, shared: dict[str, Any]) -> None:
        rank_path = ckpt.rank_file(path, self.env.rank)
        state = ckpt.safe_load(rank_path, map_location="cpu")
        ckpt.check_format(state, rank_path)
        if int(shared["num_samples"]) != len(self.dataset):
            raise RuntimeError(f"{path}: checkpoint was trained on {shared['num_samples']} samples, "
                               f"the dataset now has {len(self.dataset)}; resume needs the same data")
        from facepriv.models import read_checkpoint

        self.recognizer.load_state_dict(read_checkpoint(path / "model.pt")["state_dict"])
        # rank files of version-1 checkpoints keep the schedule and position in shared.pt only
        state = {"scheduler": shared["scheduler"], "progress": shared["progress"], **state}
        fresh_groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.load_state_dict(state, where=str(rank_path))
        if self._fork:
            self._apply_forked_settings(fresh_groups)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_in_epoch)

    def _apply_forked_settings(self, fresh_groups: list[dict[str, Any]]) -> None:
        """A fork keeps the optimiser's state (momentum) but takes lr, weight decay, ... and the
        LR schedule from the new config, continued at the checkpoint's step."""
        if len(fresh_groups) != len(self.optimizer.param_groups):
            raise lineage.ResumeError(f"fork: the checkpoint's optimiser has {len(self.optimizer.param_groups)} "
                                      f"parameter groups, the new config {len(fresh_groups)}")
        for group, fresh in zip(self.optimizer.param_groups, fresh_groups):
            group.update(fresh)
        self.scheduler, self.schedule = build_scheduler(self.optimizer, self.cfg.schedule, self.steps_per_epoch)
        position_scheduler(self.scheduler, self.step)
        if self.dp is not None:
            log.warning("fork of a DP-SGD run: the noise multiplier is set for dp.epsilon over the whole new schedule, "
                        "while the accountant keeps the source's history; the epsilon reported is the composition "
                        "of both and may exceed dp.epsilon")
        log.info("forked from %s at step %d with new settings: %s", self._start_checkpoint, self.step,
                 lineage.describe_diff(self._settings_changed) or "none")

    def export_model(self, path: str | Path) -> Path:
        """The deployable FaceRecognizer file (what ``facepriv eval`` and clients load)."""
        self.recognizer.save(path, extra=self._model_extra())
        return Path(path)

    def _model_extra(self) -> dict[str, Any]:
        return {"step": self.step, "num_classes": self.num_classes, "epsilon": self.epsilon(),
                "config_name": self.cfg.name, "verification": {k: v["flat"] for k, v in self.last_eval.items()}}

    def close(self) -> None:
        self.logger.close()
        self._iter = None


def _safe_privacy_report(frontend: nn.Module) -> Any:
    fn = getattr(frontend, "privacy_report", None)
    try:
        return fn() if callable(fn) else None
    except Exception as exc:  # noqa: BLE001 - a report must never fail a finished run
        return {"error": str(exc)}
