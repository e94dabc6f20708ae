"""``facepriv experiment <name>``: reproducible experiments on real data."""

from __future__ import annotations

import argparse
import importlib

EXPERIMENTS = {
    "lfw-half": ("facepriv.eval.experiments.lfw_half",
                 "privacy/accuracy table on LFW-half: every frontend trained, verified and attacked"),
}


def main(argv: list[str] | None = None, prog: str = "facepriv experiment") -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in EXPERIMENTS:
        p = argparse.ArgumentParser(prog=prog, description="Reproducible experiments on real data (the data folder is "
                                    "an argument; nothing is downloaded or copied into the repository).")
        p.add_argument("name", choices=sorted(EXPERIMENTS), help="; ".join(f"{k}: {v[1]}" for k, v in EXPERIMENTS.items()))
        p.parse_args(argv[:1])  # prints usage / the error and exits
        return 2
    module = importlib.import_module(EXPERIMENTS[argv[0]][0])
    return int(module.main(argv[1:], prog=f"{prog} {argv[0]}"))
