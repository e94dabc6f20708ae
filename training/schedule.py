"""Learning-rate schedules (warm-up + polynomial / step decay) as a resumable LambdaLR.

The multiplier is a small callable *object* (not a closure) holding only numbers, so the
scheduler's ``state_dict`` is plain data and loads under ``torch.load(weights_only=True)``.
Schedule lengths given in epochs are resolved to optimiser steps here, once, so that the
rest of the trainer only counts steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from .config import ScheduleConfig


@dataclass
class ResolvedSchedule:
    total_steps: int
    warmup_steps: int
    milestones: list[int]


def resolve_schedule(cfg: ScheduleConfig, steps_per_epoch: int) -> ResolvedSchedule:
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    total = cfg.max_steps if cfg.max_steps is not None else max(1, int(math.ceil(cfg.epochs * steps_per_epoch)))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(cfg.warmup_epochs * steps_per_epoch))
    warmup = min(max(0, warmup), total)
    milestones = sorted(int(round(m * steps_per_epoch)) for m in cfg.milestones)
    return ResolvedSchedule(total_steps=total, warmup_steps=warmup, milestones=milestones)


class LRMultiplier:
    """lr(step) / peak lr. Warm-up is linear from 1/(warmup+1) so step 0 never has lr 0."""

    def __init__(self, kind: str, total_steps: int, warmup_steps: int = 0, power: float = 2.0,
                 milestones: list[int] | None = None, gamma: float = 0.1, min_ratio: float = 0.0) -> None:
        if kind not in ("poly", "step", "constant"):
            raise ValueError(f"unknown schedule type {kind!r} (poly, step, constant)")
        self.kind = kind
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.power = float(power)
        self.milestones = [int(m) for m in (milestones or [])]
        self.gamma = float(gamma)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            return self.gamma ** sum(1 for m in self.milestones if step >= m)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * (1.0 - progress) ** self.power


def build_scheduler(optimizer: Optimizer, cfg: ScheduleConfig, steps_per_epoch: int) -> tuple[LambdaLR, ResolvedSchedule]:
    resolved = resolve_schedule(cfg, steps_per_epoch)
    fn = LRMultiplier(cfg.type, resolved.total_steps, resolved.warmup_steps, cfg.power,
                      resolved.milestones, cfg.gamma, cfg.min_lr_ratio)
    # One multiplier per param group: frontend, backbone and head share the shape of the
    # schedule but keep their own peak learning rates.
    return LambdaLR(optimizer, [fn] * len(optimizer.param_groups)), resolved


def position_scheduler(scheduler: LambdaLR, step: int) -> None:
    """Move a freshly built scheduler to ``step``: each group's lr becomes its peak x lr(step).

    For a forked run, whose new schedule continues at the checkpoint's step (a resumed run
    loads the scheduler's state instead).
    """
    import warnings

    scheduler.last_epoch = step - 1
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()
