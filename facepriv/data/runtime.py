"""Failure and resize accounting shared by the training datasets.

(Horizontal flips are not a dataset policy: the trainer flips whole batches in the step,
keyed by seed, epoch and sample index — ``facepriv.training.batches.apply_hflip`` — so one
implementation serves every dataset format and worker count.)

Failures (a file that stops decoding mid-run) must be visible in the main process, but
workers are separate processes. ``FailureLog`` keeps a tiny shared-memory counter tensor
with one slot per worker (no write races), a per-process list of what failed, and an
optional append-only JSON-lines file so nothing is lost across processes. ``ResizeLog``
counts the same way how many images had to be resized, and how many of those were
stretched (aspect ratio changed), warning once per process about the first stretched one.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import torch

from .images import stretches

#: worker slots in the shared failure counter; slot 0 is the main process.
MAX_WORKER_SLOTS = 256


def _worker_slot() -> int:
    info = torch.utils.data.get_worker_info()
    if info is None:
        return 0
    return 1 + (info.id % (MAX_WORKER_SLOTS - 1))


def _shared_counter() -> torch.Tensor:
    """One int64 slot per worker in shared memory: each process adds to its own slot."""
    return torch.zeros(MAX_WORKER_SLOTS, dtype=torch.int64).share_memory_()


class FailureLog:
    """Counts and records samples that failed at run time and were substituted.

    ``count`` is the total across the main process and all DataLoader workers (shared
    memory); ``events`` lists ``(source, reason)`` seen by *this* process; ``log_path``
    (optional) receives one JSON line per failure from every process.
    """

    def __init__(self, log_path: str | os.PathLike[str] | None = None, warn: bool = True) -> None:
        self.counter = _shared_counter()
        self.events: list[tuple[str, str]] = []
        self.bad_sources: set[str] = set()
        self.log_path = None if log_path is None else str(log_path)
        self.warn = warn

    @property
    def count(self) -> int:
        """Substitutions made so far, summed over all processes sharing this log."""
        return int(self.counter.sum().item())

    def record(self, source: str, reason: str, substitute: str | None) -> None:
        """Count one failure; warn the first time a given source fails in this process."""
        self.counter[_worker_slot()] += 1
        first = source not in self.bad_sources
        self.bad_sources.add(source)
        self.events.append((source, reason))
        if self.log_path is not None:
            line = json.dumps({"source": source, "reason": reason, "substitute": substitute, "pid": os.getpid()})
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        if first and self.warn:
            warnings.warn(
                f"skipping unreadable sample {source} ({reason}); substituted {substitute}",
                RuntimeWarning,
                stacklevel=3,
            )

    def note(self, source: str, reason: str, action: str) -> None:
        """Append a non-run-time event (a file dropped by a scan) to the JSON-lines log.

        Not counted in ``count``: that is the run-time substitution total the trainer logs.
        """
        if self.log_path is not None:
            line = json.dumps({"source": source, "reason": reason, "action": action, "pid": os.getpid()})
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def summary(self) -> dict[str, Any]:
        """JSON-able summary for run reports."""
        return {
            "substitutions": self.count,
            "bad_sources_this_process": sorted(self.bad_sources),
            "log_path": self.log_path,
        }


class ResizeLog:
    """Counts images resized to a reader's ``image_size``; warns about stretched ones.

    A uniform rescale (250x250 -> 112x112) is routine; a stretch (200x150 -> 112x112, see
    ``images.stretches``) deforms the face, so the first one in each process is a warning
    naming the file, and ``stretched`` keeps the total over all DataLoader workers. Counts are
    of loads, like ``FailureLog.count``: a stretched file read in every epoch counts every epoch.
    """

    def __init__(self, warn: bool = True) -> None:
        self._resized = _shared_counter()
        self._stretched = _shared_counter()
        self.warn = warn
        self._warned = False

    @property
    def resized(self) -> int:
        """Images resized so far (all processes)."""
        return int(self._resized.sum().item())

    @property
    def stretched(self) -> int:
        """Resized images whose aspect ratio changed (all processes)."""
        return int(self._stretched.sum().item())

    def record(self, source: str, shape: tuple[int, ...], size: tuple[int, int]) -> None:
        """Account for resizing an image of ``shape`` to ``size`` (no-op when they agree)."""
        h, w = int(shape[0]), int(shape[1])
        if (h, w) == (int(size[0]), int(size[1])):
            return
        slot = _worker_slot()
        self._resized[slot] += 1
        if not stretches(shape, size):
            return
        self._stretched[slot] += 1
        if self.warn and not self._warned:
            self._warned = True
            warnings.warn(
                f"{source}: {h}x{w} image stretched to {size[0]}x{size[1]} (aspect ratio changed; an aligned "
                "face keeps its proportions). Further stretched images are counted, not warned about.",
                RuntimeWarning,
                stacklevel=3,
            )

    def summary(self) -> dict[str, int]:
        return {"resized": self.resized, "stretched": self.stretched}
