"""The other half of the demo: what an attacker recovers from each protected frontend.

After training, every protected model's frontend is attacked with the suite of
``facepriv.eval.attacks`` at a small budget (minutes, not hours): the analytic inversions
(every fill) and a short learned decoder, plus the linkage attack when the suite has it. The
attacker's auxiliary faces are the *training* identities; the victims are the *held-out*
identities (one probe each, the rest their gallery), so the attacker never saw the victims
(checked: ``check_disjoint``). Identity leakage is the verification TPR at FPR = 1e-3 of the
best attack, as judged by an identity judge that the attacks never use.

The judge (``--judge``): ``dlib`` is an independent recogniser but was trained on real
faces, and on the synthetic faces it recognises the raw held-out images only weakly; a judge
that cannot recognise the raw faces reports little leakage for any reconstruction, which
would flatter every frontend. So ``auto`` scores each available judge on the raw held-out
probes and keeps the one that recognises them best (a tie keeps dlib, the independent one):
leakage is a lower bound on what an attacker gets, and the strongest judge gives the least
flattering bound. The other candidate is the RGB model trained in the same run (a
``CheckpointJudge``): the attacks never see it, they invert the frontend only. The report
names the judge used and both candidates' raw-image scores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from facepriv.verification.keys import find_fpr, fpr_key

from .plan import Plan

JUDGES = ("auto", "dlib", "rgb")
#: the attacks the quickstart runs (``facepriv.eval.attacks``)
ATTACKS = ("analytic", "learned", "linkage")
#: the question the leakage figure answers: is the attack's output matched to the victim's raw photos
RAW_GALLERY_TASK = "probe vs raw gallery"
#: the leakage operating point, and the fallback when too few impostor pairs make it unmeasurable
LEAKAGE_FPR, FALLBACK_FPR = 1e-3, 1e-2


def load_attack_data(data: dict[str, Any], plan: Plan, seed: int) -> dict[str, Any]:
    """Victims (held-out identities) and the attacker's auxiliary faces (training identities)."""
    from facepriv.eval.attacks.data import check_disjoint, load_faces, load_victims

    overlap = check_disjoint(data["train_root"], data["test_root"])
    victims = load_victims(data["test_root"], image_size=plan.image_size, seed=seed)
    aux = load_faces(data["train_root"], image_size=plan.image_size, max_images=plan.max_aux, seed=seed, desc="aux")
    return {"victims": victims, "aux": aux, "overlap_check": overlap}


def _raw_leakage(cache: Any, victims: Any) -> dict[str, Any]:
    from facepriv.judges import identity_leakage

    probes = cache.embed("probes", victims.probes, False)
    gallery = cache.embed("gallery", victims.gallery, False)
    return identity_leakage(probes, victims.probe_ids, gallery, victims.gallery_ids)


def _strength(leak: dict[str, Any]) -> tuple[float, float, float]:
    def v(x: Any) -> float:
        return -1.0 if x is None else float(x)

    return v(find_fpr(leak, LEAKAGE_FPR)), v(find_fpr(leak, FALLBACK_FPR)), v(leak.get("rank1"))


