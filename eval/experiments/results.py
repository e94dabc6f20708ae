"""The experiment's report: one table, a ROC plot, reconstruction grids, and how it was made.

Everything here is read back from the files the stages wrote (``models/<name>/verify.json``,
``attacks/<name>/attack.json``, ``reference.json``, ``timings.json``), so the report can be
regenerated at any time and a row that has not run yet is shown as missing, never guessed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .config import ExperimentConfig
from .lfw_data import LfwHalf

FPRS = (1e-3, 1e-2)


def _read(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _stat(d: dict[str, Any] | None) -> tuple[float | None, float | None]:
    if not d:
        return None, None
    return d.get("mean"), d.get("std")


def verification_row(verify: dict[str, Any]) -> dict[str, Any]:
    """TPR@FPR, accuracy and EER (mean and spread over repetitions) of one model."""
    from eval.verify import fpr_key

    res = verify["results"][0]
    s = res["summary"]
    row: dict[str, Any] = {"repetitions": res.get("repetitions"), "stochastic": res.get("stochastic")}
    for t in FPRS:
        p = s["tpr_at_fpr"].get(fpr_key(t), {})
        row[f"tpr@{t:g}"] = _stat(p.get("tpr")) if p.get("measurable") else (None, None)
    acc = s.get("accuracy", {})
    row["accuracy"] = (acc.get("mean"), acc.get("std"))
    row["accuracy_fold_std"] = acc.get("fold_std")
    row["eer"] = _stat(s.get("eer"))
    return row


def reference_verification(ref: dict[str, Any]) -> dict[str, Any]:
    rep = ref["report"]
    row: dict[str, Any] = {"repetitions": 1, "stochastic": False}
    for t in FPRS:
        pt = next((p for p in rep["tpr_at_fpr"] if abs(p["fpr_target"] - t) < 1e-15), None)
        row[f"tpr@{t:g}"] = (pt["tpr"], None) if pt and pt.get("measurable", True) and pt.get("tpr") is not None else (None, None)
    acc = rep.get("accuracy", {})
    row["accuracy"] = (acc.get("accuracy_mean"), None)
    row["accuracy_fold_std"] = acc.get("accuracy_std")
    row["eer"] = (rep["eer"]["eer"], None)
    return row


def leakage_row(attack: dict[str, Any]) -> dict[str, Any]:
    """Best attack by identity leakage (TPR@1e-3), for the attacker without secrets and with them."""
    out: dict[str, Any] = {}
    for level in ("public", "secret"):
        rows = [r for r in attack.get("results", []) if r.get("knowledge") == level]
        if not rows:
            continue

        def tpr(r: dict[str, Any]) -> float:
            v = (r.get("identity") or {}).get("tpr_at_fpr_1e-3")
            return -1.0 if v is None else float(v)

        best = max(rows, key=lambda r: (tpr(r), (r.get("identity") or {}).get("rank1") or 0.0))
        best_psnr = max(rows, key=lambda r: r["image"]["psnr_db"]["mean"] or -1.0)
        best_ssim = max(rows, key=lambda r: r["image"]["ssim_luma"]["mean"] or -1.0)
        out[level] = {
            "best_attack": best["attack"],
            "tpr@1e-3": (best.get("identity") or {}).get("tpr_at_fpr_1e-3"),
            "rank1": (best.get("identity") or {}).get("rank1"),
            "psnr": best_psnr["image"]["psnr_db"]["mean"], "psnr_attack": best_psnr["attack"],
            "ssim": best_ssim["image"]["ssim_luma"]["mean"], "ssim_attack": best_ssim["attack"],
        }
    naive = attack.get("baselines", {}).get("naive_rendering", {})
    if naive:
        out["naive"] = {"tpr@1e-3": (naive.get("identity") or {}).get("tpr_at_fpr_1e-3"),
                        "psnr": naive["image"]["psnr_db"]["mean"], "ssim": naive["image"]["ssim_luma"]["mean"]}
    return out


def _f(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "–"


def _pm(pair: tuple[float | None, float | None], digits: int = 3) -> str:
    mean, std = pair
    if mean is None:
        return "n/m"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std else f"{mean:.{digits}f}"


def collect(cfg: ExperimentConfig, out: Path) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for spec in cfg.models:
        d = out / "models" / spec.name
        v = _read(d / "verify.json")
        a = _read(out / "attacks" / spec.name / "attack.json")
        rows[spec.name] = {
            "mode": spec.mode, "frontend": spec.frontend,
            "training": _read(d / "train_done.json"),
            "verification": verification_row(v) if v else None,
            "leakage": leakage_row(a) if a else None,
            "grid": a.get("grid") if a else None,
            "roc": v["results"][0].get("roc") if v else None,
        }
    raw = None
    for spec in cfg.models:
        a = _read(out / "attacks" / spec.name / "attack.json")
        if a and a.get("baselines", {}).get("raw_images"):
            raw = a["baselines"]["raw_images"]["identity"]
            break
    ref = _read(out / "reference.json")
    return {"rows": rows, "reference": reference_verification(ref) if ref else None,
            "reference_judge": ref.get("judge") if ref else None, "raw_images_leakage": raw}


def plot(collected: dict[str, Any], out: Path) -> Path | None:
    from eval.plots import plot_roc

    curves = {name: r["roc"] for name, r in collected["rows"].items() if r.get("roc") and r["roc"].get("fpr")}
    if not curves:
        return None
    return plot_roc(curves, out / "figures" / "roc.png", title="LFW folds 5-9 (3,000 pairs)", fpr_range=(1e-4, 1.0))


def write_results(cfg: ExperimentConfig, layout: LfwHalf, out: Path, *, environment: dict[str, Any],
                  timings: dict[str, float], command: str | None) -> dict[str, Any]:
    out = Path(out)
    collected = collect(cfg, out)
    roc = plot(collected, out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    grids = {}
    for name, r in collected["rows"].items():
        if r.get("grid") and Path(r["grid"]).is_file():
            dest = figures / f"grid_{name}.png"
            shutil.copyfile(r["grid"], dest)
            grids[name] = dest.name
    results = {"config": cfg.to_dict(), "data": layout.to_dict(), "environment": environment, "timings_s": timings,
               "command": command, **collected, "figures": {"roc": roc.name if roc else None, "grids": grids}}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    (out / "results.md").write_text(render_markdown(results), encoding="utf-8")
    return results


def render_markdown(results: dict[str, Any], figures_dir: str = "figures") -> str:
    c = results["data"]["counts"]
    lines = [
        "# LFW-half results",
        "",
        f"Train: {c['train_images']} images of {c['train_identities']} identities (LFW folds 0-4 and no-fold identities "
        f"+ celeba299). Test: {c['test_pairs']} pairs of LFW folds 5-9 ({c['test_identities']} identities never "
        "trained on). Verification columns: mean ± std over evaluation repetitions (fresh frontend randomness); "
        "accuracy is 5-fold. Leakage columns: the best reconstruction attack against each model's frontend, judged "
        "by an independent recogniser (victims: fold 5-9 identities; attacker's faces: LFW training identities).",
        "",
        "| model | training | TPR@FPR=1e-3 | TPR@FPR=1e-2 | accuracy | EER | leakage TPR@1e-3 (no secret) | best attack | "
        "leakage TPR@1e-3 (secret known) | PSNR dB | SSIM |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref = results.get("reference")
    raw = results.get("raw_images_leakage") or {}
    if ref:
        judge = (results.get("reference_judge") or {}).get("kind", "judge")
        lines.append(f"| {judge} on raw RGB (pretrained reference) | pretrained | {_pm(ref['tpr@0.001'])} | "
                     f"{_pm(ref['tpr@0.01'])} | {_pm(ref['accuracy'])} | {_pm(ref['eer'])} | "
                     f"{_f(raw.get('tpr_at_fpr_1e-3'))} (raw image) | – | – | ∞ | 1 |")
    for name, r in results["rows"].items():
        v = r.get("verification")
        lk = r.get("leakage") or {}
        pub, sec = lk.get("public", {}), lk.get("secret", {})
        mode = r["mode"]
        if v is None:
            lines.append(f"| {name} | {mode} | not run | | | | | | | | |")
            continue
        psnr = max((x for x in (pub.get("psnr"), sec.get("psnr")) if x is not None), default=None)
        ssim = max((x for x in (pub.get("ssim"), sec.get("ssim")) if x is not None), default=None)
        lines.append(f"| {name} | {mode} | {_pm(v['tpr@0.001'])} | {_pm(v['tpr@0.01'])} | {_pm(v['accuracy'])} | "
                     f"{_pm(v['eer'])} | {_f(pub.get('tpr@1e-3'))} | {pub.get('best_attack', '–')} | "
                     f"{_f(sec.get('tpr@1e-3')) if sec else '(no secret)'} | {_f(psnr, 1)} | {_f(ssim)} |")
    lines += [
        "",
        "n/m: not measurable (too few impostor pairs or not computed). PSNR/SSIM: the best reconstruction over all "
        "attacks and knowledge levels (luma SSIM). Naive rendering and per-attack numbers are in "
        "`attacks/<model>/attack.json`.",
        "",
    ]
    figs = results.get("figures", {})
    if figs.get("roc"):
        lines += [f"![ROC]({figures_dir}/{figs['roc']})", ""]
    for name, g in figs.get("grids", {}).items():
        lines += [f"Reconstructions, {name} (rows: victims; columns: original, naive rendering, attacks):", "",
                  f"![{name}]({figures_dir}/{g})", ""]
    env = results["environment"]
    t = results.get("timings_s", {})
    lines += [
        "## How this was made",
        "",
        f"Command: `{results.get('command') or 'facepriv experiment lfw-half'}`",
        "",
        f"Hardware: {env.get('processor')} ({env.get('cpu_count')} cores, {env.get('torch_threads')} torch threads), "
        f"GPU: {env.get('cuda') or 'none'}; python {env.get('python')}, torch {env.get('torch')}; {env.get('platform')}.",
        "",
        f"Wall time per stage (s, summed over sessions): {json.dumps(t)}; total {sum(t.values()):.0f} s.",
        "",
    ]
    return "\n".join(lines) + "\n"


def publish_results(results: dict[str, Any], out: Path, dest: Path) -> Path:
    """``dest/results.md`` plus ``dest/results/*.png``: the copy that lives in docs/."""
    figs = dest / "results"
    figs.mkdir(parents=True, exist_ok=True)
    names = [results["figures"].get("roc")] + list(results["figures"].get("grids", {}).values())
    for name in filter(None, names):
        shutil.copyfile(Path(out) / "figures" / name, figs / name)
    path = dest / "results.md"
    path.write_text(render_markdown(results, figures_dir="results"), encoding="utf-8")
    return path
