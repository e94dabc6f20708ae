"""Report files for attacks: ``attack.json`` (everything), ``attack.md`` (tables), PNG grids.

The markdown is written for a security review: one table per frontend with a row per attack
and knowledge level (PSNR, SSIM, verification TPR at FPR 1e-3 / 1e-2, rank-1), preceded by
the two reference rows every number should be read against — the raw images (what an
unprotected system leaks) and the naive rendering of the protected tensor — and a summary of
the worst case per frontend (the best attack on each metric), since a defender is only as
strong as the strongest attack tried.
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


def _image_cells(row: Mapping[str, Any]) -> tuple[str, str]:
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
    return _num(ident.get("tpr_at_fpr_1e-3")), _num(ident.get("tpr_at_fpr_1e-2")), _num(ident.get("rank1"))


def worst_case(run: Mapping[str, Any]) -> dict[str, Any]:
    """Best attack result on each metric (the defender's worst case) and which attack got it."""
    out: dict[str, Any] = {}
    keys = {
        "psnr_db": lambda r: (r.get("image") or {}).get("psnr_db", {}).get("mean"),
        "ssim_luma": lambda r: (r.get("image") or {}).get("ssim_luma", {}).get("mean"),
        "tpr_at_fpr_1e-3": lambda r: (r.get("identity") or {}).get("tpr_at_fpr_1e-3"),
        "tpr_at_fpr_1e-2": lambda r: (r.get("identity") or {}).get("tpr_at_fpr_1e-2"),
        "rank1": lambda r: (r.get("identity") or {}).get("rank1"),
    }
    for key, get in keys.items():
        best = None
        for r in run.get("results", []):
            v = get(r)
            if v is not None and (best is None or v > best[0]):
                best = (v, f"{r['attack']} [{r['knowledge']}]")
        out[key] = {"value": best[0], "attack": best[1]} if best else {"value": None, "attack": None}
    return out


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
    lines.append("")
    ident = next((r.get("identity") for r in run.get("results", []) if r.get("identity")), None)
    if ident:
        lines.append(f"Identity metrics: {ident['n_genuine_pairs']} genuine and {ident['n_impostor_pairs']} impostor pairs; "
                     f"rank-1 among {ident['n_identities']} identities (chance {ident['chance_rank1']:.3f}). "
                     "`n/a`: the FPR target is below 1 / (number of impostor pairs), not measurable.")
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
        if r["attack"] == "learned" and r.get("training"):
            t = r["training"]
            lines.append(f"- Learned decoder [{r['knowledge']}]: {t.get('parameters')} parameters, {t.get('steps')} steps "
                         f"(resumed from {t.get('resumed_from')}), final training loss {_num(t.get('final_loss'), 5)}.")
        if r["attack"] == "optimisation" and r.get("details"):
            d = r["details"]
            wins = ", ".join(f"{k}: {v}" for k, v in sorted((d.get("init_wins") or {}).items()) if v)
            lines.append(f"- Optimisation [{r['knowledge']}]: {d.get('steps')} Adam steps from the `{d.get('init')}` "
                         f"initialisation (images per start: {wins or 'n/a'}), TV weight {d.get('tv_weight')}.")
    for note in run.get("notes", []):
        lines.append(f"- Note: {note}")
    if run.get("grid"):
        grid = Path(run["grid"])
        rel = grid.relative_to(out_dir) if out_dir is not None and grid.is_relative_to(out_dir) else grid
        lines += ["", f"![reconstructions]({rel.as_posix()})"]
    lines.append("")
    return lines


def render_markdown(report: Mapping[str, Any], out_dir: Path | None = None) -> str:
    runs = report.get("runs", [])
    lines = ["# Reconstruction attacks", "",
             "Can someone who intercepts the protected tensors (or holds the server) recover the face or the identity? "
             "Each attack below had the frontend's algorithm and public configuration and auxiliary faces of *other* "
             "people; `public` rows had no secret, `secret` rows knew the frontend's secret seed. "
             "PSNR/SSIM compare reconstructions with the original probe images; TPR and rank-1 are the identity "
             "judge's verification and identification of the reconstruction against *other* images of the victims. "
             "See docs/attacks.md for the threat models and how to read this.", ""]
    judge = report.get("judge")
    if judge:
        lines += [f"Identity judge: `{judge.get('kind')}` ({judge.get('model', '')}{', ' + judge['mode'] if judge.get('mode') else ''}).", ""]
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
