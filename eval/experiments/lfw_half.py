"""``facepriv experiment lfw-half``: the privacy/accuracy table on real faces, one command.

Stages, each writing its own files under ``--out`` and skipped when they are already there
(so an interrupted run continues where it stopped; training resumes from its last
checkpoint, attack decoders from theirs):

1. ``data``      LFW-half folders (``facepriv.eval.experiments.lfw_data``): symlinks, test pairs.
2. ``reference`` the teacher/judge (dlib by default) on the test pairs: what an independent
                 pretrained RGB recogniser scores, the ceiling for distilled students.
3. ``train``     every configured model with the same backbone, data and schedule:
                 ``scratch`` and ``distill`` rows with ``training.Trainer``; ``fedavg`` and
                 ``pfm`` rows (``*_distill``: each site distils from the teacher) with the
                 Flower simulation over identity-disjoint sites (``rounds x local_steps x
                 clients`` = the central step count). A row may be added to a folder later.
4. ``verify``    ``facepriv.eval.verify`` on the 3,000 test pairs, repeated for stochastic frontends.
5. ``attack``    ``facepriv.eval.attacks.run_attacks`` against every model's frontend (victims never
                 trained on, attacker data disjoint from them), dlib judge. An attack sees only
                 the frontend, so rows whose frontends are identical (same config, secrets and
                 state: RGB/DCT rows, PartialFace rows sharing the experiment's secret) share
                 one attack, recorded as ``shared_from``.
6. ``report``    ``results.md`` + ``results.json`` + ROC plot + reconstruction grid.

The CPU and GPU scales are two YAML files (``--config cpu|gpu|path.yaml``); nothing else
changes between them. Several processes may work on one ``--out`` folder at once (e.g.
``--only a,b`` and ``--only c`` with ``--threads 1`` each on a 2-core machine): every file is
written atomically and wall times are merged under a lock.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from facepriv.io import atomic_write_json

from .config import ExperimentConfig, ExperimentConfigError, ModelSpec, load_config
from .lfw_data import LfwDataError, LfwHalf, prepare_lfw_half

log = logging.getLogger(__name__)

STAGES = ("data", "reference", "train", "verify", "attack", "report")
TEST_SET = "lfw_folds5-9"


def _write_json(path: Path, obj: Any) -> None:
    # temp names are unique per process: parallel runs share --out
    atomic_write_json(path, obj, indent=2, default=str)


def _add_timing(out: Path, key: str, seconds: float) -> dict[str, float]:
    """Add ``seconds`` to ``timings.json[key]``, re-reading the file under a lock so that
    parallel runs on the same folder do not overwrite each other's entries."""
    lock_path = out / ".timings.lock"
    with open(lock_path, "a+", encoding="utf-8") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - Windows: no parallel runs, no lock
            pass
        timings = _read_json(out / "timings.json") or {}
        timings[key] = round(timings.get(key, 0.0) + seconds, 1)
        _write_json(out / "timings.json", timings)
    return timings


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


# --------------------------------------------------------------------------- train


def train_config(cfg: ExperimentConfig, spec: ModelSpec, layout: LfwHalf, out: Path) -> dict[str, Any]:
    """The TrainConfig (dict) of one row: the shared one plus frontend / distillation."""
    tc = copy.deepcopy(cfg.train)
    tc["name"] = spec.name
    tc["seed"] = cfg.seed
    tc["device"] = cfg.device
    tc.setdefault("data", {})
    tc["data"].update({"format": "folder", "path": layout.train})
    tc["frontend"] = _with_shared_secrets(cfg, spec.frontend)
    tc["eval"] = {"every_steps": 0, "sets": []}  # the experiment verifies with facepriv.eval.verify afterwards
    if spec.init_from:
        tc["init_from"] = str(out / "models" / spec.init_from / "model.pt")
    _deep_merge(tc, spec.train)
    if spec.distilled:
        # one cache folder for every distilled row: the teacher embeds the training images once
        # (federated sites take their share of those rows, see facepriv.training.distill)
        tc["distill"] = {"enabled": True, "teacher": cfg.teacher, "cache": str(out / "teacher") + os.sep, **cfg.distill}
    return tc


