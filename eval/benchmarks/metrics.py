"""`facepriv bench metrics`: our TPR@FPR vs ``sklearn.metrics.roc_curve`` on 10M/100M scores.

Both methods run on the same synthetic cosine-like scores (float32, genuine share set by
``--genuine-fraction``, regenerated identically from ``--seed`` in each process). Each
(method, size) runs in its own subprocess so its peak resident memory
(``VmHWM`` in /proc/self/status, reset with /proc/self/clear_refs after the data are made)
is its own; the report gives the RSS before the method ran (interpreter + imports + data),
the peak during it and their difference. Data are generated in chunks so generation
temporaries stay small even where the peak cannot be reset.

* ``ours``: ``ScoreSet.from_arrays`` (split + two sorts) then ``tpr_at_fpr`` for every
  target; AUC and EER on the same sorted arrays are timed separately.
* ``sklearn``: ``roc_curve(issame, scores, drop_intermediate=False)`` then, per target, the
  last ROC point with FPR <= target (``searchsorted`` on its FPR array). Intermediate
  points must be kept: dropping them can lose the best point under a target.

The two must agree on TPR, achieved FPR and threshold for every target; disagreements are
listed in the result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from facepriv.verification.metrics import DEFAULT_FPR_TARGETS

_GEN_CHUNK = 1 << 22


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes", type=float, nargs="+", default=[1e7, 1e8], help="numbers of scored pairs (default: 1e7 1e8)"
    )
    parser.add_argument(
        "--genuine-fraction", type=float, default=0.01, help="share of genuine pairs (default 0.01; IJB-C has 0.0012)"
    )
    parser.add_argument(
        "--targets", type=float, nargs="+", default=list(DEFAULT_FPR_TARGETS), help="FPR targets (default 1e-6 .. 1e-1)"
    )
    parser.add_argument(
        "--skip-sklearn-above",
        type=float,
        default=1e8,
        help="do not run sklearn on sizes above this many pairs (it needs ~50 bytes/pair; default 1e8)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="timed repetitions per method; the minimum is reported")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic scores")


# --------------------------------------------------------------------------- child process


def _make_scores(n: int, genuine_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine-like scores: impostors ~ N(0, 0.1), genuines ~ N(0.45, 0.1), float32 (ties occur
    naturally at this size), written chunk by chunk into preallocated arrays."""
    rng = np.random.default_rng(seed)
    s = np.empty(n, np.float32)
    y = np.empty(n, np.bool_)
    for a in range(0, n, _GEN_CHUNK):
        b = min(n, a + _GEN_CHUNK)
        yc = rng.random(b - a) < genuine_fraction
        sc = rng.standard_normal(b - a, dtype=np.float32)
        sc *= np.float32(0.1)
        sc[yc] += np.float32(0.45)
        s[a:b] = sc
        y[a:b] = yc
    return s, y


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0) so the next peak is the method's own."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak resident memory of this process. VmHWM belongs to the current address space;
    ``ru_maxrss`` is only a fallback because Linux carries the parent's peak across
    fork + exec into it."""
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _run_ours(s, y, targets):
    from facepriv.verification.metrics import ScoreSet

    t0 = time.perf_counter()
    ss = ScoreSet.from_arrays(s, y)
    pts = ss.tpr_at_fpr(targets)
    t1 = time.perf_counter()
    ss.auc()
    ss.eer()
    t2 = time.perf_counter()
    points = [[p.tpr, p.fpr, p.threshold] if p.measurable else None for p in pts]
    return t1 - t0, {"auc_eer_seconds": t2 - t1}, points


def _run_sklearn(s, y, targets):
    from sklearn.metrics import roc_curve

    t0 = time.perf_counter()
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    points = []
    n_imp = int(np.count_nonzero(~y))
    for t in targets:
        i = int(np.searchsorted(fpr, t, side="right")) - 1
        # below 1/N_impostor only the FPR = 0 points qualify: report as not measurable, like ours
        points.append(None if t * n_imp < 1 else [float(tpr[i]), float(fpr[i]), float(thr[i])])
    t1 = time.perf_counter()
    return t1 - t0, {"roc_points": int(fpr.size)}, points


def _child() -> None:
    """Entry point of one measurement subprocess; prints one JSON line."""
    cfg = json.loads(sys.argv[1])
    if cfg["method"] == "sklearn":
        import sklearn.metrics  # noqa: F401  (import cost belongs to the baseline)
    else:
        import facepriv.verification.metrics  # noqa: F401
    s, y = _make_scores(cfg["n"], cfg["genuine_fraction"], cfg["seed"])
    reset = _reset_peak_rss()
    before = _proc_status_mb("VmRSS") if reset else _peak_rss_mb()
    fn = _run_sklearn if cfg["method"] == "sklearn" else _run_ours
    times, extra, points = [], {}, None
    for _ in range(cfg["repeat"]):
        sec, extra, points = fn(s, y, cfg["targets"])
        times.append(sec)
    out = {
        "seconds": min(times),
        "seconds_all": times,
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "peak_reset": reset,
        "n_genuine": int(np.count_nonzero(y)),
        **extra,
        "points": points,
    }
    out["extra_rss_mb"] = round(out["peak_rss_mb"] - out["rss_before_mb"], 1)
    print(json.dumps(out))


def _measure(method: str, n: int, args: argparse.Namespace) -> dict:
    cfg = {
        "method": method,
        "n": n,
        "genuine_fraction": args.genuine_fraction,
        "seed": args.seed,
        "repeat": args.repeat,
        "targets": list(args.targets),
    }
    code = "from facepriv.eval.benchmarks.metrics import _child; _child()"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- comparison


def _compare(targets, ours, theirs) -> tuple[bool, list[dict], float]:
    mismatches, max_diff = [], 0.0
    for t, a, b in zip(targets, ours, theirs):
        if a is None or b is None:
            if a is not b:
                mismatches.append({"target": t, "ours": a, "sklearn": b})
            continue
        diff = max(abs(a[0] - b[0]), abs(a[1] - b[1]), abs(a[2] - b[2]) if np.isfinite(a[2]) or np.isfinite(b[2]) else 0.0)
        max_diff = max(max_diff, diff)
        if diff > 1e-9:
            mismatches.append({"target": t, "ours": a, "sklearn": b})
    return not mismatches, mismatches, max_diff


def run(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    sizes = [int(round(x)) for x in args.sizes]
    if any(n < 2 for n in sizes):
        raise SystemExit("--sizes must be at least 2 pairs")
    if not (0 < args.genuine_fraction < 1):
        raise SystemExit("--genuine-fraction must lie in (0, 1)")
    jobs = [(n, m) for n in sizes for m in ("ours", "sklearn") if m == "ours" or n <= args.skip_sklearn_above]
    res: dict[int, dict] = {n: {} for n in sizes}
    for n, m in tqdm(jobs, desc="bench metrics", unit="run"):
        res[n][m] = _measure(m, n, args)

    runs = []
    for n in sizes:
        ours = res[n]["ours"]
        entry = {"n": n, "ours": {k: v for k, v in ours.items() if k != "points"}}
        if "sklearn" not in res[n]:
            entry["sklearn"] = {"skipped": f"n = {n} > --skip-sklearn-above {args.skip_sklearn_above:g}"}
        else:
            sk = res[n]["sklearn"]
            entry["sklearn"] = {k: v for k, v in sk.items() if k != "points"}
            if "error" not in ours and "error" not in sk:
                ok, mism, diff = _compare(args.targets, ours["points"], sk["points"])
                entry.update(
                    {
                        "agree": ok,
                        "max_abs_diff": diff,
                        "mismatches": mism,
                        "speedup_vs_sklearn": sk["seconds"] / ours["seconds"],
                        "extra_memory_ratio_sklearn_over_ours": (
                            sk["extra_rss_mb"] / ours["extra_rss_mb"] if ours["extra_rss_mb"] > 0 else None
                        ),
                    }
                )
        if "error" not in ours:
            entry["tpr_at_fpr"] = {
                f"{t:g}": (None if p is None else {"tpr": p[0], "fpr": p[1], "threshold": p[2] if np.isfinite(p[2]) else None})
                for t, p in zip(args.targets, ours["points"])
            }
        runs.append(entry)

    print(f"{'pairs':>12} {'ours s':>8} {'sklearn s':>10} {'speedup':>8} {'ours +MB':>9} {'sk +MB':>8} agree")
    for e in runs:
        o, s = e["ours"], e["sklearn"]
        print(
            f"{e['n']:>12,} {o.get('seconds', float('nan')):>8.3f} {s.get('seconds', float('nan')):>10.3f} "
            f"{e.get('speedup_vs_sklearn', float('nan')):>8.1f} {o.get('extra_rss_mb', float('nan')):>9.1f} "
            f"{s.get('extra_rss_mb', float('nan')):>8.1f} {e.get('agree', '-')}"
        )
    return {
        "genuine_fraction": args.genuine_fraction,
        "targets": list(args.targets),
        "dtype": "float32",
        "repeat": args.repeat,
        "seed": args.seed,
        "memory": "VmHWM of a fresh subprocess per (method, size), reset after imports and data; extra = peak - RSS before the method",
        "runs": runs,
    }
