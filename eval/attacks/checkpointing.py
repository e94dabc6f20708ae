"""Atomic saves and safe loads for attack checkpoints (decoders, their optimiser and RNG).

Saves go to a temporary file in the same folder and are renamed over the old one, so a
crash or a full disk mid-save never destroys the previous checkpoint of a long run. Loads
use ``torch.load(weights_only=True)``: a file carrying pickled code is refused, not run.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["AttackCheckpointError", "atomic_save", "safe_load"]


class AttackCheckpointError(ValueError):
    """A checkpoint is unreadable, unsafe, or was made with different settings."""


def atomic_save(obj: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def safe_load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise AttackCheckpointError(f"{path}: refused to load (not a plain weights file; pickled objects are never "
                                    f"executed): {exc}") from exc
    except (OSError, RuntimeError, EOFError) as exc:
        raise AttackCheckpointError(f"{path}: cannot read checkpoint (truncated or corrupt?): {exc}") from exc
    if not isinstance(data, dict):
        raise AttackCheckpointError(f"{path}: expected a dict checkpoint, got {type(data).__name__}")
    return data
