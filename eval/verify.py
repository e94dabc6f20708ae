"""``verify``: checkpoints x verification sets -> metrics, through the deployed inference path.

For every checkpoint and every set, :mod:`facepriv.verification.protocols` protects and embeds each image as
its own query (``R`` repetitions of the frontend randomness), pairs are scored by cosine
similarity, and :func:`facepriv.verification.metrics.verification_report` computes every metric once per
repetition. This module then summarises the repetitions (mean and sample std) and builds
a ROC curve (mean TPR over repetitions on a log-FPR grid) that :mod:`facepriv.eval.report` plots
without needing the scores again.

A set is named by a *spec*: ``path/to/lfw.bin`` (insightface format) or
``path/to/pairs.txt:path/to/image_dir`` (LFW ``pairs.txt`` over ``<name>/<name>_NNNN.jpg``).

Nothing finished is lost: before any model runs, every image a pair uses is decoded once
(all unreadable images are reported together) and its size is checked against every
checkpoint; during the run, ``on_result`` receives the results document after each
checkpoint x set, marked incomplete, and once more with the error if a later one fails.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facepriv.verification.keys import fpr_key
from facepriv.verification.metrics import DEFAULT_FPR_TARGETS, ScoreSet, verification_report
from facepriv.verification.plots import roc_plot_points
from facepriv.verification.protocols import EvalInputError, embed_protected_set, score_pairs

__all__ = [
    "RESULTS_FORMAT",
    "SetSpec",
    "fpr_key",
    "load_set",
    "parse_set_spec",
    "result_from_scores",
    "summarize_repetitions",
    "verify",
]

RESULTS_FORMAT = "facepriv.eval.verify/1"
#: FPR range of the stored ROC curves (same as facepriv.verification.plots' default axis)
ROC_RANGE = (1e-6, 1.0)
ROC_POINTS = 200


# --------------------------------------------------------------------------- set specs


@dataclass(frozen=True)
class SetSpec:
    """A verification set on disk: ``kind`` is ``"bin"`` or ``"pairs"``."""

    name: str
    kind: str
    path: str
    image_root: str | None = None
    image_ext: str = "jpg"

    @property
    def source(self) -> str:
        return self.path if self.image_root is None else f"{self.path}:{self.image_root}"


def parse_set_spec(name: str | None, spec: str, image_ext: str = "jpg") -> SetSpec:
    """``path.bin`` -> a ``.bin`` set; ``pairs.txt:imgdir`` -> a pairs list over a folder.

    An existing file given alone is a ``.bin``; otherwise the spec is split at its last
    ``:`` into the pairs file and the image folder (so paths may contain ``:`` themselves,
    except the folder). ``name`` defaults to the file's stem.
    """
    spec = str(spec).strip()
    if not spec:
        raise EvalInputError("empty set spec: give path/to/set.bin or path/to/pairs.txt:path/to/images")
    if os.path.isfile(spec) or ":" not in spec:
        if not os.path.isfile(spec):
            raise EvalInputError(f"{spec}: verification set file not found")
        if Path(spec).suffix.lower() == ".txt":
            raise EvalInputError(
                f"{spec}: a pairs list needs its image folder: write the set as {spec}:path/to/images"
            )
        return SetSpec(name or Path(spec).stem, "bin", spec)
    pairs, root = spec.rsplit(":", 1)
    if not os.path.isfile(pairs):
        raise EvalInputError(f"{pairs}: pairs file not found (from set spec {spec!r})")
    if not os.path.isdir(root):
        raise EvalInputError(f"{root}: image folder not found (from set spec {spec!r})")
    return SetSpec(name or Path(pairs).stem, "pairs", pairs, root, image_ext)


def load_set(spec: SetSpec) -> Any:
    """A ``facepriv.data.VerificationSet`` with images at their stored size (no resizing:
    the protocol checks the size against each checkpoint instead)."""
    from facepriv.data.verification import load_bin, load_pairs_txt

    if spec.kind == "bin":
        return load_bin(spec.path, name=spec.name, image_size=None)
    return load_pairs_txt(spec.path, spec.image_root, ext=spec.image_ext, name=spec.name, image_size=None)


def _as_spec(name: str, spec: str | SetSpec) -> SetSpec:
    if isinstance(spec, SetSpec):
        return spec
    return parse_set_spec(name, spec)


# --------------------------------------------------------------------------- summaries


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample std (ddof=1) over repetitions; std is None with one repetition."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None, "per_repetition": list(values)}
    return {
        "mean": float(np.mean(vals)),
        "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
        "min": float(np.min(vals)),
        "max": float(np.max(vals)),
        "per_repetition": list(values),
    }


def summarize_repetitions(reports: Sequence[dict[str, Any]], fpr_targets: Sequence[float]) -> dict[str, Any]:
    """Collapse per-repetition ``verification_report`` dicts into mean/std per metric."""
    out: dict[str, Any] = {}
    acc = [r.get("accuracy", {}) for r in reports]
    if all("accuracy_mean" in a for a in acc):
        out["accuracy"] = _stats([a["accuracy_mean"] for a in acc])
        out["accuracy"]["fold_std"] = float(np.mean([a["accuracy_std"] for a in acc]))
        out["accuracy"]["n_folds"] = acc[0]["n_folds"]
        thr = [float(np.mean([t for t in a["fold_thresholds"] if t is not None])) if any(
            t is not None for t in a["fold_thresholds"]) else None for a in acc]
        out["accuracy"]["threshold"] = _stats(thr)
    else:
        out["accuracy"] = {"skipped": next((a.get("skipped") for a in acc if "skipped" in a), "not computed")}

    tpr: dict[str, Any] = {}
    for i, t in enumerate(fpr_targets):
        pts = [r["tpr_at_fpr"][i] for r in reports]
        if not pts[0]["measurable"]:
            tpr[fpr_key(t)] = {"fpr_target": t, "measurable": False, "reason": pts[0].get("reason")}
            continue
        tpr[fpr_key(t)] = {
            "fpr_target": t,
            "measurable": True,
            "tpr": _stats([p["tpr"] for p in pts]),
            "threshold": _stats([p["threshold"] for p in pts]),
            "fpr": _stats([p["fpr"] for p in pts]),
            "n_false_accepts_allowed": pts[0]["n_false_accepts_allowed"],
        }
    out["tpr_at_fpr"] = tpr
    out["eer"] = _stats([r["eer"]["eer"] for r in reports])
    out["eer"]["threshold"] = _stats([r["eer"]["threshold"] for r in reports])
    out["auc"] = _stats([r["auc"] for r in reports])
    vals = [r.get("val_at_far", {}) for r in reports]
    if all("val_mean" in v for v in vals):
        out["val_at_far"] = {
            "far_target": vals[0]["far_target"],
            "val": _stats([v["val_mean"] for v in vals]),
            "far": _stats([v["far_mean"] for v in vals]),
        }
        reason = next((v["reason"] for v in vals if v.get("reason")), None)
        if reason:
            out["val_at_far"]["reason"] = reason
    else:
        out["val_at_far"] = {"skipped": next((v.get("skipped") for v in vals if "skipped" in v), "not computed")}
    return out


def _roc_curve(score_sets: Sequence[ScoreSet], fpr_targets: Sequence[float]) -> dict[str, Any]:
    """Mean (and std) TPR over repetitions on one log-FPR grid, FPR targets included so the
    plotted value at each target equals the reported mean exactly."""
    grid, _ = roc_plot_points(score_sets[0], ROC_RANGE, ROC_POINTS)
    floor = 1.0 / score_sets[0].n_impostor
    extra = [t for t in fpr_targets if t >= floor]
    grid = np.unique(np.concatenate([grid, np.asarray(extra, dtype=float)]))
    if grid.size == 0:
        return {"fpr": [], "tpr": [], "tpr_std": []}
    tprs = np.stack([s.roc_at(grid)[1] for s in score_sets])
    keep = np.isfinite(tprs).all(axis=0)
    mean = tprs[:, keep].mean(axis=0)
    std = tprs[:, keep].std(axis=0, ddof=1) if len(score_sets) > 1 else np.zeros_like(mean)
    return {"fpr": grid[keep].tolist(), "tpr": mean.tolist(), "tpr_std": std.tolist()}


# --------------------------------------------------------------------------- main entry


def _checkpoint_names(checkpoints: Sequence[str]) -> list[str]:
    """Short unique labels for tables and legends: the file stem, or parent/stem on clashes."""
    stems = [Path(c).stem for c in checkpoints]
    names = []
    for c, s in zip(checkpoints, stems):
        if stems.count(s) > 1:
            p = Path(c)
            s = f"{p.parent.name}/{p.stem}" if p.parent.name else s
        names.append(s)
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 and names.count(n) == 1 else f"{n}#{seen[n]}")
    return out


def _load_model(path: str, device: torch.device) -> Any:
    from facepriv.models import FaceRecognizer

    return FaceRecognizer.load(path, map_location=device)


def _folds_arg(vset: Any) -> Any:
    """The set's own folds when it defines at least two (and has 10+ pairs); else None: 10
    consecutive folds, or the k-fold metrics skipped with a reason below 10 pairs (a
    threshold learned from a handful of pairs means nothing)."""
    return vset.folds if vset.n_folds >= 2 and vset.num_pairs >= 10 else None


def verify(
    checkpoints: Sequence[str | os.PathLike[str]],
    sets: Mapping[str, str | SetSpec],
    repetitions: int = 5,
    flip: bool = False,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    *,
    fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
    val_far: float = 1e-3,
    progress: bool = True,
    keep_scores: bool = False,
    resize: bool = False,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Evaluate every checkpoint on every set the way it is deployed; returns a JSON-able dict.

    ``sets`` maps a set name to a spec (``"path.bin"``, ``"pairs.txt:imgdir"`` or a
    :class:`SetSpec`). Inputs are all checked before the long part starts: every set is
    opened, every image a pair uses is decoded (all unreadable ones are listed in one
    error), and every checkpoint is loaded and its input size checked against every image
    size, so a bad file in the last set does not fail an hour in. ``resize`` resizes images
    of another size to each checkpoint's input size instead of refusing them; the result
    then carries a ``resized`` entry (sizes, stretched count) and the report a warning,
    because such numbers do not describe the model on aligned faces of its size.
    ``keep_scores`` adds the raw per-repetition scores (lists) to each result.

    ``on_result(document)`` is called after every finished checkpoint x set with the results
    so far (``"complete": False`` and the ``pending`` pairs), and, if a later one raises,
    once more with ``"error"`` before the exception propagates: a caller that writes the
    document each time keeps every finished result.

    Result layout (see docs/evaluation.md)::

        {"format", "settings", "checkpoints": [...], "sets": {...}, "complete", "pending",
         "results": [{"checkpoint", "checkpoint_name", "set", "frontend", "stochastic",
                      "repetitions", "randomness", "n_pairs", ..., "summary": {...},
                      "per_repetition": [verification_report, ...], "roc": {...}}, ...]}
    """
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1, got {repetitions}")
    if not checkpoints:
        raise ValueError("no checkpoints given")
    if not sets:
        raise ValueError("no verification sets given")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvalInputError(f"device {device!r} requested but CUDA is not available (use --device cpu)")
    ckpts = [str(c) for c in checkpoints]
    names = _checkpoint_names(ckpts)
    specs = {n: _as_spec(n, s) for n, s in sets.items()}
    vsets = {n: load_set(s) for n, s in specs.items()}
    for n, v in vsets.items():
        if v.num_pairs == 0:
            raise EvalInputError(f"{specs[n].source}: the set has no pairs")
        if v.issame.all() or not v.issame.any():
            kind = "genuine" if v.issame.all() else "impostor"
            raise EvalInputError(f"{specs[n].source}: all {v.num_pairs} pairs are {kind}; verification needs both kinds")
    sizes = _preflight(ckpts, vsets, specs, resize=resize, progress=progress)

    results: list[dict[str, Any]] = []
    todo = [(c, n, s) for c, n in zip(ckpts, names) for s in vsets]
    t_all = time.perf_counter()

    def document(error: str | None = None) -> dict[str, Any]:
        done = len(results)
        doc = {
            "format": RESULTS_FORMAT,
            "settings": {
                "repetitions_requested": int(repetitions),
                "flip": bool(flip),
                "seed": seed,
                "batch_size": int(batch_size),
                "device": str(dev),
                "resize": bool(resize),
                "fpr_targets": [float(t) for t in fpr_targets],
                "val_far": float(val_far),
                "std_over_repetitions": "sample std (ddof=1); None with one repetition",
                "score": "cosine similarity of L2-normalised embeddings; accept iff score >= threshold",
                "protocol": "each image protected independently (own frontend randomness), embedded once per repetition",
                "torch_version": str(torch.__version__),
            },
            "checkpoints": [{"path": c, "name": n} for c, n in zip(ckpts, names)],
            "sets": {n: {"source": specs[n].source, "kind": specs[n].kind, **_set_counts(v),
                         "image_sizes": sizes[n].size_counts()} for n, v in vsets.items()},
            "complete": done == len(todo),
            "pending": [{"checkpoint_name": n, "set": s} for _, n, s in todo[done:]],
            "results": list(results),
            "seconds": time.perf_counter() - t_all,
        }
        if error is not None:
            doc["error"] = error
        return doc

    try:
        for ckpt, cname in zip(ckpts, names):
            model = _load_model(ckpt, dev)
            side = int(model.image_size)
            for sname, vset in vsets.items():
                resized = _resize_note(sizes[sname], side) if resize else None
                if resized is not None:  # load_image resizes to the set's image_size
                    vset = dataclasses.replace(vset, image_size=(side, side))
                result = _evaluate_one(
                    model, ckpt, cname, sname, vset, specs[sname], repetitions=repetitions, flip=flip,
                    batch_size=batch_size, device=dev, seed=seed, fpr_targets=fpr_targets, val_far=val_far,
                    progress=progress, keep_scores=keep_scores,
                )
                if resized is not None:
                    result["resized"] = resized
                results.append(result)
                if on_result is not None:
                    on_result(document())
            del model
    except BaseException as exc:  # KeyboardInterrupt too: hand back what is finished, then fail
        if on_result is not None and results:
            where = f"{todo[len(results)][1]} x {todo[len(results)][2]}: " if len(results) < len(todo) else ""
            try:
                on_result(document(f"{where}{type(exc).__name__}: {exc}"))
            except Exception:  # pragma: no cover - the original error is the one to report
                pass
        raise
    return document()


