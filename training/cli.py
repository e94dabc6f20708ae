"""``facepriv train CONFIG.yaml [--out DIR] [--resume [PATH]] [--set key=value ...]``.

The same command runs in one process or under torchrun; every rank parses the same
arguments, rank 0 picks the run folder and tells the others::

    facepriv train rgb_iresnet18 --out runs/rgb          # a shipped config, by name
    torchrun --standalone --nproc_per_node 8 -m facepriv.training.cli ms1mv2_r100_pfc --out runs/r100
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        -m facepriv.training.cli ms1mv2_r100_pfc --out /shared/runs/r100

``python -m facepriv.training.cli`` accepts the config directly or after the word ``train``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError, load_config

log = logging.getLogger("training")


def build_parser(prog: str = "facepriv train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train a face recognition model (frontend + backbone + margin head) from a YAML config. "
        "Runs in one process (CPU or one GPU) or under torchrun (DDP: NCCL on GPUs, gloo on CPU).",
        epilog="Examples:\n"
        "  facepriv train --list-configs                               # the shipped configs, by name\n"
        "  facepriv train tiny_cpu --out runs/tiny\n"
        "  facepriv train cfg.yaml --set optim.lr=0.05 --set data.batch_size=64\n"
        "  facepriv train cfg.yaml --out runs/tiny --resume          # continue the newest checkpoint\n"
        "  facepriv train new.yaml --resume runs/tiny --fork --out runs/tiny-lr  # continue with new settings\n"
        "  torchrun --standalone --nproc_per_node 4 -m facepriv.training.cli cfg.yaml --out runs/ddp\n"
        "See docs/training.md (in the source repository) for multi-node / SLURM recipes and the config reference.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?",
                   help="YAML config file, or the name of a shipped config (list them with --list-configs)")
    p.add_argument("--list-configs", action="store_true", help="list the shipped configs (usable by name) and exit")
    p.add_argument("--out", help="run folder (default: output_dir from the config, else runs/<name>-<timestamp>)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                   help="continue from a checkpoint: no value = the newest complete checkpoint in --out "
                   "(a fresh start if there is none yet, so requeued jobs can always pass --resume); "
                   "or a run folder / checkpoint folder. The config must match the checkpoint's (logging, eval, "
                   "checkpoint cadence and workers may change); use --fork to change optimiser/schedule/DP settings")
    p.add_argument("--fork", action="store_true",
                   help="with --resume PATH and --out NEW: continue that checkpoint with this config's optimiser, "
                   "LR schedule and DP-budget settings in the new run folder (the source run is left as it is)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=0.1 --set frontend.sample_multiplier=1 (repeatable)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many more steps (the LR schedule still spans the full run); resume later")
    p.add_argument("--stop-after-minutes", type=float, default=None, metavar="M",
                   help="checkpoint and exit cleanly after M minutes of training (set below the scheduler's "
                   "time limit, e.g. SLURM --time, and resubmit with --resume)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only (no progress bar)")
    return p


def train(
    config: Any,
    *,
    out: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    resume: str | None = None,
    fork: bool = False,
    max_steps: int | None = None,
    stop_after_minutes: float | None = None,
    quiet: bool = False,
) -> tuple[Path, dict[str, Any] | None]:
    """Train as ``facepriv train`` does (``facepriv.train`` is this function); returns
    ``(run_dir, summary)``, the summary ``None`` on ranks other than 0 under torchrun.

    ``config``: a :class:`TrainConfig`, a YAML path or a shipped config name; ``overrides``
    are ``--set`` strings (``"optim.lr=0.1"``). ``resume``: ``"auto"`` (newest checkpoint in
    ``out``, a fresh start if none), a run/checkpoint folder, or ``None``. Every checkpoint
    folder holds a ``model.pt`` that ``facepriv.load`` reads.
    """
    from .checkpoint import latest_checkpoint
    from .components import default_run_dir
    from .config import TrainConfig
    from .distributed import broadcast_object, cleanup_distributed, init_distributed
    from .shipped import resolve_config
    from .trainer import Trainer

    if isinstance(config, TrainConfig):
        if overrides:
            raise ValueError("overrides apply to a YAML config or a shipped name, not to a TrainConfig object")
        cfg = config
    else:
        cfg = load_config(resolve_config(config), list(overrides))
    if quiet:
        cfg.logging.progress = False
    if fork and (resume in (None, "auto") or not (out or cfg.output_dir)):
        raise ConfigError("--fork needs --resume PATH (the checkpoint or run to fork) and --out NEW_RUN_DIR")
    env = init_distributed(cfg.device, cfg.distributed.backend, cfg.distributed.timeout_minutes)
    _setup_logging(quiet, env.rank)
    try:
        out = out or cfg.output_dir
        if resume not in (None, "auto") and out is None:
            # resuming from a checkpoint path: keep writing into that run's folder
            target = Path(resume)
            out = str(target.parent.parent if (target / "shared.pt").is_file() else target)
        run_dir = Path(out) if out else (default_run_dir(cfg.name) if env.is_main else None)
        run_dir = Path(broadcast_object(str(run_dir)))
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            log.info("run folder: %s", run_dir.resolve())
        if resume == "auto" and latest_checkpoint(run_dir) is None:
            # a requeued job's first attempt: nothing to resume yet, start the run
            log.warning("--resume: no checkpoint in %s yet; starting a new run", run_dir)
            resume = None
        trainer = Trainer(cfg, run_dir=run_dir, resume=resume, dist_env=env, fork=fork)
        stop = None if stop_after_minutes is None else 60.0 * stop_after_minutes
        summary = trainer.fit(max_steps=max_steps, stop_after_s=stop)
        return run_dir, (summary if env.is_main else None)
    finally:
        cleanup_distributed()


def _config_summary(path: Path) -> str:
    """One line for --list-configs: the config's leading comment (its own description)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line:
            break
    return ""


