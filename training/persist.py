"""A Trainer's state in and out of files: ``state_dict`` / ``load_state_dict``, checkpoints,
resume and fork, the run folder's lineage, the exported model.

Why its own module: what an exact continuation needs, and the on-disk format that holds it
(``checkpoint.py``: layout, atomic writes, safe loading), must be decided in one place, so
that a checkpoint written before the trainer was split still loads and a resumed run is
bit-identical to an uninterrupted one. The functions read and write the ``Trainer``'s
attributes (progress, counters, the built parts) and nothing else: the trainer stays the
one owner of its state, this module is how that state is persisted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import checkpoint as ckpt
from . import lineage
from .components import dataset_failure_count
from .config import TrainConfig, config_to_dict
from .distributed import DistEnv, all_true, barrier
from .rng import capture_rng_state, restore_rng_state
from .schedule import build_scheduler, position_scheduler

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger(__name__)


@dataclass
class RunStart:
    """Where a run starts: fresh, or from a checkpoint (resume, or fork into a new folder)."""

    checkpoint: Path | None = None  # the checkpoint continued; never pruned by this run
    shared: dict[str, Any] | None = None  # its shared.pt
    fork: bool = False
    settings_changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "fork" if self.fork else ("resume" if self.checkpoint is not None else "fresh")


def open_start(cfg: TrainConfig, env: DistEnv, run_dir: Path | None, resume: str | Path | None,
               fork: bool) -> RunStart:
    """Resolve ``resume`` (a checkpoint, a run folder or "auto"), refuse a fork without a new
    folder, read the checkpoint's shared state and check which settings changed."""
    resume_dir = ckpt.resolve_resume(resume, run_dir) if resume is not None else None
    if fork and (resume_dir is None or run_dir is None or lineage.same_folder(resume_dir, run_dir)):
        raise lineage.ResumeError("a fork continues a checkpoint (resume=...) in a new run folder (run_dir, not "
                                  "the checkpoint's own run folder)")
    if resume_dir is None:
        return RunStart(fork=fork)
    shared = load_shared(resume_dir, env)
    changed = lineage.check_resume_settings(resume_dir / "shared.pt", shared["config"], config_to_dict(cfg), fork=fork)
    return RunStart(checkpoint=resume_dir, shared=shared, fork=fork, settings_changed=changed)


def load_shared(path: Path, env: DistEnv) -> dict[str, Any]:
    """A checkpoint's ``shared.pt``, refused when written by another number of processes."""
    shared = ckpt.safe_load(path / "shared.pt")
    ckpt.check_format(shared, path / "shared.pt")
    if int(shared["world_size"]) != env.world_size:
        raise RuntimeError(
            f"{path}: written by {shared['world_size']} processes, resuming with {env.world_size}; "
            "exact resume needs the same world size (data shards and Partial FC shards depend on it)"
        )
    return shared


def rng_roots(t: Trainer) -> dict[str, nn.Module | None]:
    """Modules whose generator attributes are checkpointed (frontend draws, head sampling)."""
    return {"frontend": t.frontend, "head": t.head}


def progress(t: Trainer) -> dict[str, int]:
    return {"step": t.step, "epoch": t.epoch, "batch_in_epoch": t.batch_in_epoch}


def trainer_state(t: Trainer) -> dict[str, Any]:
    """``Trainer.state_dict``: see there (it holds secrets)."""
    return {
        "head": t.head.state_dict() if t.head is not None else None,
        "optimizer": t.optimizer.state_dict(),
        "scaler": t.scaler.state_dict() if t.scaler is not None else None,
        "scheduler": t.scheduler.state_dict(),
        "progress": progress(t),
        "rng": capture_rng_state(rng_roots(t)),
        "sampler": t.sampler.state_dict(),
        "bad_samples": t.bad_samples,
        "substituted_samples": t.failures_before_resume + dataset_failure_count(t.dataset),
        "nonfinite_steps": t.nonfinite_steps,
        "dp": t.dp.state_dict() if t.dp is not None else None,
        "distill": t.distill.identity() if t.distill is not None else None,
    }


