"""``facepriv eval``: evaluate trained checkpoints.

Sub-commands:

* ``verify``: 1:1 verification (accuracy, TPR@FPR, EER, AUC, ROC plots) on ``.bin`` and
  ``pairs.txt`` sets, with each image protected the way a deployed client protects it.

Bad inputs (a missing image, a file that is not a ``.bin`` or not a checkpoint, a
checkpoint that does not fit the data) print one line naming the file and exit with code 2,
never a traceback.

Verification sets are given with ``--pairs NAME=SPEC``. ``--set``/``-s`` is the old spelling,
accepted for one release with a deprecation warning: everywhere else in facepriv (``train``,
``fed``, ``experiment``) ``--set`` overrides a config value.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["build_parser", "main"]

_VERIFY_DESCRIPTION = """\
Evaluate one or more checkpoints on face verification sets, through the same inference path
as deployment: every image is protected by the checkpoint's frontend on its own (PartialFace:
its own secure-random frequency subset; DCTDP: fresh noise), embedded, L2-normalised, and a
pair is scored by cosine similarity. Random frontends are scored R times (--repetitions) and
the report gives mean ± std over repetitions; deterministic ones (RGB, DCT) are scored once.

All images are decoded and checked against every checkpoint's input size before any model
runs. metrics.json and summary.md are rewritten after every finished checkpoint x set, so a
failure (or Ctrl-C) late in the run keeps everything finished ("complete": false).

Writes into --out:
  metrics.json     every metric, per repetition and per fold, thresholds, settings
  summary.md       one row per checkpoint x set: accuracy, TPR@FPR 1e-4/1e-3/1e-2, EER, AUC
  roc_<set>.png    ROC (log FPR) per set, all checkpoints on one plot
"""

_VERIFY_EPILOG = """\
set specs (--pairs NAME=SPEC, repeat for several sets):
  lfw=data/lfw.bin                      insightface .bin (lfw, cfp_fp, agedb_30, ...)
  mine=data/pairs.txt:data/aligned      LFW-style pairs.txt over a folder laid out as
                                        <name>/<name>_0001.jpg (see --image-ext)
  Images must already be aligned faces of the checkpoint's input size (112x112 normally);
  align raw photos first with `facepriv data align`. --resize resizes other sizes instead
  (e.g. to try a small quickstart checkpoint on real 112x112 faces); the report warns that
  such numbers are not comparable.
  --set NAME=SPEC is the deprecated old name of --pairs (removed in the next release).

examples:
  facepriv eval verify --checkpoint runs/rgb/model.pt --checkpoint runs/pf/model.pt \\
      --pairs lfw=data/lfw.bin --out runs/eval
  facepriv eval verify --checkpoint model.safetensors --pairs mine=pairs.txt:faces \\
      --repetitions 10 --flip --seed 0 --device cuda --out runs/eval_mine
  facepriv eval verify --checkpoint runs/demo/rgb/model.pt --pairs lfw=data/lfw.bin --resize \\
      --out runs/demo_on_lfw

metrics (definitions in docs/evaluation.md):
  accuracy    10-fold accuracy, threshold picked on the other 9 folds (LFW protocol)
  TPR@FPR     largest TPR with FPR <= target; "n/m" when the set has fewer than 1/FPR
              impostor pairs (not measurable, never extrapolated)
  EER, AUC    equal error rate and area under the ROC