def choose_judge(spec: str, rgb_model: Path, victims: Any,
                 auto_candidates: tuple[str, ...] = ("dlib", "rgb")) -> tuple[Any, dict[str, Any]]:
    """A ``JudgeCache`` over the chosen judge (raw probes and gallery already embedded) and
    what the report says about the choice. ``auto_candidates``: the judges ``auto`` compares."""
    from facepriv.eval.attacks.runner import JudgeCache
    from facepriv.judges import CheckpointJudge, JudgeError, build_judge

    if spec not in JUDGES:
        raise ValueError(f"judge must be one of {JUDGES}, got {spec!r}")
    candidates: dict[str, Any] = {}
    info: dict[str, Any] = {"requested": spec, "candidates": {}}
    if spec == "dlib" or (spec == "auto" and "dlib" in auto_candidates):
        try:
            candidates["dlib"] = build_judge("dlib")
        except (JudgeError, ImportError, OSError) as exc:
            if spec == "dlib":
                raise
            info["dlib_unavailable"] = str(exc)
    if spec in ("auto", "rgb"):
        candidates["rgb"] = CheckpointJudge(rgb_model)
    caches = {}
    for name, judge in candidates.items():
        t0 = time.perf_counter()
        caches[name] = JudgeCache(judge)
        raw = _raw_leakage(caches[name], victims)
        info["candidates"][name] = {"describe": judge.describe(), "raw_images": _short(raw),
                                    "seconds": round(time.perf_counter() - t0, 1)}
    # the strongest on the raw faces; max() keeps the first of equals, and dlib comes first
    chosen = max(candidates, key=lambda n: _strength(info["candidates"][n]["raw_images"]))
    info["chosen"] = chosen
    raw = info["candidates"][chosen]["raw_images"]
    if spec != "auto":
        info["why"] = f"requested with --judge {spec}"
    elif len(candidates) == 1:
        reason = (f"dlib is not available ({info['dlib_unavailable']})" if "dlib_unavailable" in info
                  else "the smoke test (--fast) skips dlib's pass over the faces")
        info["why"] = f"{reason}, so the RGB model trained in this run judges (the attacks never see it)"
    else:
        other = next(n for n in candidates if n != chosen)
        o = info["candidates"][other]["raw_images"]
        info["why"] = (f"it recognises the raw held-out faces best (TPR@1e-3 {_f(find_fpr(raw, LEAKAGE_FPR))}, "
                       f"rank-1 {_f(raw.get('rank1'))}; {other}: {_f(find_fpr(o, LEAKAGE_FPR))}, "
                       f"{_f(o.get('rank1'))}); a weaker judge would under-report leakage")
    return caches[chosen], info


def _short(leak: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in leak.items() if not isinstance(v, (dict, list))}


