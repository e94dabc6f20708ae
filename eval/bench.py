"""`facepriv bench <name>`: dispatch to the benchmark modules in ``facepriv.eval.benchmarks``."""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

BENCHMARKS = {
    "frontends": ("facepriv.eval.benchmarks.frontends", "images/s of each frontend vs the naive DCT path and the memory write bound"),
    "metrics": ("facepriv.eval.benchmarks.metrics", "TPR@FPR on 10M/100M scores vs sklearn.metrics.roc_curve"),
    "train": ("facepriv.eval.benchmarks.train", "training throughput of IResNet-18 with RGB vs PartialFace vs DCTDP"),
    "fed": ("facepriv.eval.benchmarks.fed", "central vs FedAvg vs PFM accuracy and federated round overhead"),
    "gpu": ("facepriv.eval.benchmarks.gpu", "one prepared GPU-window check: CUDA correctness, DDP, throughput, a short real run"),
}


def _available() -> dict[str, tuple[str, str]]:
    return {k: v for k, v in BENCHMARKS.items() if importlib.util.find_spec(v[0]) is not None}


def environment() -> dict:
    """Versions and hardware recorded next to every benchmark number."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "command": " ".join(["facepriv", "bench", *sys.argv[2:]]) if sys.argv and sys.argv[0].endswith("facepriv") else " ".join(sys.argv),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def main(argv: list[str] | None = None, prog: str = "facepriv bench") -> int:
    available = _available()
    parser = argparse.ArgumentParser(prog=prog, description="Run a benchmark and write its results as JSON.")
    sub = parser.add_subparsers(dest="name", required=True, metavar="{" + ",".join(available) + "}")
    for name, (module, help_text) in available.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--out", type=Path, default=Path("runs/bench"), help="directory for <name>.json (default: runs/bench)")
        importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    result = importlib.import_module(available[args.name][0]).run(args)
    result = {"benchmark": args.name, "environment": environment(), **result}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0