"""


def _set_arg(text: str) -> tuple[str | None, str]:
    """``NAME=SPEC`` (or a bare SPEC, named after its file)."""
    if "=" in text:
        name, spec = text.split("=", 1)
        name = name.strip()
        if not name:
            raise argparse.ArgumentTypeError(f"empty set name in {text!r}; write NAME=path")
        return name, spec
    return None, text


#: printed once when a verification set is given with the old --set/-s spelling
SET_DEPRECATION = (
    "--set/-s for verification sets is deprecated and will be removed in the next release; use --pairs NAME=SPEC "
    "(--set overrides config values in train, fed and experiment)"
)


class _DeprecatedSetAction(argparse.Action):
    """``--set``/``-s``: stores exactly like ``--pairs`` and notes that the old name was used."""

    def __init__(self, option_strings: list[str], dest: str, repeatable: bool = False, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.repeatable = repeatable

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if self.repeatable:
            values = [*(getattr(namespace, self.dest, None) or []), values]
        setattr(namespace, self.dest, values)
        namespace.deprecated_set = True


def _add_pairs_option(p: argparse.ArgumentParser, dest: str, repeatable: bool) -> None:
    """``--pairs/-p NAME=SPEC`` plus the deprecated ``--set/-s`` spelling (same destination).

    Neither is ``required`` in argparse's sense (either spelling satisfies it); ``main``
    checks that one was given.
    """
    help_text = "a verification set: NAME=path.bin or NAME=pairs.txt:image_dir" + ("; repeat for several" if repeatable else "")
    p.add_argument("--pairs", "-p", dest=dest, action="append" if repeatable else "store", type=_set_arg,
                   metavar="NAME=SPEC", help=help_text + " (required)")
    p.add_argument("--set", "-s", dest=dest, action=_DeprecatedSetAction, repeatable=repeatable, type=_set_arg,
                   metavar="NAME=SPEC", help="deprecated spelling of --pairs (removed in the next release)")
    p.set_defaults(deprecated_set=False)


def _device_arg(text: str) -> str:
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(text)
    except (RuntimeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"invalid device {text!r} ({e}); use cpu, cuda, cuda:1 or auto") from None
    return text


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_parser(prog: str = "facepriv eval") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate trained checkpoints. Run `%(prog)s verify --help` for the verification benchmark.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    v = sub.add_parser(
        "verify",
        help="verification accuracy, TPR@FPR, EER, AUC and ROC plots on .bin / pairs.txt sets",
        description=_VERIFY_DESCRIPTION,
        epilog=_VERIFY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("--checkpoint", "-c", action="append", required=True, metavar="CKPT",
                   help="a FaceRecognizer checkpoint (.pt or .safetensors) written by `facepriv train`; "
                        "repeat to compare several (e.g. an RGB baseline and protected variants)")
    _add_pairs_option(v, "sets", repeatable=True)
    v.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder (created if missing)")
    v.add_argument("--repetitions", "-r", type=_positive, default=5, metavar="R",
                   help="repetitions of the frontend randomness for random frontends (default: %(default)s); "
                        "deterministic frontends are always scored once")
    v.add_argument("--flip", action="store_true",
                   help="flip-test: also embed the mirrored face (protected with its own randomness) and sum the "
                        "two embeddings before normalising")
    v.add_argument("--seed", type=int, default=None,
                   help="make the frontend randomness reproducible (per-repetition seeds are derived from it); "
                        "default: secure OS randomness, as deployed")
    v.add_argument("--batch-size", "-b", type=_positive, default=64, metavar="N",
                   help="images per forward pass (default: %(default)s)")
    v.add_argument("--device", type=_device_arg, default="auto",
                   help="cpu, cuda, cuda:N, or auto = cuda when available (default: %(default)s)")
    v.add_argument("--image-ext", default="jpg", metavar="EXT",
                   help="image file extension for pairs.txt sets (default: %(default)s)")
    v.add_argument("--resize", action="store_true",
                   help="resize images whose size differs from a checkpoint's input size (instead of refusing "
                        "them), e.g. to try a quickstart checkpoint on real 112x112 faces; the result records the "
                        "sizes and summary.md warns that the numbers are not comparable")
    v.add_argument("--no-plots", action="store_true", help="skip the ROC PNGs")
    v.add_argument("--quiet", "-q", action="store_true", help="no progress bars, no table on stdout")

    u = sub.add_parser(
        "subsets",
        help="PartialFace: does the model recognise faces across random secret subsets, or only within one?",
        description="Score a verification set's pairs with a random (subset, permutation) per image, as deployed, "
                    "and with every image on one fixed layout, for each layout. A model whose fixed-layout AUC is "
                    "far above its random-layout AUC has embeddings that depend on the layout (see "
                    "docs/training.md). Writes DIR/subsets.json.",
    )
    u.add_argument("--checkpoint", "-c", required=True, metavar="CKPT", help="a PartialFace FaceRecognizer checkpoint")
    _add_pairs_option(u, "set", repeatable=False)
    u.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder (created if missing)")
    u.add_argument("--max-pairs", type=_positive, default=600, metavar="N",
                   help="score a random sample of N pairs (default: %(default)s)")
    u.add_argument("--layouts", type=_positive, default=None, metavar="K",
                   help="fixed layouts to score (default: all n_subsets x n_permutations)")
    u.add_argument("--seed", type=int, default=0, help="pair sample and random layouts (default: %(default)s)")
    u.add_argument("--device", type=_device_arg, default="auto", help="cpu, cuda, cuda:N or auto")
    u.add_argument("--image-ext", default="jpg", metavar="EXT", help="image extension for pairs.txt sets")
    return parser


def _run_subsets(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from facepriv.eval.subsets import subset_invariance
    from facepriv.eval.verify import load_set, parse_set_spec
    from facepriv.models import FaceRecognizer

    name, spec_text = args.set
    vset = load_set(parse_set_spec(name, spec_text, image_ext=args.image_ext))
    model = FaceRecognizer.load(args.checkpoint, map_location=args.device)
    result = subset_invariance(model, vset, max_pairs=args.max_pairs, layouts=args.layouts, seed=args.seed,
                               device=args.device, progress=True)
    result = {"checkpoint": args.checkpoint, "set": vset.name, **result}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "subsets.json").write_text(json.dumps(result, indent=2))
    r = result["random"]
    print(f"random layouts: AUC {r['auc']:.3f}  genuine cos {r['genuine_cosine']:.3f}  impostor cos {r['impostor_cosine']:.3f}")
    for f in result["fixed"]:
        print(f"subset {f['subset']} perm {f['permutation']}: AUC {f['auc']:.3f}  genuine cos {f['genuine_cosine']:.3f}  "
              f"impostor cos {f['impostor_cosine']:.3f}")
    print(f"wrote {out / 'subsets.json'}")
    return 0


def _run_verify(args: argparse.Namespace, prog: str) -> int:
    from pathlib import Path

    from facepriv.eval.report import summary_markdown, write_report
    from facepriv.eval.verify import parse_set_spec, verify

    sets: dict[str, Any] = {}
    for name, spec_text in args.sets:
        spec = parse_set_spec(name, spec_text, image_ext=args.image_ext)
        if spec.name in sets:
            raise ValueError(f"set name {spec.name!r} given twice; name sets explicitly with NAME=SPEC")
        sets[spec.name] = spec
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # an unwritable --out fails now, not after the first result
    saved: list[int] = []

    def save(doc: dict[str, Any]) -> None:
        """Rewrite metrics.json + summary.md with what is finished (plots come at the end)."""
        write_report(doc, out, plots=False)
        saved.append(len(doc["results"]))

    try:
        results = verify(
            args.checkpoint,
            sets,
            repetitions=args.repetitions,
            flip=args.flip,
            batch_size=args.batch_size,
            device=args.device,
            seed=args.seed,
            progress=not args.quiet,
            resize=args.resize,
            on_result=save,
        )
    except BaseException:
        if saved:
            total = len(args.checkpoint) * len(sets)
            print(f"{prog} verify: {saved[-1]} of {total} checkpoint x set results were finished and are kept in "
                  f"{out / 'metrics.json'} and {out / 'summary.md'}", file=sys.stderr)
        raise
    paths = write_report(results, out, plots=not args.no_plots)
    if not args.quiet:
        table = [ln for ln in summary_markdown(results).splitlines() if ln.startswith("|")]
        print("\n".join(table))
        print(f"\nwrote {paths['metrics']}, {paths['summary']}" + "".join(f", {p}" for p in paths["plots"].values()))
    return 0


def main(argv: list[str] | None = None, prog: str = "facepriv eval") -> int:
    """Entry point for ``facepriv eval``; returns the exit code (2 for bad input)."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # --help (0) or a usage error (2): argparse already printed why
        return int(e.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "deprecated_set", False):
        print(f"{prog} {args.command}: warning: {SET_DEPRECATION}", file=sys.stderr)
    if not getattr(args, "sets" if args.command == "verify" else "set", None):
        print(f"{prog} {args.command}: error: the following arguments are required: --pairs/-p NAME=SPEC",
              file=sys.stderr)
        return 2
    from facepriv.data.errors import DataError

    try:
        if args.command == "verify":
            return _run_verify(args, prog)
        if args.command == "subsets":
            return _run_subsets(args)
    except (DataError, ValueError, OSError) as e:  # CheckpointError, EvalInputError are ValueErrors
        kind = "bad input" if isinstance(e, (DataError, ValueError)) else "file error"
        print(f"{prog} {args.command}: {kind}: {e}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
