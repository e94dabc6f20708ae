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

**Confidence intervals** (``bootstrap=B``): the victims are the sampling unit. Each of the
``B`` replicates draws the probes with replacement (the gallery stays as it is), recomputes
the operating point from the replicate's own impostor pairs with exactly the rules of
``tpr_at_fpr`` (a probe drawn twice counts its pairs twice), and the interval is the
percentile interval of the replicates. It says how much the figure would move with another
draw of victims of the same kind, not how it would move with another judge or dataset.

**Best attack per victim** (``fuse_scores``): an attacker holding several reconstructions of
each victim accepts a (probe, gallery) pair if *any* of its attacks does. Raw cosines of
different attacks are not comparable (a blurry reconstruction scores everyone high), so each
attack's score is first mapped to its rank among *that attack's own impostor scores* (its
empirical impostor CDF); the fused score of a pair is the maximum over attacks. The
operating point is then re-calibrated on the fused impostor scores: the union of the attacks
is held to the stated FPR as a whole. Taking the per-victim maximum at each attack's own
threshold instead would let ``K`` attacks spend up to ``K`` times the false-accept budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from facepriv.verification.keys import fpr_key
from facepriv.verification.metrics import allowed_false_accepts, tpr_at_fpr

__all__ = ["REPORT_FPRS", "LeakageScores", "fuse_scores", "fused_leakage", "identity_leakage", "leakage_from_scores",
           "leakage_scores", "tpr_key"]

REPORT_FPRS: tuple[float, ...] = (1e-3, 1e-2)


#: Top-level key of a TPR figure (``tpr_at_fpr_1e-3``): the one spelling, ``facepriv.verification.keys``.
tpr_key = fpr_key


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


@dataclass
class LeakageScores:
    """The two score matrices behind every leakage figure.

    ``verification``: ``(P, G)`` probe-vs-gallery-image scores; ``same``: ``(P, G)`` genuine
    mask; ``identification``: ``(P, I)`` probe-vs-identity-template scores; ``own``: ``(P,)``
    column of each probe's own identity; ``n_gallery_images``: ``G``.
    """

    verification: np.ndarray
    same: np.ndarray
    identification: np.ndarray
    own: np.ndarray
    n_gallery_images: int

    @property
    def n_probes(self) -> int:
        return int(self.verification.shape[0])


def leakage_scores(probes: Tensor, probe_ids: Sequence[int] | Tensor, gallery: Tensor,
                   gallery_ids: Sequence[int] | Tensor) -> LeakageScores:
    """Score matrices of ``probes`` against ``gallery`` (validated; see ``identity_leakage``)."""
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
    ids = torch.unique(gid)
    onehot = (gid.view(-1, 1) == ids.view(1, -1)).double()  # (G, I)
    templates = torch.nn.functional.normalize(onehot.T @ g, dim=1)  # (I, D)
    own = (pid.view(-1, 1) == ids.view(1, -1)).double().argmax(1)
    return LeakageScores(
        verification=(p @ g.T).numpy(), same=(pid.view(-1, 1) == gid.view(1, -1)).numpy(),
        identification=(p @ templates.T).numpy(), own=own.numpy(), n_gallery_images=int(g.shape[0]),
    )


def _rank1_hits(s: LeakageScores) -> np.ndarray:
    return (s.identification.argmax(1) == s.own).astype(np.float64)