def load_trainer_state(t: Trainer, state: dict[str, Any], *, where: str) -> None:
    """``Trainer.load_state_dict``: the inverse of ``trainer_state`` (weights restored separately)."""
    if t.head is not None:
        if state.get("head") is None:
            raise RuntimeError(f"{where}: has no head state")
        t.head.load_state_dict(state["head"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    if t.scaler is not None and state.get("scaler") is not None:
        t.scaler.load_state_dict(state["scaler"])
    pr = state["progress"]
    t.step, t.epoch, t.batch_in_epoch = int(pr["step"]), int(pr["epoch"]), int(pr["batch_in_epoch"])
    sampler_state = state.get("sampler")
    if sampler_state is not None and int(sampler_state["seed"]) != t.cfg.seed:
        raise RuntimeError(f"{where}: written with seed {sampler_state['seed']}, config says {t.cfg.seed}")
    t.bad_samples = int(state.get("bad_samples", 0))
    t.failures_before_resume = int(state.get("substituted_samples", 0))
    t.nonfinite_steps = int(state.get("nonfinite_steps", 0))
    restore_rng_state(state["rng"], rng_roots(t))
    if t.dp is not None:
        if state.get("dp") is None:
            raise RuntimeError(f"{where}: has no DP-SGD state (accountant), but dp.enabled is true")
        t.dp.load_state_dict(state["dp"])


def save_checkpoint(t: Trainer) -> Path | None:
    """``Trainer.save_checkpoint``: atomically write a resumable checkpoint (all ranks call this)."""
    if t.run_dir is None:
        return None
    staging = ckpt.begin_checkpoint(t.run_dir, t.step)
    barrier()
    rank_state = {"format": ckpt.FORMAT, "version": ckpt.VERSION, "rank": t.env.rank, **trainer_state(t)}
    ckpt.atomic_torch_save(rank_state, ckpt.rank_file(staging, t.env.rank))
    if t.env.is_main:
        # the weights go in FaceRecognizer format: every checkpoint is directly usable by
        # `facepriv eval` / attacks, and there is one copy of them on disk
        t.recognizer.save(staging / "model.pt", extra=model_extra(t))
        shared = {
            "format": ckpt.FORMAT, "version": ckpt.VERSION,
            "frontend_config": dict(t.frontend.config),
            "backbone_config": dict(getattr(t.recognizer.backbone, "config", {}) or {}),
            "scheduler": t.scheduler.state_dict(),
            "progress": progress(t),
            "world_size": t.env.world_size, "num_classes": t.num_classes,
            "num_samples": len(t.dataset), "config": config_to_dict(t.cfg),
            "epsilon": t.epsilon(),
            "lineage": {"started_from": str(t.start.checkpoint) if t.start.checkpoint else None,
                        "fork": t.start.fork},
        }
        ckpt.atomic_torch_save(shared, staging / "shared.pt")
    barrier()
    final = None
    if t.env.is_main:
        final = ckpt.commit_checkpoint(staging, t.cfg.checkpoint.keep_last, protect=(t.start.checkpoint,))
        log.info("checkpoint written: %s", final)
    barrier()
    return final if final is not None else ckpt.checkpoint_dir(t.run_dir, t.step)


def restore(t: Trainer, path: Path, shared: dict[str, Any]) -> None:
    """Load checkpoint ``path``'s weights and this rank's state into ``t`` (and, for a fork,
    apply the new config's optimiser and schedule settings)."""
    rank_path = ckpt.rank_file(path, t.env.rank)
    state = ckpt.safe_load(rank_path, map_location="cpu")
    ckpt.check_format(state, rank_path)
    if int(shared["num_samples"]) != len(t.dataset):
        raise RuntimeError(f"{path}: checkpoint was trained on {shared['num_samples']} samples, "
                           f"the dataset now has {len(t.dataset)}; resume needs the same data")
    from facepriv.models import read_checkpoint

    t.recognizer.load_state_dict(read_checkpoint(path / "model.pt")["state_dict"])
    # rank files of version-1 checkpoints keep the schedule and position in shared.pt only
    state = {"scheduler": shared["scheduler"], "progress": shared["progress"], **state}
    fresh_groups = [{k: v for k, v in g.items() if k != "params"} for g in t.optimizer.param_groups]
    t.load_state_dict(state, where=str(rank_path))
    if t.start.fork:
        apply_forked_settings(t, fresh_groups)
    log.info("resumed from %s at step %d (epoch %d, batch %d)", path, t.step, t.epoch, t.batch_in_epoch)


def apply_forked_settings(t: Trainer, fresh_groups: list[dict[str, Any]]) -> None:
    """A fork keeps the optimiser's state (momentum) but takes lr, weight decay, ... and the
    LR schedule from the new config, continued at the checkpoint's step."""
    if len(fresh_groups) != len(t.optimizer.param_groups):
        raise lineage.ResumeError(f"fork: the checkpoint's optimiser has {len(t.optimizer.param_groups)} "
                                  f"parameter groups, the new config {len(fresh_groups)}")
    for group, fresh in zip(t.optimizer.param_groups, fresh_groups):
        group.update(fresh)
    t.scheduler, t.schedule = build_scheduler(t.optimizer, t.cfg.schedule, t.steps_per_epoch)
    position_scheduler(t.scheduler, t.step)
    if t.dp is not None:
        log.warning("fork of a DP-SGD run: the noise multiplier is set for dp.epsilon over the whole new schedule, "
                    "while the accountant keeps the source's history; the epsilon reported is the composition "
                    "of both and may exceed dp.epsilon")
    log.info("forked from %s at step %d with new settings: %s", t.start.checkpoint, t.step,
             lineage.describe_diff(t.start.settings_changed) or "none")


def begin_lineage(t: Trainer) -> None:
    """Rank 0: move this run folder's checkpoints that are not on the new line of descent
    to ``abandoned/`` and record the start in ``lineage.json`` (see training/lineage.py)."""
    if t.run_dir is None:
        return
    if t.env.is_main:
        start, kind = t.start.checkpoint, t.start.kind
        keep = start if start is not None and lineage.same_folder(start, t.run_dir) else None
        t.run_dir.mkdir(parents=True, exist_ok=True)
        moved = lineage.abandon(t.run_dir, keep, reason=f"before-{kind}-at-step-{t.step}")
        if moved is not None:
            log.warning("%s start at step %d: checkpoints of %s that this run does not continue were moved to %s "
                        "(a plain --resume continues this run from now on)", kind, t.step, t.run_dir, moved)
        lineage.record_start(t.run_dir, kind, start, t.step, moved, t.start.settings_changed)
    barrier()


def check_finite_weights(t: Trainer) -> None:
    """Refuse to checkpoint or export a model whose weights went NaN/inf (e.g. a huge lr):
    the run fails loudly instead of exiting 0 with a useless model; the last good
    checkpoint stays the newest."""
    bad = [name for name, p in t.recognizer.named_parameters() if not bool(torch.isfinite(p).all())]
    if t.head is not None:
        bad += [f"head.{name}" for name, p in t.head.named_parameters() if not bool(torch.isfinite(p).all())]
    if not all_true(not bad, t.device):  # one decision on every rank (Partial FC shards differ)
        where = f"{len(bad)} tensors, e.g. {bad[0]}" if bad else "on another rank"
        raise FloatingPointError(
            f"the model's weights are NaN/inf at step {t.step} ({where}); "
            "not writing a checkpoint or model.pt. Lower optim.lr or enable optim.clip_grad_norm"
        )


def model_extra(t: Trainer) -> dict[str, Any]:
    """What a saved FaceRecognizer file carries about the run besides the weights."""
    return {"step": t.step, "num_classes": t.num_classes, "epsilon": t.epsilon(),
            "config_name": t.cfg.name, "verification": t.evaluator.last_flat()}
