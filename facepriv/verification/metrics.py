"""Verification metrics from genuine/impostor similarity scores.

Every metric here is computed *exactly* from the scores (no fixed threshold grid, no
nearest-point interpolation), with ties handled the way ``sklearn.metrics.roc_curve`` does:
all pairs with the same score are accepted or rejected together.

Conventions (used everywhere in this module and in its reports):

* Scores are similarities: higher means "more likely the same identity".
* A pair is **accepted iff ``score >= threshold``**. The ROC therefore has one point per
  distinct score value (plus the point ``threshold = +inf``, FPR = TPR = 0), exactly as
  ``roc_curve(..., drop_intermediate=False)``.
* **TPR at FPR = target** is the largest TPR over all thresholds whose FPR is
  ``<= target``. With ``N`` impostor pairs that means at most ``k = floor(target * N)``
  false accepts (``target`` is read as the decimal number it prints as, so
  ``floor(1e-3 * 2000) == 2`` exactly). If ``v`` is the ``(k+1)``-th largest impostor score,
  the operating point accepts exactly the scores ``> v``; the reported threshold is the
  smallest observed score above ``v`` (a real ROC threshold). When ``k == 0`` (target below
  ``1 / N``) the point is *not measurable*: no finite set of impostors can validate it, so
  it is reported as ``None`` with a reason, never as a number.

Scale: the work is two sorts (genuine and impostor scores separately, in their own dtype,
float32 stays float32) and ``searchsorted`` calls, i.e. O(N log N) time and about one
extra copy of the scores in memory. The full ROC (up to N points) is only built when asked
for. ``ScoreAccumulator`` collects scores chunk by chunk for sets that are produced in
batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

__all__ = [
    "DEFAULT_FPR_TARGETS",
    "EerResult",
    "KFoldAccuracy",
    "KFoldVal",
    "OperatingPoint",
    "ScoreAccumulator",
    "ScoreSet",
    "allowed_false_accepts",
    "eer",
    "kfold_accuracy",
    "kfold_val_at_far",
    "roc_auc",
    "roc_curve",
    "tpr_at_fpr",
    "verification_report",
]

#: FPR targets reported by default (IJB-B/C style).
DEFAULT_FPR_TARGETS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)

_AUC_CHUNK = 1 << 22  # genuine scores searched per step when counting ranks for the AUC


# --------------------------------------------------------------------------- validation


def _json_float(x: float | None) -> float | None:
    """Plain float for JSON; non-finite values (reject-all / accept-all thresholds) -> None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _check_scores(scores: object, name: str = "scores") -> np.ndarray:
    """Return ``scores`` as a 1-D float32/float64 array, or raise naming the problem.

    float32 and float64 are kept as they are (so 100M float32 scores stay 400 MB); other
    real dtypes are converted to float64.
    """
    a = np.asarray(scores)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {a.shape}")
    if a.dtype not in (np.float32, np.float64):
        if a.dtype == np.float16:
            a = a.astype(np.float32)
        elif a.dtype.kind in "iub":
            a = a.astype(np.float64)
        else:
            raise TypeError(f"{name} must be real numbers, got dtype {a.dtype}")
    if a.size:
        # min/max propagate NaN and expose +-inf without allocating a mask of N booleans.
        lo, hi = a.min(), a.max()
        if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
            bad = np.flatnonzero(~np.isfinite(a))
            n_nan = int(np.isnan(a[bad]).sum())
            raise ValueError(
                f"{name} contains {bad.size} non-finite values ({n_nan} NaN, "
                f"{bad.size - n_nan} inf), first at index {int(bad[0])}"
            )
    return a


def _check_labels(issame: object, n: int, name: str = "issame") -> np.ndarray:
    """Return ``issame`` as a boolean array of length ``n`` (accepts bool or 0/1 ints)."""
    y = np.asarray(issame)
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} entries but scores has {n}")
    if y.dtype == np.bool_:
        return y
    if y.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be booleans or 0/1, got dtype {y.dtype}")
    if y.size and not np.isin(y, (0, 1)).all():
        bad = np.flatnonzero(~np.isin(y, (0, 1)))
        raise ValueError(f"{name} must contain only 0/1 (or booleans); index {int(bad[0])} is {y[bad[0]]!r}")
    return y.astype(bool)


