"""Resume lineage: which checkpoints a run continues, refuses, forks or sets aside.

Three ways resume used to go silently wrong, and what this module does about each:

* **Changed settings.** Resuming restored the old LR schedule and optimiser settings while
  ``config.yaml`` recorded the new ones. ``settings_diff`` compares the checkpoint's config
  with the current one; any difference outside ``FREE_KEYS`` (logging, evaluation,
  checkpoint cadence, workers: things that do not change what is trained) refuses the
  resume. An explicit *fork* (``--fork --out NEW``) continues the checkpoint's state in a
  new run folder with new ``FORKABLE_KEYS`` settings (optimiser hyper-parameters, LR
  schedule, DP budget); the rest would change what the saved state means.
* **Branching from an older checkpoint.** Resuming from ``step_1000`` while ``step_3000``
  exists used to prune the starting point (``keep_last``) and leave ``step_3000`` to be
  picked by the next plain ``--resume``. Now every checkpoint of the folder that is not on
  the new line of descent (newer than the start; all of them for a fresh start or a start
  from another folder) is *moved* to ``<run>/abandoned/<time>/`` together with that
  lineage's ``model.pt``, ``summary.json`` and a copy of its logs: nothing is lost, and
  nothing of it is resumed or pruned. ``--resume`` thus picks the newest checkpoint of the
  current lineage.
* **Pruning the start.** The checkpoint a run started from is passed to
  ``commit_checkpoint(protect=...)`` and never pruned by that run.

``lineage.json`` in the run folder records every start (fresh, resume, fork), its source
and what was set aside.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from facepriv.io import atomic_write_json

from .checkpoint import list_checkpoints

#: Settings that may differ on a plain resume: they do not change what is trained.
FREE_KEYS = ("name", "output_dir", "device", "deterministic", "logging", "eval", "checkpoint",
             "data.num_workers", "data.pin_memory", "distributed.backend", "distributed.timeout_minutes",
             "distill.cache", "distill.batch_size")
#: Settings a fork may change: hyper-parameters of the continuation, not the meaning of its state.
FORKABLE_KEYS = ("optim", "schedule", "dp.epsilon", "dp.delta", "dp.max_grad_norm", "data.hflip",
                 "distill.cosine_weight")
#: ...except these, whose saved state the new value cannot use.
NOT_FORKABLE_KEYS = ("optim.name",)

LINEAGE_FILE = "lineage.json"
ABANDONED_DIR = "abandoned"
#: Run-level outputs that belong to the lineage that wrote them.
_RUN_OUTPUTS = ("model.pt", "summary.json")
_RUN_LOGS = ("train_log.csv", "eval_log.csv", "config.yaml")


class ResumeError(RuntimeError):
    """A resume or fork that would silently continue something else than asked; the message says what."""


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: value}


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def settings_diff(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved, current)}`` for settings outside ``FREE_KEYS`` that differ.

    A key absent from ``saved`` (a checkpoint written before the key existed) is not compared.
    """
    old, new = _flatten(saved), _flatten(current)
    return {k: (old[k], new.get(k)) for k in sorted(old)
            if not _under(k, FREE_KEYS) and old[k] != new.get(k)}


def describe_diff(diff: dict[str, tuple[Any, Any]], limit: int = 6) -> str:
    items = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()]
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def check_resume_settings(checkpoint: Path, saved: dict[str, Any], current: dict[str, Any], *, fork: bool) -> dict[str, tuple[Any, Any]]:
    """Refuse a resume whose settings differ, or a fork whose differences it cannot honour."""
    diff = settings_diff(saved, current)
    if diff and not fork:
        raise ResumeError(
            f"{checkpoint}: the config differs from the one this checkpoint was trained with ({describe_diff(diff)}). "
            "Resuming would continue the old run under a config.yaml that says otherwise. Restore those settings "
            "to resume, or fork: --fork --out NEW_RUN_DIR continues this checkpoint with the new settings in a new folder"
        )
    if fork:
        fixed = {k: v for k, v in diff.items() if not _under(k, FORKABLE_KEYS) or _under(k, NOT_FORKABLE_KEYS)}
        if fixed:
            raise ResumeError(
                f"{checkpoint}: cannot fork with a different {describe_diff(fixed)}: the saved weights, optimiser and "
                "data position would not mean the same thing; start a new run instead. A fork may change "
                + ", ".join(FORKABLE_KEYS) + " (not " + ", ".join(NOT_FORKABLE_KEYS) + ")"
            )
    return diff


def same_folder(checkpoint: Path, run_dir: Path) -> bool:
    """Whether ``checkpoint`` (``<run>/checkpoints/step_X``) belongs to ``run_dir``."""
    return checkpoint.resolve().parent.parent == run_dir.resolve()


def abandon(run_dir: Path, keep_through: Path | None, reason: str) -> Path | None:
    """Move the checkpoints of ``run_dir`` that are not on the new lineage out of the way.

    ``keep_through``: the checkpoint the run starts from (it and older ones stay); None for a
    fresh start or a start from another folder (every checkpoint of ``run_dir`` goes). Returns
    the folder they went to, or None if there was nothing to move.
    """
    ckpts = list_checkpoints(run_dir)
    if keep_through is not None:
        start = keep_through.resolve()
        names = [p.resolve() for p in ckpts]
        if start not in names:
            return None
        ckpts = ckpts[names.index(start) + 1 :]
    if not ckpts:
        return None
    dest = run_dir / ABANDONED_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{reason}"
    n = 1
    while dest.exists():
        dest = dest.with_name(f"{dest.name}-{n}")
        n += 1
    (dest / "checkpoints").mkdir(parents=True)
    for p in ckpts:
        os.replace(p, dest / "checkpoints" / p.name)
    for name in _RUN_OUTPUTS:
        if (run_dir / name).is_file():
            os.replace(run_dir / name, dest / name)
    for name in _RUN_LOGS:
        src = run_dir / name
        if src.is_file():  # the new lineage truncates (resume) or restarts (fresh) its own copy
            shutil.copy2(src, dest / name)
            if keep_through is None and name != "config.yaml":
                src.unlink()
    return dest


def record_start(run_dir: Path, kind: str, source: Path | None, step: int, abandoned: Path | None,
                 changed: dict[str, tuple[Any, Any]] | None = None) -> None:
    """Append this start to ``lineage.json`` (atomic rewrite)."""
    path = run_dir / LINEAGE_FILE
    try:
        events = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    except (OSError, ValueError):
        events = []
    if not isinstance(events, list):
        events = []
    events.append({
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "start": kind, "from": str(source) if source else None,
        "step": int(step), "set_aside": str(abandoned) if abandoned else None,
        "changed": {k: [a, b] for k, (a, b) in (changed or {}).items()},
    })
    atomic_write_json(path, events, indent=2, default=str)