def _deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> None:
    """``base`` updated in place by ``changes``, nested mappings merged key by key."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def _with_shared_secrets(cfg: ExperimentConfig, frontend: dict[str, Any]) -> dict[str, Any]:
    """``frontend`` with its unset secret seeds derived from the experiment seed.

    Why: left unset, each row would draw its own random secret (e.g. PartialFace's subset
    table), so rows with the same frontend settings would hold different frontends and each
    would need its own attack. With one secret per frontend setting, the rows differ only in
    how the backbone was trained, which is the comparison the table makes, and the frontend,
    all an attacker sees, is attacked once (``attack_model``).
    """
    from facepriv.frontends.registry import FRONTENDS
    from facepriv.training.rng import derive_seed

    out = copy.deepcopy(frontend)
    cls = FRONTENDS.get(str(out["name"]).lower())
    for key in cls.secret_keys if cls is not None else ():  # an unknown name fails later, in build_frontend
        if key.endswith("_seed") and out.get(key) is None:
            settings = json.dumps({k: v for k, v in out.items() if k != key}, sort_keys=True)
            out[key] = derive_seed("experiment secret", cfg.seed, key, settings)  # 63-bit, like the frontend's own draw
    return out


def train_central(cfg: ExperimentConfig, spec: ModelSpec, layout: LfwHalf, out: Path) -> dict[str, Any]:
    from facepriv.training.checkpoint import latest_checkpoint
    from facepriv.training.config import config_from_dict
    from facepriv.training.metrics_log import last_logged_loss
    from facepriv.training.trainer import Trainer

    run_dir = out / "models" / spec.name
    done = _read_json(run_dir / "train_done.json")
    if done is not None and (run_dir / "model.pt").is_file():
        return done
    tc = train_config(cfg, spec, layout, out)
    if spec.init_from and latest_checkpoint(run_dir) is None and not Path(tc["init_from"]).is_file():
        raise ExperimentConfigError(f"row {spec.name}: init_from {spec.init_from!r} has no trained model yet "
                                    f"({tc['init_from']}); train that row first (it must not be left out by --only)")
    trainer = Trainer(config_from_dict(tc), run_dir=run_dir,
                      resume=run_dir if latest_checkpoint(run_dir) is not None else None)
    start_step = trainer.step
    t0 = time.perf_counter()
    summary = trainer.fit()
    seconds = time.perf_counter() - t0
    batch = int(tc["data"].get("batch_size", 128))
    done = {"mode": spec.mode, "steps": trainer.step, "steps_this_session": trainer.step - start_step,
            "epochs": trainer.step / max(1, trainer.steps_per_epoch), "seconds_this_session": round(seconds, 1),
            "faces_per_second": round((trainer.step - start_step) * batch / max(seconds, 1e-9), 2),
            "images_seen": trainer.step * batch, "final_loss": last_logged_loss(run_dir),
            "privacy_report": summary.get("privacy_report"), "bad_samples": summary.get("bad_samples"),
            "warm_start": summary.get("warm_start")}
    _write_json(run_dir / "train_done.json", done)
    return done


def train_federated(cfg: ExperimentConfig, spec: ModelSpec, layout: LfwHalf, out: Path) -> dict[str, Any]:
    """A Flower simulation with the same total steps as a central row, split over the sites."""
    from facepriv.federated.server_app import FedSettings
    from facepriv.federated.simulate import simulate

    run_dir = out / "models" / spec.name
    done = _read_json(run_dir / "train_done.json")
    if done is not None and (run_dir / "model.pt").is_file():
        return done
    fed = cfg.federated
    tc = train_config(cfg, spec, layout, out)
    sched = tc.setdefault("schedule", {})
    central_steps = int(sched.get("max_steps") or 0)
    if central_steps <= 0:
        raise ExperimentConfigError("federated rows need train.schedule.max_steps (the central step budget)")
    local_steps = max(1, central_steps // (fed.rounds * fed.clients))
    site_steps = fed.rounds * local_steps  # every site runs its own LR schedule across the rounds
    sched["max_steps"] = site_steps
    if sched.get("warmup_steps"):
        sched["warmup_steps"] = max(1, int(sched["warmup_steps"]) * site_steps // central_steps)
    tc.setdefault("checkpoint", {})["every_steps"] = 0
    tc.setdefault("logging", {})["progress"] = False
    settings = FedSettings(
        train_config=tc, out=str(run_dir), strategy=spec.strategy, rounds=fed.rounds, local_steps=local_steps,
        min_train_nodes=fed.clients, min_available_nodes=fed.clients, server_momentum=fed.server_momentum,
        data={"format": "folder", "path": layout.train, "held_out": [], "seed": cfg.seed, "num_partitions": fed.clients},
        eval_data=None, resume=True, seed=cfg.seed)
    t0 = time.perf_counter()
    history = simulate(settings, num_clients=fed.clients, num_cpus=fed.num_cpus, cpus_per_client=fed.cpus_per_client)
    seconds = time.perf_counter() - t0
    rounds_done = max((int(r.get("round", 0)) for r in history), default=0)
    if rounds_done < fed.rounds or not (run_dir / "global.pt").is_file():
        raise RuntimeError(f"{spec.name}: federated run stopped after round {rounds_done} of {fed.rounds}; "
                           f"re-run the experiment to resume it (see {run_dir})")
    short = {int(r["round"]): r.get("aggregation") or {} for r in history if int(r.get("round", 0)) >= 1}
    short = {k: a for k, a in short.items() if len(a.get("accepted") or []) < fed.clients}
    if short:  # a site that failed would silently give this row less compute than the central rows
        rnd, agg = next(iter(short.items()))
        raise RuntimeError(f"{spec.name}: round {rnd} accepted {len(agg.get('accepted') or [])} of {fed.clients} site "
                           f"updates (failed: {agg.get('failed')}, rejected: {agg.get('rejected')}); see {run_dir}")
    shutil.copyfile(run_dir / "global.pt", run_dir / "model.pt")  # the final global model, under the common name
    batch = int(tc["data"].get("batch_size", 128))
    done = {"mode": spec.mode, "clients": fed.clients, "rounds": fed.rounds, "local_steps": local_steps,
            "steps": fed.rounds * local_steps * fed.clients, "images_seen": fed.rounds * local_steps * fed.clients * batch,
            "seconds_this_session": round(seconds, 1), "history_tail": history[-1] if history else None}
    _write_json(run_dir / "train_done.json", done)
    return done


# --------------------------------------------------------------------------- verify


def reference_row(cfg: ExperimentConfig, layout: LfwHalf, out: Path) -> dict[str, Any]:
    """The teacher/judge on raw test images: an independent pretrained RGB recogniser."""
    path = out / "reference.json"
    cached = _read_json(path)
    if cached is not None and cached.get("judge_spec") == cfg.judge:
        return cached
    import torch

    from facepriv.judges import build_judge
    from facepriv.verification.metrics import verification_report
    from facepriv.data.verification import load_pairs_txt

    judge = build_judge(cfg.judge)
    vset = load_pairs_txt(layout.pairs, layout.lfw_images, image_size=None)
    t0 = time.perf_counter()
    imgs = torch.stack([torch.from_numpy(vset.load_image(i)).permute(2, 0, 1) for i in range(vset.num_images)])
    emb = judge.embed(imgs.float() / 255.0, progress=True, desc="reference judge")
    scores = (emb[vset.pairs[:, 0]] * emb[vset.pairs[:, 1]]).sum(1).numpy()
    report = verification_report(scores, vset.issame, vset.folds)
    res = {"judge_spec": cfg.judge, "judge": judge.describe(), "images": vset.num_images, "pairs": vset.num_pairs,
           "report": report, "seconds": round(time.perf_counter() - t0, 1)}
    _write_json(path, res)
    return res


def verify_model(cfg: ExperimentConfig, spec: ModelSpec, layout: LfwHalf, out: Path) -> dict[str, Any]:
    from facepriv.eval.verify import SetSpec, verify

    path = out / "models" / spec.name / "verify.json"
    cached = _read_json(path)
    if cached is not None:
        return cached
    res = verify([out / "models" / spec.name / "model.pt"],
                 {TEST_SET: SetSpec(TEST_SET, "pairs", layout.pairs, layout.lfw_images)},
                 repetitions=cfg.eval.repetitions, flip=cfg.eval.flip, batch_size=cfg.eval.batch_size,
                 device=cfg.device, seed=cfg.seed, progress=True)
    _write_json(path, res)
    return res


# --------------------------------------------------------------------------- attacks


class _AttackData:
    """Victims, auxiliary faces and the judge cache, loaded once for all models."""

    def __init__(self, cfg: ExperimentConfig, layout: LfwHalf) -> None:
        from facepriv.eval.attacks.data import check_disjoint, load_faces, load_victims
        from facepriv.eval.attacks.runner import JudgeCache
        from facepriv.judges import build_judge

        a = cfg.attacks
        self.overlap = check_disjoint(layout.aux, layout.victims)
        self.victims = load_victims(layout.victims, max_victims=a.max_victims,
                                    max_gallery_per_identity=a.max_gallery_per_identity, seed=cfg.seed, progress=True)
        self.aux = load_faces(layout.aux, max_images=a.max_aux, seed=cfg.seed, progress=True, desc="aux")
        self.judge = build_judge(cfg.judge)
        self.cache = JudgeCache(self.judge)


def attack_config(cfg: ExperimentConfig) -> Any:
    from facepriv.eval.attacks.analytic import AnalyticConfig
    from facepriv.eval.attacks.learned import LearnedConfig
    from facepriv.eval.attacks.optimisation import OptimConfig
    from facepriv.eval.attacks.runner import AttackConfig

    raw = copy.deepcopy(cfg.attacks.config)
    subs = {"analytic": AnalyticConfig, "learned": LearnedConfig, "optimisation": OptimConfig}
    parts = {k: cls(**(raw.pop(k, None) or {})) for k, cls in subs.items()}
    raw.setdefault("seed", cfg.seed)
    raw.setdefault("device", cfg.device)
    raw["resume"] = True
    return AttackConfig(**parts, **raw)


def frontend_fingerprint(frontend: Any) -> str:
    """SHA-256 of a frontend's full config (secrets included) and state: equal fingerprints
    mean an attacker faces exactly the same protection function."""
    h = hashlib.sha256(json.dumps(frontend.config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(frontend.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _model_fingerprint(out: Path, name: str) -> str | None:
    from facepriv.models import FaceRecognizer

    path = out / "models" / name / "model.pt"
    return frontend_fingerprint(FaceRecognizer.load(path).frontend) if path.is_file() else None


def _shared_attack(out: Path, name: str, fingerprint: str) -> dict[str, Any] | None:
    """A finished attack on another row whose frontend has this fingerprint (the attack's
    result is a function of the frontend, the data and the attack config only)."""
    for other in sorted((out / "attacks").glob("*/attack.json")):
        if other.parent.name == name:
            continue
        res = _read_json(other)
        if res is None or res.get("shared_from"):
            continue
        theirs = res.get("frontend_fingerprint") or _model_fingerprint(out, other.parent.name)
        if theirs == fingerprint:
            return res
    return None


def attack_model(cfg: ExperimentConfig, spec: ModelSpec, data: Callable[[], _AttackData], out: Path) -> dict[str, Any]:
    """Attack ``spec``'s frontend, or reuse the attack of a row with an identical frontend.

    ``data`` loads the victims, auxiliary faces and judge; it is called only when an attack
    must actually run (loading costs a judge pass over the victims)."""
    from facepriv.eval.attacks.runner import run_attacks
    from facepriv.models import FaceRecognizer

    adir = out / "attacks" / spec.name
    path = adir / "attack.json"
    cached = _read_json(path)
    if cached is not None:
        return cached
    frontend = FaceRecognizer.load(out / "models" / spec.name / "model.pt").frontend
    fingerprint = frontend_fingerprint(frontend)
    shared = _shared_attack(out, spec.name, fingerprint)
    if shared is not None:
        res = {**shared, "model": spec.name, "shared_from": shared["model"], "frontend_fingerprint": fingerprint}
        _write_json(path, res)
        return res
    loaded = data()
    res = run_attacks(frontend, loaded.aux, loaded.victims, judge_cache=loaded.cache, config=attack_config(cfg),
                      out=adir)
    res["model"] = spec.name
    res["frontend_fingerprint"] = fingerprint
    res["data_overlap_check"] = loaded.overlap
    res["judge"] = loaded.judge.describe()
    from facepriv.eval.attacks.metrics import json_safe

    res = json_safe(res)
    _write_json(path, res)
    return res


# --------------------------------------------------------------------------- driver


def environment() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run_experiment(cfg: ExperimentConfig, data_root: str | os.PathLike[str], out: str | os.PathLike[str], *,
                   stages: tuple[str, ...] = STAGES, only: list[str] | None = None,
                   command: str | None = None, publish: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run (or continue) the experiment; returns the results dict written by the report stage."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_config(cfg, out)
    layout = prepare_lfw_half(data_root, out)
    _write_json(out / "data.json", layout.to_dict())
    models = [m for m in cfg.models if only is None or m.name in only]

    def timed(key: str, fn, *a):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        r = fn(*a)
        _add_timing(out, key, time.perf_counter() - t0)
        return r

    if "reference" in stages:
        print(f"[experiment] reference: {cfg.judge} on {layout.counts['test_pairs']} test pairs", flush=True)
        timed("reference", reference_row, cfg, layout, out)

    @functools.cache
    def load_attack_data() -> _AttackData:  # loaded on first use, then shared by every row
        return timed("attack/load_data", _AttackData, cfg, layout)

    for spec in models:  # each model all the way through, so an interrupted run still has whole rows
        model_file = out / "models" / spec.name / "model.pt"
        if "train" in stages:
            print(f"[experiment] train {spec.name} ({spec.mode}, frontend {spec.frontend['name']})", flush=True)
            fn = train_federated if spec.strategy else train_central
            timed(f"train/{spec.name}", fn, cfg, spec, layout, out)
        if "verify" in stages and model_file.is_file():
            print(f"[experiment] verify {spec.name}", flush=True)
            timed(f"verify/{spec.name}", verify_model, cfg, spec, layout, out)
        wanted = cfg.attacks.enabled and (cfg.attacks.models == "all" or spec.name in cfg.attacks.models)
        if "attack" in stages and wanted and model_file.is_file():
            print(f"[experiment] attack {spec.name}", flush=True)
            timed(f"attack/{spec.name}", attack_model, cfg, spec, load_attack_data, out)
    results: dict[str, Any] = {}
    if "report" in stages:
        from .results import write_results

        timings = _read_json(out / "timings.json") or {}
        results = write_results(cfg, layout, out, environment=environment(), timings=timings, command=command)
        if publish is not None:
            from .results import publish_results

            publish_results(results, out, Path(publish))
    return results


#: settings that say how the run executes, not what it computes: a continued run may change them
EXECUTION_SETTINGS = (("threads",), ("federated", "num_cpus"), ("federated", "cpus_per_client"))


def _numeric_part(config: dict[str, Any]) -> dict[str, Any]:
    """The config without :data:`EXECUTION_SETTINGS` (the part every number depends on)."""
    config = copy.deepcopy(config)
    for path in EXECUTION_SETTINGS:
        node = config
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return config


def _row_started(out: Path, name: str) -> bool:
    """Whether the run folder holds any file of row ``name`` (its model or its attack)."""
    return (out / "models" / name).exists() or (out / "attacks" / name).exists()


def _check_same_config(cfg: ExperimentConfig, out: Path) -> None:
    """A folder holds one experiment: continuing with a different config would mix numbers.

    Only the numeric part is compared: resuming on a machine with more cores may change
    ``threads`` or ``federated.num_cpus``. Rows may be *added* (a new arm for a finished
    experiment), and a row that has not started (no files of it in the folder) may be changed
    or dropped; every row the folder has files of must be unchanged.
    """
    path = out / "experiment_config.json"
    mine = cfg.to_dict()
    old = _read_json(path)
    if old is not None:
        before, now = _numeric_part(old), _numeric_part(mine)
        old_rows = {m["name"]: m for m in before.pop("models", [])}
        new_rows = {m["name"]: m for m in now.pop("models", [])}
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        changed += [f"models/{n}" for n in old_rows if new_rows.get(n) != old_rows[n] and _row_started(out, n)]
        if changed:
            raise ExperimentConfigError(f"{out} was started with a different config (differs in {changed}); "
                                        "use a fresh --out folder")
        if before == now and old_rows == new_rows:  # nothing the numbers depend on changed
            return
    _write_json(path, mine)
    import yaml

    (out / "experiment_config.yaml").write_text(yaml.safe_dump(mine, sort_keys=False), encoding="utf-8")


def build_parser(prog: str = "facepriv experiment lfw-half") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="The LFW-half privacy/accuracy experiment: train every configured model (RGB, DCT, PartialFace, "
                    "DCTDP, federated PartialFace; from scratch and distilled from a pretrained teacher) with the same "
                    "backbone and budget, verify on the 3,000 pairs of LFW folds 5-9, attack every model's frontend, "
                    "and write results.md. Re-running the same command continues an interrupted run.")
    p.add_argument("--data", required=True, help="the shared data folder (holds lfw/ and celeba299/; see its README)")
    p.add_argument("--out", required=True, help="run folder (models, verification, attacks, results.md)")
    p.add_argument("--config", default="cpu", help="'cpu' (2-core budget), 'gpu' (full scale) or a YAML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set eval.repetitions=5")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--only", default=None,
                   help="comma-separated model names (default: all configured). Two runs with disjoint --only lists "
                        "and --threads 1 may share one --out folder in parallel")
    p.add_argument("--publish", default=None, metavar="DIR",
                   help="also write DIR/results.md with its figures in DIR/results/ (e.g. docs)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the config's)")
    return p


def main(argv: list[str] | None = None, prog: str = "facepriv experiment lfw-half") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    bad = sorted(set(stages) - set(STAGES))
    if bad:
        print(f"{prog}: error: unknown stage(s) {bad}; valid: {','.join(STAGES)}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.set)
        threads = args.threads if args.threads is not None else cfg.threads
        if threads:
            import torch

            torch.set_num_threads(threads)
        only = [s.strip() for s in args.only.split(",")] if args.only else None
        if only:
            unknown = sorted(set(only) - {m.name for m in cfg.models})
            if unknown:
                raise ExperimentConfigError(f"--only: unknown model(s) {unknown}")
        command = " ".join(["facepriv experiment lfw-half", *(argv if argv is not None else sys.argv[1:])])
        results = run_experiment(cfg, args.data, args.out, stages=stages, only=only, command=command,
                                 publish=args.publish)
    except (ExperimentConfigError, LfwDataError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if results:
        print(f"[experiment] results: {Path(args.out) / 'results.md'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
