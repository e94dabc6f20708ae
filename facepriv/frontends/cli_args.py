"""Shared command-line handling for choosing a frontend (name, YAML file or checkpoint)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from facepriv.frontends.base import Frontend
from facepriv.frontends.registry import FRONTENDS, build_frontend


def add_frontend_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    group = parser.add_argument_group("frontend (pick one source)")
    group.add_argument("--frontend", metavar="NAME|YAML",
                       help=f"a frontend name ({', '.join(FRONTENDS)}) or a YAML config file (with the model owner's secret)")
    group.add_argument("--checkpoint", type=Path, metavar="CKPT",
                       help="take the frontend (config, secret and learned parameters) from a facepriv model checkpoint")
    group.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="override a frontend option, e.g. --option epsilon_mean=0.5 (repeatable; values parsed as YAML)")
    parser.set_defaults(_frontend_required=required)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--option expects KEY=VALUE, got {pair!r}")
        options[key.strip()] = yaml.safe_load(value)
    return options


def frontend_from_args(args: argparse.Namespace) -> tuple[Frontend, bool]:
    """Returns (frontend, secret_is_new). ``secret_is_new`` warns that no model can use the output yet."""
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
