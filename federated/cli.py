"""``facepriv fed``: federated simulation and deployment helpers.

    facepriv fed simulate --clients 4 --rounds 3 --strategy pfm --out runs/fed
    facepriv fed certs --out certs/            # test CA + SuperLink certificate + node keys
    facepriv fed superlink -- --database state.db ...   # flower-superlink, robust SQLite lock wait
    facepriv fed settings --out runs/fed ...   # write settings.json for a deployed run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .aggregators import AGGREGATORS

FRONTENDS = ("rgb", "dct", "partialface", "dctdp")


def default_train_config(image_size: int, frontend: str, model: str, width: float, batch_size: int, lr: float,
                         seed: int, device: str) -> dict[str, Any]:
    """A small TrainConfig for simulation; real runs pass ``--config`` (a training YAML)."""
    return {
        "name": "federated", "seed": seed, "device": device,
        "data": {"format": "synthetic", "image_size": image_size, "batch_size": batch_size, "num_workers": 0},
        "frontend": {"name": frontend, **({"sample_multiplier": 1} if frontend == "partialface" else {})},
        # BatchNorm: with GroupNorm(2) these small models sat on the ArcFace plateau (held-out AUC
        # 0.53 after 384 steps vs 0.78 after 256 with BatchNorm, measured on synthetic faces);
        # --dp-sgd switches to GroupNorm, which Opacus needs.
        "model": {"name": model, "width": width, "embedding_size": 64},
        "head": {"type": "softmax", "margin": "arcface", "s": 32.0, "m": 0.3},
        "optim": {"lr": lr, "momentum": 0.9, "weight_decay": 5e-4, "amp": "none"},
        "schedule": {"type": "constant", "max_steps": 10**9},
        "checkpoint": {"every_steps": 0},
        "logging": {"every_steps": 10**9, "progress": False, "csv": False},
        "eval": {"every_steps": 0},
    }


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, metrics.json, verification.png)")
    p.add_argument("--clients", type=int, default=4, help="number of sites (simulation: virtual SuperNodes)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--strategy", choices=("fedavg", "fedavgm", "pfm"), default="pfm")
    p.add_argument("--local-steps", type=int, default=5, help="trainer steps per site per round")
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' or an identity-folder dataset, partitioned by identity over the sites "
                        "(a held-out set of identities is used for verification)")
    p.add_argument("--ids-per-client", type=int, default=8, help="synthetic identities per site")
    p.add_argument("--images-per-identity", type=int, default=8)
    p.add_argument("--eval-identities", type=int, default=16, help="held-out identities for verification (0: none)")
    p.add_argument("--config", type=Path, help="training YAML (model/head/optim/frontend); default: a tiny model")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the training config")
    p.add_argument("--frontend", choices=FRONTENDS, default="rgb")
    p.add_argument("--model", default="mobilefacenet")
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--image-size", type=int, default=32, help="face size (frequency frontends: multiple of 8)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--min-train-replies", type=int, default=1, help="valid site updates needed to change the model")
    p.add_argument("--round-timeout", type=float, default=600.0, help="seconds to wait for sites each round")
    p.add_argument("--max-update-norm", type=float, default=None, help="reject updates farther than this from the sent model")
    p.add_argument("--max-examples", type=float, default=None,
                   help="largest aggregation weight (num-examples) of one site per round; larger reports are clipped "
                        "(default: local-steps x batch size, plus 4 sigma of Poisson sampling under --dp-sgd)")
    p.add_argument("--aggregator", choices=AGGREGATORS, default="mean",
                   help="how accepted updates are combined: the num-examples-weighted mean, or robust to a minority "
                        "of poisoning sites: coordinate-wise median, trimmed mean, norm clipping (docs/federated.md)")
    p.add_argument("--trim-fraction", type=float, default=0.2,
                   help="trimmed-mean: fraction of the sites' values cut at each end of every coordinate")
    p.add_argument("--clip-norm", type=float, default=None,
                   help="norm-clip: largest L2 distance from the sent model a site's update keeps")
    p.add_argument("--server-momentum", type=float, default=0.9, help="FedAvgM server momentum")
    p.add_argument("--client-dp-noise", type=float, default=None,
                   help="Flower client-level DP: noise multiplier (enables fixedclipping_mod; fedavg/fedavgm only)")
    p.add_argument("--client-dp-clip", type=float, default=1.0, help="client-level DP: clipping norm of a site's update")
    p.add_argument("--dp-sgd", action="store_true", help="record-level DP-SGD (Opacus) inside every site")
    p.add_argument("--fv-candidates", type=int, default=0, metavar="K",
                   help="FedFace federated validation: each round, K candidate aggregation weightings (sample "
                        "counts, uniform, Dirichlet draws) are scored by the sites on held-out identities and the "
                        "best is kept (0: off; not with --client-dp-noise)")
    p.add_argument("--fv-val-identities", type=int, default=2,
                   help="identities each site holds out of training to score FV candidates (>= 2)")
    p.add_argument("--fv-concentration", type=float, default=2.0,
                   help="Dirichlet concentration of the random FV candidates (larger: closer to sample counts)")
    p.add_argument("--no-resume", action="store_true", help="start from round 1 even if --out has checkpoints")


def build_settings(args: argparse.Namespace) -> Any:
    from facepriv.training.config import apply_overrides, config_to_dict, load_config

    from .server_app import FedSettings

    if args.config is not None:
        cfg = config_to_dict(load_config(args.config, args.set))
    else:
        cfg = apply_overrides(default_train_config(args.image_size, args.frontend, args.model, args.width, args.batch_size,
                                                   args.lr, args.seed, args.device), args.set)
    if args.dp_sgd:
        cfg.setdefault("dp", {})["enabled"] = True
        if args.config is None:  # Opacus: per-sample gradients need GroupNorm, not BatchNorm
            cfg["model"].update({"norm": "group", "norm_groups": 2})
    size = int(cfg["data"].get("image_size", args.image_size))
    held_out: dict[str, Any] | None = None
    if args.data == "synthetic":
        data = {"format": "synthetic", "ids_per_client": args.ids_per_client,
                "images_per_identity": args.images_per_identity, "seed": args.seed}
        if args.eval_identities > 0:
            held_out = {"format": "synthetic", "identities": args.eval_identities, "images_per_identity": 4,
                        "seed": args.seed, "first_identity": args.clients * args.ids_per_client + 1000}
    else:
        from facepriv.data.folders import list_identity_folders

        root = Path(args.data)
        if not root.is_dir():
            raise SystemExit(f"--data {root}: not a folder of identity sub-folders")
        names = sorted(list_identity_folders(root))
        n_eval = min(args.eval_identities, max(0, len(names) - args.clients))
        eval_names = names[:n_eval]
        data = {"format": "folder", "path": str(root), "held_out": eval_names, "seed": args.seed,
                "num_partitions": args.clients}
        if n_eval >= 2:
            held_out = {"format": "folder", "path": str(root), "identities_list": eval_names}
    cfg["data"]["image_size"] = size
    return FedSettings(
        train_config=cfg, out=str(args.out), strategy=args.strategy, rounds=args.rounds, local_steps=args.local_steps,
        min_train_nodes=args.clients, min_available_nodes=args.clients, min_train_replies=args.min_train_replies,
        round_timeout=args.round_timeout, max_update_norm=args.max_update_norm, max_examples=args.max_examples,
        aggregator=args.aggregator, trim_fraction=args.trim_fraction, clip_norm=args.clip_norm,
        server_momentum=args.server_momentum,
        data=data, eval_data=held_out, client_dp_noise=args.client_dp_noise, client_dp_clip=args.client_dp_clip,
        fv_candidates=args.fv_candidates, fv_val_identities=args.fv_val_identities,
        fv_concentration=args.fv_concentration, resume=not args.no_resume, seed=args.seed,
    )


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Federated training of facepriv models across partner sites (Flower).")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run a federation on this machine (Flower simulation, Ray backend)",
                         description="Flower simulation: virtual sites with disjoint identities; verification of the "
                                     "global model on held-out identities after every round.")
    _add_run_args(sim)
    sim.add_argument("--num-cpus", type=int, default=2, help="CPUs Ray may use in total")
    sim.add_argument("--cpus-per-client", type=float, default=0.5, help="CPU share of one virtual site (fractional)")
    st = sub.add_parser("settings", help="write settings.json for a deployed run (flwr run --run-config settings-file=...)")
    _add_run_args(st)
    link = sub.add_parser("superlink", help="run flower-superlink with a SQLite lock wait that survives a loaded "
                                            "machine (arguments after -- go to flower-superlink)",
                          description="flower-superlink, but a request waits up to --sqlite-busy-timeout seconds for "
                                      "the state database's write lock instead of Flower's 5 s (docs/federated.md).")
    link.add_argument("--sqlite-busy-timeout", type=float, default=None, metavar="SECONDS",
                      help="seconds a request waits for the SQLite write lock (default: 300)")
    link.add_argument("superlink_args", nargs=argparse.REMAINDER, help="flower-superlink arguments, after --")
    certs = sub.add_parser("certs", help="make TEST certificates: CA, SuperLink TLS cert, SuperNode auth keys")
    certs.add_argument("--out", type=Path, required=True)
    certs.add_argument("--nodes", type=int, default=2, help="SuperNode key pairs to create")
    certs.add_argument("--host", action="append", default=[], help="extra DNS name / IP for the SuperLink certificate")
    return parser


def main(argv: list[str] | None = None, prog: str = "facepriv fed") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command == "superlink":
        from .deploy import BUSY_TIMEOUT_S, run_superlink

        rest = list(args.superlink_args)
        run_superlink(rest[1:] if rest[:1] == ["--"] else rest,
                      busy_timeout_s=args.sqlite_busy_timeout if args.sqlite_busy_timeout is not None else BUSY_TIMEOUT_S)
        return 0
    if args.command == "certs":
        from .deploy import make_test_certificates

        paths = make_test_certificates(args.out, nodes=args.nodes, hosts=["localhost", "127.0.0.1", *args.host])
        print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
        return 0
    settings = build_settings(args)
    if args.command == "settings":
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "settings.json"
        path.write_text(settings.to_json())
        print(f"wrote {path}")
        return 0
    from .simulate import simulate

    history = simulate(settings, num_clients=args.clients, num_cpus=args.num_cpus, cpus_per_client=args.cpus_per_client)
    done = [r for r in history if r.get("round", 0) >= 1]
    print(json.dumps(history[-1] if history else {}, indent=2, default=str))
    if not done or done[-1]["round"] < args.rounds:
        print(f"simulation stopped after round {done[-1]['round'] if done else 0} of {args.rounds}", file=sys.stderr)
        return 1
    if not any((r.get("aggregation") or {}).get("accepted") for r in done):
        # every round completed but kept the initial model: no site ever trained (a silent failure otherwise)
        reasons = [v for r in done for v in {**(r.get("aggregation") or {}).get("failed", {}),
                                             **(r.get("aggregation") or {}).get("rejected", {})}.values()]
        print("no site update was accepted in any round; the global model never changed. First reason: "
              f"{str(reasons[0])[-500:] if reasons else 'unknown'}", file=sys.stderr)
        return 1
    print(f"wrote {args.out / 'metrics.json'}, {args.out / 'verification.png'}, {args.out / 'global.pt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
