"""Verification during training: when the configured sets run, who runs them, where the
results go.

Why its own module: ``verification.py`` is *how* a model is scored (the deployment path,
the same functions as ``facepriv eval verify``); this is the run's side of it: rank 0
scores while the other ranks wait at a barrier, every result is logged at its step, and
the last results are kept for the summary, ``summary.json`` and the exported model.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .config import EvalConfig
from .distributed import DistEnv, barrier
from .metrics_log import RunLogger
from .verification import VerificationRunner

log = logging.getLogger(__name__)


class TrainingEvaluator:
    """Runs the configured verification sets for a training run and remembers the last results."""

    def __init__(self, cfg: EvalConfig, image_size: int, *, seed: int, env: DistEnv, logger: RunLogger) -> None:
        self.runner = VerificationRunner(cfg, image_size, seed=seed)
        self.env = env
        self.logger = logger
        #: the newest results per set: ``{name: {"flat": {...}, ...}}`` (empty until the first run)
        self.last: dict[str, dict[str, Any]] = {}

    @property
    def enabled(self) -> bool:
        return self.runner.enabled

    def run(self, recognizer: nn.Module, device: torch.device, step: int) -> dict[str, dict[str, Any]]:
        """Verification on the configured sets at ``step`` (rank 0 computes, the others wait)."""
        results: dict[str, dict[str, Any]] = {}
        if self.env.is_main and self.runner.enabled:
            results = self.runner.evaluate(recognizer, device)
            for name, res in results.items():
                self.logger.log_eval(step, name, res["flat"])
                log.info("step %d verify %s: %s", step, name,
                         ", ".join(f"{k}={v:.4f}" for k, v in res["flat"].items() if isinstance(v, float)))
            self.last = results
        barrier()
        return results

    def last_flat(self) -> dict[str, dict[str, Any]]:
        """The last results as flat metric rows per set (what summaries and model files carry)."""
        return {k: v["flat"] for k, v in self.last.items()}
