"""Federated validation (FV) of aggregation weights, after FedFace (Bai et al., 2021).

Plain FedAvg weights the round's client models by sample count. That is the right weighting
for the *training* objective, but not necessarily for the quantity sites care about
(verification of unseen people): a large site with easy or redundant identities dominates.
FedFace's FV lets the sites *choose* the weighting on data nobody trains on:

1. the server proposes K candidate weightings ``q_1..q_K`` of the accepted client models
   (``candidate_weights``: sample-count weights first, then uniform, then Dirichlet draws
   around the sample-count weights) and builds the K candidate global models, *including*
   the strategy's server step (FedAvgM's server momentum; PFM's model is the average);
2. every site that contributed an accepted update scores each candidate on its private
   *validation identities* (held out of its training data, ``facepriv.federated.site``) and replies
   K scalars only (``separation_score``);
3. the server keeps the candidate with the best aggregate score (``combine_scores``:
   validation-image-weighted mean over the sites that replied with K finite scores) and only
   then commits the strategy state implied by that candidate (FedAvgM velocity, PFM
   momentum), so the momentum always describes the step that was actually taken.

This module is pure numpy/torch (no Flower): the strategy (``facepriv.federated.strategies``) does
the messaging and the client (``facepriv.federated.client_app``) the embedding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .protocol import FV_SCORES, NUM_EXAMPLES



def candidate_weights(sample_weights: Sequence[float], k: int, *, seed: int | Sequence[int] = 0,
                      concentration: float = 2.0) -> np.ndarray:
    """``K x n`` candidate aggregation weightings of ``n`` client models (rows sum to 1).

    Row 0 is always the sample-count weighting ``p`` (so K=1 *is* FedAvg and FV can never do
    worse than FedAvg on the sites' validation data), row 1 the uniform weighting (the
    opposite extreme: every site counts the same), and rows 2.. are draws from
    ``Dirichlet(concentration * n * p)``, whose mean is ``p`` and whose spread shrinks as
    ``concentration`` grows (per-coordinate std ``sqrt(p_i (1 - p_i) / (concentration * n + 1))``;
    2.0 with 4 equal sites gives about 0.14). A row equal to an earlier one (uniform == p
    when the sites are equally large) is replaced by a fresh draw, so the K candidates are
    distinct whenever ``n > 1``; with one client every weighting is ``[1.0]`` and one row
    is returned.

    ``seed`` (an int or a sequence such as ``(run_seed, round)``) makes the draws reproducible,
    so a resumed server proposes the same candidates.
    """
    p = np.asarray(sample_weights, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"sample_weights must be a non-empty 1-D sequence, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p <= 0):
        raise ValueError(f"sample_weights must be finite and positive, got {list(sample_weights)}")
    if k < 1:
        raise ValueError(f"need at least one candidate, got k={k}")
    if concentration <= 0 or not np.isfinite(concentration):
        raise ValueError(f"concentration must be positive, got {concentration}")
    n = p.size
    p = p / p.sum()
    if n == 1:
        return p[None, :]
    rng = np.random.default_rng(list(np.atleast_1d(seed).astype(np.int64)))
    rows = [p]
    proposals = [np.full(n, 1.0 / n)]

    def draw() -> np.ndarray:
        q = rng.dirichlet(concentration * n * p)
        q = np.maximum(q, 0.0)
        return q / q.sum()

    attempts = 0
    while len(rows) < k:
        q = proposals.pop(0) if proposals else draw()
        attempts += 1
        if any(np.allclose(q, r, rtol=0.0, atol=1e-9) for r in rows):
            if attempts > 100 * k:  # degenerate Dirichlet (tiny alphas): accept what we have
                break
            continue
        rows.append(q)
    return np.stack(rows)


def separation_score(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean genuine cosine similarity minus mean impostor cosine similarity (higher is better).

    Why this score for FV on a site's validation identities: sites hold few validation
    people (a handful of identities, a few images each), so TPR@FPR is a step function of
    a few dozen pairs (candidates tie, or differ by one pair), and ROC-AUC saturates at 1.0
    on easy data. The separation uses every pair, is smooth in the model, bounded in
    [-2, 2], needs no threshold and no classifier head (the sites' heads do not know
    validation people), and costs one embedding pass plus a B x B matrix product.

    Raises ``ValueError`` if there is no genuine or no impostor pair (at least two
    identities, one of them with two images, are needed).
    """
    if embeddings.ndim != 2 or labels.ndim != 1 or embeddings.shape[0] != labels.shape[0]:
        raise ValueError(f"separation_score: need B x D embeddings and B labels, got {tuple(embeddings.shape)} "
                         f"and {tuple(labels.shape)}")
    e = torch.nn.functional.normalize(embeddings.double(), dim=1)
    sim = e @ e.T
    iu = torch.triu_indices(len(labels), len(labels), offset=1, device=labels.device)
    same = labels[iu[0]] == labels[iu[1]]
    s = sim[iu[0], iu[1]]
    if not bool(same.any()) or bool(same.all()):
        raise ValueError(f"separation_score: need genuine and impostor pairs; {int(same.sum())} genuine of {s.numel()} pairs "
                         f"({len(torch.unique(labels))} identities, {len(labels)} images)")
    return float(s[same].mean() - s[~same].mean())