def _set_counts(vset: Any) -> dict[str, int]:
    return {
        "n_pairs": int(vset.num_pairs),
        "n_genuine": int(vset.issame.sum()),
        "n_impostor": int((~vset.issame).sum()),
        "n_images": int(vset.num_images),
        "n_folds": int(vset.n_folds),
    }


def _preflight(
    ckpts: Sequence[str], vsets: Mapping[str, Any], specs: Mapping[str, SetSpec], *, resize: bool, progress: bool
) -> dict[str, Any]:
    """Decode every image the pairs use and load every checkpoint before anything is evaluated.

    Returns each set's ``ImageScan`` (sizes). Raises one ``VerificationDataError`` listing
    the unreadable images of all sets, or an ``EvalInputError`` for the first checkpoint x set
    whose sizes do not fit (unless ``resize``), naming the sizes, an example image and the
    way out. Costs one decode per image: small next to ``R`` protected forward passes.
    """
    from facepriv.data.errors import VerificationDataError

    scans = {n: v.scan_images(np.unique(v.pairs), progress=progress) for n, v in vsets.items()}
    broken = [f"{specs[n].source}: {scan.bad_message()}" for n, scan in scans.items() if scan.bad]
    if broken:
        raise VerificationDataError(
            "; ".join(broken) + ". Nothing was evaluated: fix or replace these images (or drop their pairs)"
        )
    for c in ckpts:
        model = _load_model(c, torch.device("cpu"))
        side = int(model.image_size)
        fname = str(getattr(model.frontend, "name", type(model.frontend).__name__))
        del model
        for n, scan in scans.items():
            other = {hw: k for hw, k in scan.sizes.items() if hw != (side, side)}
            if other and not resize:
                hw = max(other, key=other.__getitem__)
                raise EvalInputError(
                    f"{scan.examples[hw]}: image is {hw[0]}x{hw[1]}, but checkpoint {c} (frontend {fname!r}) "
                    f"expects {side}x{side} aligned faces; {sum(other.values())} of {scan.total} images of set "
                    f"{n!r} ({specs[n].source}) have another size ({', '.join(scan.size_counts())}). Align the "
                    f"images first (`facepriv data align`), use a set made for this input size, or pass --resize "
                    f"to try the model on them anyway (the report then says the numbers are not comparable)"
                )
    return scans