def _check_targets(targets: Sequence[float] | float, name: str = "fpr_targets") -> list[float]:
    ts = [float(t) for t in np.atleast_1d(np.asarray(targets, dtype=float))]
    for t in ts:
        if not (0.0 < t <= 1.0):
            raise ValueError(f"{name} must lie in (0, 1], got {t!r}")
    return ts


def allowed_false_accepts(target: float, n_impostor: int) -> int:
    """Number of false accepts an FPR target allows: ``floor(target * n_impostor)``.

    Computed in exact rational arithmetic on the decimal value the target prints as, so
    ``allowed_false_accepts(0.29, 100) == 29`` (plain floats would give 28).
    """
    return math.floor(Fraction(repr(float(target))) * int(n_impostor))


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class OperatingPoint:
    """The ROC point for one FPR target (see the module docstring for the convention).

    ``threshold`` accepts pairs with ``score >= threshold``; it is ``+inf`` when even the
    best point rejects every pair (the top ``k + 1`` impostor scores tie with or beat every
    genuine score), in which case ``to_dict`` writes ``None`` and says so in ``note``.
    """

    fpr_target: float
    measurable: bool
    n_genuine: int
    n_impostor: int
    n_false_accepts_allowed: int
    tpr: float | None = None
    threshold: float | None = None
    fpr: float | None = None
    n_false_accepts: int | None = None
    n_true_accepts: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict:
        d = {
            "fpr_target": self.fpr_target,
            "measurable": self.measurable,
            "tpr": self.tpr,
            "threshold": _json_float(self.threshold),
            "fpr": self.fpr,
            "n_false_accepts": self.n_false_accepts,
            "n_false_accepts_allowed": self.n_false_accepts_allowed,
            "n_true_accepts": self.n_true_accepts,
            "n_impostor": self.n_impostor,
            "n_genuine": self.n_genuine,
        }
        if self.reason is not None:
            d["reason"] = self.reason
        if self.measurable and self.threshold is not None and not math.isfinite(self.threshold):
            d["note"] = "threshold is +inf: the operating point rejects every pair"
        return d


@dataclass(frozen=True)
class EerResult:
    """Equal error rate on the piecewise-linear ROC.

    The ROC points are walked from the highest threshold down. ``upper`` is the last point
    with FPR < FNR, ``lower`` the first with FPR >= FNR (adjacent distinct thresholds, so
    the two points bracket the crossing). The EER is where the straight segment between them
    crosses FPR = FNR: with ``d = FNR - FPR`` at each end,
    ``a = d_upper / (d_upper - d_lower)`` and ``eer = FPR_upper + a * (FPR_lower - FPR_upper)``
    (the error of randomising between the two thresholds; exact when ``d_lower == 0``).
    ``threshold`` is the lower point's threshold, the highest threshold at which
    FPR >= FNR; ``upper_threshold`` may be ``+inf`` (the reject-all point).
    """

    eer: float
    threshold: float
    fpr_at_threshold: float
    fnr_at_threshold: float
    upper_threshold: float
    fpr_at_upper: float
    fnr_at_upper: float

    def to_dict(self) -> dict:
        return {
            "eer": self.eer,
            "threshold": _json_float(self.threshold),
            "fpr_at_threshold": self.fpr_at_threshold,
            "fnr_at_threshold": self.fnr_at_threshold,
            "upper_threshold": _json_float(self.upper_threshold),
            "fpr_at_upper": self.fpr_at_upper,
            "fnr_at_upper": self.fnr_at_upper,
        }


# --------------------------------------------------------------------------- core


