"""The recommended recipe, as the TrainConfigs the quickstart trains, and the training step.

The RGB baseline trains from scratch. The protected models use the levers the frontier work
found (each can be switched off with ``facepriv quickstart --without LEVER`` to measure what
it buys; the report lists what was used):

* ``warm-start``: a protected model starts from the RGB model's backbone (``init_from``,
  ``facepriv.training.warm_start``); only the stem, which sees 27 PartialFace / 189 DCTDP
  channels instead of 3, starts fresh.
* ``distill``: the RGB model, run once over the raw *training* images, is the teacher
  (``facepriv.training.distill``): the protected student learns to put each protected image
  where RGB puts the raw one (cosine loss, plus the ArcFace loss at ``head_weight``).
  Held-out identities are never seen by either.
* ``exact-sensitivity``: DCTDP's noise is calibrated to the exact range of every released
  coefficient (``clip: exact``, ``facepriv.frontends.sensitivity``) rather than the
  independent-pixel worst case: same epsilon, far less noise, nothing released about the data.

A model trains for a time budget: a few timed steps pick the step count that fits, so the
learning-rate schedule completes on a slow or a fast machine alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .plan import Plan

#: the levers ``--without`` can switch off
LEVERS = ("warm-start", "distill", "exact-sensitivity")


@dataclass(frozen=True)
class Recipe:
    """Which levers the protected models use (all of them: the recommended configuration)."""

    warm_start: bool = True
    distill: bool = True
    exact_sensitivity: bool = True
    #: weight of the ArcFace loss next to the distillation cosine loss
    head_weight: float = 1.0
    #: DCTDP's mean budget per released element. At the DCTDP default of 4, with exact
    #: sensitivities, the noise buries the signal for a few minutes of CPU training (measured
    #: on the quickstart's data, warm-started and distilled: AUC 0.50 after 75 and 150 steps;
    #: 16: 0.81 after 75; 64: 0.86 after 75, 0.91 after 150). Either value's formal guarantee
    #: per image is vacuous (millions); the report's leakage figure is the privacy measurement.
    dctdp_epsilon_mean: float = 64.0

    @classmethod
    def without(cls, levers: list[str] | tuple[str, ...] = ()) -> "Recipe":
        bad = sorted(set(levers) - set(LEVERS))
        if bad:
            raise ValueError(f"unknown lever(s) {bad}; choose from {list(LEVERS)}")
        return cls(warm_start="warm-start" not in levers, distill="distill" not in levers,
                   exact_sensitivity="exact-sensitivity" not in levers)

    def describe(self) -> list[str]:
        """One line per lever, for the report."""
        return [
            f"warm start from the RGB model's backbone: {'yes' if self.warm_start else 'no (from scratch)'}",
            "distillation from the RGB model's embeddings of the training images: "
            + (f"yes (cosine loss + {self.head_weight:g} x ArcFace)" if self.distill else "no (ArcFace only)"),
            "DCTDP noise calibrated to the exact coefficient ranges (clip: exact): "
            + ("yes" if self.exact_sensitivity else "no (clip: calibrated, the old quantile bounds)"),
            f"DCTDP mean privacy budget per released element: {self.dctdp_epsilon_mean:g}"
            + (" (the DCTDP default of 4 stays at chance in a few CPU minutes: `--dctdp-epsilon 4` shows it)"
               if self.dctdp_epsilon_mean != 4 else ""),
        ]


def frontend_config(name: str, seed: int, recipe: Recipe) -> dict[str, Any]:
    """The frontend section of model ``name``'s TrainConfig."""
    if name == "rgb":
        return {"name": "rgb"}
    if name == "partialface":
        # one protected view per image per step (PartialFace's default is 3): the same protection,
        # and ~1.8x more distinct images per second of a short CPU budget than 2 views (each view
        # is pulled to the same teacher embedding anyway)
        return {"name": "partialface", "sample_multiplier": 1, "train_seed": seed}
    if name == "dctdp":
        return {"name": "dctdp", "epsilon_mean": recipe.dctdp_epsilon_mean,
                "clip": "exact" if recipe.exact_sensitivity else "calibrated", "train_seed": seed}
    raise ValueError(f"unknown quickstart model {name!r}")


