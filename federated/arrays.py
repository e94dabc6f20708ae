"""What travels between sites and server, and how client updates are checked and averaged.

Why a module of its own: the rule "the margin head and the frontend's secrets never leave a
site" is decided in exactly one place (``shared_state``), and every strategy (FedAvg,
FedAvgM, PFM) uses the same reply screening (``screen_update``) and the same weighted
average (``weighted_average``), so a NaN, absurdly large or retyped update is rejected the
same way whatever strategy runs (robust alternatives to the mean: ``aggregators``).

Shared = every entry of ``FaceRecognizer.state_dict()`` except the frontend's *buffers*:
backbone parameters and buffers (BatchNorm statistics), the input standardiser's
``mean``/``std``/``calibrated`` buffers, and the frontend's learnable parameters (DCTDP's
``budget_logits``). Frontend buffers are secrets (PartialFace's subset tables) or
site-local calibration (DCTDP's clipping bounds) and stay where they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

#: prefix of the frontend inside FaceRecognizer's state_dict.
FRONTEND_PREFIX = "frontend."


def shared_keys(model: nn.Module) -> list[str]:
    """State-dict keys of ``model`` that travel (see module docstring), in state-dict order."""
    buffer_names = {name for name, _ in model.named_buffers()}
    keys = []
    for key in model.state_dict().keys():
        if key.startswith(FRONTEND_PREFIX) and key in buffer_names:
            continue  # frontend secrets / site calibration
        keys.append(key)
    return keys


def shared_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The travelling part of ``model``'s state as detached CPU tensors."""
    state = model.state_dict()
    return {k: state[k].detach().cpu() for k in shared_keys(model)}


def load_shared_state(model: nn.Module, arrays: Mapping[str, np.ndarray | torch.Tensor]) -> None:
    """Copy received arrays into ``model`` (dtype cast to the local tensor's, shapes checked).

    Raises ``KeyError`` naming missing/unexpected keys: a site with another architecture or
    frontend must fail loudly in its first round, not train a half-loaded model.
    """
    expected = shared_keys(model)
    missing = [k for k in expected if k not in arrays]
    extra = [k for k in arrays if k not in set(expected)]
    if missing or extra:
        raise KeyError(f"global model arrays do not match this site's model: missing {missing[:5]}, unexpected {extra[:5]}")
    _copy_checked(model.state_dict(), arrays, expected, "array")


def load_frontend_buffers(frontend: nn.Module, saved: Mapping[str, np.ndarray | torch.Tensor]) -> None:
    """Copy a site's saved frontend buffers (secrets, site calibration) back into ``frontend``.

    Names and shapes must match: a site state written for another frontend config is an
    error naming the buffers, not a silent partial load.
    """
    own = dict(frontend.named_buffers())
    if set(saved) != set(own):
        raise ValueError(f"site state: frontend buffers {sorted(saved)} do not match this run's frontend {sorted(own)}")
    _copy_checked(own, saved, list(own), "site state: frontend buffer")


def _copy_checked(dst: Mapping[str, torch.Tensor], src: Mapping[str, np.ndarray | torch.Tensor], keys: Sequence[str],
                  what: str) -> None:
    """``dst[k] <- src[k]`` for ``keys`` in place, cast to the destination dtype, shapes checked."""
    with torch.no_grad():
        for k in keys:
            value = src[k] if isinstance(src[k], torch.Tensor) else torch.as_tensor(np.asarray(src[k]))
            if tuple(value.shape) != tuple(dst[k].shape):
                raise ValueError(f"{what} {k!r}: received shape {tuple(value.shape)}, this site's model has "
                                 f"{tuple(dst[k].shape)}")
            dst[k].copy_(value.to(dst[k].dtype))


def is_float_array(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating)


@dataclass
class Screening:
    """Why an update was accepted or rejected, with its norms (logged by the strategies)."""

    ok: bool
    reason: str = ""
    update_norm: float = float("nan")


