"""The privacy–utility frontier: one point per model, x = identity leakage, y = accuracy.

Why a picture: the results table answers "how good is row X"; the frontier answers the
question users ask — how much accuracy does each protection cost, for how much privacy —
and shows at a glance whether any configuration reaches the useful-and-private corner.

* x: leakage = TPR at FPR 1e-3 of the strongest attack against the row's frontend (best of
  every attack and knowledge level), judged by an independent recogniser; error bar = the
  attack's bootstrap confidence interval over victims when the attack report has one.
* y: verification accuracy; error bar = the spread over evaluation repetitions.
* the raw-image point: what an attacker gets from the unprotected face (leakage of raw
  images) at the RGB row's accuracy; the ideal corner (no leakage, the RGB row's accuracy)
  and the target region (leakage <= ``target_leakage``, accuracy >= ``target_ratio`` x RGB).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facepriv.verification.keys import find_fpr

#: the target region of the frontier issue: leakage <= 0.05 and accuracy >= 0.90 x RGB
TARGET_LEAKAGE = 0.05
TARGET_RATIO = 0.90


def worst_case_leakage(leakage: dict[str, Any] | None) -> tuple[float | None, tuple[float, float] | None, str | None]:
    """The strongest attack over knowledge levels: (TPR@1e-3, its CI if known, which attack)."""
    best: tuple[float | None, tuple[float, float] | None, str | None] = (None, None, None)
    for level in ("public", "recovered", "secret"):
        r = (leakage or {}).get(level) or {}
        v = find_fpr(r, 1e-3)
        if v is not None and (best[0] is None or v > best[0]):
            ci = find_fpr(r, 1e-3, suffix="_ci")
            best = (float(v), tuple(ci) if ci else None, f"{r.get('best_attack')} ({level})")
    return best


#: unprotected frontends whose output determines the face exactly: how an attacker gets it back
LOSSLESS_FRONTENDS = {"rgb": "the image itself", "dct": "the image itself (exact inverse DCT)"}


def unprotected_leakage(row: dict[str, Any], raw_images_leakage: dict[str, Any] | None) -> tuple[float | None, str] | None:
    """(leakage, how) for a row whose frontend releases the face losslessly, else None.

    RGB releases the face itself and DCT an orthogonal transform of it (its exact inverse,
    block_idct, rebuilds the face to float precision): their leakage is the raw images'
    (measured as a baseline of every attack run), not a separate attack.
    """
    how = LOSSLESS_FRONTENDS.get((row.get("frontend") or {}).get("name"))
    return None if how is None else (find_fpr(raw_images_leakage, 1e-3), how)


def frontier_points(collected: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows with both an accuracy and a leakage figure, as plot-ready points."""
    points = []
    for name, r in collected["rows"].items():
        v = r.get("verification") or {}
        acc, acc_std = (v.get("accuracy") or (None, None))
        leak, ci, attack = worst_case_leakage(r.get("leakage"))
        unprotected = unprotected_leakage(r, collected.get("raw_images_leakage"))
        if leak is None and unprotected:
            leak, attack = unprotected
        if acc is None or leak is None:
            continue
        points.append({"name": name, "accuracy": acc, "accuracy_std": acc_std or 0.0, "leakage": leak,
                       "leakage_ci": ci, "attack": attack, "frontend": (r.get("frontend") or {}).get("name")})
    return points


def rgb_accuracy(points: list[dict[str, Any]]) -> float | None:
    rgb = [p["accuracy"] for p in points if p["frontend"] == "rgb"]
    return max(rgb) if rgb else None


def target_hits(points: list[dict[str, Any]]) -> list[str]:
    """Rows inside the target region (useful and private)."""
    ref = rgb_accuracy(points)
    if ref is None:
        return []
    return [p["name"] for p in points if p["leakage"] <= TARGET_LEAKAGE and p["accuracy"] >= TARGET_RATIO * ref]


def plot_frontier(collected: dict[str, Any], path: str | Path, *, title: str = "Privacy-utility frontier") -> Path | None:
    """Write the frontier PNG; None if no row has both numbers yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = frontier_points(collected)
    if not points:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    ref = rgb_accuracy(points)
    if ref is not None:
        ax.fill_between([0.0, TARGET_LEAKAGE], TARGET_RATIO * ref, 1.0, color="tab:green", alpha=0.12,  # data coords
                        label=f"target: leakage ≤ {TARGET_LEAKAGE}, accuracy ≥ {TARGET_RATIO:.0%} of RGB")
        ax.plot([0.0], [ref], marker="*", markersize=16, color="tab:green", linestyle="none",
                label="ideal corner (no leakage, RGB accuracy)")
    raw = find_fpr(collected.get("raw_images_leakage"), 1e-3)
    if raw is not None and ref is not None:
        ax.plot([raw], [ref], marker="X", markersize=11, color="black", linestyle="none",
                label=f"raw images (leakage {raw:.2f})")
    cmap = plt.get_cmap("tab10")
    for i, p in enumerate(points):
        xerr = None
        if p["leakage_ci"]:
            lo, hi = p["leakage_ci"]
            xerr = [[max(0.0, p["leakage"] - lo)], [max(0.0, hi - p["leakage"])]]
        ax.errorbar([p["leakage"]], [p["accuracy"]], xerr=xerr, yerr=[p["accuracy_std"]], fmt="o", capsize=3,
                    color=cmap(i % 10), label=f"{p['name']} ({p['accuracy']:.3f}, {p['leakage']:.3f})")
    ax.set_xlim(-0.02, 1.05)
    lo = min([p["accuracy"] - p["accuracy_std"] for p in points] + ([0.5] if ref is None else [0.45]))
    ax.set_ylim(max(0.0, lo - 0.02), 1.0)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.text(1.0, 0.5, "chance", ha="right", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("identity leakage: TPR@FPR=1e-3 of the strongest attack (lower is more private)")
    ax.set_ylabel("verification accuracy (higher is more useful)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
