"""Verification reports: ``metrics.json``, ``summary.md`` and one ROC PNG per set.

Everything here works from the *results dict* that :func:`facepriv.eval.verify.verify` returns (or
that was read back from a ``metrics.json``), so the training quickstart and the results
script can produce the same report without re-running inference::

    from facepriv.eval.report import write_report
    paths = write_report(verify([...], {...}), "runs/eval")

The table has one row per checkpoint x set. A value with ``±`` is the mean ± sample std over
the repetitions of the frontend randomness (only shown when there was more than one);
accuracy additionally has its k-fold std (LFW convention) in its own column. ``n/m`` marks
an FPR target that is *not measurable* on the set (fewer than ``1/FPR`` impostor pairs;
see :mod:`facepriv.verification.metrics`).

Two situations get a warning block above the table, because a reader skimming numbers
must not miss them: an *incomplete* document (``"complete": false``, written while the run
was going or after it failed; it lists what is missing and why) and results computed on
*resized* images (``eval verify --resize``), which are marked ``(resized)`` in the table.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from facepriv.verification.keys import find_fpr, fpr_key, fpr_label
from facepriv.verification.plots import plot_roc

__all__ = ["SUMMARY_FPRS", "load_results", "plot_set_rocs", "summary_markdown", "summary_rows", "write_metrics_json", "write_report"]

#: TPR columns of the summary table
SUMMARY_FPRS: tuple[float, ...] = (1e-4, 1e-3, 1e-2)


def _json_safe(value: Any) -> Any:
    """Plain JSON: NaN/inf -> None, numpy scalars/arrays -> Python (strict JSON readers
    reject NaN, and a report must open anywhere)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar / array, torch tensor
        return _json_safe(value.tolist())
    return value


def write_metrics_json(results: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(results), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``metrics.json`` written by :func:`write_report` (for re-plotting / tables)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read verification results: {e}") from e
    if not isinstance(data, dict) or "results" not in data:
        raise ValueError(f"{path}: not a facepriv verification results file (no 'results' list)")
    return data


# --------------------------------------------------------------------------- table


def _fmt(stat: Mapping[str, Any] | None, scale: float, digits: int, spread: bool) -> str:
    """``mean`` or ``mean ± std`` from a ``_stats`` dict, scaled (100 for percentages)."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    s = f"{stat['mean'] * scale:.{digits}f}"
    if spread and stat.get("std") is not None:
        s += f" ± {stat['std'] * scale:.{digits}f}"
    return s


def summary_rows(results: Mapping[str, Any], fprs: Sequence[float] = SUMMARY_FPRS) -> list[dict[str, str]]:
    """One row of display strings per checkpoint x set (the summary table's content)."""
    rows = []
    for r in results.get("results", []):
        s = r["summary"]
        spread = int(r.get("repetitions", 1)) > 1
        acc = s.get("accuracy", {})
        row = {
            "checkpoint": str(r.get("checkpoint_name", r.get("checkpoint"))),
            "set": str(r["set"]) + (" (resized)" if r.get("resized") else ""),
            "frontend": str(r.get("frontend", {}).get("name", "?")),
            "R": str(r.get("repetitions", 1)) + ("" if r.get("stochastic", True) else " (det.)"),
            "pairs": str(r.get("n_pairs")),
            "accuracy": _fmt(acc, 100, 2, spread) if "mean" in acc else "n/a",
            "fold_std": f"{acc['fold_std'] * 100:.2f}" if acc.get("fold_std") is not None else "n/a",
        }
        for t in fprs:
            p = find_fpr(s.get("tpr_at_fpr"), t)  # results written before fpr_key keyed "1e-03"
            if p is None:
                row[fpr_key(t)] = "–"
            elif not p.get("measurable"):
                row[fpr_key(t)] = "n/m"
            else:
                row[fpr_key(t)] = _fmt(p["tpr"], 100, 2, spread)
        row["eer"] = _fmt(s.get("eer"), 100, 2, spread)
        row["auc"] = _fmt(s.get("auc"), 1, 4, spread)
        rows.append(row)
    return rows


def summary_markdown(results: Mapping[str, Any], fprs: Sequence[float] = SUMMARY_FPRS, title: str = "Verification results") -> str:
    """The ``summary.md`` text: settings, the table, and what the symbols mean."""
    settings = results.get("settings", {})
    head = ["checkpoint", "set", "frontend", "R", "pairs", "accuracy %", "fold σ %"]
    head += [f"TPR@FPR={fpr_label(t)} %" for t in fprs] + ["EER %", "AUC"]
    keys = ["checkpoint", "set", "frontend", "R", "pairs", "accuracy", "fold_std"]
    keys += [fpr_key(t) for t in fprs] + ["eer", "auc"]
    lines = [f"# {title}", ""]
    if settings:
        seed = settings.get("seed")
        lines += [
            f"- protocol: {settings.get('protocol', 'each image protected independently')}",
            f"- repetitions requested: {settings.get('repetitions_requested')} "
            f"(deterministic frontends are scored once); flip-test: {'on' if settings.get('flip') else 'off'}",
            f"- randomness: {'seeded, seed ' + str(seed) + ' (reproducible)' if seed is not None else 'secure (OS CSPRNG), not reproducible'}",
            f"- device: {settings.get('device')}, batch size {settings.get('batch_size')}",
            "",
        ]
    lines += _warnings(results)
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 5 + ["---:"] * (len(head) - 5)) + "|")
    for row in summary_rows(results, fprs):
        lines.append("| " + " | ".join(row[k].replace("|", "\\|") for k in keys) + " |")
    lines += [
        "",
        "- `a ± b`: mean ± sample std over R repetitions of the frontend randomness (each image its own query).",
        "- accuracy %: k-fold verification accuracy (threshold chosen on the other folds); "
        "fold σ: its std over folds (population std, as insightface).",
        "- TPR@FPR: largest TPR with FPR <= target; `n/m`: not measurable "
        "(fewer than 1/FPR impostor pairs, so no threshold can be validated).",
        "- EER: equal error rate on the interpolated ROC; AUC: exact area under the ROC.",
        "- `(det.)`: deterministic frontend, scored once.",
        "- Details (thresholds, VAL@FAR, per-repetition and per-fold values): `metrics.json`. "
        "Definitions: docs/evaluation.md.",
    ]
    plots = results.get("plots")
    if plots:
        lines += ["", "## ROC curves", ""]
        for sname, fname in plots.items():
            lines.append(f"![ROC {sname}]({fname})")
    return "\n".join(lines) + "\n"


