"""Atomic, resumable training checkpoints.

Layout of one checkpoint (``<run>/checkpoints/step_00001000/``):

* ``model.pt`` (rank 0): the model (frontend + input norm + backbone, frontend secrets
  included) in ``FaceRecognizer`` format, so any checkpoint can be evaluated directly;
* ``shared.pt`` (rank 0): LR scheduler, progress (step, epoch, position in the epoch),
  world size, the frontend's full config, resolved config;
* ``rank_00000.pt`` ... one per process: head (Partial FC shards differ per rank),
  optimiser (its momentum for sharded centres differs too), GradScaler, every RNG state
  (python, numpy, torch CPU/CUDA, frontend generators), sampler position, DP accountant.

Every file is written to a temporary name and ``os.replace``-d into place; the directory is
assembled as ``step_X.partial`` and renamed to ``step_X`` only after every rank has
finished writing, so a job killed mid-save leaves the previous checkpoint as the newest
*complete* one. Files are read back with ``torch.load(weights_only=True)`` through
``facepriv.models.checkpoint.safe_torch_load``, which refuses torch versions with known
bypasses of that loader: a checkpoint from an untrusted source cannot execute code.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from facepriv.io import atomic_path

FORMAT = "facepriv-train-state"
VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then ``os.replace``
    (``facepriv.io.atomic_path``). Owner-only (0600): training state carries the frontend's
    secrets and DP-SGD's secret randomness, like a private key."""
    path = Path(path)
    with atomic_path(path, fsync=True, mode=0o600) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
    return path


def safe_load(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """``facepriv.models.checkpoint.safe_torch_load`` (weights-only, refused on torch versions
    with known unpickler bypasses) with a RuntimeError naming the file."""
    from facepriv.models.checkpoint import CheckpointError, safe_torch_load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return safe_torch_load(path, map_location=map_location)
    except CheckpointError as exc:  # its message starts with the path
        raise RuntimeError(f"cannot load checkpoint {exc} (only tensors and plain data are accepted)") from exc


def checkpoint_dir(run_dir: str | os.PathLike[str], step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def rank_file(ckpt: Path, rank: int) -> Path:
    return ckpt / f"rank_{rank:05d}.pt"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "shared.pt").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def resolve_resume(target: str | os.PathLike[str], run_dir: str | os.PathLike[str] | None = None) -> Path:
    """``target`` may be a checkpoint folder, a run folder, or "auto" (= ``run_dir``)."""
    if str(target) == "auto":
        if run_dir is None:
            raise ValueError("--resume without a path needs --out (or output_dir) pointing at the run to resume")
        target = run_dir
    p = Path(target)
    if (p / "shared.pt").is_file():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise FileNotFoundError(f"no complete checkpoint found under {p} (looked for checkpoints/step_*/shared.pt)")
    return latest


def begin_checkpoint(run_dir: str | os.PathLike[str], step: int) -> Path:
    """Staging folder for a checkpoint; every rank writes its files here."""
    final = checkpoint_dir(run_dir, step)
    staging = final.with_name(final.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def commit_checkpoint(staging: Path, keep_last: int, protect: tuple[Path | None, ...] = ()) -> Path:
    """Rank 0, after a barrier: publish the staging folder and prune old checkpoints.

    ``protect``: checkpoints never pruned here (the one the run started from: see
    facepriv.training.lineage). A checkpoint of the same step is replaced only once the new
    one is in place, so a crash in between never leaves the step without a checkpoint.
    """
    final = staging.with_name(staging.name[: -len(".partial")])
    previous = None
    if final.exists():
        previous = final.with_name(final.name + ".replaced")
        if previous.exists():
            shutil.rmtree(previous)
        os.replace(final, previous)
    os.replace(staging, final)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    run_dir = final.parent.parent
    keep = {p.resolve() for p in protect if p is not None}
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if old.resolve() not in keep:
            shutil.rmtree(old, ignore_errors=True)
    return final


def check_format(state: dict[str, Any], path: Path) -> None:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RuntimeError(f"{path}: not a facepriv training checkpoint (format={state.get('format') if isinstance(state, dict) else None!r})")
    if int(state.get("version", -1)) > VERSION:
        raise RuntimeError(f"{path}: checkpoint version {state.get('version')} is newer than this code ({VERSION}); upgrade facepriv")
