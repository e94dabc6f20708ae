"""``report.md`` and ``report.html``: the table, three pictures and a reading of them.

The report is built once as a list of blocks (heading, paragraph, table, image, list) and
rendered twice, to Markdown and to a self-contained HTML page (the PNGs embedded), so the
two versions cannot disagree. Pictures:

* ``figures/roc.png``: ROC on the held-out pairs (``facepriv.verification.plots.plot_roc``);
* ``figures/grid.png``: a few victims: original, the protected tensor rendered naively and
  the best attack's reconstruction, per protected frontend (``eval.attacks.report.save_grid``);
* ``figures/frontier.png``: accuracy vs identity leakage
  (``facepriv.eval.experiments.frontier.plot_frontier``, the experiment's frontier plot).

Every number comes from the run's ``metrics.json``; nothing here is measured.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

from facepriv.verification.keys import find_fpr, fpr_key

from .plan import PROTECTED

#: AUC every protected row is meant to reach, and the RGB baseline's (the quickstart's goal)
GOAL_AUC, GOAL_RGB_AUC = 0.85, 0.97

Block = tuple[Any, ...]


# --------------------------------------------------------------------------- numbers


def _f(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "n/m"


def _pm(pair: tuple[Any, Any] | None, digits: int = 3) -> str:
    mean, std = pair if pair else (None, None)
    if mean is None:
        return "n/m"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std else f"{mean:.{digits}f}"


def verification_numbers(entry: dict[str, Any]) -> dict[str, Any]:
    """(mean, std) of accuracy, AUC, EER and TPR@FPR=1e-2 from an ``eval verify`` result entry."""
    from facepriv.eval.experiments.results import verification_row

    row = verification_row({"results": [entry]})
    auc = entry["summary"].get("auc") or {}
    row["auc"] = (auc.get("mean"), auc.get("std"))
    return row


def collected(results: dict[str, Any]) -> dict[str, Any]:
    """The frontier's input (``facepriv.eval.experiments.frontier``): rows -> frontend,
    verification accuracy (mean, std), leakage per knowledge level; the raw-image leakage."""
    raw = results["raw_images_leakage"]
    rows: dict[str, Any] = {}
    for name, m in results["models"].items():
        v = verification_numbers(m["verification"])
        if name == "rgb":  # the RGB frontend sends the image itself: its leakage is the raw images'
            leak = {"public": {fpr_key(1e-3): find_fpr(raw, 1e-3), "best_attack": "the image itself"}}
        else:
            leak = m.get("leakage")
        rows[name] = {"frontend": {"name": name}, "verification": {"accuracy": v["accuracy"]}, "leakage": leak}
    return {"rows": rows, "raw_images_leakage": raw}


# --------------------------------------------------------------------------- figures


def make_figures(results: dict[str, Any], out: Path, grid: dict[str, Any] | None) -> dict[str, str | None]:
    """The three PNGs (paths relative to ``out``; None for a figure with nothing to show)."""
    from facepriv.eval.attacks.report import save_grid
    from facepriv.eval.experiments.frontier import plot_frontier
    from facepriv.verification.plots import plot_roc

    figs = out / "figures"
    paths: dict[str, str | None] = {"roc": None, "grid": None, "frontier": None}
    curves = {name: m["verification"]["roc"] for name, m in results["models"].items()}
    curves["pixels (no training)"] = results["pixel_baseline"]["roc"]
    curves = {k: c for k, c in curves.items() if c.get("fpr")}
    if curves:
        plot_roc(curves, figs / "roc.png", title="Held-out synthetic identities (verification ROC)",
                 fpr_range=(1e-3, 1.0), legend_fpr=1e-2)
        paths["roc"] = "figures/roc.png"
    if grid and grid.get("columns"):
        save_grid(figs / "grid.png", grid["originals"], grid["columns"],
                  title="Victims (held-out identities): original, protected tensor rendered naively, best reconstruction")
        paths["grid"] = "figures/grid.png"
    if plot_frontier(collected(results), figs / "frontier.png", title="Quickstart: accuracy vs identity leakage"):
        paths["frontier"] = "figures/frontier.png"
    return paths


def grid_columns(name: str, samples: dict[str, Any], best_attack: str | None, levels: int) -> dict[str, Any]:
    """This frontend's two grid columns: the naive rendering and the best reconstruction.

    ``best_attack`` is ``"<attack> [<knowledge>]"`` (the reconstruction that leaks the most
    identity); the runner names its sample columns with the knowledge suffix only when it ran
    more than one knowledge level.
    """
    cols = {f"{name}: protected, naive": samples["naive"]}
    if best_attack:
        key = best_attack if levels > 1 else best_attack.split(" [")[0]
        if key in samples:
            cols[f"{name}: {best_attack}"] = samples[key]
    return cols


# --------------------------------------------------------------------------- blocks


def _table(results: dict[str, Any]) -> Block:
    header = ["model", "training", "accuracy", "AUC", "TPR@FPR=1e-2", "leakage: TPR@FPR=1e-3 of the best attack",
              "best attack", "PSNR of best reconstruction (dB)"]
    raw = results["raw_images_leakage"]
    rows = []
    pix = verification_numbers(results["pixel_baseline"])
    rows.append(["pixels (no training)", "–", _pm(pix["accuracy"]), _pm(pix["auc"]), _pm(find_fpr(pix, 1e-2)), "–", "–", "–"])
    for name, m in results["models"].items():
        v = verification_numbers(m["verification"])
        levers = [w for w, on in (("warm start", m.get("warm_start")), ("distilled", m.get("distilled"))) if on]
        train = f"{m['steps']} steps, {m['train_seconds']:.0f} s" + (f" ({', '.join(levers)})" if levers else "")
        if name == "rgb":
            leak = [f"{_f(find_fpr(raw, 1e-3))} (the image itself)", "none needed", "∞"]
        else:
            lk = m.get("leakage") or {}
            best = lk.get("best") or {}
            fpr_note = "" if lk.get("fpr", 1e-3) == 1e-3 else f" (at FPR={lk.get('fpr'):g})"
            psnr = max((x for x in ((lk.get("public") or {}).get("psnr"), (lk.get("secret") or {}).get("psnr"))
                        if x is not None), default=None)
            leak = [_f(best.get("tpr")) + fpr_note, best.get("attack") or "–", _f(psnr, 1)]
        rows.append([name, train, _pm(v["accuracy"]), _pm(v["auc"]), _pm(find_fpr(v, 1e-2)), *leak])
    return ("table", header, rows)


def interpretation(results: dict[str, Any]) -> str:
    """One paragraph that reads the table and pictures, with the run's own numbers."""
    models = results["models"]
    raw = find_fpr(results["raw_images_leakage"], 1e-3)
    auc = {n: verification_numbers(m["verification"])["auc"][0] for n, m in models.items()}
    parts = []
    if "rgb" in auc:
        parts.append(f"The RGB baseline verifies people it never saw at AUC {_f(auc['rgb'])} "
                     f"({'at or above' if (auc['rgb'] or 0) >= GOAL_RGB_AUC else 'below'} the {GOAL_RGB_AUC} aim).")
    prot = [n for n in PROTECTED if n in models]
    if prot:
        said = ", ".join(f"{n} {_f(auc[n])}" for n in prot)
        low = [n for n in prot if (auc[n] or 0) < GOAL_AUC]
        parts.append(f"Trained only on protected tensors, the protected models reach AUC {said}: "
                     + (f"every one clearly above chance (0.5) and at least {GOAL_AUC}." if not low else
                        f"{', '.join(low)} {'stays' if len(low) == 1 else 'stay'} below the {GOAL_AUC} aim at this "
                        "budget."))
    leaks = []
    for n in prot:
        lk = models[n].get("leakage") or {}
        best = lk.get("best") or {}
        if best.get("tpr") is not None:
            leaks.append((n, best["tpr"], best.get("attack"), lk.get("fpr", 1e-3)))
    if leaks and raw is not None:
        desc = "; ".join(f"from {n}, the best attack ({a}) is verified as the victim for {t:.0%} of them at FPR={f:g}"
                         for n, t, a, f in leaks)
        parts.append(f"Protection is not the same as privacy: the identity judge recognises {raw:.0%} of the victims "
                     f"from their raw photos; {desc}.")
        worst = max(leaks, key=lambda x: x[1])
        if worst[1] >= 0.5 * raw:
            parts.append(f"So {worst[0]}'s tensors still carry much of the identity a raw face does "
                         "(the grid shows how recognisable the reconstructions are).")
        else:
            parts.append("The attacks recover much less identity than the raw faces carry (the grid shows how far the "
                         "reconstructions are from the originals).")
    hits = results.get("frontier_target_hits") or []
    parts.append("On the frontier plot the useful-and-private corner is the shaded target region (leakage ≤ 0.05 at "
                 "≥ 90% of RGB's accuracy): " + (f"{', '.join(hits)} reach it." if hits else "no row reaches it here."))
    parts.append("Read all of this as a demonstration, not a benchmark: rendered faces, minutes of CPU training and a "
                 "small attack budget. Longer or stronger attacks (`facepriv attack`, docs/attacks.md) can only raise "
                 "the leakage figures, and real faces are harder to recognise (docs/results.md).")
    return " ".join(parts)