def _pairs(s: LeakageScores) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Genuine and impostor scores with the probe each pair belongs to."""
    rows = np.broadcast_to(np.arange(s.n_probes)[:, None], s.same.shape)
    return s.verification[s.same], rows[s.same], s.verification[~s.same], rows[~s.same]


class _WeightedPairs:
    """Genuine/impostor pairs sorted once, scored for any victim multiplicities ``w`` (P,)."""

    def __init__(self, s: LeakageScores) -> None:
        self.gen, self.gen_p, imp, imp_p = _pairs(s)
        order = np.argsort(-imp, kind="stable")
        self.imp, self.imp_p = imp[order], imp_p[order]

    def tpr(self, w: np.ndarray, target: float) -> float | None:
        """TPR at ``target`` with probe ``i``'s pairs counted ``w[i]`` times, by the rules of
        ``tpr_at_fpr``: ``k = floor(target * N)`` false accepts, accept scores above the
        ``(k+1)``-th largest impostor score; ``None`` when ``k == 0`` (not measurable)."""
        k = allowed_false_accepts(target, int(w[self.imp_p].sum()))
        wg = w[self.gen_p]
        if k == 0 or not wg.sum():
            return None
        # a short prefix of the sorted impostors almost always holds the (k+1)-th largest
        # (multiplicities average 1); fall back to all of them
        m = min(self.imp.size, 4 * (k + 1) + 256)
        cw = np.cumsum(w[self.imp_p[:m]])
        if cw[-1] < k + 1 and m < self.imp.size:
            cw = np.cumsum(w[self.imp_p])
        j = int(np.searchsorted(cw, k + 1, side="left"))
        v = self.imp[j] if j < self.imp.size else -np.inf
        return float((wg * (self.gen > v)).sum() / wg.sum())


def _bootstrap(s: LeakageScores, fpr_targets: Sequence[float], replicates: int, seed: int,
               level: float) -> dict[str, Any]:
    """Percentile intervals of TPR@FPR and rank-1 over victims drawn with replacement."""
    pairs = _WeightedPairs(s)
    hits = _rank1_hits(s)
    rng = np.random.default_rng(seed)
    n = s.n_probes
    draws: dict[str, list[float | None]] = {tpr_key(t): [] for t in fpr_targets}
    draws["rank1"] = []
    for start in range(0, replicates, 64):
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(64, replicates - start)).astype(np.int64)  # (b, P)
        draws["rank1"] += list((w @ hits) / n)
        for t in fpr_targets:
            draws[tpr_key(t)] += [pairs.tpr(row, t) for row in w]
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    ci: dict[str, Any] = {}
    for key, vals in draws.items():
        good = np.asarray([v for v in vals if v is not None], dtype=np.float64)
        # a figure that is not measurable in some replicates has no interval
        ci[key] = None if good.size < len(vals) or good.size == 0 else [float(np.quantile(good, lo)), float(np.quantile(good, hi))]
    return {"ci": ci, "bootstrap": {"replicates": int(replicates), "level": float(level), "seed": int(seed),
                                    "unit": "victim (probe) identity, drawn with replacement; gallery fixed"}}


def leakage_from_scores(s: LeakageScores, *, fpr_targets: Sequence[float] = REPORT_FPRS, bootstrap: int = 0,
                        seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Every leakage figure from score matrices (``identity_leakage`` and ``fused_leakage`` use it)."""
    if bootstrap < 0 or not 0 < level < 1:
        raise ValueError(f"bootstrap must be >= 0 and level in (0, 1), got {bootstrap}, {level}")
    gen, _, imp, _ = _pairs(s)
    ops = tpr_at_fpr(np.concatenate([gen, imp]), np.concatenate([np.ones(gen.size, bool), np.zeros(imp.size, bool)]),
                     list(fpr_targets))
    verification = {fpr_key(t): op.to_dict() for t, op in zip(fpr_targets, ops)}
    own_scores = np.take_along_axis(s.identification, s.own[:, None], 1)
    rank = (s.identification > own_scores).sum(1)  # 0 = own identity first
    n_ids = int(s.identification.shape[1])
    out = {
        "n_probes": s.n_probes,
        "n_gallery_images": s.n_gallery_images,
        "n_identities": n_ids,
        "n_genuine_pairs": int(gen.size),
        "n_impostor_pairs": int(imp.size),
        "verification": verification,
        **{tpr_key(t): op.tpr for t, op in zip(fpr_targets, ops)},
        "rank1": float(_rank1_hits(s).mean()) if s.n_probes else None,
        "rank5": float((rank < 5).mean()) if s.n_probes else None,
        "chance_rank1": 1.0 / max(1, n_ids),
        "mean_genuine_cosine": float(gen.mean()) if gen.size else None,
        "mean_impostor_cosine": float(imp.mean()) if imp.size else None,
    }
    if bootstrap and s.n_probes:
        out.update(_bootstrap(s, fpr_targets, bootstrap, seed, level))
    return out


