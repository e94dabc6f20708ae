"""``facepriv data``: align faces, generate synthetic identities, pack and inspect datasets.

Sub-commands:
  align    detect + 5-point align a folder of photos to 112x112 (report of every failure)
  synth    write a synthetic identity folder (LFW naming) and optionally a pairs.txt
  pack     identity folder -> insightface train.rec/train.idx
  bundle   training set + test pairs + cached teacher embeddings as one compact pack (GPU windows)
  inspect  counts, classes and a sanity summary of a folder, .rec, .bin or pairs.txt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np


def _stats(counts: Sequence[int]) -> dict[str, Any]:
    if not counts:
        return {"min": 0, "median": 0, "max": 0}
    a = np.asarray(counts)
    return {"min": int(a.min()), "median": float(np.median(a)), "max": int(a.max())}


def _print(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=1, default=str))
        return
    for k, v in summary.items():
        if isinstance(v, list) and len(v) > 10:
            print(f"{k}: {len(v)} items, first: {v[:5]}")
        else:
            print(f"{k}: {v}")


# -- sub-commands ---------------------------------------------------------------------------
def _cmd_align(args: argparse.Namespace) -> int:
    from .align import align_folder
    from .detectors import load_detector

    kwargs: dict[str, Any] = {}
    if args.score_threshold is not None:
        kwargs["score_threshold"] = args.score_threshold
    detector = load_detector(args.detector, args.detector_kind, **kwargs)
    report = align_folder(
        args.input,
        args.output,
        detector,
        image_size=args.image_size,
        select=args.select,
        report_path=args.out_report,
        progress=not args.quiet,
    )
    rp = args.out_report or os.path.join(args.output, "align_report.json")
    print(
        f"aligned {report.aligned}/{report.total} images in {report.seconds:.1f}s "
        f"({len(report.failures)} failed, {report.multiple_faces} with several faces); report: {rp}"
    )
    for f in report.failures[:10]:
        print(f"  failed: {f['path']}: {f['reason']}")
    if len(report.failures) > 10:
        print(f"  ... {len(report.failures) - 10} more in the report")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synthetic import write_folder
    from .verification import pairs_txt_for_folder

    out = args.out or args.output
    if not out:
        print("facepriv data synth: give an output folder (OUT or --out DIR)", file=sys.stderr)
        return 2
    summary = write_folder(
        out,
        args.identities,
        args.images_per_identity,
        args.seed,
        image_size=args.image_size,
        first_identity=args.first_identity,
        difficulty=args.difficulty,
        landmarks=args.landmarks,
        progress=not args.quiet,
    )
    if args.pairs_per_fold:
        summary["pairs_txt"] = pairs_txt_for_folder(
            out, os.path.join(out, "pairs.txt"), n_folds=args.folds, per_fold=args.pairs_per_fold, seed=args.seed
        )
    with open(os.path.join(out, "synth_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(
        f"wrote {summary['images']} images of {summary['identities']} identities to {out} "
        f"in {summary['seconds']}s ({summary['images_per_second']} images/s)"
    )
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    from .recordio import pack_folder

    report = pack_folder(
        args.folder,
        args.out_prefix,
        image_size=args.image_size,
        quality=args.quality,
        verify=not args.no_verify,
        progress=not args.quiet,
    )
    print(f"packed {report.images} images of {report.classes} identities -> {report.rec_path}, {report.idx_path}")
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable images:")
        for p, r in report.skipped[:20]:
            print(f"  {p}: {r}")
    if report.stretched:
        print(f"stretched {len(report.stretched)} images to {args.image_size}x{args.image_size} "
              f"(aspect ratio changed), e.g. {report.stretched[0]}")
    return 0


def _cmd_bundle(args: argparse.Namespace) -> int:
    from .pack import write_pack

    teacher, info = None, None
    if args.teacher:
        from facepriv.judges import build_judge

        judge = build_judge(args.teacher)
        info = {k: v for k, v in judge.describe().items() if k != "models_dir"}

        def teacher(images):  # noqa: ANN001, ANN202 - float RGB batch -> unit embeddings
            return judge.embed(images)

    summary = write_pack(args.out, args.train, args.pairs, args.images, teacher=teacher, teacher_info=info,
                         quality=args.quality, max_mb=args.max_mb, progress=not args.quiet)
    print(f"packed {summary.train_images} training images of {summary.identities} identities, "
          f"{summary.test_images} test images / {summary.test_pairs} pairs, teacher: {args.teacher or 'none'} "
          f"-> {summary.out} ({summary.total_mb:.1f} MB)")
    if summary.skipped:
        print(f"skipped {len(summary.skipped)} unreadable training images (listed in manifest.json)")
    return 0


def _inspect_folder(path: str, args: argparse.Namespace) -> dict[str, Any]:
    from .folders import ImageFolderDataset

    ds = ImageFolderDataset(path)
    per = ds.images_per_class()
    summary: dict[str, Any] = {
        "type": "image folder",
        "path": path,
        "identities": ds.num_classes,
        "images": len(ds),
        "images_per_identity": _stats(list(per.values())),
        "identities_with_1_image": sum(1 for v in per.values() if v == 1),
        "first_classes": ds.class_names[:5],
    }
    if args.scan:
        rep = ds.scan(progress=not args.quiet)
        summary.update({"decoded_ok": rep.ok, "bad": rep.to_dict()["bad"], "sizes": rep.sizes})
    else:
        summary.update(_sample_decode(len(ds), lambda i: ds.load_rgb(i), lambda i: ds.samples[i][0], args.sample))
    return summary


def _sample_decode(n: int, load: Any, name: Any, k: int) -> dict[str, Any]:
    from .errors import DataError

    idx = np.unique(np.linspace(0, n - 1, num=min(k, n)).astype(int)) if n else []
    sizes: dict[str, int] = {}
    bad = []
    means = []
    for i in idx:
        try:
            img = load(int(i))
        except DataError as exc:
            bad.append({"item": name(int(i)), "reason": str(exc)})
            continue
        key = f"{img.shape[0]}x{img.shape[1]}"
        sizes[key] = sizes.get(key, 0) + 1
        means.append(img.reshape(-1, 3).mean(0))
    out: dict[str, Any] = {"sample_decoded": len(idx) - len(bad), "sample_bad": bad, "sample_sizes": sizes}
    if means:
        out["sample_mean_rgb"] = [round(float(v), 1) for v in np.mean(means, 0)]
    return out


def _inspect_rec(path: str, args: argparse.Namespace) -> dict[str, Any]:
    from .recordio import RecordIODataset

    ds = RecordIODataset(path)
    labels = ds.labels(progress=not args.quiet)  # range-checked: every label < ds.label_bound
    counts = np.bincount(labels) if labels.size else np.zeros(0, int)
    summary: dict[str, Any] = {
        "type": "recordio",
        "rec": ds.reader.rec_path,
        "idx": ds.reader.idx_path,
        "indexed_records": len(ds.reader),
        "header_record": list(ds.header0) if ds.header0 else None,
        "declared_identities": ds.declared_classes,
        "images": len(ds),
        "identities": int((counts > 0).sum()),
        "label_range": [int(labels.min()), int(labels.max())] if labels.size else None,
        "images_per_identity": _stats(counts[counts > 0].tolist()),
        "bad_records": [{"record": r, "reason": m} for r, m in ds.bad_records],
    }
    if args.scan:
        bad = ds.verify(progress=not args.quiet)
        summary.update({"decoded_ok": len(ds) - len(bad), "bad": [{"record": r, "reason": m} for r, m in bad]})
    else:
        summary.update(_sample_decode(len(ds), lambda i: ds.read_sample(i)[0], lambda i: f"#{int(ds.imgidx[i])}", args.sample))
    return summary


def _inspect_vset(vs: Any, args: argparse.Namespace) -> dict[str, Any]:
    summary = vs.summary()
    summary["type"] = vs.meta.get("format", "verification")
    if args.scan:
        bad = vs.check(progress=not args.quiet)
        summary.update({"decoded_ok": vs.num_images - len(bad), "bad": [{"image": s, "reason": r} for s, r in bad]})
    else:
        summary.update(_sample_decode(vs.num_images, vs.images.load, vs.images.name, args.sample))
    return summary


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .errors import DataError
    from .verification import load_bin, load_pairs_txt, parse_pairs_txt

    path = args.path
    try:
        if os.path.isdir(path):
            if os.path.isfile(os.path.join(path, "train.rec")):
                summary = _inspect_rec(path, args)
            else:
                summary = _inspect_folder(path, args)
        elif path.endswith((".rec", ".idx")):
            summary = _inspect_rec(path, args)
        elif path.endswith(".bin"):
            summary = _inspect_vset(load_bin(path), args)
        elif path.endswith(".txt"):
            if args.images:
                summary = _inspect_vset(load_pairs_txt(path, args.images, ext=args.ext), args)
            else:
                lines, folds, info = parse_pairs_txt(path)
                same = sum(ln.issame for ln in lines)
                summary = {
                    "type": "pairs.txt (not checked against images: pass --images DIR)",
                    "pairs": len(lines),
                    "genuine": same,
                    "impostor": len(lines) - same,
                    "identities": len({ln.name1 for ln in lines} | {ln.name2 for ln in lines}),
                    **info,
                }
        else:
            print(f"facepriv data inspect: don't know how to inspect {path!r} (folder, .rec/.idx, .bin or pairs .txt)", file=sys.stderr)
            return 2
    except DataError as exc:
        print(f"facepriv data inspect: {exc}", file=sys.stderr)
        return 1
    _print(summary, args.json)
    return 0


# -- parser ---------------------------------------------------------------------------------
def build_parser(prog: str = "facepriv data") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    a = sub.add_parser("align", help="detect and align faces to the ArcFace 112x112 template")
    a.add_argument("input", help="folder of photos (sub-folders are mirrored)")
    a.add_argument("output", help="output folder for aligned crops")
    a.add_argument("--detector", required=True, help="face detector ONNX file (YuNet, or SCRFD/RetinaFace via insightface)")
    a.add_argument("--detector-kind", default="auto", choices=["auto", "yunet", "insightface"], help="detector backend (auto: by file name)")
    a.add_argument("--select", default="largest", choices=["largest", "center"], help="which face when several are found")
    a.add_argument("--image-size", type=int, default=112, help="output size (multiple of 112 or 128)")
    a.add_argument("--score-threshold", type=float, default=None, help="detector confidence threshold")
    a.add_argument("--out-report", default=None, help="report JSON path (default OUTPUT/align_report.json)")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=_cmd_align)

    s = sub.add_parser("synth", help="generate synthetic face identities (image folder)")
    s.add_argument("output", nargs="?", default=None, help="output folder (or use --out)")
    s.add_argument("--out", default=None, help="output folder")
    s.add_argument("--identities", type=int, required=True, help="number of identities")
    s.add_argument("--images-per-identity", type=int, required=True, help="images per identity")
    s.add_argument("--seed", type=int, default=0, help="generator seed (same seed -> same images)")
    s.add_argument("--first-identity", type=int, default=0, help="index of the first identity (disjoint sets)")
    s.add_argument("--image-size", type=int, default=112, help="image size in pixels")
    s.add_argument("--difficulty", type=float, default=1.0, help="nuisance strength: 0 clean frontal, 1 default")
    s.add_argument("--pairs-per-fold", type=int, default=0, help="also write LFW-style pairs.txt with this many genuine (and impostor) pairs per fold")
    s.add_argument("--folds", type=int, default=10, help="folds in pairs.txt")
    s.add_argument("--landmarks", action="store_true", help="also write landmarks.json")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_synth)

    k = sub.add_parser("pack", help="pack an identity folder into insightface train.rec/train.idx")
    k.add_argument("folder", help="identity folder (one sub-folder per identity)")
    k.add_argument("out_prefix", help="output prefix (writes PREFIX.rec/.idx) or an existing folder (writes train.rec/.idx)")
    k.add_argument("--image-size", type=int, default=None, help="resize (re-encode as JPEG) to this size")
    k.add_argument("--quality", type=int, default=95, help="JPEG quality when re-encoding")
    k.add_argument("--no-verify", action="store_true", help="do not decode images before packing")
    k.add_argument("--quiet", action="store_true", help="no progress bar")
    k.set_defaults(func=_cmd_pack)

    b = sub.add_parser(
        "bundle", help="training set + test pairs + teacher embeddings as one compact pack (for GPU windows)",
        description="Write a self-checking pack (RecordIO train/test, pairs, teacher embeddings, manifest with "
                    "SHA-256) small enough to carry to a short GPU window. Example (LFW-half, after "
                    "`facepriv experiment lfw-half --data ../shared/data --out runs/lfw --stages data`): "
                    "facepriv data bundle --train runs/lfw/data/train --pairs runs/lfw/data/pairs_folds5-9.txt "
                    "--images ../shared/data/lfw/aligned112 --teacher dlib --out .pack/lfw_half")
    b.add_argument("--train", required=True, help="identity folder of training images")
    b.add_argument("--pairs", required=True, help="LFW-style pairs.txt of the test protocol")
    b.add_argument("--images", required=True, help="image root the pairs file refers to")
    b.add_argument("--teacher", default=None,
                   help="embed the original training images with this judge (dlib, model.onnx, checkpoint.pt)")
    b.add_argument("--out", required=True, help="pack folder to write")
    b.add_argument("--quality", type=int, default=70, help="JPEG quality of the re-encoded images (default 70)")
    b.add_argument("--max-mb", type=float, default=50.0, help="fail if the pack is larger (default 50)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_cmd_bundle)

    i = sub.add_parser("inspect", help="summarise a folder, .rec/.idx, .bin or pairs.txt")
    i.add_argument("path", help="dataset folder, train.rec folder, .rec/.idx, .bin or pairs .txt")
    i.add_argument("--images", default=None, help="image root for a pairs.txt")
    i.add_argument("--ext", default="jpg", help="image extension for a pairs.txt")
    i.add_argument("--scan", action="store_true", help="decode every image (slow on big sets)")
    i.add_argument("--sample", type=int, default=32, help="images to decode for the quick check")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    i.set_defaults(func=_cmd_inspect)
    return p


def main(argv: list[str] | None = None, prog: str = "facepriv data") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from .errors import DataError

    try:
        return int(args.func(args) or 0)
    except DataError as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