def blocks(results: dict[str, Any], figures: dict[str, str | None]) -> list[Block]:
    plan, data = results["plan"], results["data"]
    judge = results.get("judge") or {}
    out: list[Block] = [
        ("h1", "facepriv quickstart report"),
        ("p", f"Synthetic faces ({plan['image_size']}x{plan['image_size']}): {plan['train_identities']} training "
              f"identities x {plan['train_images']} images; verification on {plan['test_identities']} **held-out** "
              f"identities x {plan['test_images']} images, {data['pairs_count']} pairs (half genuine) in 10 folds. "
              f"Each model: quarter-width IResNet-18, trained for a time budget on {results['threads']} CPU thread(s). "
              "Test images are protected one at a time in eval mode with fresh randomness, as on a device; "
              f"stochastic frontends are scored {plan['repetitions']} times (mean ± std over repetitions)."),
        _table(results),
        ("p", "Chance is accuracy 0.5 and AUC 0.5. n/m: not measurable with this many impostor pairs. Leakage: the "
              "attacker intercepts a victim's protected tensor, reconstructs a face from it, and the identity judge "
              f"({judge.get('chosen', 'n/a')}) verifies the reconstruction against other photos of the victim; the "
              "figure is the share of victims accepted at the false-positive rate shown, for the best attack "
              "(any attack, any knowledge level). For RGB the attacker holds the face itself."),
        ("h2", "What the pictures show"),
        ("p", interpretation(results)),
    ]
    captions = {"roc": "ROC on the held-out pairs (log FPR): higher is better.",
                "grid": "Reconstructions: each row a victim; per protected frontend, the protected tensor rendered "
                        "naively (inverse DCT, zeros for what is missing) and the reconstruction that leaks the most "
                        "identity (the linkage attack outputs an embedding, not a face, so it is not pictured).",
                "frontier": "Accuracy vs leakage: up is more useful, left is more private; the cross is what the raw "
                            "image leaks, the star the ideal corner."}
    for key in ("roc", "grid", "frontier"):
        if figures.get(key):
            out += [("img", key, figures[key]), ("p", captions[key])]
        else:
            out.append(("p", f"({key} figure: nothing to plot in this run)"))
    details = [
        f"Identity judge: **{judge.get('chosen', 'n/a')}**, chosen because {judge.get('why', 'n/a')}.",
        *[f"Recipe: {line}." for line in results["recipe"]],
        "Attacks (no secret known): " + ", ".join(results.get("attacks_run") or []) + "; learned decoder and linkage "
        "network steps per frontend, from its time budget: "
        + (", ".join(f"{n} {a['steps']} ({a['budget_s']:.0f} s)" for n, a in (results.get("attack_steps") or {}).items())
           or "n/a") + ". Per-attack numbers: `attacks/attack.md`.",
    ]
    for name, m in results["models"].items():
        pr = m.get("privacy_report") or {}
        details.append(f"**{name}**: {pr.get('mechanism', 'n/a')}; formal guarantee: {pr.get('formal_guarantee')}. "
                       f"Model: `{m['model_file']}`.")
    details += list(plan.get("notes") or [])
    out += [("h2", "Details"), ("ul", details),
            ("p", f"Wall time up to this report: {results['total_seconds']:.0f} s (stages: "
                  + ", ".join(f"{k} {v:.0f} s" for k, v in results.get("stage_seconds", {}).items()) + ")."),
            ("p", "Try a quickstart model on real aligned 112x112 faces (resized to its 64x64 input; the summary "
                  "warns that such numbers are not the model's accuracy on faces of its size): "
                  f"`facepriv eval verify --checkpoint {results['models'].get('rgb', {}).get('model_file', 'rgb/model.pt')} "
                  "--pairs lfw=lfw.bin --resize --out runs/demo_on_lfw`.")]
    return out


