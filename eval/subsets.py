"""Subset invariance of a PartialFace model: does it recognise a face whatever secret
frequency subset the query happened to use?

Why: in deployment two photos of one person are protected with independent random subsets,
so a model that only works when both queries share a subset fails verification while
looking healthy in training. This check scores the same pairs

* with a random (subset, permutation) per image, as deployed;
* with every image on one fixed (subset, permutation) layout, for each layout;

and reports, for each, AUC and the mean cosine of genuine and impostor pairs. A large gap
between "fixed" and "random" means the embedding depends on the layout, not only on the face
(the failure docs/training.md describes for a fixed per-channel input standardisation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from facepriv.verification.metrics import verification_report
from facepriv.verification.protocols import pair_scores


@torch.no_grad()
def _embed(model: Any, images: torch.Tensor, subset: torch.Tensor, perm: torch.Tensor,
           batch_size: int, device: torch.device) -> torch.Tensor:
    """L2-normalised embeddings of decoded uint8 ``images`` under the given layouts."""
    out = []
    for start in range(0, len(images), batch_size):
        sl = slice(start, start + batch_size)
        x = images[sl].to(device=device, dtype=torch.float32) / 255.0
        protected = model.frontend(x, subset=subset[sl].to(device), permutation=perm[sl].to(device))
        out.append(F.normalize(model.embed_protected(protected).float(), dim=1).cpu())
    return torch.cat(out)


def _pair_stats(emb: torch.Tensor, a: np.ndarray, b: np.ndarray, same: np.ndarray) -> dict[str, float]:
    scores = pair_scores(emb, np.stack([a, b], axis=1))
    report = verification_report(scores, same, folds=0)
    return {"auc": float(report["auc"]), "genuine_cosine": float(scores[same].mean()),
            "impostor_cosine": float(scores[~same].mean())}


def subset_invariance(model: Any, vset: Any, *, max_pairs: int | None = 600, layouts: int | None = None,
                      seed: int = 0, batch_size: int = 64, device: str | torch.device = "cpu",
                      progress: bool = False) -> dict[str, Any]:
    """Scores of ``vset``'s pairs under random vs fixed PartialFace layouts (see module doc).

    ``max_pairs``: a random sample of pairs (None: all). ``layouts``: how many fixed
    (subset, permutation) layouts to score: every subset in its
    first order, then the other orders (so ``layouts=n_subsets`` covers each subset once; None: all).
    """
    frontend = getattr(model, "frontend", None)
    if not getattr(frontend, "channels_vary_per_query", False) or not hasattr(frontend, "n_subsets"):
        raise ValueError(f"subset invariance needs a PartialFace model, got frontend {getattr(frontend, 'name', frontend)!r}")
    device = torch.device(device)
    model = model.to(device).eval()
    rng = np.random.default_rng(seed)
    pick = np.arange(vset.num_pairs)
    if max_pairs is not None and max_pairs < len(pick):
        pick = np.sort(rng.choice(len(pick), max_pairs, replace=False))
    pairs, same = vset.pairs[pick], vset.issame[pick].astype(bool)
    if same.all() or not same.any():
        raise ValueError("the sampled pairs need both genuine and impostor pairs; raise max_pairs")
    image_ids, inverse = np.unique(pairs.reshape(-1), return_inverse=True)
    a, b = inverse.reshape(-1, 2).T
    n = len(image_ids)
    # decoded once (uint8), then protected under every layout
    images = torch.cat([x for _, x in vset.iter_batches(batch_size, image_ids, progress=progress, dtype="uint8")])
    g = torch.Generator().manual_seed(seed)
    rand_subset = torch.randint(frontend.n_subsets, (n,), generator=g)
    rand_perm = torch.randint(frontend.n_permutations, (n,), generator=g)
    result: dict[str, Any] = {"pairs": int(len(pick)), "genuine": int(same.sum()), "images": int(n), "seed": seed}
    emb = _embed(model, images, rand_subset, rand_perm, batch_size, device)
    result["random"] = _pair_stats(emb, a, b, same)
    cross = (rand_subset[a] != rand_subset[b]).numpy()
    if cross.any() and (same & cross).any() and (~same & cross).any():
        result["random_cross_subset_pairs"] = _pair_stats(emb, a[cross], b[cross], same[cross])
    grid = [(s, p) for p in range(frontend.n_permutations) for s in range(frontend.n_subsets)]
    fixed = []
    for s, p in tqdm(grid[: layouts if layouts is not None else len(grid)], desc="fixed layouts", unit="layout",
                     disable=not progress):
        e = _embed(model, images, torch.full((n,), s), torch.full((n,), p), batch_size, device)
        fixed.append({"subset": s, "permutation": p, **_pair_stats(e, a, b, same)})
    result["fixed"] = fixed
    if fixed:
        aucs = [f["auc"] for f in fixed]
        result["fixed_auc_range"] = [min(aucs), max(aucs)]
        result["invariance_gap_auc"] = float(np.mean(aucs)) - result["random"]["auc"]
    return result
