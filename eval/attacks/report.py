"""Report files for attacks: ``attack.json`` (everything), ``attack.md`` (tables), PNG grids.

The markdown is written for a security review. It opens with the headline — per frontend and
knowledge level, the best attack per victim (the union of all attacks held to the stated
FPR) — and the worst case per frontend (the best single attack on each metric), since a
defender is only as strong as the strongest attack tried. Then one table per frontend with a
row per attack and knowledge level (PSNR, SSIM, verification TPR at FPR 1e-3 / 1e-2, rank-1,
each identity figure with its bootstrap interval), preceded by the two reference rows every
number should be read against — the raw images (what an unprotected system leaks) and the
naive rendering of the protected tensor — and followed by what the attacker's views placed
correctly, each learned network's budget and convergence check, the table-recovery curve and
the gradient-inversion table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor

from facepriv.eval.attacks.metrics import json_safe

__all__ = ["save_grid", "render_markdown", "write_report", "worst_case"]


def save_grid(path: str | Path, originals: Tensor, columns: Mapping[str, Tensor], *, title: str = "",
              row_labels: Sequence[str] | None = None, dpi: int = 110) -> Path:
    """PNG grid: rows = victims, columns = original then each entry of ``columns`` (N x 3 x H x W in [0, 1])."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = ["original", *columns]
    images = [originals, *columns.values()]
    rows = originals.shape[0]
    for name, imgs in zip(names, images):
        if imgs.shape[0] < rows or imgs.dim() != 4 or imgs.shape[1] != 3:
            raise ValueError(f"grid column {name!r}: expected at least {rows} RGB images, got shape {tuple(imgs.shape)}")
    fig = Figure(figsize=(1.25 * len(names) + 0.6, 1.3 * rows + 0.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, len(names), squeeze=False)
    for r in range(rows):
        for c, (name, imgs) in enumerate(zip(names, images)):
            ax = axes[r][c]
            ax.imshow(imgs[r].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name.replace(" [", "\n["), fontsize=7)
            if c == 0 and row_labels is not None and r < len(row_labels):
                ax.set_ylabel(str(row_labels[r])[:18], fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


# ------------------------------------------------------------------------------ markdown
def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{digits}f}"


def _with_ci(ident: Mapping[str, Any], key: str) -> str:
    """A figure with its bootstrap interval, ``0.859 (0.80–0.91)``, when one was computed."""
    value = _num(ident.get(key))
    ci = (ident.get("ci") or {}).get(key)
    return f"{value} ({ci[0]:.2f}–{ci[1]:.2f})" if ci and ident.get(key) is not None else value


def _image_cells(row: Mapping[str, Any]) -> tuple[str, str]:
    if "image" in row and row["image"] is None:
        return "–", "–"  # linkage: no image
    img = row.get("image")
    if not img:
        return "∞", "1.000"
    p = img["psnr_db"]
    psnr_cell = "∞" if p.get("n_capped") and p["n_capped"] == p.get("n") else _num(p["mean"], 2)
    return psnr_cell, _num(img["ssim_luma"]["mean"], 3)


def _identity_cells(row: Mapping[str, Any]) -> tuple[str, str, str]:
    ident = row.get("identity")
    if not ident:
        return "–", "–", "–"
    return _with_ci(ident, "tpr_at_fpr_1e-3"), _with_ci(ident, "tpr_at_fpr_1e-2"), _with_ci(ident, "rank1")


def worst_case(run: Mapping[str, Any]) -> dict[str, Any]:
    """Best attack result on each metric (the defender's worst case) and which attack got it.

    Only rows that answer "is this probe the victim, against the victim's raw photos" count
    (protected-to-protected linkage answers another question)."""
    out: dict[str, Any] = {}
    keys = {
        "psnr_db": lambda r: ((r.get("image") or {}).get("psnr_db") or {}).get("mean"),
        "ssim_luma": lambda r: ((r.get("image") or {}).get("ssim_luma") or {}).get("mean"),
        "tpr_at_fpr_1e-3": lambda r: (r.get("identity") or {}).get("tpr_at_fpr_1e-3"),
        "tpr_at_fpr_1e-2": lambda r: (r.get("identity") or {}).get("tpr_at_fpr_1e-2"),
        "rank1": lambda r: (r.get("identity") or {}).get("rank1"),
    }
    rows = [r for r in run.get("results", []) if r.get("task", "probe vs raw gallery") == "probe vs raw gallery"]
    for key, get in keys.items():
        best = None
        for r in rows:
            v = get(r)
            if v is not None and (best is None or v > best[0]):
                best = (v, f"{r['attack']} [{r['knowledge']}]")
        out[key] = {"value": best[0], "attack": best[1]} if best else {"value": None, "attack": None}
    return out


def _convergence_line(name: str, level: str, t: Mapping[str, Any]) -> str:
    conv = t.get("convergence") or {}
    line = (f"- {name} [{level}]: {t.get('parameters')} parameters, {t.get('steps')} steps "
            f"(resumed from {t.get('resumed_from')}), final training loss {_num(t.get('final_loss'), 5)}.")
    if conv.get("check", "none") == "none":
        return line + f" Convergence check: none ({conv.get('note', 'fixed budget')})."
    vals = ", ".join(f"{b} steps: {_num(v)}" for b, v in zip(conv.get("budgets", []), conv.get("values", [])))
    verdict = "converged" if conv.get("converged") else "NOT converged (budget-bound: read as a lower bound)"
    return line + f" Convergence check: {conv['check']}; {vals}; {verdict}."


def _recovery_lines(rec: Mapping[str, Any]) -> list[str]:
    lines = ["", "Table recovery from intercepted traffic (no secret): fraction of the secret layouts recovered exactly "
             "against the number of queries collected.", "",
             "| Queries | layouts exact | subsets exact | positions right | false layouts | consistent | time (s) |",
             "|---:|---:|---:|---:|---:|---|---:|"]
    for r in rec.get("curve", []):
        lines.append(f"| {r['n_queries']} | {r['layouts_exact']:.3f} | {r['subsets_exact']:.3f} | "
                     f"{r['position_accuracy']:.3f} | {r['false_layouts']} | {'yes' if r['consistent_structure'] else 'no'} "
                     f"| {r.get('seconds', '–')} |")
    fed = rec.get("fed_score") or {}
    lines += ["", f"The `recovered` rows use the layouts recovered after {rec.get('fed_queries')} queries "
              f"({_num(fed.get('layouts_exact'))} of the layouts exact): compare them with the `secret` rows to see whether "
              "that much traffic makes the public attacker as strong as an insider."]
    return lines


def _gradient_lines(grad: Mapping[str, Any], out_dir: Path | None) -> list[str]:
    lines = ["", f"Gradient inversion of one site's federated update ({grad.get('threat_model')}); dummies in "
             f"{grad.get('dummies')} space, {grad.get('victims')} victims as the sites' local images.", "",
             "| Site update | PSNR (dB) | SSIM (luma) | TPR@FPR=1e-3 | TPR@FPR=1e-2 | Rank-1 | update cos. distance | Time (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in grad.get("settings", []):
        lines.append(f"| {r['site']['label']} | " + " | ".join(_image_cells(r)) + " | " + " | ".join(_identity_cells(r))
                     + f" | {_num(r.get('final_cosine_distance'), 4)} | {r.get('seconds', '–')} |")
    if grad.get("grid"):
        grid = Path(grad["grid"])
        rel = grid.relative_to(out_dir) if out_dir is not None and grid.is_relative_to(out_dir) else grid
        lines += ["", f"![gradient inversion]({rel.as_posix()})"]
    return lines


def _run_markdown(run: Mapping[str, Any], out_dir: Path | None) -> list[str]:
    fe = run["frontend"]
    lines = [f"## Frontend `{fe['name']}`", ""]
    data = run.get("data", {})
    aux, vic = data.get("aux", {}), data.get("victims", {})
    lines.append(f"Auxiliary (attacker) data: {aux.get('images')} images of {aux.get('identities')} identities "
                 f"from `{aux.get('root')}`. Victims: {vic.get('probes')} probe images of {vic.get('victim_identities')} "
                 f"identities from `{vic.get('root')}`, gallery {vic.get('gallery_images')} other images "
                 "of the same people.")
    lines.append("")
    header = "| Attack | Knowledge | PSNR (dB) | SSIM (luma) | TPR@FPR=1e-3 | TPR@FPR=1e-2 | Rank-1 | Time (s) |"
    lines += [header, "|---|---|---:|---:|---:|---:|---:|---:|"]
    base = run.get("baselines", {})
    if "raw_images" in base:
        lines.append("| raw images (upper bound) | – | ∞ | 1.000 | " + " | ".join(_identity_cells(base["raw_images"])) + " | – |")
    if "naive_rendering" in base:
        nb = base["naive_rendering"]
        lines.append("| naive rendering of the tensor | – | " + " | ".join(_image_cells(nb)) + " | "
                     + " | ".join(_identity_cells(nb)) + f" | {nb.get('seconds', '–')} |")
    for r in run.get("results", []):
        lines.append(f"| {r['attack']} | {r['knowledge']} | " + " | ".join(_image_cells(r)) + " | "
                     + " | ".join(_identity_cells(r)) + f" | {r.get('seconds', '–')} |")
    for level, best in (run.get("best_per_victim") or {}).items():
        lines.append(f"| **best attack per victim** | {level} | – | – | " + " | ".join(_identity_cells({"identity": best}))
                     + " | – |")
    lines.append("")
    ident = next((r.get("identity") for r in run.get("results", []) if r.get("identity")), None)
    if ident:
        boot = ident.get("bootstrap")
        ci = (f" Brackets: {boot['level']:.0%} bootstrap intervals over victims ({boot['replicates']} replicates)."
              if boot else "")
        lines.append(f"Identity metrics: {ident['n_genuine_pairs']} genuine and {ident['n_impostor_pairs']} impostor pairs; "
                     f"rank-1 among {ident['n_identities']} identities (chance {ident['chance_rank1']:.3f}). "
                     "`n/a`: the FPR target is below 1 / (number of impostor pairs), not measurable." + ci)
        lines.append("")
    if run.get("best_per_victim"):
        lines.append("Best attack per victim: a pair is accepted if any attack of that knowledge level accepts it, with "
                     "one operating point for the union (each attack's scores ranked among its own impostors, max over "
                     "attacks, FPR re-calibrated), so the row is held to the stated FPR.")
        lines.append("")
    if any(r.get("attack") == "linkage/protected" for r in run.get("results", [])):
        lines.append("`linkage/protected`: both sides protected (a victim's query against other protected queries of "
                     "the victims); no raw face involved. Not part of the fusion (a different question).")
        lines.append("")
    for level, v in run.get("views", {}).items():
        lines.append(f"- Attacker view `{level}`: {v.get('reads')}.")
        diag = v.get("diagnostics")
        if diag:
            lines.append(f"  Placement on victims: {diag.get('position_accuracy', 0):.1%} of channels at the right frequency, "
                         f"{diag.get('query_exactly_placed', 0):.1%} of queries placed exactly.")
        if v.get("note"):
            lines.append(f"  {v['note']}.")
    for r in run.get("results", []):
        if r["attack"] in ("learned", "linkage") and r.get("training"):
            name = "Learned decoder" if r["attack"] == "learned" else "Linkage network"
            lines.append(_convergence_line(name, r["knowledge"], r["training"]))
        if r["attack"] == "optimisation" and r.get("details"):
            d = r["details"]
            wins = ", ".join(f"{k}: {v}" for k, v in sorted((d.get("init_wins") or {}).items()) if v)
            lines.append(f"- Optimisation [{r['knowledge']}]: {d.get('steps')} Adam steps from the `{d.get('init')}` "
                         f"initialisation (images per start: {wins or 'n/a'}), TV weight {d.get('tv_weight')}.")
    for note in run.get("notes", []):
        lines.append(f"- Note: {note}")
    if run.get("table_recovery"):
        lines += _recovery_lines(run["table_recovery"])
    if run.get("gradient"):
        lines += _gradient_lines(run["gradient"], out_dir)
    if run.get("grid"):
        grid = Path(run["grid"])
        rel = grid.relative_to(out_dir) if out_dir is not None and grid.is_relative_to(out_dir) else grid
        lines += ["", f"![reconstructions]({rel.as_posix()})"]
    lines.append("")
    return lines


def render_markdown(report: Mapping[str, Any], out_dir: Path | None = None) -> str:
    runs = report.get("runs", [])
    lines = ["# Attacks on protected faces", "",
             "Can someone who intercepts the protected tensors (or holds the server) recover the face or the identity? "
             "Each attack below had the frontend's algorithm and public configuration and auxiliary faces of *other* "
             "people; `public` rows had no secret, `secret` rows knew the frontend's secret seed, `recovered` rows "
             "had the secret layouts recovered from intercepted traffic. "
             "PSNR/SSIM compare reconstructions with the original probe images; TPR and rank-1 are the identity "
             "judge's verification and identification of the reconstruction (or, for `linkage`, of the embedding "
             "regressed from the protected tensor) against *other* images of the victims. "
             "See docs/attacks.md for the threat models and how to read this.", ""]
    judge = report.get("judge")
    if judge:
        lines += [f"Identity judge: `{judge.get('kind')}` ({judge.get('model', '')}{', ' + judge['mode'] if judge.get('mode') else ''}).", ""]
    heads = [(run, level, best) for run in runs for level, best in (run.get("best_per_victim") or {}).items()]
    if heads:
        lines += ["### Headline: best attack per victim", "",
                  "| Frontend | Knowledge | TPR@FPR=1e-3 | TPR@FPR=1e-2 | Rank-1 | attacks fused | raw-image Rank-1 |",
                  "|---|---|---:|---:|---:|---|---:|"]
        for run, level, best in heads:
            raw = (run.get("baselines", {}).get("raw_images") or {}).get("identity") or {}
            lines.append(f"| {run['frontend']['name']} | {level} | " + " | ".join(_identity_cells({"identity": best}))
                         + f" | {', '.join(best.get('attacks', []))} | {_num(raw.get('rank1'))} |")
        lines.append("")
    if runs:
        lines += ["### Worst case per frontend (best attack on each metric)", "",
                  "| Frontend | PSNR (dB) | SSIM | TPR@FPR=1e-3 | TPR@FPR=1e-2 | Rank-1 | raw-image Rank-1 |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for run in runs:
            w = worst_case(run)
            raw = (run.get("baselines", {}).get("raw_images") or {}).get("identity") or {}
            lines.append(f"| {run['frontend']['name']} | {_num(w['psnr_db']['value'], 2)} | {_num(w['ssim_luma']['value'])} | "
                         f"{_num(w['tpr_at_fpr_1e-3']['value'])} | {_num(w['tpr_at_fpr_1e-2']['value'])} | "
                         f"{_num(w['rank1']['value'])} | {_num(raw.get('rank1'))} |")
        lines.append("")
    for run in runs:
        lines += _run_markdown(run, out_dir)
    return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``attack.json`` (strict JSON: no NaN/inf) and ``attack.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "attack.json"
    js.write_text(json.dumps(json_safe(dict(report)), indent=2, allow_nan=False) + "\n")
    md = out_dir / "attack.md"
    md.write_text(render_markdown(report, out_dir))
    return {"json": js, "markdown": md}
