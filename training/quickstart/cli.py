"""``facepriv quickstart``: the command, stage by stage.

1. ``data``: render training and held-out identities (``heldout.generate_data``).
2. ``train``: RGB, then PartialFace and DCTDP with the recommended recipe (``recipe``), each
   for a time budget.
3. ``verify``: every model on the held-out pairs through the protected inference path.
4. ``attack``: a fast attack suite per protected frontend, judged on identity (``leakage``).
5. ``report``: ``metrics.json``, ``report.md`` / ``report.html`` with a ROC plot, a
   reconstruction grid and a mini frontier plot (``report``); the table is printed too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from .plan import MODELS, PROTECTED, Clock, Plan, default_threads, make_plan
from .recipe import LEVERS, Recipe


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="End-to-end demo on synthetic faces, no data or downloads needed: render identities, train an RGB "
        "baseline and PartialFace and DCTDP models (warm-started from RGB and distilled from it: the recommended "
        "recipe) on the CPU, verify on held-out identities through the protected inference path, attack every "
        "protected frontend (analytic inversions and a short learned decoder) and measure how much identity leaks, "
        "then write report.md / report.html with a ROC plot, a reconstruction grid and an accuracy-vs-leakage plot. "
        "About 7 minutes on 2 cores (--fast: under 2 minutes).",
    )
    p.add_argument("--out", help="run folder (default: a new timestamped folder under ./runs/)")
    p.add_argument("--fast", action="store_true", help="smaller data, budgets and attacks (the CI smoke test)")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default 0); the frontends' inference "
                   "randomness always comes from the OS CSPRNG")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 2, or 1 if the machine is already busy)")
    p.add_argument("--judge", choices=("auto", "dlib", "rgb"), default="auto",
                   help="identity judge for the leakage figures: 'dlib', 'rgb' (the RGB model of this run) or 'auto' "
                        "(default: whichever recognises the raw held-out faces best)")
    p.add_argument("--without", action="append", default=[], choices=LEVERS, metavar="LEVER",
                   help=f"switch a lever of the recipe off to see what it buys ({', '.join(LEVERS)}); repeatable")
    p.add_argument("--dctdp-epsilon", type=float, default=None, metavar="EPS",
                   help="DCTDP's mean privacy budget per released element (default: 64; the DCTDP default, 4, stays "
                        "at chance in a few minutes of CPU training); the report states the resulting guarantee and "
                        "measures the leakage")
    p.add_argument("--no-dctdp", action="store_true", help="skip the DCTDP model")
    p.add_argument("--no-attacks", action="store_true", help="skip the attacks (no leakage figures, grid or frontier)")
    return p


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "n/a"


def run(args: argparse.Namespace, plan: Plan, out: Path, threads: int) -> dict[str, Any]:
    """Every stage; returns the results dict (also written to ``metrics.json``)."""
    from . import heldout
    from .recipe import train_model

    recipe = Recipe.without(args.without)
    if args.dctdp_epsilon is not None:
        if not args.dctdp_epsilon > 0:
            raise SystemExit(f"--dctdp-epsilon must be > 0, got {args.dctdp_epsilon}")
        recipe = dataclasses.replace(recipe, dctdp_epsilon_mean=float(args.dctdp_epsilon))
    clock = Clock(plan)
    stages: dict[str, float] = {}

    def stage_done(key: str, t0: float) -> None:
        stages[key] = stages.get(key, 0.0) + time.perf_counter() - t0

    t = time.perf_counter()
    data = heldout.generate_data(out, plan, args.seed)
    stage_done("data", t)
    print(f"[quickstart] rendered {data['train_images']} training and {data['test_images']} held-out faces "
          f"({data['seconds']:.1f} s)", flush=True)

    names = [n for n in MODELS if not (n == "dctdp" and args.no_dctdp)]
    models: dict[str, Any] = {}
    for i, name in enumerate(names):
        planned_left = sum(plan.budgets[n] for n in names[i:]) + plan.after_training_s
        scale = clock.scale(planned_left)
        budget = plan.budgets[name] * scale
        if scale < 0.95:
            plan.notes.append(f"{name}: training budget shortened to {budget:.0f} s (x{scale:.2f}): earlier stages "
                              "took longer than planned on this machine.")
        t = time.perf_counter()
        rgb_model = Path(models["rgb"]["model_file"]) if "rgb" in models else None
        models[name] = train_model(name, out, data, plan, args.seed, budget, recipe=recipe, rgb_model=rgb_model)
        stage_done(f"train {name}", t)

    t = time.perf_counter()
    held = heldout.load_heldout(data, plan.image_size)
    for name, m in models.items():
        m["verification"] = heldout.verify_model(name, m["model_file"], held, plan.repetitions)
        s = m["verification"]["summary"]
        print(f"[quickstart] {name}: held-out accuracy {_fmt((s.get('accuracy') or {}).get('mean'))}, "
              f"AUC {_fmt(s['auc']['mean'])}", flush=True)
    pixels = heldout.pixel_baseline(held)
    stage_done("verify", t)

    results: dict[str, Any] = {
        "plan": {**plan.__dict__}, "threads": threads, "seed": args.seed,
        "recipe": recipe.describe(), "recipe_levers_off": list(args.without),
        "data": {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()},
        "pixel_baseline": pixels, "models": models, "raw_images_leakage": {}, "judge": None,
    }
    grid: dict[str, Any] | None = None
    protected = [n for n in PROTECTED if n in models]
    if not args.no_attacks and protected:
        grid = _attack_stage(args, plan, clock, out, data, models, protected, results, stage_done)
    results["stage_seconds"] = stages
    results["total_seconds"] = clock.elapsed()
    t = time.perf_counter()
    from .report import write_report

    paths = write_report(out, results, grid)  # its total is the time up to the report
    stage_done("report", t)
    results["total_seconds"] = clock.elapsed()
    results["report"] = {k: str(v) for k, v in paths.items()}
    (out / "metrics.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return results


def _attack_stage(args: argparse.Namespace, plan: Plan, clock: Clock, out: Path, data: dict[str, Any],
                  models: dict[str, Any], protected: list[str], results: dict[str, Any], stage_done: Any) -> dict[str, Any]:
    from facepriv.verification.keys import find_fpr

    from . import leakage
    from .report import grid_columns

    t = time.perf_counter()
    attack_data = leakage.load_attack_data(data, plan, args.seed)
    cache, judge_info = leakage.choose_judge(args.judge, Path(models["rgb"]["model_file"]), attack_data["victims"],
                                             plan.auto_judges)
    results["judge"] = judge_info
    raw = judge_info["candidates"][judge_info["chosen"]]["raw_images"]
    results["raw_images_leakage"] = raw
    print(f"[quickstart] identity judge: {judge_info['chosen']} ({judge_info['why']})", flush=True)
    stage_done("judge", t)

    from facepriv.models import FaceRecognizer

    results["attacks_run"] = list(leakage.ATTACKS)
    results["attack_steps"] = {}
    grid: dict[str, Any] = {"originals": None, "columns": {}}
    runs: dict[str, Any] = {}
    for i, name in enumerate(protected):
        t = time.perf_counter()
        planned_left = sum(plan.attack_budgets[n] for n in protected[i:]) + 20.0 * (len(protected) - i)
        scale = clock.scale(planned_left)
        budget = plan.attack_budgets[name] * scale
        frontend = FaceRecognizer.load(models[name]["model_file"]).frontend
        steps, sim = leakage.plan_attack_steps(frontend, attack_data["aux"].images, budget, plan, args.seed,
                                               rgb_step_s=models["rgb"]["seconds_per_step"])
        results["attack_steps"][name] = {"steps": steps, "budget_s": round(budget, 1),
                                         "simulate_s_per_batch": round(sim, 3)}
        if scale < 0.95:
            plan.notes.append(f"attacks on {name}: learned-attack budget shortened to {budget:.0f} s (x{scale:.2f}) to "
                              "keep the command near its time target; its leakage is then that of a weaker attack.")
        config = leakage.attack_config(plan, steps, args.seed)
        samples: dict[str, Any] = {}

        def keep(originals: Any, columns: dict[str, Any], _s: dict[str, Any] = samples) -> None:
            _s.update(columns)
            if grid["originals"] is None:
                grid["originals"] = originals

        runs[name] = leakage.attack_frontend(name, models[name]["model_file"], attack_data, cache, config, out,
                                             on_samples=keep)
        summary = leakage.leakage_summary(runs[name], raw)
        models[name]["leakage"] = summary
        models[name]["attack_seconds"] = runs[name].get("seconds")
        best = (summary or {}).get("best") or {}
        grid["columns"].update(grid_columns(name, samples, (summary or {}).get("best_reconstruction"),
                                            len(runs[name]["knowledge_levels"])))
        print(f"[quickstart] {name}: best attack {best.get('attack')} -> identity leakage TPR@FPR="
              f"{(summary or {}).get('fpr', 1e-3):g} {_fmt(best.get('tpr'))} (raw images: "
              f"{_fmt(find_fpr(raw, (summary or {}).get('fpr', 1e-3)))})", flush=True)
        stage_done(f"attack {name}", t)
    leakage.write_attack_report(runs, judge_info, out)
    return grid


def main(argv: list[str] | None = None, prog: str = "facepriv quickstart") -> int:
    args = build_parser(prog).parse_args(argv)
    import torch

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    from facepriv.training.components import default_run_dir

    out = Path(args.out) if args.out else default_run_dir("quickstart")
    out.mkdir(parents=True, exist_ok=True)
    plan = make_plan(args.fast)
    print(f"[quickstart] run folder: {out.resolve()}", flush=True)
    results = run(args, plan, out, threads)
    from .report import table_text

    print("", flush=True)
    print(table_text(results), flush=True)
    print("", flush=True)
    print(f"[quickstart] done in {results['total_seconds']:.0f} s. Report: {(out / 'report.md').resolve()} "
          f"(HTML: {(out / 'report.html').resolve()})", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