# --------------------------------------------------------------------------- renderers


def to_markdown(items: list[Block]) -> str:
    lines: list[str] = []
    for b in items:
        kind = b[0]
        if kind == "h1":
            lines += [f"# {b[1]}", ""]
        elif kind == "h2":
            lines += [f"## {b[1]}", ""]
        elif kind == "p":
            lines += [b[1], ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in b[1]] + [""]
        elif kind == "table":
            header, rows = b[1], b[2]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]
        elif kind == "img":
            lines += [f"![{b[1]}]({b[2]})", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Escape, then the two Markdown inline forms the report uses: `code` and **bold**."""
    s = html.escape(str(text))
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)


def to_html(items: list[Block], root: Path) -> str:
    """A self-contained page (PNGs embedded as data URIs): it opens anywhere, also mailed alone."""
    body: list[str] = []
    for b in items:
        kind = b[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{_inline(b[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(b[1])}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode((root / b[2]).read_bytes()).decode("ascii")
            body.append(f'<img alt="{html.escape(b[1])}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.3em .6em}"
             "img{max-width:100%}code{background:#f3f3f3}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>facepriv quickstart report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(out: Path, results: dict[str, Any], grid: dict[str, Any] | None) -> dict[str, Path]:
    """``report.md``, ``report.html`` and ``figures/*.png`` in ``out``."""
    from facepriv.eval.experiments.frontier import frontier_points, target_hits

    results["frontier_target_hits"] = target_hits(frontier_points(collected(results)))
    figures = make_figures(results, out, grid)
    results["figures"] = figures
    items = blocks(results, figures)
    md, page = out / "report.md", out / "report.html"
    md.write_text(to_markdown(items), encoding="utf-8")
    page.write_text(to_html(items, out), encoding="utf-8")
    return {"markdown": md, "html": page}


def table_text(results: dict[str, Any]) -> str:
    """The report's table as Markdown, for the terminal."""
    return to_markdown([_table(results)]).rstrip()