def _warnings(results: Mapping[str, Any]) -> list[str]:
    """Quoted warning lines for an incomplete run and for resized images (empty if neither)."""
    out: list[str] = []
    done = results.get("results", [])
    if results.get("complete") is False:
        pending = results.get("pending", [])
        missing = ", ".join(f"{p.get('checkpoint_name')} x {p.get('set')}" for p in pending) or "none"
        out.append(f"> **Incomplete: {len(done)} of {len(done) + len(pending)} checkpoint x set results.** "
                   f"Not evaluated: {missing}.")
        if results.get("error"):
            out.append(f"> Stopped by: {results['error']}")
        out.append("")
    resized = [r for r in done if r.get("resized")]
    if resized:
        out.append("> **Resized images (`--resize`)**: these results are not the models' accuracy on aligned faces "
                   "of their input size and are not comparable with results without resizing.")
        for r in resized:
            z = r["resized"]
            sizes = ", ".join(f"{k}: {v}" for k, v in z.get("from", {}).items())
            out.append(f"> - {r.get('checkpoint_name', r.get('checkpoint'))} x {r['set']}: {z.get('images')} images "
                       f"resized to {z.get('to')} ({sizes}); {z.get('stretched', 0)} stretched (aspect ratio changed)")
        out.append("")
    return out


# --------------------------------------------------------------------------- plots


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "set"


def plot_set_rocs(results: Mapping[str, Any], out_dir: str | os.PathLike[str], legend_fpr: float = 1e-3) -> dict[str, Path]:
    """One PNG per set, every checkpoint on it (baseline and protected variants side by side).

    Curves are the stored mean-over-repetitions ROC of each result (``result["roc"]``), so
    this works from a ``metrics.json`` read back from disk.
    """
    out_dir = Path(out_dir)
    by_set: dict[str, dict[str, Any]] = {}
    for r in results.get("results", []):
        roc = r.get("roc") or {}
        if not roc.get("fpr"):
            continue
        label = str(r.get("checkpoint_name", r.get("checkpoint")))
        fe = r.get("frontend", {}).get("name")
        if fe and fe.lower() not in label.lower():
            label += f" [{fe}]"
        if int(r.get("repetitions", 1)) > 1:
            label += f" (mean of {r['repetitions']})"
        by_set.setdefault(str(r["set"]), {})[label] = {"fpr": roc["fpr"], "tpr": roc["tpr"]}
    paths: dict[str, Path] = {}
    used: set[str] = set()
    for sname, curves in by_set.items():
        fname = f"roc_{_safe_name(sname)}.png"
        k = 2
        while fname in used:
            fname = f"roc_{_safe_name(sname)}_{k}.png"
            k += 1
        used.add(fname)
        paths[sname] = plot_roc(curves, out_dir / fname, title=f"ROC — {sname}", legend_fpr=legend_fpr)
    return paths


def write_report(results: Mapping[str, Any], out_dir: str | os.PathLike[str], *, plots: bool = True,
                 title: str = "Verification results") -> dict[str, Any]:
    """Write ``metrics.json``, ``summary.md`` and ``roc_<set>.png`` into ``out_dir``.

    Returns ``{"metrics": path, "summary": path, "plots": {set: path}}``. The results dict
    is not modified; the written JSON gains a ``plots`` map (set -> PNG file name).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = dict(results)
    pngs = plot_set_rocs(data, out_dir) if plots else {}
    data["plots"] = {s: p.name for s, p in pngs.items()}
    metrics = write_metrics_json(data, out_dir / "metrics.json")
    summary = out_dir / "summary.md"
    summary.write_text(summary_markdown(data, title=title), encoding="utf-8")
    return {"metrics": metrics, "summary": summary, "plots": pngs}
