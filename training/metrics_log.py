"""Run logs: CSV files (always readable, append-only, resume-safe) and optional TensorBoard.

Two CSV files per run: ``train_log.csv`` (one row per logging interval: loss, lr, throughput,
corrupt-sample count, epsilon) and ``eval_log.csv`` (one row per verification set and
evaluation). On resume rows beyond the checkpoint's step are dropped first, so a resumed
run's logs read as if it had never been interrupted. TensorBoard is imported lazily and
only on rank 0; a missing ``tensorboard`` package degrades to a warning.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import Any

from facepriv.io import atomic_write
from facepriv.verification.keys import fpr_key

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ["step", "epoch", "loss", "lr", "frontend_lr", "images_per_s", "bad_samples_total",
                 "nonfinite_steps", "epsilon", "grad_norm", "elapsed_s"]
EVAL_COLUMNS = ["step", "set", "pairs", "accuracy", "accuracy_std", "auc", "eer", fpr_key(1e-3),
                fpr_key(1e-4), "threshold"]


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return v


def last_logged_loss(run_dir: str | os.PathLike[str]) -> float | None:
    """The last training loss a run logged (``train_log.csv``), or None if there is none."""
    try:
        with open(Path(run_dir) / "train_log.csv", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        return float(rows[-1]["loss"]) if rows else None
    except (OSError, KeyError, ValueError):
        return None


class CsvLog:
    """Append rows with fixed columns; ``truncate_after(step)`` makes resume idempotent."""

    def __init__(self, path: str | os.PathLike[str], columns: list[str]) -> None:
        self.path = Path(path)
        self.columns = columns
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            with open(self.path, "w", newline="") as fh:
                csv.writer(fh).writerow(columns)

    def truncate_after(self, step: int) -> None:
        with open(self.path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        keep = [r for r in rows if r.get("step", "") != "" and int(float(r["step"])) <= step]
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(keep)
        atomic_write(self.path, buf.getvalue())

    def append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore")
            w.writerow({k: _fmt(row.get(k)) for k in self.columns})

    def read(self) -> list[dict[str, str]]:
        with open(self.path, newline="") as fh:
            return list(csv.DictReader(fh))


class RunLogger:
    """Rank-0 sink for scalars; a no-op object on other ranks or without a run folder."""

    def __init__(self, run_dir: str | os.PathLike[str] | None, *, csv_enabled: bool = True,
                 tensorboard: bool = False, enabled: bool = True) -> None:
        self.enabled = enabled and run_dir is not None
        self.train_csv: CsvLog | None = None
        self.eval_csv: CsvLog | None = None
        self._tb: Any = None
        if not self.enabled:
            return
        run_dir = Path(run_dir)  # type: ignore[arg-type]
        if csv_enabled:
            self.train_csv = CsvLog(run_dir / "train_log.csv", TRAIN_COLUMNS)
            self.eval_csv = CsvLog(run_dir / "eval_log.csv", EVAL_COLUMNS)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # lazy: optional dependency
            except Exception as exc:  # noqa: BLE001 - optional feature
                log.warning("logging.tensorboard is on but TensorBoard is unavailable (%s); CSV logs only", exc)
            else:
                self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        for c in (self.train_csv, self.eval_csv):
            if c is not None:
                c.truncate_after(step)

    def log_train(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.train_csv is not None:
            self.train_csv.append(row)
        if self._tb is not None:
            step = int(row["step"])
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    self._tb.add_scalar(f"train/{k}", v, step)

    def log_eval(self, step: int, name: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.eval_csv is not None:
            self.eval_csv.append({"step": step, "set": name, **metrics})
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"verify/{name}/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
