"""Sizes, time budgets and time-keeping of one quickstart run.

Why budgets in seconds rather than step counts: the same command must end within about
7 minutes on a 2-core laptop (8 at most) *and* use a faster machine to train longer. Each
model therefore gets a planned number of seconds, which a few timed steps turn into a step
count (``recipe.choose_steps``), so the learning-rate schedule always completes. If an
earlier stage ran long (a busy machine), :class:`Clock` shrinks the budgets of the stages
still to come so the whole command still ends near its target; the report says so.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

#: the models of a quickstart run, in training order (the protected ones start from RGB)
MODELS = ("rgb", "partialface", "dctdp")
PROTECTED = ("partialface", "dctdp")


@dataclass
class Plan:
    """Sizes and budgets of one quickstart run."""

    fast: bool
    train_identities: int
    train_images: int
    test_identities: int
    test_images: int
    pairs_per_fold: int
    budgets: dict[str, float]  # seconds of training per model
    #: seconds per protected frontend for the learned attacks (decoder + linkage network together);
    #: a timed simulation turns them into a step count (``leakage.plan_attack_steps``)
    attack_budgets: dict[str, float]
    max_attack_steps: int  # cap on the learned attacks' steps, however fast the machine
    total_s: float  # the whole command's target wall time; later stages shrink to keep it
    #: seconds the stages after training need on the reference machine (2 cores), kept free
    after_training_s: float
    image_size: int = 64
    batch_size: int = 32
    max_steps: int = 4000
    min_steps: int = 20
    min_attack_steps: int = 10
    repetitions: int = 3  # verification repetitions of the frontend randomness
    grid_victims: int = 4
    max_aux: int | None = None  # attacker's auxiliary faces (a random subset of the training images)
    bootstrap: int = 200  # replicates of the leakage confidence intervals (victims resampled)
    #: judges ``--judge auto`` compares on the raw held-out faces (the smoke test skips dlib's pass)
    auto_judges: tuple[str, ...] = ("dlib", "rgb")
    notes: list[str] = field(default_factory=list)

    @property
    def pairs_count(self) -> int:
        return 20 * self.pairs_per_fold  # 10 folds x (per_fold genuine + per_fold impostor)


def make_plan(fast: bool) -> Plan:
    """The full demo (about 7.5 minutes on 2 cores) or the CI smoke test (under 2 minutes)."""
    if fast:
        return Plan(fast=True, train_identities=24, train_images=12, test_identities=20, test_images=5,
                    pairs_per_fold=15, budgets={"rgb": 16.0, "partialface": 9.0, "dctdp": 8.0},
                    attack_budgets={"partialface": 8.0, "dctdp": 8.0}, max_attack_steps=40, total_s=95.0,
                    after_training_s=45.0, min_steps=8, min_attack_steps=5, repetitions=2, grid_victims=3,
                    bootstrap=100, auto_judges=("rgb",))
    # measured on 2 pinned cores of a Xeon server: RGB ~0.2 s/step, DCTDP ~1.1 s/step (batch 32);
    # RGB reached AUC 0.98 after 240 steps, DCTDP needs as many steps as it can get
    return Plan(fast=False, train_identities=64, train_images=24, test_identities=30, test_images=10,
                pairs_per_fold=50, budgets={"rgb": 50.0, "partialface": 80.0, "dctdp": 110.0},
                attack_budgets={"partialface": 30.0, "dctdp": 35.0}, max_attack_steps=150,
                total_s=430.0, after_training_s=150.0, max_aux=512)


class Clock:
    """Wall time since the start and how much of the planned work still fits before the target."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def scale(self, planned_left_s: float, floor: float = 0.3) -> float:
        """Factor (``floor`` .. 1) for the remaining budgets: 1 while on schedule; below 1 when
        ``planned_left_s`` of planned work no longer fits before ``plan.total_s``."""
        left = self.plan.total_s - self.elapsed()
        if planned_left_s <= 0 or left >= planned_left_s:
            return 1.0
        return max(floor, left / planned_left_s)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under ``taskset`` or a container
    limit), not the machine's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on every platform
        return os.cpu_count() or 1


def default_threads() -> int:
    """2 threads on an idle machine, 1 when other processes already keep the cores busy.

    Measured on the 2-core development machine: with other jobs running, 2 OpenMP threads
    ran a training step 3-20x *slower* than 1 thread (each parallel region waits for a
    descheduled thread); on an idle machine 2 threads are faster.
    """
    cores = available_cores()
    want = min(2, cores)
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return want
    total = os.cpu_count() or cores
    # the load average counts the whole machine: compare it with the whole machine
    return 1 if want > 1 and load > total else want