def _operating_points(gen: np.ndarray, imp: np.ndarray, targets: Sequence[float]) -> list[OperatingPoint]:
    """TPR at FPR targets from ascending-sorted genuine and impostor scores (vectorised)."""
    G, N = int(gen.size), int(imp.size)
    ks = np.array([allowed_false_accepts(t, N) for t in targets], dtype=np.int64)
    ok = ks >= 1
    full = ks >= N  # target allows every impostor: accept all pairs
    pos = np.clip(N - ks - 1, 0, N - 1)
    v = imp[pos]  # (k+1)-th largest impostor score
    j_imp = np.searchsorted(imp, v, side="right")
    j_gen = np.searchsorted(gen, v, side="right")
    fp = N - j_imp
    tp = G - j_gen
    next_imp = np.where(j_imp < N, imp[np.minimum(j_imp, N - 1)].astype(np.float64), np.inf)
    next_gen = np.where(j_gen < G, gen[np.minimum(j_gen, G - 1)].astype(np.float64), np.inf)
    thr = np.minimum(next_imp, next_gen)
    lowest = float(min(imp[0], gen[0]))
    fp = np.where(full, N, fp)
    tp = np.where(full, G, tp)
    thr = np.where(full, lowest, thr)

    points = []
    for i, t in enumerate(targets):
        if not ok[i]:
            points.append(
                OperatingPoint(
                    fpr_target=t,
                    measurable=False,
                    n_genuine=G,
                    n_impostor=N,
                    n_false_accepts_allowed=0,
                    reason=(
                        f"FPR target {t:g} is below 1/N_impostor = 1/{N} = {1 / N:.3g}: "
                        f"floor(target x N_impostor) = 0 false accepts allowed, so no threshold "
                        f"can be validated; needs at least {math.ceil(1 / t)} impostor pairs"
                    ),
                )
            )
            continue
        points.append(
            OperatingPoint(
                fpr_target=t,
                measurable=True,
                n_genuine=G,
                n_impostor=N,
                n_false_accepts_allowed=int(ks[i]),
                tpr=int(tp[i]) / G,
                threshold=float(thr[i]),
                fpr=int(fp[i]) / N,
                n_false_accepts=int(fp[i]),
                n_true_accepts=int(tp[i]),
            )
        )
    return points


def _last_true(a: np.ndarray, pred) -> int:
    """Largest index ``i`` with ``pred(a[i])`` true, for a predicate that is true on a prefix
    of the ascending array ``a``; -1 if it is true nowhere. O(log n) predicate calls."""
    lo, hi = -1, int(a.size)  # invariant: pred true at lo (or lo == -1), false at hi (or hi == n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pred(a[mid]):
            lo = mid
        else:
            hi = mid
    return lo


