"""PNG plots for verification and training reports (matplotlib, Agg, no pyplot state).

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, so plotting
never touches pyplot's global state, never needs a display, and is safe in worker threads.
matplotlib is imported inside the functions so ``import facepriv.verification.plots`` stays cheap.

ROC curves are drawn on a log FPR axis (1e-6 .. 1 by default) because face verification is
judged at low FPR. Each curve is sampled on a log-spaced FPR grid with the exact
"largest TPR with FPR <= target" rule of :mod:`facepriv.verification.metrics`, so a 100M-score set plots
from a few hundred points, and the grid never goes below 1/N_impostor (lower FPRs are not
measurable). The legend shows each curve's TPR at ``legend_fpr`` (1e-3 by default).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np

from .metrics import ScoreSet

__all__ = ["plot_metric_curves", "plot_roc", "roc_plot_points"]

#: A curve is a ScoreSet (exact), an ``(fpr, tpr)`` pair of arrays (e.g. a full ROC), or a
#: mapping with keys "fpr" and "tpr".
RocLike = Union[ScoreSet, Sequence[Sequence[float]], Mapping[str, Sequence[float]]]


def _tpr_from_arrays(fpr: np.ndarray, tpr: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Largest TPR among points with FPR <= each value of ``at`` (NaN where none has
    0 < FPR <= at, i.e. where the curve has no evidence at that FPR)."""
    order = np.lexsort((tpr, fpr))
    f, t = fpr[order], np.maximum.accumulate(tpr[order])
    idx = np.searchsorted(f, at, side="right") - 1
    out = np.where(idx >= 0, t[np.maximum(idx, 0)], np.nan)
    pos = f[f > 0]
    floor = pos.min() if pos.size else math.inf
    return np.where(at >= floor, out, np.nan)


