"""Synthetic data for the quickstart and verification on the held-out identities.

Training identities and *held-out* identities are rendered into two JPEG folders; the
held-out ones get an LFW-style ``pairs.txt``. Verification goes through the deployment path:
every held-out image is protected on its own by the model's frontend in eval mode
(PartialFace: a secure-random subset; DCTDP: fresh noise from the OS CSPRNG), embedded, and a
pair scored by cosine similarity. Stochastic frontends are scored ``repetitions`` times with
fresh randomness, and the result entries have the layout of ``facepriv eval verify``
(``facepriv.eval.verify.result_from_scores``: summary, per-repetition reports, ROC), so the
report, the ROC plot and the frontier read them like any evaluation.

Each image is embedded once per repetition and every pair it appears in uses that embedding
(the enrolment convention of ``facepriv.training.verification``); ``facepriv eval verify``
instead protects every pair slot separately, which costs ~7x more DCTDP forwards here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .plan import Plan


def generate_data(out: Path, plan: Plan, seed: int) -> dict[str, Any]:
    """Training and held-out identities as JPEG folders plus pairs.txt for the held-out ones."""
    from facepriv.data.synthetic import write_folder
    from facepriv.data.verification import pairs_txt_for_folder

    train_root, test_root = out / "data" / "train", out / "data" / "heldout"
    t0 = time.perf_counter()
    write_folder(train_root, plan.train_identities, plan.train_images, seed, image_size=plan.image_size, progress=False)
    # held-out identities: indices after the training ones, never seen in training
    write_folder(test_root, plan.test_identities, plan.test_images, seed, image_size=plan.image_size,
                 first_identity=plan.train_identities, progress=False)
    pairs = Path(pairs_txt_for_folder(test_root, out / "data" / "heldout_pairs.txt", n_folds=10,
                                      per_fold=plan.pairs_per_fold, seed=seed))
    return {"train_root": train_root, "test_root": test_root, "pairs": pairs, "seconds": time.perf_counter() - t0,
            "train_images": plan.train_identities * plan.train_images,
            "test_images": plan.test_identities * plan.test_images,
            "pairs_count": plan.pairs_count}


def load_heldout(data: dict[str, Any], image_size: int) -> Any:
    """The held-out pairs with their images decoded once (uint8), for every model."""
    from facepriv.data.verification import load_pairs_txt
    from facepriv.training.verification import materialise

    vset = load_pairs_txt(data["pairs"], data["test_root"], name="heldout", image_size=image_size)
    return materialise(vset)


def _entry(scores: list[Any], heldout: Any, name: str, source: str, frontend: dict[str, Any],
           stochastic: bool) -> dict[str, Any]:
    from facepriv.eval.verify import result_from_scores

    return result_from_scores(scores, heldout.issame, heldout.folds, checkpoint=source, set_name="heldout",
                              checkpoint_name=name, frontend=frontend, stochastic=stochastic)


def verify_model(name: str, model_file: str | Path, heldout: Any, repetitions: int) -> dict[str, Any]:
    """One ``eval verify``-style result entry for a saved model on the held-out pairs."""
    import torch

    from facepriv.models import FaceRecognizer
    from facepriv.training.verification import embed_images, score_pairs
    from facepriv.verification.protocols import probe_stochastic

    model = FaceRecognizer.load(model_file).eval()
    device = torch.device("cpu")
    stochastic = bool(probe_stochastic(model.frontend, heldout.images[:2].float() / 255.0))
    reps = repetitions if stochastic else 1
    t0 = time.perf_counter()
    scores = [score_pairs(embed_images(model, heldout.images, device, batch_size=64), heldout.pairs)
              for _ in range(reps)]  # each call: fresh frontend randomness for every image
    entry = _entry(scores, heldout, name, str(model_file), _public(model.frontend), stochastic)
    entry["seconds"] = time.perf_counter() - t0
    return entry


def pixel_baseline(heldout: Any) -> dict[str, Any]:
    """Cosine similarity of raw (mean-centred) pixels: what 'no learning at all' scores."""
    import numpy as np

    feats = heldout.images.float().flatten(1).numpy().astype(np.float64)
    feats -= feats.mean(axis=1, keepdims=True)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True) + 1e-8
    scores = (feats[heldout.pairs[:, 0]] * feats[heldout.pairs[:, 1]]).sum(axis=1)
    return _entry([scores], heldout, "pixels", "raw pixels", {"name": "pixels"}, stochastic=False)


def _public(frontend: Any) -> dict[str, Any]:
    return frontend.public_config() if hasattr(frontend, "public_config") else {"name": type(frontend).__name__}
