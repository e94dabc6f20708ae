"""Building a training run: data, model, distillation targets, head, DP-SGD, optimiser,
loader, LR schedule, AMP, input calibration and the DDP wrappers.

Why its own module: construction order is part of exact resume. Every builder that draws
randomness (the frontend's secret, head initialisation, DP-SGD's sampler) runs in one
fixed order here, after ``seed_everything`` and before any checkpoint state is restored,
so a resumed run and an uninterrupted one build identical objects before the checkpoint
overwrites their state. ``Trainer`` calls ``build_parts`` once, restores or calibrates,
then ``wrap_ddp``; what a step does with the parts lives in ``step.py``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .batches import Batch, SafeDataset, collate_samples, images_to_float
from .components import (
    build_margin_head,
    build_optimizer,
    build_recognizer,
    build_train_dataset,
    embedding_size,
    frontend_config,
    infer_num_classes,
    is_sharded_head,
    param_groups,
    resolve_amp,
)
from .config import DataConfig, TrainConfig
from .distributed import DistEnv, broadcast_object
from .rng import derive_seed, module_generators
from .sampler import ShardedBatchSampler
from .schedule import build_scheduler

log = logging.getLogger(__name__)


@dataclass
class TrainingParts:
    """Everything ``build_parts`` constructs, before any checkpoint state is loaded into it."""

    dataset: SafeDataset
    num_classes: int
    sampler: ShardedBatchSampler
    steps_per_epoch: int
    recognizer: nn.Module
    warm_start: dict[str, Any] | None  # what ``init_from`` transferred (None: no warm start)
    distill: Any  # DistillTargets | None
    dp: Any  # DPSGD | None
    head: nn.Module | None
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    loader_generator: torch.Generator
    batch_sampler: Any  # the sharded order, or DP-SGD's secret Poisson draws
    scheduler: Any
    schedule: Any
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None


def build_parts(
    cfg: TrainConfig,
    env: DistEnv,
    *,
    run_dir: Path | None,
    shared: dict[str, Any] | None,
    resuming: bool,
    dataset: Dataset | None = None,
    recognizer: nn.Module | None = None,
    head: nn.Module | None = None,
    teacher: Callable[[Tensor], Tensor] | None = None,
) -> TrainingParts:
    """Build a run's parts from its config in the one fixed order (see the module docstring).

    ``shared``: the checkpoint's ``shared.pt`` when resuming (its frontend config and class
    count win over the config's); ``resuming`` skips ``init_from`` (the checkpoint's weights
    replace a warm start anyway). ``dataset`` / ``recognizer`` / ``head``: pre-built pieces
    (federated clients, tests).
    """
    device = env.device
    # ---- data
    failure_log = run_dir / f"data_failures.rank{env.rank}.jsonl" if run_dir else None
    raw = dataset if dataset is not None else build_train_dataset(cfg.data, failure_log=failure_log)
    safe = SafeDataset(raw, image_size=cfg.data.image_size, max_samples=cfg.data.max_samples)
    num_classes = int(shared["num_classes"]) if shared else infer_num_classes(raw, cfg.data.num_classes)
    sampler = ShardedBatchSampler(len(safe), cfg.data.batch_size, world_size=env.world_size, rank=env.rank, seed=cfg.seed)
    steps_per_epoch = sampler.batches_per_epoch

    # ---- model: one frontend config on every rank (PartialFace draws its secret at construction)
    built_here = recognizer is None
    if recognizer is None:
        recognizer = build_run_recognizer(cfg, env, shared)
    warm_start = None
    if cfg.init_from and built_here and not resuming:
        from .warm_start import warm_start_backbone

        warm_start = warm_start_backbone(recognizer, cfg.init_from)
    recognizer = recognizer.to(device)
    if env.distributed:  # independent frontend randomness per rank (noise, subset draws)
        for name, g in module_generators(recognizer.frontend, "frontend").items():
            g.manual_seed(derive_seed("frontend", name, cfg.seed, env.rank))

    # ---- distillation (teacher embeddings of the training images, computed once)
    distill = None
    if cfg.distill.enabled:
        from .distill import DistillTargets

        distill = DistillTargets.prepare(cfg, safe, teacher=teacher, run_dir=run_dir, env=env, device=device)
        distill.check_embedding_size(embedding_size(recognizer))
    use_head = not (distill is not None and cfg.distill.head_weight <= 0)

    # ---- head, DP-SGD, optimiser, schedule, AMP
    dp = None
    if cfg.dp.enabled:
        from .dp_sgd import DPSGD

        dp = DPSGD(cfg, recognizer, num_classes, env, num_samples=len(safe))
        head = dp.head
    elif use_head and head is None:
        head = build_margin_head(cfg, embedding_size(recognizer), num_classes)
    head = head.to(device) if head is not None else None
    optimizer = build_optimizer(cfg.optim, param_groups(cfg.optim, recognizer, head))
    loader, loader_generator = build_loader(cfg.data, safe, sampler, device)
    if dp is not None:
        optimizer, loader = dp.make_private(optimizer, loader, steps_per_epoch)
        steps_per_epoch = len(loader)
    scheduler, schedule = build_scheduler(optimizer, cfg.schedule, steps_per_epoch)
    amp_dtype = None if dp is not None else resolve_amp(cfg.optim.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    return TrainingParts(
        dataset=safe, num_classes=num_classes, sampler=sampler, steps_per_epoch=steps_per_epoch,
        recognizer=recognizer, warm_start=warm_start, distill=distill, dp=dp, head=head, optimizer=optimizer,
        loader=loader, loader_generator=loader_generator, batch_sampler=loader.batch_sampler,
        scheduler=scheduler, schedule=schedule, amp_dtype=amp_dtype, scaler=scaler,
    )


def build_run_recognizer(cfg: TrainConfig, env: DistEnv, shared: dict[str, Any] | None) -> nn.Module:
    """The recognizer with the checkpoint's frontend (resume) or one built on rank 0 and
    broadcast, so every rank holds the same secret (PartialFace's table)."""
    from facepriv.frontends import build_frontend

    if shared is not None:
        frontend_cfg = shared["frontend_config"]
    else:
        frontend_cfg = build_frontend(frontend_config(cfg)).config if env.is_main else None
        frontend_cfg = broadcast_object(frontend_cfg)
    return build_recognizer(cfg, build_frontend(frontend_cfg))


def build_loader(cfg: DataConfig, dataset: Dataset, sampler: ShardedBatchSampler,
                 device: torch.device) -> tuple[DataLoader, torch.Generator]:
    """The training DataLoader and the generator it starts workers from (reseeded per epoch
    by the trainer, so loading never touches the global RNG)."""
    generator = torch.Generator()
    workers = cfg.num_workers
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate_samples,
        pin_memory=cfg.pin_memory and device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        generator=generator,
    )
    return loader, generator


