"""`facepriv frontends`: what each frontend sends and what it guarantees."""

from __future__ import annotations

import argparse
import json

from facepriv.frontends.cli_args import add_frontend_arguments, frontend_from_args
from facepriv.frontends.registry import FRONTENDS, build_frontend


def main(argv: list[str] | None = None, prog: str = "facepriv frontends") -> int:
    if argv and argv[0] == "noise":  # its own options; see facepriv.frontends.noise_table
        from facepriv.frontends.noise_table import main as noise_main

        return noise_main(argv[1:], prog=f"{prog} noise")
    parser = argparse.ArgumentParser(
        prog=prog,
        description="List the privacy frontends, or show one frontend's full config and privacy report.",
        epilog="examples:\n  facepriv frontends\n  facepriv frontends show --frontend dctdp --option epsilon_mean=0.5\n"
               "  facepriv frontends noise --epsilon-mean 4\n"
               "  facepriv frontends show partialface\n"
               "  facepriv frontends show --checkpoint runs/demo/partialface/model.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action")
    show = sub.add_parser("show", help="print a frontend's config and privacy report as JSON")
    sub.add_parser("noise", help="DCTDP noise for equal epsilon: analytic vs calibrated vs exact bounds (Markdown)",
                   add_help=False)
    show.add_argument("name", nargs="?", metavar="NAME",
                      help=f"shorthand for --frontend NAME ({', '.join(FRONTENDS)})")
    add_frontend_arguments(show)
    show.add_argument("--reveal-secrets", action="store_true", help="include secret config values (only on the model owner's machine)")
    args = parser.parse_args(argv)
    if args.action == "show":
        if args.name is not None:
            if args.frontend or args.checkpoint:
                show.error(f"give the frontend once: {args.name!r} or --frontend/--checkpoint, not both")
            args.frontend = args.name
        frontend, _ = frontend_from_args(args)
        config = frontend.config if args.reveal_secrets else frontend.public_config()
        print(json.dumps({"config": config, "out_channels": frontend.out_channels,
                          "output_size_for_112": frontend.output_size(112, 112),
                          "privacy_report": frontend.privacy_report()}, indent=2))
        return 0
    print(f"{'name':<12} {'channels':>8}  mechanism")
    for name in FRONTENDS:
        kwargs = {"secret_seed": 0} if name == "partialface" else {}
        f = build_frontend({"name": name, **kwargs})
        print(f"{name:<12} {f.out_channels:>8}  {f.privacy_report()['mechanism']}")
    print("\n`facepriv frontends show NAME` prints a frontend's options and privacy report.")
    return 0
