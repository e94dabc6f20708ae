"""Verification during (and after) training, through the deployment path.

Each image is protected on its own by the frontend in *eval* mode (PartialFace: one random
subset from the secure RNG; DCTDP: fresh noise) and embedded with
``FaceRecognizer.embed``; a pair's score is the cosine similarity. Embedding (flip-test
included), scoring (``facepriv.verification.protocols.pair_scores``) and metrics
(``facepriv.verification.metrics.verification_report``) are the very functions ``facepriv eval verify`` uses,
so training logs and the evaluation CLI agree to the bit on the same embeddings.
Decoded images are cached in memory (uint8) after the first evaluation, so periodic
evaluation costs only the forward passes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from facepriv.verification.keys import fpr_key

from .batches import images_to_float
from .config import EvalConfig, VerificationSetConfig

log = logging.getLogger(__name__)


@dataclass
class LoadedSet:
    name: str
    images: Tensor  # N x 3 x H x W uint8
    pairs: np.ndarray  # P x 2
    issame: np.ndarray  # P bool
    folds: np.ndarray  # P fold ids


def load_verification_set(spec: VerificationSetConfig, image_size: int, n_folds: int = 10) -> Any:
    """A facepriv.data VerificationSet from a config entry (.bin or pairs.txt)."""
    from facepriv.data.verification import load_bin, load_pairs_txt

    fmt = spec.format
    if fmt == "auto":
        fmt = "bin" if spec.path.endswith(".bin") else "pairs"
    name = spec.name or None
    if fmt == "bin":
        return load_bin(spec.path, name=name, image_size=image_size, n_folds=n_folds)
    if not spec.root:
        raise ValueError(f"eval set {spec.name or spec.path}: a pairs.txt protocol needs 'root' (the image folder)")
    return load_pairs_txt(spec.path, spec.root, name=name, image_size=image_size)


def materialise(vset: Any, *, max_pairs: int | None = None, seed: int = 0, batch_size: int = 256) -> LoadedSet:
    """Decode the images a VerificationSet's pairs need, once, into a uint8 tensor."""
    pairs, issame, folds = np.asarray(vset.pairs), np.asarray(vset.issame, dtype=bool), np.asarray(vset.folds)
    if max_pairs is not None and len(pairs) > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(pairs), size=max_pairs, replace=False))
        pairs, issame, folds = pairs[keep], issame[keep], folds[keep]
    needed = np.unique(pairs.reshape(-1))
    remap = np.full(vset.num_images, -1, dtype=np.int64)
    remap[needed] = np.arange(len(needed))
    chunks = [batch for _, batch in vset.iter_batches(batch_size, indices=needed, dtype="uint8")]
    images = torch.cat(chunks) if chunks else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    return LoadedSet(vset.name, images, remap[pairs], issame, folds)


@torch.no_grad()
def embed_images(recognizer: nn.Module, images: Tensor, device: torch.device, *, batch_size: int = 128,
                 flip: bool = False) -> Tensor:
    """L2-normalised embeddings (N x D, float32, CPU) of uint8/float images, each image its own query.

    ``flip`` is the flip-test of ``FaceRecognizer.embed(flip=True)`` (the insightface
    convention: sum the *raw* embeddings of the face and its mirror image, then normalise),
    called rather than re-implemented so that training-time and ``facepriv eval`` scores
    cannot drift apart.
    """
    was_training = recognizer.training
    recognizer.eval()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = images_to_float(images[start : start + batch_size].to(device, non_blocking=True))
            out.append(recognizer.embed(x, flip=flip).float().cpu())
    finally:
        recognizer.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def score_pairs(embeddings: Tensor, pairs: np.ndarray) -> np.ndarray:
    """Cosine scores (float64) of ``pairs`` over unit-norm embeddings: ``facepriv.verification.protocols.pair_scores``."""
    from facepriv.verification.protocols import pair_scores

    return pair_scores(embeddings, pairs)


def flatten_report(report: dict[str, Any]) -> dict[str, Any]:
    """The scalars worth a CSV column / TensorBoard curve from a verification_report."""
    flat: dict[str, Any] = {"pairs": report.get("n_pairs"), "auc": report.get("auc")}
    eer = report.get("eer") or {}
    flat["eer"] = eer.get("eer")
    flat["threshold"] = eer.get("threshold")
    acc = report.get("accuracy") or {}
    flat["accuracy"] = acc.get("accuracy_mean")
    flat["accuracy_std"] = acc.get("accuracy_std")
    for point in report.get("tpr_at_fpr", []):
        target = point.get("fpr_target")
        if target in (1e-3, 1e-4):
            flat[fpr_key(target)] = point.get("tpr")
    return flat


def evaluate_loaded(recognizer: nn.Module, vs: LoadedSet, device: torch.device, *, batch_size: int = 128,
                    flip: bool = False, folds: int | None = None) -> dict[str, Any]:
    from facepriv.verification.metrics import verification_report

    emb = embed_images(recognizer, vs.images, device, batch_size=batch_size, flip=flip)
    scores = score_pairs(emb, vs.pairs)
    fold_arg: Any = vs.folds if folds is None else folds
    if len(vs.pairs) < 10 or (isinstance(fold_arg, np.ndarray) and len(np.unique(fold_arg)) < 2):
        fold_arg = 0  # too few pairs / a single fold: threshold-free metrics only
    report = verification_report(scores, vs.issame, fold_arg)
    return {"flat": flatten_report(report), "report": report}


class VerificationRunner:
    """Periodic verification on the configured sets (rank 0 only)."""

    def __init__(self, cfg: EvalConfig, image_size: int, *, seed: int = 0) -> None:
        self.cfg = cfg
        self.image_size = image_size
        self.seed = seed
        self._sets: list[LoadedSet] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.sets)

    def sets(self) -> list[LoadedSet]:
        if self._sets is None:
            self._sets = []
            for spec in self.cfg.sets:
                vset = load_verification_set(spec, self.image_size, self.cfg.folds)
                self._sets.append(materialise(vset, max_pairs=self.cfg.max_pairs, seed=self.seed,
                                              batch_size=self.cfg.batch_size))
                log.info("verification set %s: %d pairs, %d images", vset.name, len(self._sets[-1].pairs),
                         len(self._sets[-1].images))
        return self._sets

    def evaluate(self, recognizer: nn.Module, device: torch.device) -> dict[str, dict[str, Any]]:
        return {
            vs.name: evaluate_loaded(recognizer, vs, device, batch_size=self.cfg.batch_size, flip=self.cfg.flip)
            for vs in self.sets()
        }
