"""``facepriv quickstart``: the whole pipeline on a laptop CPU in minutes, with no data or downloads.

1. Render synthetic identities (facepriv.data.synthetic) into an image folder, split into
   training identities and *held-out* identities, and write an LFW-style ``pairs.txt`` for
   the held-out ones.
2. Train a baseline on raw RGB, a PartialFace model and (time permitting) a DCTDP model with
   the same trainer, config files and checkpoints as a cluster run, each for a time budget
   (a few seconds of probing pick the step count that fits; the step counts are reported).
3. Verify on the held-out identities through the deployment path: every test image goes
   through the frontend on its own, in eval mode (PartialFace: a random secret subset per
   image from the OS CSPRNG; DCTDP: fresh noise), then the backbone; cosine scores;
   ``facepriv.verification.metrics.verification_report``.
4. Write ``metrics.json`` and ``report.md`` into the run folder and print where they are.

Faces are rendered at 64x64 (not 112) so that training fits the CPU budget; the code path
is identical at 112. Numbers are whatever the run produced: a synthetic-face demo, not a
benchmark.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("facepriv.training.quickstart")


@dataclass
class Plan:
    """Sizes and budgets of one quickstart run."""

    train_identities: int
    train_images: int
    test_identities: int
    test_images: int
    pairs_per_fold: int
    budgets: dict[str, float]  # seconds of training per model
    image_size: int = 64
    batch_size: int = 32
    max_steps: int = 4000
    min_steps: int = 20
    dctdp_if_elapsed_below: float = 330.0  # skip DCTDP if we are already this far in (s)
    notes: list[str] = field(default_factory=list)


def make_plan(fast: bool) -> Plan:
    if fast:  # CI smoke: ~1.5 minutes on 2 cores
        return Plan(train_identities=24, train_images=12, test_identities=20, test_images=5, pairs_per_fold=15,
                    budgets={"rgb": 22.0, "partialface": 28.0}, min_steps=15)
    return Plan(train_identities=64, train_images=24, test_identities=30, test_images=10, pairs_per_fold=50,
                budgets={"rgb": 120.0, "partialface": 150.0, "dctdp": 110.0})


# --------------------------------------------------------------------------- configs


def model_config(name: str, plan: Plan, data_root: Path, pairs: Path, test_root: Path, seed: int, steps: int) -> dict[str, Any]:
    """The TrainConfig (as a dict) of one quickstart model; also written to its run folder."""
    frontends = {
        "rgb": {"name": "rgb"},
        # r=2 views per image instead of 3: same protection, less CPU per step
        "partialface": {"name": "partialface", "sample_multiplier": 2, "train_seed": seed},
        # per-element budget 4 (the DCTDP default); bounds calibrated from training data
        "dctdp": {"name": "dctdp", "epsilon_mean": 4.0, "clip": "calibrated", "train_seed": seed},
    }
    cfg: dict[str, Any] = {
        "name": f"quickstart_{name}",
        "seed": seed,
        "device": "cpu",
        "data": {"format": "folder", "path": str(data_root), "image_size": plan.image_size,
                 "batch_size": plan.batch_size, "num_workers": 0, "hflip": True},
        "frontend": frontends[name],
        "model": {"name": "iresnet18", "width": 0.25, "embedding_size": 128},
        "input_norm": {"mode": "auto", "calibration_batches": 4},
        "head": {"type": "softmax", "margin": "arcface", "s": 32.0, "m": 0.3},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "clip_grad_norm": 5.0,
                  "frontend_lr": 0.01},
        "schedule": {"type": "poly", "max_steps": steps, "warmup_steps": max(1, steps // 20), "power": 2.0},
        "checkpoint": {"every_steps": 0, "keep_last": 1},
        "eval": {"every_steps": 0, "batch_size": 64, "folds": 10,
                 "sets": [{"name": "heldout", "path": str(pairs), "root": str(test_root), "format": "pairs"}]},
        "logging": {"every_steps": 10, "progress": True},
    }
    return cfg


# --------------------------------------------------------------------------- steps


def generate_data(out: Path, plan: Plan, seed: int) -> dict[str, Any]:
    """Training and held-out identities as JPEG folders plus pairs.txt for the held-out ones."""
    from facepriv.data.synthetic import write_folder
    from facepriv.data.verification import pairs_txt_for_folder

    train_root, test_root = out / "data" / "train", out / "data" / "heldout"
    t0 = time.perf_counter()
    write_folder(train_root, plan.train_identities, plan.train_images, seed, image_size=plan.image_size, progress=False)
    # held-out identities: indices after the training ones, never seen in training
    write_folder(test_root, plan.test_identities, plan.test_images, seed, image_size=plan.image_size,
                 first_identity=plan.train_identities, progress=False)
    pairs = Path(pairs_txt_for_folder(test_root, out / "data" / "heldout_pairs.txt", n_folds=10,
                                      per_fold=plan.pairs_per_fold, seed=seed))
    return {"train_root": train_root, "test_root": test_root, "pairs": pairs, "seconds": time.perf_counter() - t0,
            "train_images": plan.train_identities * plan.train_images,
            "test_images": plan.test_identities * plan.test_images,
            "pairs_count": 20 * plan.pairs_per_fold}


def choose_steps(cfg_dict: dict[str, Any], budget_s: float, plan: Plan) -> tuple[int, float]:
    """Time a few real training steps of this model and pick the step count that fits."""
    from .config import config_from_dict
    from .trainer import Trainer

    probe_cfg = config_from_dict({**cfg_dict, "logging": {"every_steps": 1, "progress": False}})
    trainer = Trainer(probe_cfg)  # no run folder: nothing written
    trainer.run_steps(1)  # warm-up (allocations, first-call overheads)
    times = []
    for _ in range(5):  # median: robust to a burst of load from other processes
        t0 = time.perf_counter()
        trainer.run_steps(1)
        times.append(time.perf_counter() - t0)
    per_step = sorted(times)[len(times) // 2]
    steps = int(max(plan.min_steps, min(plan.max_steps, budget_s / max(per_step, 1e-6))))
    return steps, per_step


def train_model(name: str, out: Path, data: dict[str, Any], plan: Plan, seed: int) -> dict[str, Any]:
    from .config import config_from_dict
    from .trainer import Trainer

    budget = plan.budgets[name]
    probe = model_config(name, plan, data["train_root"], data["pairs"], data["test_root"], seed, steps=plan.max_steps)
    steps, per_step = choose_steps(probe, budget, plan)
    cfg = config_from_dict(model_config(name, plan, data["train_root"], data["pairs"], data["test_root"], seed, steps))
    run_dir = out / name
    print(f"[quickstart] training {name}: {steps} steps (~{per_step:.2f} s/step, budget {budget:.0f} s)", flush=True)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, run_dir=run_dir)
    # hard stop at 1.5x the budget if the machine turns out slower than probed
    summary = trainer.fit(stop_after_s=1.5 * budget)
    seconds = time.perf_counter() - t0
    if summary.get("stopped_early"):
        plan.notes.append(f"{name}: stopped at step {trainer.step} of {steps} when its time budget ran out "
                          "(the machine was slower than probed; the LR schedule did not finish).")
        trainer.evaluate()
        trainer.export_model(run_dir / "model.pt")
        steps = trainer.step
    heldout = trainer.last_eval.get("heldout", {})
    return {
        "frontend": name,
        "run_dir": str(run_dir),
        "model_file": str(run_dir / "model.pt"),
        "steps": steps,
        "epochs": steps / trainer.steps_per_epoch,
        "images_seen": steps * plan.batch_size,
        "train_seconds": seconds,
        "images_per_second": steps * plan.batch_size / seconds if seconds > 0 else None,
        "final_loss": _last_loss(run_dir),
        "verification": heldout.get("flat", {}),
        "verification_report": heldout.get("report", {}),
        "privacy_report": summary.get("privacy_report"),
        "bad_samples": summary.get("bad_samples"),
    }


def _last_loss(run_dir: Path) -> float | None:
    import csv

    try:
        with open(run_dir / "train_log.csv") as fh:
            rows = list(csv.DictReader(fh))
        return float(rows[-1]["loss"]) if rows else None
    except (OSError, KeyError, ValueError):
        return None


def pixel_baseline(data: dict[str, Any], image_size: int) -> dict[str, Any]:
    """Cosine similarity of raw (mean-centred) pixels: what 'no learning at all' scores."""
    import numpy as np

    from facepriv.verification.metrics import verification_report
    from facepriv.data.verification import load_pairs_txt

    vset = load_pairs_txt(data["pairs"], data["test_root"], image_size=image_size)
    feats = np.stack([vset.load_image(i).astype(np.float32).ravel() for i in range(vset.num_images)])
    feats -= feats.mean(axis=1, keepdims=True)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True) + 1e-8
    scores = (feats[vset.pairs[:, 0]] * feats[vset.pairs[:, 1]]).sum(axis=1)
    report = verification_report(scores, vset.issame, vset.folds)
    from .verification import flatten_report

    return {"verification": flatten_report(report), "verification_report": report}


# --------------------------------------------------------------------------- report


def _tpr(report: dict[str, Any], target: float) -> str:
    for p in report.get("tpr_at_fpr", []):
        if abs(p.get("fpr_target", -1) - target) < 1e-12:
            return f"{p['tpr']:.3f}" if p.get("tpr") is not None else "n/m"
    return "n/a"


def _fmt(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "n/a"


def write_report(out: Path, results: dict[str, Any]) -> Path:
    plan = results["plan"]
    lines = [
        "# facepriv quickstart report",
        "",
        f"Synthetic faces ({plan['image_size']}x{plan['image_size']}): {plan['train_identities']} training identities x "
        f"{plan['train_images']} images; verification on {plan['test_identities']} **held-out** identities x "
        f"{plan['test_images']} images, {results['data']['pairs_count']} pairs (half genuine) in 10 folds.",
        f"Each model: quarter-width IResNet-18, ArcFace (s=32, m=0.3), SGD, trained for a fixed time budget on "
        f"{results['threads']} CPU thread(s). Test images are protected one at a time in eval mode, as on a device.",
        "",
        "| model | steps (epochs) | train time | accuracy (10-fold) | AUC | EER | TPR@FPR=1e-2 | TPR@FPR=1e-1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [("pixels (no training)", results["pixel_baseline"])] + [(k, v) for k, v in results["models"].items()]
    for name, r in rows:
        v, rep = r["verification"], r["verification_report"]
        acc = f"{_fmt(v.get('accuracy'))} ± {_fmt(v.get('accuracy_std'))}" if v.get("accuracy") is not None else "n/a"
        steps = f"{r['steps']} ({r['epochs']:.1f})" if "steps" in r else "-"
        secs = f"{r['train_seconds']:.0f} s" if "train_seconds" in r else "-"
        lines.append(f"| {name} | {steps} | {secs} | {acc} | {_fmt(v.get('auc'))} | {_fmt(v.get('eer'))} | "
                     f"{_tpr(rep, 1e-2)} | {_tpr(rep, 1e-1)} |")
    lines += ["", "Chance level is accuracy 0.5, AUC 0.5, EER 0.5. n/m: not measurable with this many impostor pairs.", ""]
    for name, r in results["models"].items():
        pr = r.get("privacy_report") or {}
        lines.append(f"- **{name}**: {pr.get('mechanism', 'n/a')}; formal guarantee: {pr.get('formal_guarantee')}. "
                     f"Model: `{r['model_file']}`; logs: `{r['run_dir']}/train_log.csv`.")
    for note in plan.get("notes", []):
        lines.append(f"- {note}")
    lines += [
        "",
        "What this shows, honestly: the numbers come from a few minutes of CPU training on rendered faces. "
        "They check that the pipeline learns identity from protected tensors, not how well it would do on "
        "real faces; for that, train `training/configs/*` on a real dataset and run `facepriv eval`. "
        "Privacy against reconstruction is measured separately with `facepriv attack`.",
        "",
        f"Total wall time: {results['total_seconds']:.0f} s.",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- CLI


def default_threads() -> int:
    """2 threads on an idle machine, 1 when other processes already keep the cores busy.

    Measured on the 2-core development machine: with other jobs running, 2 OpenMP threads
    ran a training step 3-20x *slower* than 1 thread (each parallel region waits for a
    descheduled thread); on an idle machine 2 threads are faster.
    """
    cores = os.cpu_count() or 1
    want = min(2, cores)
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on every platform
        return want
    return 1 if want > 1 and load > cores else want


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="End-to-end demo on synthetic faces, no data or downloads needed: generate identities, train an RGB "
        "baseline, a PartialFace model and (time permitting) a DCTDP model on CPU, verify on held-out identities "
        "through the protected inference path, and write a markdown report. About 6-8 minutes on 2 cores "
        "(--fast: under 2 minutes).",
    )
    p.add_argument("--out", help="run folder (default: a new timestamped folder under ./runs/)")
    p.add_argument("--fast", action="store_true", help="smaller data and budgets, RGB + PartialFace only (CI smoke test)")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 2, or 1 if the machine is already busy)")
    p.add_argument("--no-dctdp", action="store_true", help="skip the DCTDP model")
    return p


def main(argv: list[str] | None = None, prog: str = "facepriv quickstart") -> int:
    args = build_parser(prog).parse_args(argv)
    import torch

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    from .components import default_run_dir

    out = Path(args.out) if args.out else default_run_dir("quickstart")
    out.mkdir(parents=True, exist_ok=True)
    plan = make_plan(args.fast)
    start = time.perf_counter()
    print(f"[quickstart] run folder: {out.resolve()}", flush=True)
    data = generate_data(out, plan, args.seed)
    print(f"[quickstart] rendered {data['train_images']} training and {data['test_images']} held-out faces "
          f"({data['seconds']:.1f} s)", flush=True)

    models: dict[str, Any] = {}
    order = ["rgb", "partialface"] + (["dctdp"] if "dctdp" in plan.budgets and not args.no_dctdp else [])
    for name in order:
        elapsed = time.perf_counter() - start
        if name == "dctdp" and elapsed > plan.dctdp_if_elapsed_below:
            plan.notes.append(f"DCTDP skipped: {elapsed:.0f} s had already passed (budget protection).")
            continue
        models[name] = train_model(name, out, data, plan, args.seed)
        v = models[name]["verification"]
        print(f"[quickstart] {name}: held-out accuracy {_fmt(v.get('accuracy'))}, AUC {_fmt(v.get('auc'))}", flush=True)

    results = {
        "plan": {**plan.__dict__},
        "threads": threads,
        "seed": args.seed,
        "data": {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()},
        "pixel_baseline": pixel_baseline(data, plan.image_size),
        "models": models,
        "total_seconds": time.perf_counter() - start,
    }
    (out / "metrics.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    report = write_report(out, results)
    print(f"[quickstart] done in {results['total_seconds']:.0f} s. Report: {report.resolve()}", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