def wrap_ddp(cfg: TrainConfig, env: DistEnv, recognizer: nn.Module,
             head: nn.Module | None) -> tuple[nn.Module, nn.Module | None]:
    """DDP for the replicated model and a full-softmax head; Partial FC stays unwrapped.

    Called after calibration / restore: DDP broadcasts rank 0's parameters and buffers."""
    if not env.distributed:
        return recognizer, head
    from torch.nn.parallel import DistributedDataParallel as DDP

    ddp_kw: dict[str, Any] = {"find_unused_parameters": cfg.distributed.find_unused_parameters}
    # torch >= 2.13 renamed broadcast_buffers (buffer sync before each forward)
    sync_key = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters \
        else "broadcast_buffers"
    ddp_kw[sync_key] = cfg.distributed.broadcast_buffers
    if env.device.type == "cuda":
        ddp_kw["device_ids"] = [env.device.index]
    model = DDP(recognizer, **ddp_kw)
    if head is not None and not is_sharded_head(head) and any(p.requires_grad for p in head.parameters()):
        head = DDP(head, **ddp_kw)
    return model, head


# --------------------------------------------------------------------------- input calibration


@torch.no_grad()
def calibration_batches(cfg: TrainConfig, env: DistEnv, dataset: Dataset) -> Iterator[Batch]:
    """A few batches in a fixed order of their own (the training order is not disturbed)."""
    n = max(1, cfg.input_norm.calibration_batches)
    sampler = ShardedBatchSampler(len(dataset), cfg.data.batch_size, world_size=env.world_size,  # type: ignore[arg-type]
                                  rank=env.rank, seed=derive_seed("calibration", cfg.seed))
    g = torch.Generator()  # keeps DataLoader start-up off the global RNG
    g.manual_seed(derive_seed("calibration-loader", cfg.seed, env.rank))
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        collate_fn=collate_samples, generator=g)
    for i, batch in enumerate(loader):
        if i >= n:
            break
        if batch.labels.numel():
            yield Batch(images_to_float(batch.images.to(env.device)), batch.labels.to(env.device),
                        batch.indices, batch.num_bad)


@torch.no_grad()
def calibrate_inputs(cfg: TrainConfig, env: DistEnv, recognizer: nn.Module, dataset: Dataset) -> None:
    """Fresh start only: data-dependent frontend bounds, then the input standardisation."""
    fe = recognizer.frontend
    if callable(getattr(fe, "calibrate", None)) and getattr(fe, "clip", None) == "calibrated" \
            and not bool(getattr(fe, "calibrated", True)):
        if env.is_main:
            fe.calibrate(b.images for b in calibration_batches(cfg, env, dataset))
        broadcast_buffers(env, fe)
        log.info("calibrated the frontend's clipping bounds from %d batches", cfg.input_norm.calibration_batches)
    norm = getattr(recognizer, "input_norm", None)
    if norm is not None and callable(getattr(norm, "calibrate", None)) and not bool(getattr(norm, "calibrated", True)):
        was = fe.training
        fe.train()  # the statistics of what training feeds the backbone (PartialFace views, DCTDP noise)
        recognizer.calibrate_input_norm(((b.images, b.labels) for b in calibration_batches(cfg, env, dataset)),
                                        distributed=env.distributed)
        fe.train(was)
        log.info("calibrated input standardisation from %d batches of %s output", cfg.input_norm.calibration_batches,
                 getattr(fe, "name", "frontend"))


def broadcast_buffers(env: DistEnv, module: nn.Module) -> None:
    """Rank 0's buffers to every rank (calibration ran on rank 0 only)."""
    if not env.distributed:
        return
    import torch.distributed as dist

    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)