def identity_leakage(
    probes: Tensor,
    probe_ids: Sequence[int] | Tensor,
    gallery: Tensor,
    gallery_ids: Sequence[int] | Tensor,
    *,
    fpr_targets: Sequence[float] = REPORT_FPRS,
    bootstrap: int = 0,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Verification TPR@FPR and rank-1 identification of ``probes`` against ``gallery``.

    ``probes`` / ``gallery``: L2-normalised ``N x D`` judge embeddings; ids are integer
    identity labels. Every probe identity must have at least one gallery image.
    ``bootstrap > 0`` adds ``ci`` (percentile intervals at ``level``) over that many
    replicates of the victims (module docstring).
    """
    return leakage_from_scores(leakage_scores(probes, probe_ids, gallery, gallery_ids), fpr_targets=fpr_targets,
                               bootstrap=bootstrap, seed=seed, level=level)


def _standardise(scores: np.ndarray, impostor: np.ndarray) -> np.ndarray:
    """Each score as the fraction of this attack's impostor scores strictly below it (its
    empirical impostor CDF), plus a 1e-9-scaled z-score that only breaks ties among scores
    above every impostor."""
    imp = np.sort(scores[impostor])
    if imp.size < 2:
        raise ValueError("fusing attacks needs at least two impostor scores per attack")
    z = (scores - imp.mean()) / max(float(imp.std()), 1e-12)
    return np.searchsorted(imp, scores, side="left") / imp.size + 1e-9 * np.tanh(z)


def fuse_scores(parts: Sequence[LeakageScores]) -> tuple[LeakageScores, np.ndarray]:
    """Best attack per victim: per pair, the maximum over attacks of impostor-CDF-ranked scores.

    All parts must score the same probes against the same gallery. Returns the fused scores
    and, per probe, the index of the attack whose standardised own-identity score was highest.
    """
    if not parts:
        raise ValueError("fuse_scores: no attacks to fuse")
    ref = parts[0]
    for s in parts[1:]:
        if s.verification.shape != ref.verification.shape or not np.array_equal(s.same, ref.same) \
                or not np.array_equal(s.own, ref.own):
            raise ValueError("fuse_scores: every attack must score the same probes against the same gallery")
    n_ids = ref.identification.shape[1]
    not_own = np.ones((ref.n_probes, n_ids), bool)
    not_own[np.arange(ref.n_probes), ref.own] = False
    ver = np.stack([_standardise(s.verification, ~s.same) for s in parts])
    ident = np.stack([_standardise(s.identification, not_own) for s in parts])
    own = ident[:, np.arange(ref.n_probes), ref.own]  # (K, P)
    fused = LeakageScores(ver.max(0), ref.same, ident.max(0), ref.own, ref.n_gallery_images)
    return fused, own.argmax(0)


def fused_leakage(parts: dict[str, LeakageScores], **kwargs: Any) -> dict[str, Any]:
    """Leakage of the best attack per victim over ``parts`` (name -> scores), with which attack won how often."""
    names = list(parts)
    fused, winner = fuse_scores([parts[n] for n in names])
    out = leakage_from_scores(fused, **kwargs)
    out["attacks"] = names
    out["fusion"] = ("per pair, max over attacks of each attack's impostor-CDF rank; operating points "
                     "re-calibrated on the fused impostor scores (the union of the attacks held to the FPR)")
    out["best_attack_counts"] = {n: int((winner == i).sum()) for i, n in enumerate(names)}
    return out