def screen_update(
    update: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray] | None,
    *,
    max_update_norm: float | None = None,
    max_abs_value: float = 1e6,
) -> Screening:
    """Check one client's arrays against ``reference`` (the arrays the server sent) before
    they may be averaged.

    Every array must have exactly the key, dtype and shape the server sent: an int64 or
    complex array in place of a float32 one is refused, not cast (a cast let an int64 array
    of 1e15 past every value check and into the mean). Then, per dtype:

    * floating (and complex) arrays: no NaN/inf, no entry above ``max_abs_value`` in
      magnitude; they make up the update's L2 norm ``||update - reference||``, which must
      not exceed ``max_update_norm`` when that is set;
    * integer arrays (counters such as BatchNorm's ``num_batches_tracked``): no entry may
      change by more than ``max_abs_value`` in one round;
    * boolean arrays (flags): any value;
    * anything else (object, string, structured dtypes): refused.

    Without a reference there is nothing to compare with, so the update is refused. Never
    raises: a bad reply must not stop the round.
    """
    try:
        if reference is None:
            return Screening(False, "no reference model to screen against (the server sent none this round)")
        if set(update) != set(reference):
            missing = sorted(set(reference) - set(update))[:3]
            extra = sorted(set(update) - set(reference))[:3]
            return Screening(False, f"keys differ from the global model (missing {missing}, unexpected {extra})")
        sq = 0.0
        for k in reference:
            a, r = np.asarray(update[k]), np.asarray(reference[k])
            if a.dtype != r.dtype:
                return Screening(False, f"array {k!r} has dtype {a.dtype}, the server sent {r.dtype}")
            if a.shape != r.shape:
                return Screening(False, f"array {k!r} has shape {a.shape}, expected {r.shape}")
            kind = r.dtype.kind
            if kind in "fc":
                if not np.all(np.isfinite(a)):
                    return Screening(False, f"array {k!r} contains NaN/inf")
                if a.size and float(np.max(np.abs(a))) > max_abs_value:
                    return Screening(False, f"array {k!r} has |value| > {max_abs_value:g}")
                d = a.astype(np.complex128 if kind == "c" else np.float64) - r
                sq += float(np.vdot(d, d).real)
            elif kind in "iu":
                change = np.abs(a.astype(np.float64) - r.astype(np.float64))
                if a.size and float(change.max()) > max_abs_value:
                    return Screening(False, f"integer array {k!r} changed by {float(change.max()):.4g} "
                                            f"(> {max_abs_value:g}) in one round")
            elif kind != "b":
                return Screening(False, f"array {k!r} has unsupported dtype {r.dtype}")
        norm = math.sqrt(sq)
        if max_update_norm is not None and norm > max_update_norm:
            return Screening(False, f"update norm {norm:.4g} exceeds max_update_norm {max_update_norm:.4g}", norm)
        return Screening(True, "", norm)
    except Exception as exc:  # noqa: BLE001 - screening must not crash the server
        return Screening(False, f"could not screen update: {exc}")


def weighted_average(updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Per-key weighted mean of float arrays; integer/bool arrays take the value of the
    largest-weight client (BatchNorm's ``num_batches_tracked``, ``calibrated`` flags: a mean
    of counters or flags is meaningless).

    Accumulates in float64 and casts back, so averaging K identical updates returns exactly
    the input (the FedAvg identity test relies on it).
    """
    if not updates:
        raise ValueError("weighted_average needs at least one update")
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise ValueError(f"aggregation weights must be finite, non-negative and not all zero: {list(weights)}")
    w = w / w.sum()
    top = int(np.argmax(w))
    out: dict[str, np.ndarray] = {}
    for k in updates[0]:
        first = np.asarray(updates[0][k])
        if not is_float_array(first):
            out[k] = np.array(np.asarray(updates[top][k]), copy=True)
            continue
        acc = np.zeros(first.shape, dtype=np.float64)
        for wi, u in zip(w, updates):
            acc += wi * np.asarray(u[k], dtype=np.float64)
        if all(np.array_equal(np.asarray(u[k]), first) for u in updates[1:]):
            acc = first.astype(np.float64)  # identical inputs: exact identity, no round-off
        out[k] = acc.astype(first.dtype)
    return out


def state_to_numpy(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.items()}