def model_config(name: str, plan: Plan, data: dict[str, Any], seed: int, steps: int, *, recipe: Recipe,
                 rgb_model: Path | None = None, teacher_cache: Path | None = None) -> dict[str, Any]:
    """The TrainConfig (as a dict) of one quickstart model; also written to its run folder.

    ``rgb_model``: the trained RGB model (protected models warm-start / distil from it per
    ``recipe``); ``teacher_cache``: folder for the teacher's embeddings, shared by the
    protected models so the teacher runs over the training images once.
    """
    cfg: dict[str, Any] = {
        "name": f"quickstart_{name}",
        "seed": seed,
        "device": "cpu",
        "data": {"format": "folder", "path": str(data["train_root"]), "image_size": plan.image_size,
                 "batch_size": plan.batch_size, "num_workers": 0, "hflip": True},
        "frontend": frontend_config(name, seed, recipe),
        "model": {"name": "iresnet18", "width": 0.25, "embedding_size": 128},
        "input_norm": {"mode": "auto", "calibration_batches": 4},
        "head": {"type": "softmax", "margin": "arcface", "s": 32.0, "m": 0.3},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "clip_grad_norm": 5.0,
                  "frontend_lr": 0.01},
        "schedule": {"type": "poly", "max_steps": steps, "warmup_steps": max(1, steps // 20), "power": 2.0},
        "checkpoint": {"every_steps": 0, "keep_last": 1},
        # verification runs afterwards, for every model at once (facepriv.eval.verify)
        "eval": {"every_steps": 0, "sets": []},
        "logging": {"every_steps": 10, "progress": False},
    }
    if name != "rgb" and rgb_model is not None:
        if recipe.warm_start:
            cfg["init_from"] = str(rgb_model)
        if recipe.distill:
            cfg["distill"] = {"enabled": True, "teacher": str(rgb_model), "head_weight": recipe.head_weight,
                              "cache": (str(teacher_cache) + "/") if teacher_cache is not None else None}
    return cfg


def choose_steps(cfg_dict: dict[str, Any], budget_s: float, plan: Plan) -> tuple[int, float]:
    """Time a few real training steps of this model and pick the step count that fits."""
    from facepriv.training.config import config_from_dict
    from facepriv.training.trainer import Trainer

    probe_cfg = config_from_dict({**cfg_dict, "logging": {"every_steps": 1, "progress": False}})
    trainer = Trainer(probe_cfg)  # no run folder: nothing written (a teacher cache folder is shared)
    trainer.run_steps(1)  # warm-up (allocations, first-call overheads)
    times = []
    for _ in range(5):  # median: robust to a burst of load from other processes
        t0 = time.perf_counter()
        trainer.run_steps(1)
        times.append(time.perf_counter() - t0)
    per_step = sorted(times)[len(times) // 2]
    steps = int(max(plan.min_steps, min(plan.max_steps, budget_s / max(per_step, 1e-6))))
    return steps, per_step


def train_model(name: str, out: Path, data: dict[str, Any], plan: Plan, seed: int, budget: float, *,
                recipe: Recipe, rgb_model: Path | None = None) -> dict[str, Any]:
    """Train model ``name`` for ``budget`` seconds; returns what the report needs about it."""
    from facepriv.training.config import config_from_dict
    from facepriv.training.metrics_log import last_logged_loss
    from facepriv.training.trainer import Trainer

    teacher_cache = out / "teacher"
    kwargs = {"recipe": recipe, "rgb_model": rgb_model, "teacher_cache": teacher_cache}
    t_probe = time.perf_counter()
    steps, per_step = choose_steps(model_config(name, plan, data, seed, plan.max_steps, **kwargs), budget, plan)
    probe_s = time.perf_counter() - t_probe
    cfg = config_from_dict(model_config(name, plan, data, seed, steps, **kwargs))
    run_dir = out / name
    print(f"[quickstart] training {name}: {steps} steps (~{per_step:.2f} s/step, budget {budget:.0f} s)", flush=True)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, run_dir=run_dir)
    # hard stop at 1.5x the budget if the machine turns out slower than probed
    summary = trainer.fit(stop_after_s=1.5 * budget)
    if summary.get("stopped_early"):
        plan.notes.append(f"{name}: stopped at step {trainer.step} of {steps} when its time budget ran out "
                          "(the machine was slower than probed; the LR schedule did not finish).")
        trainer.export_model(run_dir / "model.pt")
        steps = trainer.step
    seconds = time.perf_counter() - t0
    return {
        "frontend": name,
        "run_dir": str(run_dir),
        "model_file": str(run_dir / "model.pt"),
        "steps": steps,
        "epochs": steps / trainer.steps_per_epoch,
        "images_seen": steps * plan.batch_size,
        "budget_s": budget,
        "probe_seconds": probe_s,
        "train_seconds": seconds,
        "seconds_per_step": per_step,
        "images_per_second": steps * plan.batch_size / seconds if seconds > 0 else None,
        "final_loss": last_logged_loss(run_dir),
        "privacy_report": summary.get("privacy_report"),
        "warm_start": summary.get("warm_start"),
        "distilled": bool(cfg.distill.enabled),
        "bad_samples": summary.get("bad_samples"),
    }
