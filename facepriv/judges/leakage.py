"""Identity leakage: does an independent recogniser match a reconstruction to its person?

Two numbers, both computed from judge embeddings (unit vectors, cosine scores):

* **Verification** TPR at FPR = 1e-3 and 1e-2 (``facepriv.verification.metrics.tpr_at_fpr``): genuine pairs
  are (probe, another image of the same person), impostor pairs (probe, an image of anyone
  else in the gallery). This is the "would a face-verification system accept the
  reconstruction as the victim" question, at operating points real systems use.
* **Rank-1 identification**: each probe against one template per gallery identity (the
  normalised mean of that identity's embeddings); correct if its own identity scores
  highest. Chance level is ``1 / n_identities``.

The gallery never contains the probe's own source image (the probe image is held out of it
by ``facepriv.eval.attacks.data``), so a perfect copy of the probe cannot be matched trivially: the
numbers measure identity, not pixel identity. The same function scores the raw probes
(upper bound), naive renderings and every attack, so the rows of a report are comparable.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from facepriv.verification.metrics import tpr_at_fpr

__all__ = ["REPORT_FPRS", "identity_leakage"]

REPORT_FPRS: tuple[float, ...] = (1e-3, 1e-2)


def _as_unit(x: Tensor, name: str) -> Tensor:
    x = torch.as_tensor(x).detach().double().cpu()
    if x.dim() != 2:
        raise ValueError(f"{name} must be N x D embeddings, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    norms = x.norm(dim=1)
    if x.shape[0] and not bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-3)):
        raise ValueError(f"{name} must be L2-normalised (norms range {float(norms.min()):.4g}..{float(norms.max()):.4g})")
    return x


def identity_leakage(
    probes: Tensor,
    probe_ids: Sequence[int] | Tensor,
    gallery: Tensor,
    gallery_ids: Sequence[int] | Tensor,
    *,
    fpr_targets: Sequence[float] = REPORT_FPRS,
) -> dict[str, Any]:
    """Verification TPR@FPR and rank-1 identification of ``probes`` against ``gallery``.

    ``probes`` / ``gallery``: L2-normalised ``N x D`` judge embeddings; ids are integer
    identity labels. Every probe identity must have at least one gallery image.
    """
    p, g = _as_unit(probes, "probes"), _as_unit(gallery, "gallery")
    if p.shape[1] != g.shape[1]:
        raise ValueError(f"probe ({p.shape[1]}-D) and gallery ({g.shape[1]}-D) embeddings differ in size")
    pid = torch.as_tensor(probe_ids, dtype=torch.long).cpu()
    gid = torch.as_tensor(gallery_ids, dtype=torch.long).cpu()
    if pid.shape != (p.shape[0],) or gid.shape != (g.shape[0],):
        raise ValueError(f"ids must be 1-D with one entry per embedding (probes {p.shape[0]}, gallery {g.shape[0]})")
    missing = sorted(set(pid.tolist()) - set(gid.tolist()))
    if missing:
        raise ValueError(f"{len(missing)} probe identities have no gallery image (e.g. labels {missing[:5]})")
    scores = p @ g.T  # (P, G) cosines
    same = pid.view(-1, 1) == gid.view(1, -1)
    gen, imp = scores[same].numpy(), scores[~same].numpy()
    ops = tpr_at_fpr(np.concatenate([gen, imp]), np.concatenate([np.ones(gen.size, bool), np.zeros(imp.size, bool)]), list(fpr_targets))
    verification = {f"tpr_at_fpr_{t:g}": op.to_dict() for t, op in zip(fpr_targets, ops)}

    ids = torch.unique(gid)
    onehot = (gid.view(-1, 1) == ids.view(1, -1)).double()  # (G, I)
    templates = torch.nn.functional.normalize(onehot.T @ g, dim=1)  # (I, D)
    ident_scores = p @ templates.T  # (P, I)
    own = (pid.view(-1, 1) == ids.view(1, -1)).double().argmax(1)
    top = ident_scores.argmax(1)
    rank = (ident_scores > ident_scores.gather(1, own.view(-1, 1))).sum(1)  # 0 = own identity first
    return {
        "n_probes": int(p.shape[0]),
        "n_gallery_images": int(g.shape[0]),
        "n_identities": int(ids.numel()),
        "n_genuine_pairs": int(gen.size),
        "n_impostor_pairs": int(imp.size),
        "verification": verification,
        "tpr_at_fpr_1e-3": ops[list(fpr_targets).index(1e-3)].tpr if 1e-3 in fpr_targets else None,
        "tpr_at_fpr_1e-2": ops[list(fpr_targets).index(1e-2)].tpr if 1e-2 in fpr_targets else None,
        "rank1": float((top == own).double().mean()) if p.shape[0] else None,
        "rank5": float((rank < 5).double().mean()) if p.shape[0] else None,
        "chance_rank1": 1.0 / max(1, int(ids.numel())),
        "mean_genuine_cosine": float(gen.mean()) if gen.size else None,
        "mean_impostor_cosine": float(imp.mean()) if imp.size else None,
    }