def _f(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "n/m"


#: cost of one step of the learned attacks' two networks (decoder + linkage, width 16, batch 16, 64x64)
#: in units of one RGB training step (batch 32) on the same machine and threads: measured ~3 (profile
#: of the quickstart's attack stage, 1 and 2 threads)
NETWORK_STEP_IN_RGB_STEPS = 3.0


def plan_attack_steps(frontend: Any, aux_images: Any, budget_s: float, plan: Plan, seed: int,
                      rgb_step_s: float, batch_size: int = 16) -> tuple[int, float]:
    """Learned-attack steps that fit ``budget_s`` for this frontend, and the measured seconds
    per simulated batch.

    A step of each learned attack protects a batch of the attacker's faces with its own
    randomness (``AttackerView.simulate``: timed here, since it costs ~50x more for DCTDP,
    189 noisy channels per pixel, than for PartialFace), then runs its network forward and
    backward (estimated from this machine's RGB training step, ``rgb_step_s``). The count is
    at least ``plan.min_attack_steps`` and at most ``plan.max_attack_steps``.
    """
    import torch

    from facepriv.eval.attacks.views import build_view

    view = build_view(frontend, "public", attacker_seed=seed)
    x = aux_images[:batch_size].float() / 255.0
    g = torch.Generator().manual_seed(seed)
    view.simulate(x[:2], g)  # first-call overheads
    t0 = time.perf_counter()
    view.simulate(x, g)
    sim = time.perf_counter() - t0
    per_step = 2 * sim + NETWORK_STEP_IN_RGB_STEPS * rgb_step_s
    steps = int(budget_s / max(per_step, 1e-6))
    return max(plan.min_attack_steps, min(plan.max_attack_steps, steps)), sim


def attack_config(plan: Plan, steps: int, seed: int) -> Any:
    """The quickstart's small attack budget: every analytic fill, a short learned decoder and a
    short linkage network (the judge's embedding regressed from the protected tensor), by an
    attacker without the frontend's secret (the server or an eavesdropper; ``facepriv attack
    --knowledge both`` also runs the attacker who knows it). Confidence intervals over victims
    use ``plan.bootstrap`` replicates."""
    from facepriv.eval.attacks.analytic import FILLS
    from facepriv.eval.attacks.learned import LearnedConfig
    from facepriv.eval.attacks.linkage import LinkageConfig
    from facepriv.eval.attacks.runner import AttackConfig

    short = {"steps": steps, "batch_size": 16, "width": 16, "warmup": max(1, min(50, steps // 10)),
             "checkpoint_every": max(steps, 1), "standardise_batches": 2, "seed": seed}
    # linkage without flip augmentation (it would need the judge's pass over mirrored faces too)
    # and without the protected-gallery link (not part of the leakage figure): both cost time
    return AttackConfig(attacks=list(ATTACKS), knowledge="public", fills=list(FILLS), victim_batch=16,
                        grid_victims=plan.grid_victims, seed=seed, progress=False, bootstrap=plan.bootstrap,
                        learned=LearnedConfig(depth=3, **short),
                        linkage=LinkageConfig(depth=3, flip=False, protected_gallery=False, **short))


def attack_frontend(name: str, model_file: str | Path, attack_data: dict[str, Any], cache: Any, config: Any,
                    out: Path, on_samples: Callable[..., None] | None = None) -> dict[str, Any]:
    """Every configured attack against the frontend of ``model_file``; the runner's result dict."""
    from facepriv.eval.attacks.metrics import json_safe
    from facepriv.eval.attacks.runner import run_attacks
    from facepriv.models import FaceRecognizer

    frontend = FaceRecognizer.load(model_file).frontend
    res = run_attacks(frontend, attack_data["aux"], attack_data["victims"], judge_cache=cache, config=config,
                      out=out / "attacks" / name, on_samples=on_samples)
    res["model"] = name
    res["data_overlap_check"] = attack_data["overlap_check"]
    return json_safe(res)


def leakage_summary(attack: dict[str, Any] | None, raw: dict[str, Any]) -> dict[str, Any] | None:
    """The best attack per knowledge level (TPR@1e-3 with its confidence interval, PSNR, SSIM),
    as the frontier reads it, plus the operating point used and the best attack's figure there.

    Only attacks answering "is this the victim?" against the victim's *raw* photos count
    (``linkage/protected``, which links two protected queries, is reported in attack.md).
    """
    from facepriv.eval.experiments.results import leakage_row

    if attack is None:
        return None
    row = leakage_row(attack)
    fpr = LEAKAGE_FPR if find_fpr(raw, LEAKAGE_FPR) is not None else FALLBACK_FPR
    best: tuple[float, dict[str, Any]] | None = None
    for r in attack.get("results", []):
        if r.get("task", RAW_GALLERY_TASK) != RAW_GALLERY_TASK:
            continue
        v = find_fpr(r.get("identity"), fpr)
        if v is not None and (best is None or v > best[0]):
            best = (float(v), r)
    for level, r in ((lv, row[lv]) for lv in ("public", "secret") if lv in row):
        match = next((x for x in attack.get("results", []) if x.get("attack") == r["best_attack"]
                      and x.get("knowledge") == level and x.get("task", RAW_GALLERY_TASK) == RAW_GALLERY_TASK), None)
        ci = find_fpr(((match or {}).get("identity") or {}).get("ci"), LEAKAGE_FPR)
        if ci:
            r[fpr_key(LEAKAGE_FPR) + "_ci"] = ci
    row["fpr"] = fpr
    row["best_reconstruction"] = _best_reconstruction(attack, fpr)
    if best is None:
        row["best"] = {"tpr": None, "attack": None, "ci": None}
    else:
        ident = best[1].get("identity") or {}
        row["best"] = {"tpr": best[0], "attack": f"{best[1]['attack']} [{best[1]['knowledge']}]",
                       "ci": find_fpr(ident.get("ci"), fpr), "rank1": ident.get("rank1")}
    return row


def _best_reconstruction(attack: dict[str, Any], fpr: float) -> str | None:
    """The reconstruction (an attack with an image output) that leaks the most identity,
    ``"<attack> [<knowledge>]"``: what the grid shows (linkage outputs no face)."""
    def key(r: dict[str, Any]) -> tuple[float, float]:
        v = find_fpr(r.get("identity"), fpr)
        return (-1.0 if v is None else float(v), ((r.get("image") or {}).get("ssim_luma") or {}).get("mean") or -1.0)

    rows = [r for r in attack.get("results", []) if r.get("image") and r.get("task", RAW_GALLERY_TASK) == RAW_GALLERY_TASK]
    if not rows:
        return None
    best = max(rows, key=key)
    return f"{best['attack']} [{best['knowledge']}]"


def write_attack_report(attacks: dict[str, dict[str, Any]], judge_info: dict[str, Any], out: Path) -> Path:
    """``attacks/attack.json`` and ``attacks/attack.md``: every attack's numbers, per frontend."""
    from facepriv.eval.attacks.report import write_report

    report = {"runs": list(attacks.values()), "judge": judge_info["candidates"][judge_info["chosen"]]["describe"],
              "judge_choice": judge_info}
    paths = write_report(json.loads(json.dumps(report, default=str)), out / "attacks")
    return paths["markdown"]
