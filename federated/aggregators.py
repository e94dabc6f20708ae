"""How the server combines the updates that passed screening: the weighted mean (FedAvg) or
a robust rule that a minority of poisoning sites cannot drag far.

Why a module of its own: screening (``facepriv.federated.arrays.screen_update``) refuses
malformed and absurd updates, but a poisoner that sends a well-formed, finite update of a
plausible size still gets its full weight in a mean. The rules below bound what such a
minority can do, each with a bound that ``tests/federated/test_fed_robust.py`` checks:

``mean``
    ``sum_k p_k w_k`` (``weighted_average``); no bound: one site moves the model arbitrarily
    far within ``max_update_norm`` / ``max_abs_value``.
``median``
    coordinate-wise median of the K updates, unweighted (reported sample counts are the
    attacker's to choose). With ``f < K/2`` poisoners every coordinate of the result lies
    between the smallest and the largest honest value of that coordinate.
``trimmed-mean``
    per coordinate, drop the ``t = floor(trim_fraction * K)`` largest and ``t`` smallest
    values and average the rest, unweighted. With ``f <= t`` poisoners every coordinate lies
    between the smallest and the largest honest value.
``norm-clip``
    each update's distance to the sent model is scaled down to at most ``clip_norm``
    (``w_k <- w_r + min(1, C / ||w_k - w_r||) (w_k - w_r)``), then the weighted mean. The
    model moves at most ``C`` per round, and sites holding a fraction ``q`` of the
    (bounded, see ``max_examples``) weight move it at most ``2 q C`` away from where the
    others alone would put it.

Integer and boolean arrays (BatchNorm's ``num_batches_tracked``, ``calibrated`` flags) are
never averaged: ``mean`` / ``norm-clip`` take the largest-weight site's value (as
``weighted_average`` always did), ``median`` / ``trimmed-mean`` the lower median, which is
always a value some site sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .arrays import is_float_array, weighted_average

#: the aggregation rules, in the order the CLI lists them.
AGGREGATORS = ("mean", "median", "trimmed-mean", "norm-clip")


@dataclass(frozen=True)
class Aggregator:
    """One aggregation rule and its parameter (see module docstring)."""

    method: str = "mean"
    #: trimmed-mean: fraction of the updates cut from *each* end per coordinate, in [0, 0.5).
    trim_fraction: float = 0.2
    #: norm-clip: largest L2 distance from the sent model an update keeps.
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        if self.method not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {self.method!r}; choose from {list(AGGREGATORS)}")
        if self.method == "trimmed-mean" and not 0.0 <= float(self.trim_fraction) < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {self.trim_fraction}")
        if self.method == "norm-clip" and not (self.clip_norm is not None and math.isfinite(self.clip_norm)
                                               and self.clip_norm > 0):
            raise ValueError(f"aggregator norm-clip needs a finite clip_norm > 0, got {self.clip_norm}")

    @property
    def weighted(self) -> bool:
        """Whether the sites' aggregation weights matter (median / trimmed mean ignore them)."""
        return self.method in ("mean", "norm-clip")

    def __call__(self, updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float],
                 reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Combine screened ``updates`` (same keys, shapes and dtypes as ``reference``, the
        model the server sent) into the next model's arrays."""
        if not updates:
            raise ValueError("aggregation needs at least one update")
        if self.method == "mean":
            return weighted_average(updates, weights)
        if self.method == "norm-clip":
            return weighted_average([clip_to_norm(u, reference, float(self.clip_norm)) for u in updates], weights)
        if self.method == "median":
            return coordinate_median(updates)
        return trimmed_mean(updates, self.trim_fraction)


def _stack(updates: Sequence[Mapping[str, np.ndarray]], key: str) -> np.ndarray:
    return np.stack([np.asarray(u[key]) for u in updates])


def _lower_median(stack: np.ndarray) -> np.ndarray:
    """Element-wise lower median along axis 0: always one of the inputs (counters, flags)."""
    return np.sort(stack, axis=0)[(stack.shape[0] - 1) // 2].copy()


def coordinate_median(updates: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Unweighted coordinate-wise median (float arrays in float64, cast back)."""
    out: dict[str, np.ndarray] = {}
    for k in updates[0]:
        stack = _stack(updates, k)
        if is_float_array(stack):
            out[k] = np.median(stack.astype(np.float64), axis=0).astype(stack.dtype)
        else:
            out[k] = _lower_median(stack)
    return out


def trimmed_mean(updates: Sequence[Mapping[str, np.ndarray]], trim_fraction: float) -> dict[str, np.ndarray]:
    """Unweighted coordinate-wise mean after cutting ``floor(trim_fraction * K)`` values at each end."""
    n = len(updates)
    t = int(math.floor(float(trim_fraction) * n))
    out: dict[str, np.ndarray] = {}
    for k in updates[0]:
        stack = _stack(updates, k)
        if is_float_array(stack):
            kept = np.sort(stack.astype(np.float64), axis=0)[t:n - t]
            out[k] = kept.mean(axis=0).astype(stack.dtype)
        else:
            out[k] = _lower_median(stack)
    return out


def clip_to_norm(update: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                 clip_norm: float) -> dict[str, np.ndarray]:
    """``update`` with its float arrays pulled towards ``reference`` so that the L2 norm of
    the difference (over all float arrays together) is at most ``clip_norm``."""
    floats = [k for k in update if is_float_array(np.asarray(update[k]))]
    deltas = {k: np.asarray(update[k], np.float64) - np.asarray(reference[k], np.float64) for k in floats}
    norm = math.sqrt(sum(float(np.vdot(d, d)) for d in deltas.values()))
    if norm <= clip_norm:
        return dict(update)
    scale = clip_norm / norm
    out = dict(update)
    for k, d in deltas.items():
        out[k] = (np.asarray(reference[k], np.float64) + scale * d).astype(np.asarray(update[k]).dtype)
    return out
