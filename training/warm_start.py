"""Warm start (``init_from: CKPT``): begin a protected student from a trained RGB model.

Why: a team that already owns an RGB face model should not train a protected one from
scratch. The frontend changes what the first layer sees (3 RGB channels vs 27 PartialFace /
189 DCTDP / 192 DCT channels, possibly another spatial size), but everything after the stem
still computes identity features from a 112x112-like map. So the backbone is copied tensor
by tensor wherever the shapes agree, and whatever does not fit (the stem's input
convolution, a resized stage) keeps its fresh initialisation. The report says exactly which
tensors were transferred and which were re-initialised, so a silently ignored checkpoint
(e.g. the wrong architecture: nothing matches) is an error rather than a surprise.

Only the backbone moves: the frontend (and its secrets) is the new model's own, the input
standardisation is calibrated for the new channels, and the margin head is rebuilt (a
FaceRecognizer checkpoint carries none).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

log = logging.getLogger(__name__)


class WarmStartError(ValueError):
    """``init_from`` names no usable checkpoint, or one that shares nothing with the model."""


def warm_start_backbone(recognizer: nn.Module, source: str | os.PathLike[str], *,
                        min_fraction: float = 0.5) -> dict[str, Any]:
    """Copy ``source``'s backbone tensors into ``recognizer.backbone`` where shapes agree.

    ``source`` is a facepriv ``FaceRecognizer`` checkpoint (``model.pt`` / ``.safetensors``,
    loaded without executing pickled code). Raises ``WarmStartError`` if fewer than
    ``min_fraction`` of the backbone's parameters (by count) could be transferred: a
    different architecture is a configuration mistake, not a warm start.
    """
    from facepriv.models import CheckpointError, FaceRecognizer

    path = Path(source)
    if not path.is_file():
        raise WarmStartError(f"init_from: {path} is not a file (expected a facepriv model checkpoint, e.g. runs/rgb/model.pt)")
    try:
        donor = FaceRecognizer.load(path)
    except (CheckpointError, OSError, ValueError) as exc:
        raise WarmStartError(f"init_from: cannot load {path}: {exc}") from exc
    src = donor.backbone.state_dict()
    dst = recognizer.backbone.state_dict()
    transferred, reinitialised = [], []
    moved = total = 0
    for key, value in dst.items():
        n = value.numel() if value.is_floating_point() else 0
        total += n
        theirs = src.get(key)
        if theirs is not None and tuple(theirs.shape) == tuple(value.shape) and theirs.dtype == value.dtype:
            dst[key] = theirs.to(value.device)
            transferred.append(key)
            moved += n
        else:
            reinitialised.append(key)
    fraction = moved / max(total, 1)
    if fraction < min_fraction:
        raise WarmStartError(
            f"init_from: {path} shares only {fraction:.0%} of the backbone's parameters with this model "
            f"({donor.backbone.config.get('name')} vs {recognizer.backbone.config.get('name')}); "
            f"first mismatches: {reinitialised[:4]}")
    recognizer.backbone.load_state_dict(dst)
    report = {"source": str(path), "source_frontend": str(getattr(donor.frontend, "name", "?")),
              "transferred_tensors": len(transferred), "reinitialised": reinitialised,
              "transferred_parameter_fraction": round(fraction, 4)}
    log.info("warm start from %s: %d tensors transferred (%.1f%% of parameters), re-initialised: %s",
             path, len(transferred), 100 * fraction, ", ".join(reinitialised) or "none")
    return report