def _setup_logging(quiet: bool, rank: int) -> None:
    level = logging.WARNING if quiet or rank != 0 else logging.INFO
    logging.basicConfig(level=level, format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None, prog: str = "facepriv train") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":  # `python -m facepriv.training.cli train cfg.yaml`
        argv = argv[1:]
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.list_configs:
        from .shipped import shipped_configs

        for name, path in shipped_configs().items():
            print(f"{name:<36} {_config_summary(path)}")
        return 0
    if args.config is None:
        parser.error("give a config (a YAML file or a shipped name; see --list-configs)")
    try:
        from .shipped import resolve_config

        cfg = load_config(resolve_config(args.config), args.overrides)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        from .config import dump_config

        print(dump_config(cfg), end="")
        return 0
    if args.fork and (args.resume in (None, "auto") or not (args.out or cfg.output_dir)):
        print(f"{prog}: error: --fork needs --resume PATH (the checkpoint or run to fork) and --out NEW_RUN_DIR",
              file=sys.stderr)
        return 2

    from .lineage import ResumeError

    try:
        run_dir, summary = train(cfg, out=args.out, resume=args.resume, fork=args.fork, max_steps=args.max_steps,
                                 stop_after_minutes=args.stop_after_minutes, quiet=args.quiet)
        if summary is not None:
            verify = summary.get("verification") or {}
            print(json.dumps({"run_dir": str(run_dir), "step": summary["step"], "total_steps": summary["total_steps"],
                              "stopped_early": summary["stopped_early"], "epsilon": summary["epsilon"],
                              "verification": verify}, indent=2, default=str))
    except (ConfigError, FileNotFoundError, ResumeError, FloatingPointError) as exc:  # the message says it all
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover - `python -m facepriv.training.cli` / torchrun -m facepriv.training.cli
    raise SystemExit(main(prog="python -m facepriv.training.cli"))
