"""The one spelling of a TPR@FPR figure's key: ``tpr_at_fpr_1e-3``.

Every producer (training's eval log, ``facepriv eval verify``, identity leakage, the
benchmarks, the experiment tables) names the TPR at an FPR target with :func:`fpr_key`, so
a figure written by one layer is found by another without guessing. Earlier versions wrote
``tpr@fpr=0.001`` (federated history), ``1e-03`` (nested in ``eval verify`` summaries),
``tpr_at_fpr_0.001`` (leakage's verification block) and ``tpr@1e-3``; files already on disk
keep those, so readers go through :func:`parse_fpr_key` / :func:`find_fpr`, which accept
every spelling and match by the target's value, never by string.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["FPR_KEY_PREFIX", "find_fpr", "fpr_key", "fpr_label", "parse_fpr_key"]

FPR_KEY_PREFIX = "tpr_at_fpr_"
#: prefixes of the spellings older files use; a bare number (``1e-03``) is the nested form
_OLD_PREFIXES = ("tpr@fpr=", "tpr@", "tpr_at_fpr=")
_NUMBER = re.compile(r"^[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?$")


def _check_target(target: float) -> float:
    try:
        t = float(target)
    except (TypeError, ValueError):
        raise ValueError(f"FPR target must be a number in (0, 1], got {target!r}") from None
    if not (math.isfinite(t) and 0.0 < t <= 1.0):
        raise ValueError(f"FPR target must be in (0, 1], got {target!r}")
    return t


def fpr_label(target: float) -> str:
    """The target as a short, exact, scientific label: ``1e-3``, ``2.5e-4``, ``1e0``.

    Exact (no rounding to one digit: 2.5e-4 stays 2.5e-4, never 2e-04) so two targets
    never share a label, and without exponent zero-padding so the label reads as written.
    """
    mantissa, exponent = f"{_check_target(target):.12e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def fpr_key(target: float) -> str:
    """The key of the TPR at FPR ``target``: ``fpr_key(1e-3) == "tpr_at_fpr_1e-3"``."""
    return FPR_KEY_PREFIX + fpr_label(target)


def parse_fpr_key(key: str) -> float | None:
    """The FPR target a key names, in any spelling written so far; None if it names none.

    Accepts ``tpr_at_fpr_1e-3``, ``tpr_at_fpr_0.001``, ``tpr@fpr=0.001``, ``tpr@1e-3`` and
    the bare ``1e-03`` / ``0.001`` of nested tables. Keys such as ``tpr@1e-3_ci`` or
    ``auc`` name no target (they return None), so a flat dict can be scanned safely.
    """
    if not isinstance(key, str):
        return None
    text = key.strip()
    for prefix in (FPR_KEY_PREFIX, *_OLD_PREFIXES):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    if not _NUMBER.match(text):
        return None
    value = float(text)
    return value if 0.0 < value <= 1.0 else None


def find_fpr(table: Mapping[str, Any] | None, target: float, default: Any = None, *, suffix: str = "") -> Any:
    """``table``'s entry for FPR ``target`` under any spelling (the canonical key first).

    Tolerant reader for JSON written before :func:`fpr_key` was the only spelling; targets
    match to a relative 1e-9, so ``0.001`` and ``1e-03`` find each other. ``suffix`` finds
    a companion figure written as key + suffix (``tpr_at_fpr_1e-3_ci``, old ``tpr@1e-3_ci``).
    """
    t = _check_target(target)
    if not table:
        return default
    key = fpr_key(t) + suffix
    if key in table:
        return table[key]
    for k, v in table.items():
        if not isinstance(k, str) or not k.endswith(suffix):
            continue
        parsed = parse_fpr_key(k[: len(k) - len(suffix)])
        if parsed is not None and math.isclose(parsed, t, rel_tol=1e-9):
            return v
    return default
