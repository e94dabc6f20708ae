"""The single `facepriv` command.

Thin dispatch only: the top-level parser knows each command's module and one-line help,
and imports the module when the command runs, so `facepriv --help` stays fast and works
without the optional extras (flwr, opacus, insightface) installed. Each command module
exposes `main(argv: list[str] | None, prog: str) -> int` with its own argparse parser.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import NamedTuple


class Command(NamedTuple):
    module: str
    help: str


COMMANDS: dict[str, Command] = {
    "quickstart": Command("facepriv.training.quickstart", "end-to-end demo on synthetic faces: train RGB and protected models, evaluate, report"),
    "frontends": Command("facepriv.frontends.cli", "list the privacy frontends and show a frontend's config and privacy report"),
    "protect": Command("facepriv.frontends.protect", "client-side step: turn a folder of aligned faces into protected tensors"),
    "export": Command("facepriv.frontends.export", "export a frontend to TorchScript or ONNX for devices"),
    "data": Command("facepriv.data.cli", "datasets: align faces, generate synthetic identities, pack/inspect RecordIO"),
    "train": Command("facepriv.training.cli", "train a recognition model from a YAML config (single process or torchrun/DDP)"),
    "eval": Command("facepriv.eval.cli", "evaluate checkpoints: verification TPR@FPR, accuracy, ROC plots"),
    "attack": Command("facepriv.eval.attacks.cli", "run reconstruction attacks against a frontend and judge identity leakage"),
    "fed": Command("facepriv.federated.cli", "federated training with Flower: simulate, or run a deployed app"),
    "experiment": Command("facepriv.eval.experiments.cli", "reproducible experiments on real data: the LFW-half privacy/accuracy table"),
    "bench": Command("facepriv.eval.bench", "benchmarks: frontends, training throughput, metrics, federated overhead"),
}


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _usage() -> str:
    lines = [
        "usage: facepriv <command> [options]",
        "",
        "Privacy-preserving face recognition. Run `facepriv <command> --help` for a command's options.",
        "",
        "commands:",
    ]
    for name, cmd in COMMANDS.items():
        if _module_exists(cmd.module):
            lines.append(f"  {name:<12} {cmd.help}")
    lines += [
        "",
        "Start here: `facepriv quickstart --out runs/demo` trains and evaluates small models on",
        "synthetic faces in a few minutes on a laptop CPU and writes a report.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] in {"--version", "-V"}:
        from facepriv import __version__

        print(f"facepriv {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    cmd = COMMANDS.get(name)
    if cmd is None or not _module_exists(cmd.module):
        print(f"facepriv: unknown command {name!r}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    module = importlib.import_module(cmd.module)
    return int(module.main(rest, prog=f"facepriv {name}") or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
