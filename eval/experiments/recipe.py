"""The recipe study: what each training lever bought, as accuracy against wall time per row.

The frontier table says where each protection lands; this says what it cost to get there,
so a team with a different budget can read off which lever to pull (a longer schedule, a
warm start from their RGB model, a compact frequency layout, federated training). Each row
of the experiment is one point: its levers (frontend and layout, warm start or scratch,
steps, epochs, mode) beside the wall time its training took and the verification it
reached. Rows that have not finished training or verification are listed as missing, never
estimated. Written as ``recipe_study.json`` in the run folder and, with ``--publish``,
``docs/benchmarks/recipe_study.json``.
"""

from __future__ import annotations

from typing import Any

from facepriv.verification.keys import find_fpr, fpr_key

from .frontier import worst_case_leakage

#: the accuracy, TPR and leakage figures compared across rows
TPR_TARGET = 1e-3


def levers(row: dict[str, Any], model: dict[str, Any], image_size: int = 112) -> dict[str, Any]:
    """The recipe of one row in words a reader compares: layout, start, budget."""
    frontend = dict(row.get("frontend") or {})
    fname = str(frontend.get("name", "?"))
    u = int(frontend.get("upsample") or 8)
    side = image_size * u // 8
    if fname == "rgb":
        layout = "pixels"
    else:
        layout = f"TFace x8 ({side}x{side} maps)" if u == 8 else f"compact x{u} ({side}x{side} maps)"
    training = row.get("training") or {}
    warm = training.get("warm_start") or {}
    return {
        "frontend": fname,
        "frontend_options": {k: v for k, v in frontend.items() if k != "name" and not k.endswith("_seed")},
        "layout": layout,
        "mode": row.get("mode"),
        # the donor row's name (the config's init_from, known before the row trains); a model
        # file path only where the row came without its config
        "start": (f"warm start from {row['init_from']}" if row.get("init_from")
                  else f"warm start from {warm['source']}" if warm.get("source") else "scratch"),
        "backbone": {k: model[k] for k in ("name", "width", "embedding_size") if k in model},
        "steps": training.get("steps"),
        "epochs": None if training.get("epochs") is None else round(float(training["epochs"]), 2),
    }


def recipe_study(collected: dict[str, Any], model: dict[str, Any], environment: dict[str, Any],
                 image_size: int = 112) -> dict[str, Any]:
    """One entry per row: levers, wall time, throughput, verification and leakage (if run)."""
    rows = []
    for name, r in collected["rows"].items():
        training = r.get("training") or {}
        v = r.get("verification") or {}
        acc, acc_std = v.get("accuracy") or (None, None)
        tpr = find_fpr(v, TPR_TARGET, (None, None))
        leak, ci, attack = worst_case_leakage(r.get("leakage"))
        rows.append({
            "name": name,
            "levers": levers(r, model, image_size),
            "status": "done" if acc is not None else ("trained" if training else "missing"),
            # seconds of the session(s) that trained it; a resumed row reports its last session
            "train_seconds": training.get("seconds_this_session"),
            "train_seconds_covers_all_steps": training.get("steps_this_session") == training.get("steps")
            if training else None,
            "faces_per_second": training.get("faces_per_second"),
            "accuracy": acc, "accuracy_std": acc_std,
            fpr_key(TPR_TARGET): tpr[0],
            "leakage": {fpr_key(TPR_TARGET): leak, "ci": ci, "attack": attack} if leak is not None else None,
        })
    rgb = next((x for x in rows if x["levers"]["frontend"] == "rgb" and x["accuracy"] is not None), None)
    for x in rows:  # ratios measured within this one run
        x["accuracy_vs_rgb"] = None if rgb is None or x["accuracy"] is None else round(x["accuracy"] / rgb["accuracy"], 4)
    return {
        "benchmark": "recipe_study",
        "question": "what each training lever buys: verification accuracy (LFW folds 5-9, 3,000 pairs) against "
                    "training wall time, per experiment row",
        "environment": environment,
        "rows": rows,
    }
