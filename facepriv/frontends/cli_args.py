"""Shared command-line handling for choosing a frontend (name, YAML file or checkpoint)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from facepriv.frontends.base import Frontend
from facepriv.frontends.registry import FRONTENDS, build_frontend


def add_frontend_arguments(parser: argparse.ArgumentParser, *, required: bool = True, releases: bool = False) -> None:
    """``releases``: the command sends the frontend's output (or a copy of the frontend) off the
    device, so a fixed ``inference_seed`` is refused unless one of the two flags below is given."""
    group = parser.add_argument_group("frontend (pick one source)")
    group.add_argument("--frontend", metavar="NAME|YAML",
                       help=f"a frontend name ({', '.join(FRONTENDS)}) or a YAML config file (with the model owner's secret)")
    group.add_argument("--checkpoint", type=Path, metavar="CKPT",
                       help="take the frontend (config, secret and learned parameters) from a facepriv model checkpoint")
    group.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="override a frontend option, e.g. --option epsilon_mean=0.5 (repeatable; values parsed as YAML)")
    if releases:
        seed = parser.add_argument_group("fixed inference seed (refused by default)")
        choice = seed.add_mutually_exclusive_group()
        choice.add_argument("--drop-inference-seed", action="store_true",
                            help="ignore a fixed inference_seed in the config or checkpoint and draw fresh OS randomness")
        choice.add_argument("--allow-fixed-inference-seed", action="store_true",
                            help="keep a fixed inference_seed: outputs become reproducible by anyone who knows it "
                                 "(reproducible tests only, never deployment)")
    parser.set_defaults(_frontend_required=required, _frontend_releases=releases)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--option expects KEY=VALUE, got {pair!r}")
        options[key.strip()] = yaml.safe_load(value)
    return options


def fixed_inference_seed_error(frontend: Frontend, action: str, source: str = "its config") -> str | None:
    """Why ``action`` must not run with this frontend, or None. A fixed ``inference_seed`` makes the
    deployment randomness (DCTDP's noise, PartialFace's subset choice) reproducible by anyone who
    learns the seed, which undoes the protection of everything released with it."""
    seed = getattr(frontend, "inference_seed", None)
    if seed is None:
        return None
    return (f"refusing to {action}: the {frontend.name} frontend from {source} has a fixed inference_seed, so its "
            "deployment randomness is reproducible by anyone who knows the seed (it was meant for reproducible "
            "evaluation). Pass --drop-inference-seed to draw fresh OS randomness instead, or "
            "--allow-fixed-inference-seed for a reproducible test (never for deployment).")


def drop_inference_seed(frontend: Frontend) -> Frontend:
    """The same frontend (learned state included) with OS-entropy inference randomness."""
    if getattr(frontend, "inference_seed", None) is None:
        return frontend
    state = frontend.state_dict()
    clean = build_frontend({**frontend.config, "inference_seed": None})
    clean.load_state_dict(state)
    clean.train(frontend.training)
    return clean


def frontend_from_args(args: argparse.Namespace) -> tuple[Frontend, bool]:
    """Returns (frontend, secret_is_new). ``secret_is_new`` warns that no model can use the output yet.

    For commands that release (``add_frontend_arguments(releases=True)``) a fixed
    ``inference_seed`` is refused with a clear message unless a flag says what to do with it.
    """
    frontend, secret_is_new = _frontend_from_args(args)
    if getattr(args, "_frontend_releases", False):
        if getattr(args, "drop_inference_seed", False):
            frontend = drop_inference_seed(frontend)
        elif not getattr(args, "allow_fixed_inference_seed", False):
            source = f"checkpoint {args.checkpoint}" if args.checkpoint else f"--frontend {args.frontend}"
            error = fixed_inference_seed_error(frontend, "release its outputs", source)
            if error:
                raise SystemExit(f"error: {error}")
    return frontend, secret_is_new


def _frontend_from_args(args: argparse.Namespace) -> tuple[Frontend, bool]:
    if args.checkpoint and args.frontend:
        raise SystemExit("give either --frontend or --checkpoint, not both")
    if args.checkpoint:
        from facepriv.models import FaceRecognizer  # lazy: only this path needs the models

        frontend = FaceRecognizer.load(args.checkpoint).frontend
        if args.option:
            raise SystemExit("--option cannot change a checkpoint's frontend (it would no longer match the model)")
        return frontend, False
    if not args.frontend:
        raise SystemExit("choose a frontend with --frontend NAME|YAML or --checkpoint CKPT")
    source = args.frontend
    if str(source).endswith((".yaml", ".yml")):
        loaded = yaml.safe_load(Path(source).read_text()) if Path(source).exists() else None
        if loaded is None:
            raise SystemExit(f"frontend config {source} does not exist or is empty")
        config = dict(loaded.get("frontend", loaded))
    else:
        config = {"name": source}
    config.update(parse_options(args.option))
    try:
        frontend = build_frontend(config)
    except ValueError as exc:
        raise SystemExit(f"invalid frontend config: {exc}") from exc
    secret_is_new = bool(frontend.secret_keys) and not all(k in config for k in frontend.secret_keys)
    return frontend, secret_is_new