def _resize_note(scan: Any, side: int) -> dict[str, Any] | None:
    """What ``--resize`` does to a set for a checkpoint of input ``side``, or None if nothing."""
    from facepriv.data.images import stretches

    other = {hw: k for hw, k in scan.sizes.items() if hw != (side, side)}
    if not other:
        return None
    return {
        "to": f"{side}x{side}",
        "from": {f"{h}x{w}": k for (h, w), k in sorted(other.items())},
        "images": int(sum(other.values())),
        "stretched": int(sum(k for hw, k in other.items() if stretches(hw, (side, side)))),
        "note": "images resized to the checkpoint's input size (--resize): not the model's accuracy on aligned faces "
                "of its size, so not comparable with results without resizing",
    }


def result_from_scores(
    scores: Sequence[np.ndarray],
    issame: np.ndarray,
    folds: Any = None,
    *,
    checkpoint: str,
    set_name: str,
    checkpoint_name: str | None = None,
    frontend: Mapping[str, Any] | None = None,
    stochastic: bool = True,
    fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
    val_far: float = 1e-3,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One results entry (checkpoint x set) from per-repetition score arrays.

    This is what :func:`verify` builds for each checkpoint and set, exposed so that code
    that already has scores (the training quickstart, a results script) produces entries
    :func:`facepriv.eval.report.write_report` understands. ``folds``: per-pair fold ids, an int, or
    None (10 consecutive folds).
    """
    if len(scores) < 1:
        raise ValueError("need the scores of at least one repetition")
    issame = np.asarray(issame, dtype=bool)
    reports = [verification_report(np.asarray(s), issame, folds, fpr_targets=fpr_targets, val_far=val_far) for s in scores]
    score_sets = [ScoreSet.from_arrays(np.asarray(s), issame) for s in scores]
    return {
        "checkpoint": str(checkpoint),
        "checkpoint_name": checkpoint_name or Path(str(checkpoint)).stem,
        "set": set_name,
        "frontend": dict(frontend or {}),
        "stochastic": bool(stochastic),
        "repetitions": len(scores),
        "n_pairs": int(issame.size),
        "n_genuine": int(issame.sum()),
        "n_impostor": int((~issame).sum()),
        **dict(extra or {}),
        "summary": summarize_repetitions(reports, fpr_targets),
        "per_repetition": reports,
        "roc": _roc_curve(score_sets, fpr_targets),
    }


def _evaluate_one(
    model: Any, ckpt: str, cname: str, sname: str, vset: Any, spec: SetSpec, *, repetitions: int, flip: bool,
    batch_size: int, device: torch.device, seed: int | None, fpr_targets: Sequence[float], val_far: float,
    progress: bool, keep_scores: bool,
) -> dict[str, Any]:
    emb = embed_protected_set(
        model, vset, repetitions=repetitions, flip=flip, batch_size=batch_size, device=device, seed=seed,
        checkpoint=ckpt, progress=progress,
    )
    folds = _folds_arg(vset)
    scores = [score_pairs(emb, r) for r in range(emb.repetitions)]
    note = (
        f"deterministic frontend: the scores cannot change between repetitions, so R = 1 (asked for {repetitions})"
        if not emb.stochastic
        else f"{emb.repetitions} repetitions with independent frontend randomness per image"
    )
    extra = {
        "set_source": spec.source,
        "repetitions_note": note,
        "randomness": emb.randomness,
        "inference_seeds": emb.inference_seeds,
        "flip": bool(flip),
        **_set_counts(vset),
        "n_queries_per_repetition": emb.slots.n_slots * (2 if flip else 1),
        "folds": "set's own folds" if folds is not None else (
            "10 consecutive folds (the set defines fewer than 2)" if vset.num_pairs >= 10
            else "k-fold metrics skipped: fewer than 10 pairs"),
        "seconds": emb.seconds,
        "images_per_second": emb.info["images_embedded"] / emb.seconds if emb.seconds > 0 else None,
        "device": str(device),
    }
    result = result_from_scores(
        scores, vset.issame, folds, checkpoint=ckpt, set_name=sname, checkpoint_name=cname,
        frontend=_public_frontend(model), stochastic=emb.stochastic, fpr_targets=fpr_targets, val_far=val_far,
        extra=extra,
    )
    if keep_scores:
        result["scores"] = [s.tolist() for s in scores]
        result["issame"] = vset.issame.astype(bool).tolist()
    return result


def _public_frontend(model: Any) -> dict[str, Any]:
    """The frontend's config without secrets (reports may be shared; checkpoints may not)."""
    f = model.frontend
    cfg = f.public_config() if hasattr(f, "public_config") else {"name": type(f).__name__}
    return cfg