@dataclass
class FVRound:
    """What FV did in one round (written to ``metrics.json`` under ``aggregation.fv``)."""

    #: candidate weightings, one list per candidate, ordered like ``nodes``.
    candidates: list[list[float]]
    #: node ids of the accepted client models, in the order of the weights.
    nodes: list[int]
    #: node -> K scores, for every site whose reply was used.
    scores: dict[int, list[float]] = field(default_factory=dict)
    #: node -> validation images behind its scores (its weight in the aggregate).
    val_examples: dict[int, int] = field(default_factory=dict)
    #: node -> why its reply was not used (error, NaN, wrong count, ...).
    ignored: dict[int, str] = field(default_factory=dict)
    #: weighted mean score per candidate (None when no site replied usefully).
    aggregate: list[float] | None = None
    chosen: int = 0
    #: True when no usable reply arrived and the sample-count weights were kept.
    fallback: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "nodes": self.nodes,
                "scores": {str(k): v for k, v in self.scores.items()},
                "val_examples": {str(k): v for k, v in self.val_examples.items()},
                "ignored": {str(k): v for k, v in self.ignored.items()},
                "aggregate": self.aggregate, "chosen": self.chosen, "fallback": self.fallback}


def parse_scores(metrics: Mapping[str, Any], k: int) -> tuple[list[float], int]:
    """``(K finite scores, validation images)`` of one FV reply; ``ValueError`` saying why not."""
    if FV_SCORES not in metrics:
        raise ValueError(f"reply has no {FV_SCORES!r}")
    raw = metrics[FV_SCORES]
    scores = [float(x) for x in (raw if isinstance(raw, (list, tuple)) else [raw])]
    if len(scores) != k:
        raise ValueError(f"{len(scores)} scores for {k} candidates")
    if not all(np.isfinite(scores)):
        raise ValueError(f"non-finite score(s): {scores}")
    n = float(metrics.get(NUM_EXAMPLES, 0))
    if not (np.isfinite(n) and n > 0):
        raise ValueError(f"invalid {NUM_EXAMPLES}={n}")
    return scores, int(n)


def combine_scores(scores: Mapping[int, Sequence[float]], examples: Mapping[int, int], k: int) -> tuple[list[float], int] | None:
    """Validation-image-weighted mean score per candidate over the sites, and the best one.

    Ties go to the lowest index, i.e. to the sample-count weighting (candidate 0) first.
    ``None`` when no site contributed.
    """
    nodes = [n for n in scores if examples.get(n, 0) > 0]
    if not nodes:
        return None
    w = np.asarray([examples[n] for n in nodes], dtype=np.float64)
    s = np.asarray([list(scores[n]) for n in nodes], dtype=np.float64).reshape(len(nodes), k)
    agg = (w[:, None] * s).sum(0) / w.sum()
    return [float(x) for x in agg], int(np.argmax(agg))