def roc_plot_points(curve: RocLike, fpr_range: tuple[float, float] = (1e-6, 1.0), n_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` on a log grid inside ``fpr_range``, measurable points only."""
    lo, hi = fpr_range
    if not (0 < lo < hi <= 1):
        raise ValueError(f"fpr_range must satisfy 0 < low < high <= 1, got {fpr_range}")
    # Start the grid at the lowest measurable FPR (1/N_impostor; for arrays, the smallest
    # positive FPR, which is 1/N for a full ROC), nudged up so rounding cannot push it below.
    if isinstance(curve, ScoreSet):
        floor = 1.0 / curve.n_impostor
    else:
        fpr_a, tpr_a = _as_arrays(curve)
        pos = fpr_a[fpr_a > 0]
        floor = float(pos.min()) if pos.size else math.inf
    lo = max(lo, floor * (1 + 1e-12))
    if lo > hi:
        return np.empty(0), np.empty(0)
    grid = np.unique(np.geomspace(lo, hi, n_points))
    if isinstance(curve, ScoreSet):
        _, tpr = curve.roc_at(grid)
    else:
        tpr = _tpr_from_arrays(fpr_a, tpr_a, grid)
    keep = np.isfinite(tpr)
    return grid[keep], tpr[keep]


def _as_arrays(curve: RocLike) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(curve, Mapping):
        fpr, tpr = curve["fpr"], curve["tpr"]
    else:
        fpr, tpr = curve
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    if fpr.ndim != 1 or fpr.shape != tpr.shape:
        raise ValueError(f"fpr and tpr must be 1-D arrays of equal length, got {fpr.shape} and {tpr.shape}")
    if not (np.isfinite(fpr).all() and np.isfinite(tpr).all()):
        raise ValueError("fpr and tpr must be finite")
    return fpr, tpr


def _fmt_fpr(x: float) -> str:
    """1e-3 rather than 0.001: FPR targets are read as powers of ten."""
    mant, exp = f"{x:e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def _legend_value(curve: RocLike, at: float) -> str:
    if isinstance(curve, ScoreSet):
        (p,) = curve.tpr_at_fpr([at])
        return f"{p.tpr:.4f}" if p.measurable else "n/a"
    fpr, tpr = _as_arrays(curve)
    v = _tpr_from_arrays(fpr, tpr, np.array([at]))[0]
    return "n/a" if math.isnan(v) else f"{v:.4f}"


def _new_figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png", bbox_inches="tight")
    return path


def plot_roc(
    curves: Mapping[str, RocLike],
    path: str | Path,
    *,
    title: str = "ROC",
    fpr_range: tuple[float, float] = (1e-6, 1.0),
    legend_fpr: float = 1e-3,
    n_points: int = 400,
    dpi: int = 120,
) -> Path:
    """Write several ROC curves (one per checkpoint / frontend) to one PNG; returns the path.

    The legend label of each curve is ``"<name> (TPR@FPR=1e-3: 0.9876)"`` (``n/a`` when the
    curve has too few impostors to measure that FPR). A dotted vertical line marks
    ``legend_fpr``.
    """
    if not curves:
        raise ValueError("plot_roc needs at least one curve")
    fig = _new_figure((6.4, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        fpr, tpr = roc_plot_points(curve, fpr_range, n_points)
        label = f"{name} (TPR@FPR={_fmt_fpr(legend_fpr)}: {_legend_value(curve, legend_fpr)})"
        ax.plot(fpr, tpr, drawstyle="steps-post", linewidth=1.5, label=label)
    ax.axvline(legend_fpr, color="0.6", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(*fpr_range)
    ax.set_ylim(0.0, 1.005)
    ax.set_xlabel("false positive rate (FPR)")
    ax.set_ylabel("true positive rate (TPR)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path, dpi)


SeriesLike = Union[Mapping[float, float], Sequence[Sequence[float]], tuple]


def _series_arrays(name: str, s: SeriesLike) -> tuple[np.ndarray, np.ndarray]:
    """Accept ``{step: value}``, a tuple ``(steps, values)`` or a list ``[(step, value), ...]``
    (the container type decides, so two-point series are never ambiguous)."""
    if isinstance(s, Mapping):
        x, y = list(s.keys()), list(s.values())
    elif isinstance(s, tuple):
        if len(s) != 2:
            raise ValueError(f"series {name!r}: a tuple must be (steps, values), got {len(s)} items")
        x, y = s
    else:
        pairs = np.asarray(list(s), dtype=np.float64)
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise ValueError(f"series {name!r}: expected {{step: value}}, (steps, values) or [(step, value), ...]")
        x, y = pairs[:, 0], pairs[:, 1]
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"series {name!r}: steps and values differ in length ({x.shape} vs {y.shape})")
    if not np.isfinite(x).all():
        raise ValueError(f"series {name!r}: steps must be finite")
    order = np.argsort(x, kind="stable")
    return x[order], y[order]  # NaN values are drawn as gaps (e.g. a diverged round)


def plot_metric_curves(
    series: Mapping[str, SeriesLike],
    path: str | Path,
    *,
    xlabel: str = "round",
    ylabel: str = "metric",
    title: str | None = None,
    logy: bool = False,
    dpi: int = 120,
) -> Path:
    """Metric vs step (epoch / federated round), one line per series, written as PNG.

    Each series is ``{step: value}``, a tuple ``(steps, values)`` or a list
    ``[(step, value), ...]``; NaN
    values leave a gap instead of failing so a report of a run with a diverged round still
    renders.
    """
    if not series:
        raise ValueError("plot_metric_curves needs at least one series")
    fig = _new_figure((6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    all_int = True
    for name, s in series.items():
        x, y = _series_arrays(name, s)
        all_int &= bool(np.all(x == np.round(x)))
        ax.plot(x, y, marker="o" if x.size <= 50 else None, markersize=3, linewidth=1.5, label=str(name))
    if all_int:  # epochs and rounds are counted, not measured: no 1.5-th round ticks
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path, dpi)