class ScoreSet:
    """Genuine and impostor scores held sorted, answering every threshold metric exactly.

    Build it with :meth:`from_arrays` (scores + issame) or :meth:`from_split` (genuine and
    impostor arrays), or get one from :class:`ScoreAccumulator`. The two sorted arrays are
    the only state, so memory is one copy of the scores.

    The constructor sorts copies (``copy=True``) or the given arrays in place
    (``copy=False``, for arrays the caller no longer needs); ``assume_sorted=True`` skips the
    sort for arrays already ascending. Mixed float32/float64 inputs are brought to float64.
    """

    def __init__(self, genuine: np.ndarray, impostor: np.ndarray, *, assume_sorted: bool = False, copy: bool = True):
        gen = _check_scores(genuine, "genuine scores")
        imp = _check_scores(impostor, "impostor scores")
        if gen.size == 0:
            raise ValueError("no genuine pairs: TPR, AUC and EER are undefined")
        if imp.size == 0:
            raise ValueError("no impostor pairs: FPR, AUC and EER are undefined")
        if gen.dtype != imp.dtype:  # one dtype, so a threshold taken from one array is exact in the other
            common = np.result_type(gen.dtype, imp.dtype)
            gen, imp = gen.astype(common, copy=False), imp.astype(common, copy=False)
        if not assume_sorted:
            gen = np.sort(gen) if copy else _sort_inplace(gen)
            imp = np.sort(imp) if copy else _sort_inplace(imp)
        self.genuine = gen
        self.impostor = imp

    @classmethod
    def from_arrays(cls, scores: object, issame: object) -> "ScoreSet":
        """Split ``scores`` by ``issame`` (each part is a fresh copy, sorted in place)."""
        s = _check_scores(scores)
        y = _check_labels(issame, s.shape[0])
        return cls(s[y], s[~y], copy=False)

    @classmethod
    def from_split(cls, genuine: object, impostor: object) -> "ScoreSet":
        """From separate genuine and impostor arrays (copied; the caller's arrays are untouched)."""
        return cls(np.asarray(genuine), np.asarray(impostor), copy=True)

    @property
    def n_genuine(self) -> int:
        return int(self.genuine.size)

    @property
    def n_impostor(self) -> int:
        return int(self.impostor.size)

    # Counts at a threshold t (accept iff score >= t). The needle is cast to the arrays'
    # dtype: a Python float needle would make NumPy copy a float32 haystack to float64.
    def _fp(self, t: float) -> int:
        needle = self.impostor.dtype.type(t)
        return self.n_impostor - int(np.searchsorted(self.impostor, needle, side="left"))

    def _fn(self, t: float) -> int:
        needle = self.genuine.dtype.type(t)
        return int(np.searchsorted(self.genuine, needle, side="left"))

    def tpr_at_fpr(self, fpr_targets: Sequence[float] | float = DEFAULT_FPR_TARGETS) -> list[OperatingPoint]:
        """One :class:`OperatingPoint` per target (module docstring gives the convention)."""
        return _operating_points(self.genuine, self.impostor, _check_targets(fpr_targets))

    def roc_at(self, fpr_grid: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """``(fpr_grid, tpr)``: the exact TPR at each FPR of a grid, NaN where not measurable.

        This is the upper envelope of the ROC sampled on the grid: cheap for plots of
        100M-score sets where the full ROC would have 100M points.
        """
        grid = np.asarray(_check_targets(list(np.asarray(fpr_grid, dtype=float)), "fpr_grid"))
        pts = self.tpr_at_fpr(grid)
        tpr = np.array([p.tpr if p.measurable else np.nan for p in pts], dtype=np.float64)
        return grid, tpr

    def roc(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Full ROC ``(fpr, tpr, thresholds)`` identical to
        ``sklearn.metrics.roc_curve(issame, scores, drop_intermediate=False)``: thresholds
        decrease through every distinct score after a leading ``+inf``."""
        thr = np.unique(np.concatenate([self.genuine, self.impostor]))[::-1]
        fps = self.n_impostor - np.searchsorted(self.impostor, thr, side="left")
        tps = self.n_genuine - np.searchsorted(self.genuine, thr, side="left")
        fpr = np.concatenate([[0.0], fps / self.n_impostor])
        tpr = np.concatenate([[0.0], tps / self.n_genuine])
        thresholds = np.concatenate([[np.inf], thr.astype(np.float64)])
        return fpr, tpr, thresholds

    def auc(self) -> float:
        """Exact area under the ROC (trapezoid over every distinct threshold).

        Equal to the Mann-Whitney statistic P(g > i) + P(g == i) / 2, counted in integers
        with ``searchsorted`` over chunks of genuine scores (no N-point ROC is built).
        """
        less = 0
        ties = 0
        for start in range(0, self.n_genuine, _AUC_CHUNK):
            g = self.genuine[start : start + _AUC_CHUNK]
            left = np.searchsorted(self.impostor, g, side="left")
            right = np.searchsorted(self.impostor, g, side="right")
            less += int(left.sum(dtype=np.int64))
            ties += int((right - left).sum(dtype=np.int64))
        return (2 * less + ties) / (2 * self.n_genuine * self.n_impostor)

    def eer(self) -> EerResult:
        """Equal error rate (see :class:`EerResult` for the interpolation), found by
        bisection over the sorted scores in O(log^2 N)."""
        G, N = self.n_genuine, self.n_impostor

        def fpr_ge_fnr(t) -> bool:  # FP/N >= FN/G, in exact integers
            return self._fp(t) * G >= self._fn(t) * N

        # Highest distinct score at which FPR >= FNR (true for small thresholds: at the
        # lowest score FPR = 1 and FNR = 0, so it always exists).
        cands = []
        for a in (self.genuine, self.impostor):
            i = _last_true(a, fpr_ge_fnr)
            if i >= 0:
                cands.append(float(a[i]))
        t_lo = max(cands)
        nxt = [float(a[j]) for a in (self.genuine, self.impostor) if (j := int(np.searchsorted(a, t_lo, side="right"))) < a.size]
        t_hi = min(nxt) if nxt else math.inf

        fpr_lo, fnr_lo = self._fp(t_lo) / N, self._fn(t_lo) / G
        if math.isinf(t_hi):
            fpr_hi, fnr_hi = 0.0, 1.0
        else:
            fpr_hi, fnr_hi = self._fp(t_hi) / N, self._fn(t_hi) / G
        d_hi = fnr_hi - fpr_hi  # > 0
        d_lo = fnr_lo - fpr_lo  # <= 0
        a = d_hi / (d_hi - d_lo)
        value = fpr_hi + a * (fpr_lo - fpr_hi)
        return EerResult(
            eer=float(value),
            threshold=t_lo,
            fpr_at_threshold=fpr_lo,
            fnr_at_threshold=fnr_lo,
            upper_threshold=t_hi,
            fpr_at_upper=fpr_hi,
            fnr_at_upper=fnr_hi,
        )

    def report(self, fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS) -> dict:
        """Plain JSON-able dict: counts, TPR@FPR for every target, AUC and EER."""
        return {
            "n_genuine": self.n_genuine,
            "n_impostor": self.n_impostor,
            "score_dtype": str(self.genuine.dtype),
            "tpr_at_fpr": [p.to_dict() for p in self.tpr_at_fpr(fpr_targets)],
            "auc": self.auc(),
            "eer": self.eer().to_dict(),
        }


def _sort_inplace(a: np.ndarray) -> np.ndarray:
    a.sort()
    return a


class ScoreAccumulator:
    """Collect scores chunk by chunk (e.g. one batch of pairs at a time), then evaluate.

    >>> acc = ScoreAccumulator()
    >>> for scores, issame in batches:   # doctest: +SKIP
    ...     acc.add(scores, issame)
    >>> acc.result().tpr_at_fpr()         # doctest: +SKIP

    ``dtype`` is the storage type of the collected scores (default float32: 100M scores take
    400 MB; pass ``np.float64`` to keep double precision). ``result()`` concatenates and
    sorts once (peak about twice the collected scores) and keeps the merged arrays, so more
    chunks may be added afterwards.
    """

    def __init__(self, dtype: np.dtype | type = np.float32):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self._gen: list[np.ndarray] = []
        self._imp: list[np.ndarray] = []
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, scores: object, issame: object) -> None:
        s = _check_scores(scores)
        y = _check_labels(issame, s.shape[0])
        self._gen.append(s[y].astype(self.dtype, copy=False))
        self._imp.append(s[~y].astype(self.dtype, copy=False))
        self._n += int(s.shape[0])

    def result(self) -> ScoreSet:
        gen = _merge(self._gen, self.dtype)
        imp = _merge(self._imp, self.dtype)
        gen.sort()
        imp.sort()
        self._gen, self._imp = [gen], [imp]
        return ScoreSet(gen, imp, assume_sorted=True)


def _merge(chunks: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    if not chunks:
        return np.empty(0, dtype)
    if len(chunks) == 1:
        return chunks[0]
    out = np.concatenate(chunks)
    chunks.clear()
    return out


# --------------------------------------------------------------------------- one-shot API


def tpr_at_fpr(scores: object, issame: object, fpr_targets: Sequence[float] | float = DEFAULT_FPR_TARGETS) -> list[OperatingPoint]:
    """TPR at each FPR target; see the module docstring for the exact convention."""
    return ScoreSet.from_arrays(scores, issame).tpr_at_fpr(fpr_targets)


def roc_curve(scores: object, issame: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full ROC ``(fpr, tpr, thresholds)``, as sklearn's ``roc_curve(drop_intermediate=False)``."""
    return ScoreSet.from_arrays(scores, issame).roc()


def roc_auc(scores: object, issame: object) -> float:
    """Exact ROC AUC with ties counted as one half (equals ``roc_auc_score``)."""
    return ScoreSet.from_arrays(scores, issame).auc()


def eer(scores: object, issame: object) -> EerResult:
    """Equal error rate with its threshold; see :class:`EerResult`."""
    return ScoreSet.from_arrays(scores, issame).eer()


# --------------------------------------------------------------------------- k-fold protocols


def _fold_ids(n: int, folds: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """Fold index per pair: ``int k`` gives k consecutive folds (the first ``n % k`` one pair
    larger, as ``sklearn.model_selection.KFold(shuffle=False)`` and LFW's 10 x 600 layout);
    an array gives the fold of each pair explicitly."""
    if isinstance(folds, (int, np.integer)):
        k = int(folds)
        if k < 2:
            raise ValueError(f"need at least 2 folds, got {k}")
        if k > n:
            raise ValueError(f"cannot split {n} pairs into {k} folds")
        sizes = np.full(k, n // k, dtype=np.int64)
        sizes[: n % k] += 1
        return np.repeat(np.arange(k, dtype=np.int32), sizes)
    f = np.asarray(folds)
    if f.shape != (n,):
        raise ValueError(f"folds must be an int or one fold id per pair (shape ({n},)), got shape {f.shape}")
    if f.dtype.kind not in "iu":
        raise TypeError(f"fold ids must be integers, got dtype {f.dtype}")
    _, f = np.unique(f, return_inverse=True)
    if f.max(initial=0) < 1:
        raise ValueError("fold ids name a single fold; need at least 2")
    return f


def _midpoint(lower: float, upper: float, dtype: np.dtype) -> float:
    """A threshold strictly above ``lower`` and at most ``upper`` (their midpoint when it
    can be represented), so thresholds learned on training folds sit in the middle of the
    gap between the two training scores that bracket the decision.

    The value is representable in the scores' ``dtype``: NumPy compares a float32 array
    with a Python float in float32, so a float64 midpoint could round back onto ``lower``.
    """
    if math.isinf(lower):
        return lower
    f = np.dtype(dtype).type
    if math.isinf(upper):
        return float(np.nextafter(f(lower), f(math.inf)))
    mid = float(f(lower + (upper - lower) / 2.0))
    return mid if lower < mid <= upper else upper


@dataclass(frozen=True)
class KFoldAccuracy:
    """LFW-style accuracy: per fold, the best-accuracy threshold on the other folds is
    applied to the held-out fold. ``std`` is the population std (ddof=0) as in insightface's
    ``verification.py``."""

    mean: float
    std: float
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    n_folds: int

    def to_dict(self) -> dict:
        return {
            "accuracy_mean": self.mean,
            "accuracy_std": self.std,
            "std": "population (ddof=0), as insightface",
            "n_folds": self.n_folds,
            "fold_accuracies": self.fold_accuracies,
            "fold_thresholds": [_json_float(t) for t in self.fold_thresholds],
        }


def _best_accuracy_threshold(gen: np.ndarray, imp: np.ndarray) -> float:
    """Threshold maximising (true accepts + true rejects) on sorted training scores.

    Every distinct training score is a candidate cut (plus reject-all), evaluated at once
    with ``searchsorted``. Among equally good cuts the highest threshold wins (fewest false
    accepts, like insightface's first-argmax over ascending distances); the returned value
    is the midpoint of the gap below the winning cut (-inf = accept all, +inf = reject all).
    """
    u = np.unique(np.concatenate([gen, imp]))  # ascending distinct candidates
    correct = (gen.size - np.searchsorted(gen, u, side="left")) + np.searchsorted(imp, u, side="left")
    # order candidates from the highest threshold down, reject-all first
    cand = np.concatenate([[imp.size], correct[::-1]])
    best = int(np.argmax(cand))
    if best == 0:
        return math.inf
    i = u.size - best  # index in u of the winning cut: accept scores >= u[i]
    lower = float(u[i - 1]) if i > 0 else -math.inf
    return _midpoint(lower, float(u[i]), u.dtype)


def kfold_accuracy(scores: object, issame: object, folds: int | Sequence[int] | np.ndarray = 10) -> KFoldAccuracy:
    """LFW-style k-fold verification accuracy (see :class:`KFoldAccuracy`).

    The threshold search is exact: every distinct training score is a candidate, all
    candidates evaluated with one vectorised ``searchsorted`` per fold.
    """
    s = _check_scores(scores)
    y = _check_labels(issame, s.shape[0])
    fid = _fold_ids(s.shape[0], folds)
    k = int(fid.max()) + 1
    accs, thrs = [], []
    for f in range(k):
        test = fid == f
        train = ~test
        gen = np.sort(s[train & y])
        imp = np.sort(s[train & ~y])
        t = _best_accuracy_threshold(gen, imp)
        pred = s[test] >= t
        accs.append(float(np.mean(pred == y[test])))
        thrs.append(t)
    return KFoldAccuracy(
        mean=float(np.mean(accs)), std=float(np.std(accs)), fold_accuracies=accs, fold_thresholds=thrs, n_folds=k
    )


@dataclass(frozen=True)
class KFoldVal:
    """LFW-style VAL@FAR: per fold, the operating point for FAR <= target is found on the
    training folds (same convention as :func:`tpr_at_fpr`), its threshold moved to the
    midpoint of the training gap it sits in, and VAL (TPR) and FAR measured on the held-out
    fold. ``None`` values come with ``reason`` when a fold cannot be measured."""

    far_target: float
    val_mean: float | None
    val_std: float | None
    far_mean: float | None
    fold_vals: list[float | None]
    fold_fars: list[float | None]
    fold_thresholds: list[float | None]
    n_folds: int
    reason: str | None = None

    def to_dict(self) -> dict:
        d = {
            "far_target": self.far_target,
            "val_mean": self.val_mean,
            "val_std": self.val_std,
            "far_mean": self.far_mean,
            "std": "population (ddof=0), as insightface",
            "n_folds": self.n_folds,
            "fold_vals": self.fold_vals,
            "fold_fars": self.fold_fars,
            "fold_thresholds": [_json_float(t) for t in self.fold_thresholds],
        }
        if self.reason is not None:
            d["reason"] = self.reason
        return d


def kfold_val_at_far(
    scores: object, issame: object, far: float = 1e-3, folds: int | Sequence[int] | np.ndarray = 10
) -> KFoldVal:
    """LFW-style VAL at FAR (see :class:`KFoldVal`); mean and population std over folds."""
    (far,) = _check_targets(far, "far")
    s = _check_scores(scores)
    y = _check_labels(issame, s.shape[0])
    fid = _fold_ids(s.shape[0], folds)
    k = int(fid.max()) + 1
    vals: list[float | None] = []
    fars: list[float | None] = []
    thrs: list[float | None] = []
    reasons = []
    for f in range(k):
        test = fid == f
        train = ~test
        gen_tr = np.sort(s[train & y])
        imp_tr = np.sort(s[train & ~y])
        gen_te = s[test & y]
        imp_te = s[test & ~y]
        why = None
        if gen_tr.size == 0 or imp_tr.size == 0:
            why = f"fold {f}: training folds lack {'genuine' if gen_tr.size == 0 else 'impostor'} pairs"
        elif gen_te.size == 0 or imp_te.size == 0:
            why = f"fold {f}: held-out fold lacks {'genuine' if gen_te.size == 0 else 'impostor'} pairs"
        else:
            (pt,) = _operating_points(gen_tr, imp_tr, [far])
            if not pt.measurable:
                why = f"fold {f}: {pt.reason}"
        if why is not None:
            reasons.append(why)
            vals.append(None)
            fars.append(None)
            thrs.append(None)
            continue
        # accept scores above v, the (k+1)-th largest training impostor; threshold mid-gap
        kk = pt.n_false_accepts_allowed
        if kk >= imp_tr.size:
            t = -math.inf
        else:
            v = float(imp_tr[imp_tr.size - kk - 1])
            t = _midpoint(v, float(pt.threshold), imp_tr.dtype)
        vals.append(float(np.count_nonzero(gen_te >= t)) / gen_te.size)
        fars.append(float(np.count_nonzero(imp_te >= t)) / imp_te.size)
        thrs.append(t)
    if reasons:
        return KFoldVal(far, None, None, None, vals, fars, thrs, k, reason="; ".join(reasons))
    return KFoldVal(
        far_target=far,
        val_mean=float(np.mean(vals)),
        val_std=float(np.std(vals)),
        far_mean=float(np.mean(fars)),
        fold_vals=vals,
        fold_fars=fars,
        fold_thresholds=thrs,
        n_folds=k,
    )


# --------------------------------------------------------------------------- report


def verification_report(
    scores: object,
    issame: object,
    folds: int | Sequence[int] | np.ndarray | None = None,
    *,
    fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
    val_far: float = 1e-3,
) -> dict:
    """Every verification metric for one score set, as plain JSON-able values.

    ``folds``: ``None`` runs the LFW protocol with 10 consecutive folds (skipped, with a
    reason, when there are fewer than 10 pairs); an int gives that many consecutive folds;
    an array gives the fold of each pair; ``0`` skips the k-fold metrics (IJB-style sets).
    """
    s = _check_scores(scores)
    y = _check_labels(issame, s.shape[0])
    out = {"n_pairs": int(s.shape[0])}
    out.update(ScoreSet(s[y], s[~y], copy=False).report(fpr_targets))
    out["conventions"] = {
        "accept": "score >= threshold",
        "tpr_at_fpr": "largest TPR with FPR <= target; false accepts allowed = floor(target * n_impostor); "
        "targets below 1/n_impostor are not measurable",
        "eer": "linear interpolation on the ROC segment crossing FPR = FNR",
    }
    if folds is False or (isinstance(folds, (int, np.integer)) and int(folds) == 0):
        return out
    if folds is None:
        if s.shape[0] < 10:
            reason = f"k-fold metrics skipped: {s.shape[0]} pairs cannot fill 10 folds"
            out["accuracy"] = {"skipped": reason}
            out["val_at_far"] = {"skipped": reason}
            return out
        folds = 10
    out["accuracy"] = kfold_accuracy(s, y, folds).to_dict()
    out["val_at_far"] = kfold_val_at_far(s, y, val_far, folds).to_dict()
    return out
