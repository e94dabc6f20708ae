"""PartialFace table recovery: the secret layouts, estimated from intercepted queries alone.

PartialFace's secret is a table of ``n_subsets`` disjoint frequency subsets and
``n_permutations`` channel orders; each query sends one of the ``L = n_subsets x
n_permutations`` *layouts* (an ordered tuple of ``s`` frequencies, the same for Y, Cb, Cr),
chosen by the client's CSPRNG. ``n_subsets``, ``n_permutations`` and the kept frequencies
are public. An attacker who collects traffic (no secret, no faces) sees many queries of
each layout, and queries of one layout hold the same frequency at every channel position —
so pooling them recovers the layout far better than reading one query
(``facepriv.eval.attacks.placement``: 60-75 % of positions right per query).

The estimate is a latent-class model over per-position frequency log-likelihoods
``ll[i, j, k]`` (the ``FrequencyProfile`` Gaussian signatures fitted on auxiliary faces):

1. **Subsets** (permutation-invariant): EM for a mixture of ``n_subsets`` components, each a
   distribution over frequencies shared by all positions — a query of subset ``a`` draws its
   ``s`` frequencies from ``a``'s set in some order. Queries are assigned to their most
   likely component.
2. **Orders**: inside each subset cluster, EM for ``n_permutations`` components, each with
   one frequency distribution per position.
3. **Structured decoding**: the ``n_subsets`` frequency sets must partition the kept
   frequencies: each frequency goes to the subset whose clusters place it most confidently
   (one assignment problem over all subsets), then each cluster's layout is the best
   assignment of its positions to its subset's frequencies (Hungarian on the pooled
   log-likelihoods, distinct frequencies).
4. **Refinement** (classification EM): every query is re-assigned to its most likely
   recovered layout and step 3 is repeated, until the assignment is stable.

EM starts from k-means++-style seeds and keeps the best of ``restarts`` runs by likelihood
(seeded: a recovery is reproducible). With few queries some layouts are never seen and
cannot be recovered; the result lists only layouts that some query supports.
``score_recovery`` compares a recovery with the real table (evaluation only: it needs the
secret) and ``recovery_curve`` reports it against the number of intercepted queries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from facepriv.frontends import PartialFace
from facepriv.frontends.dct import COEFFS_PER_BLOCK, N_COLORS

from facepriv.eval.attacks.placement import FrequencyProfile

__all__ = ["RecoveredTable", "RecoveryConfig", "intercept", "recover_table", "recovery_curve", "score_recovery"]


@dataclass
class RecoveryConfig:
    """How much traffic the attacker collects and how hard it searches."""

    #: numbers of intercepted queries the recovery is reported for
    queries: list[int] = field(default_factory=lambda: [10, 100, 1000, 10000])
    #: the recovery fed to the ``recovered`` attacks: after this many queries (default: the largest)
    feed: int | None = None
    restarts: int = 4
    iterations: int = 60
    refine: int = 5
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        self.queries = sorted({int(q) for q in self.queries})
        if not self.queries or self.queries[0] < 1:
            raise ValueError(f"recovery queries must be positive counts, got {self.queries}")
        if self.feed is not None and self.feed < 1:
            raise ValueError(f"recovery feed must be a positive count, got {self.feed}")
        if self.restarts < 1 or self.iterations < 1 or self.refine < 0 or self.batch_size < 1:
            raise ValueError(f"RecoveryConfig: invalid settings {self}")

    @property
    def fed_queries(self) -> int:
        return self.feed if self.feed is not None else self.queries[-1]


@dataclass
class RecoveredTable:
    """Recovered layouts: ``layouts`` (H, s) frequencies per position, ``subset_of`` (H,) the
    recovered subset each belongs to, and how many queries support each."""

    layouts: Tensor
    subset_of: Tensor
    support: Tensor
    n_queries: int
    consistent: bool
    log_likelihood: float

    @property
    def hypotheses(self) -> Tensor:
        """Full-layout channels (H, 3*s), as ``PartialFaceView`` reads them."""
        colors = torch.arange(N_COLORS).view(1, N_COLORS, 1) * COEFFS_PER_BLOCK
        return (colors + self.layouts.unsqueeze(1)).reshape(self.layouts.shape[0], -1)

    def describe(self) -> dict[str, Any]:
        return {"n_queries": self.n_queries, "layouts": int(self.layouts.shape[0]),
                "subsets": int(torch.unique(self.subset_of).numel()), "consistent_structure": self.consistent,
                "log_likelihood": self.log_likelihood}


# ------------------------------------------------------------------------------ traffic
@torch.no_grad()
def intercept(frontend: PartialFace, images: Tensor, n: int, profile: FrequencyProfile, g: torch.Generator,
              batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """``n`` queries of the *real* frontend on random (flipped) ``images``, as the attacker logs them.

    Returns the per-position frequency log-likelihoods ``(n, s, K)`` (all the recovery uses:
    features of the tensors, never the faces) and the true frequencies ``(n, s)`` of each
    query (kept for scoring only). Query choices come from ``g`` (same distribution as the
    client's CSPRNG, reproducible).
    """
    from facepriv.eval.attacks.views import observe

    s = frontend.subset_size
    lls, truth = [], []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        idx = torch.randint(images.shape[0], (b,), generator=g)
        x = images[idx].float() / 255.0 if images.dtype == torch.uint8 else images[idx].float()
        flip = torch.rand(b, generator=g) < 0.5
        x[flip] = x[flip].flip(-1)
        prot, true = observe(frontend, x.to(frontend.subset_table.device), g)
        lls.append(profile.loglik(prot.cpu(), s).float())
        truth.append(true["channels"][:, :s].remainder(COEFFS_PER_BLOCK))
    return torch.cat(lls), torch.cat(truth)


# ------------------------------------------------------------------------------ EM
def _seeds(feat: Tensor, c: int, rng: np.random.Generator) -> list[int]:
    """k-means++ seeding on per-query frequency posteriors (distance = 1 - overlap)."""
    n = feat.shape[0]
    chosen = [int(rng.integers(n))]
    d = torch.full((n,), float("inf"), dtype=feat.dtype)
    for _ in range(c - 1):
        d = torch.minimum(d, 1 - (feat * feat[chosen[-1]]).sum(1))
        p = d.clamp(min=1e-12).double().numpy() ** 2
        chosen.append(int(rng.choice(n, p=p / p.sum())))
    return chosen


def _em(ll: Tensor, c: int, shared: bool, iterations: int, seed: int, chunk: int = 1024) -> tuple[Tensor, float]:
    """Mixture of ``c`` layout classes over ``ll`` (N, s, K); ``shared``: one frequency
    distribution for all positions (subset model), else one per position (order model).
    Returns responsibilities (N, c) and the log-likelihood."""
    n, s, k = ll.shape
    rng = np.random.default_rng(seed)
    post = torch.softmax(ll, -1)
    # scaled so that two queries of one class overlap by ~1 (the same set / the same frequency per position)
    feat = post.mean(1) * s**0.5 if shared else post.reshape(n, -1) / s**0.5
    start = post[_seeds(feat, c, rng)]
    theta = (start.mean(1, keepdim=True) if shared else start) * 0.9 + 0.1 / k  # (c, 1 or s, K)
    log_theta = theta.log()
    log_pi = torch.full((c,), -float(np.log(c)), dtype=ll.dtype)
    prev = None
    total = -float("inf")
    resp = torch.empty(n, c, dtype=ll.dtype)
    for _ in range(iterations):
        stats = torch.zeros(c, s, k, dtype=ll.dtype)
        total = 0.0
        for i in range(0, n, chunk):
            a = log_theta.unsqueeze(0) + ll[i : i + chunk].unsqueeze(1)  # (b, c, s, K)
            lse = torch.logsumexp(a, -1)  # (b, c, s)
            logr = log_pi + lse.sum(-1)
            norm = torch.logsumexp(logr, 1)
            r = torch.exp(logr - norm[:, None])
            resp[i : i + chunk] = r
            stats += torch.einsum("bc,bcsk->csk", r, torch.exp(a - lse.unsqueeze(-1)))
            total += float(norm.sum())
        if shared:
            stats = stats.sum(1, keepdim=True)
        stats = stats + 1e-2
        log_theta = (stats / stats.sum(-1, keepdim=True)).log()
        pi = resp.sum(0) + 1e-9
        log_pi = (pi / pi.sum()).log()
        if prev is not None and total - prev < 1e-7 * abs(prev):
            break
        prev = total
    return resp, total


def _best_em(ll: Tensor, c: int, shared: bool, cfg: RecoveryConfig, seed: int) -> tuple[Tensor, float]:
    best = None
    for r in range(cfg.restarts):
        resp, total = _em(ll, c, shared, cfg.iterations, seed * 1009 + r)
        if best is None or total > best[1]:
            best = (resp, total)
    assert best is not None
    return best


# ------------------------------------------------------------------------------ decoding
def _decode(ll: Tensor, cluster: Tensor, subset: dict[int, int], n_subsets: int) -> tuple[list[tuple[int, ...]], list[int], list[int]]:
    """Structured decoding (module docstring, step 3) of hard clusters.

    ``cluster`` (N,) cluster id per query; ``subset`` maps cluster id -> subset label.
    Returns per non-empty cluster: its layout (kept-frequency *indices*), subset label, and support.
    """
    from scipy.optimize import linear_sum_assignment

    n, s, k = ll.shape
    ids = sorted(int(c) for c in torch.unique(cluster))
    pooled = {c: ll[cluster == c].double().sum(0) for c in ids}  # (s, K) each
    # membership: how confidently each subset's clusters hold frequency k at some position
    member = np.zeros((n_subsets, k))
    for c in ids:
        member[subset[c]] += torch.softmax(pooled[c], -1).max(0).values.numpy()
    seen = sorted({subset[c] for c in ids})
    # every frequency to one subset, s slots per subset (unseen subsets take what is left)
    cost = -np.repeat(member, s, axis=0)  # (n_subsets * s, K)
    rows, cols = linear_sum_assignment(cost)
    members = {a: sorted(int(cols[r]) for r in range(len(rows)) if rows[r] // s == a) for a in range(n_subsets)}
    layouts, labels, support = [], [], []
    for c in ids:
        allowed = members[subset[c]] if subset[c] in seen else list(range(k))
        sub = pooled[c][:, allowed].numpy()
        r, cc = linear_sum_assignment(-sub)
        lay = [0] * s
        for pos, col in zip(r, cc):
            lay[pos] = allowed[col]
        layouts.append(tuple(lay))
        labels.append(subset[c])
        support.append(int((cluster == c).sum()))
    return layouts, labels, support


def _assign(ll: Tensor, layouts: list[tuple[int, ...]], support: list[int]) -> tuple[Tensor, float]:
    """Most likely recovered layout of every query (with the layouts' frequencies as prior)."""
    idx = torch.tensor(layouts, dtype=torch.long)  # (H, s)
    pos = torch.arange(idx.shape[1]).view(1, -1).expand_as(idx)
    scores = ll[:, pos, idx].double().sum(-1)  # (N, H)
    prior = torch.tensor(support, dtype=torch.float64).clamp(min=1).log()
    scores = scores + prior
    return scores.argmax(1), float(torch.logsumexp(scores, 1).sum())


def _consistent(layouts: Sequence[tuple[int, ...]], labels: Sequence[int], n_subsets: int, n_perm: int, k: int) -> bool:
    sets: dict[int, set[frozenset[int]]] = {}
    count: dict[int, int] = {}
    for lay, a in zip(layouts, labels):
        sets.setdefault(a, set()).add(frozenset(lay))
        count[a] = count.get(a, 0) + 1
    if len(sets) != n_subsets or any(len(v) != 1 for v in sets.values()) or any(c != n_perm for c in count.values()):
        return False
    union = [f for v in sets.values() for f in next(iter(v))]
    return len(union) == k == len(set(union)) and len(set(layouts)) == len(layouts)


def recover_table(ll: Tensor, kept: Sequence[int], n_subsets: int, n_permutations: int,
                  cfg: RecoveryConfig | None = None) -> RecoveredTable:
    """Recover the layouts from per-position log-likelihoods ``ll`` (N, s, K) of N intercepted queries."""
    cfg = cfg or RecoveryConfig()
    n, s, k = ll.shape
    if k != len(kept) or n_subsets * s != k:
        raise ValueError(f"log-likelihoods over {k} frequencies do not fit {n_subsets} subsets of {s} "
                         f"among {len(kept)} kept frequencies")
    if n < 1:
        raise ValueError("table recovery needs at least one intercepted query")
    ll = ll.double()
    resp, _ = _best_em(ll, min(n_subsets, n), True, cfg, cfg.seed)
    subset_hard = resp.argmax(1)
    cluster = torch.empty(n, dtype=torch.long)
    subset: dict[int, int] = {}
    next_id = 0
    for a in sorted(int(v) for v in torch.unique(subset_hard)):
        members = (subset_hard == a).nonzero().flatten()
        p = min(n_permutations, members.numel())
        order = _best_em(ll[members], p, False, cfg, cfg.seed + 7 + a)[0].argmax(1) if p > 1 else torch.zeros(members.numel(), dtype=torch.long)
        for q in sorted(int(v) for v in torch.unique(order)):
            cluster[members[order == q]] = next_id
            subset[next_id] = a
            next_id += 1
    layouts, labels, support = _decode(ll, cluster, subset, n_subsets)
    total = float("nan")
    for _ in range(cfg.refine):
        hard, total = _assign(ll, layouts, support)
        subset = {h: labels[h] for h in range(len(layouts))}
        new = _decode(ll, hard, subset, n_subsets)
        if new[0] == layouts and new[2] == support:
            break
        layouts, labels, support = new
    if cfg.refine == 0 or total != total:
        total = _assign(ll, layouts, support)[1]
    # the same layout decoded twice (a split class): keep one, pooling the support
    merged: dict[tuple[int, ...], list[int]] = {}
    for lay, a, sup in zip(layouts, labels, support):
        if lay in merged:
            merged[lay][1] += sup
        else:
            merged[lay] = [a, sup]
    kept_t = torch.tensor(list(kept), dtype=torch.long)
    lays = list(merged)
    return RecoveredTable(
        layouts=kept_t[torch.tensor(lays, dtype=torch.long)],
        subset_of=torch.tensor([merged[l_][0] for l_ in lays], dtype=torch.long),
        support=torch.tensor([merged[l_][1] for l_ in lays], dtype=torch.long),
        n_queries=n, consistent=_consistent(lays, [merged[l_][0] for l_ in lays], n_subsets, n_permutations, k),
        log_likelihood=total,
    )


# ------------------------------------------------------------------------------ scoring
def true_layouts(frontend: PartialFace) -> Tensor:
    """The real layouts (L, s) of ``frontend`` (needs its secret: evaluation only)."""
    combos = torch.cartesian_prod(torch.arange(frontend.n_subsets), torch.arange(frontend.n_permutations))
    dev = frontend.subset_table.device
    ch = frontend.subset_channels(combos[:, 0].to(dev), combos[:, 1].to(dev)).cpu()
    return ch[:, : frontend.subset_size]


def score_recovery(table: RecoveredTable, frontend: PartialFace) -> dict[str, Any]:
    """How much of the real table a recovery got right (evaluator's view, needs the secret)."""
    true = [tuple(r) for r in true_layouts(frontend).tolist()]
    rec = [tuple(r) for r in table.layouts.tolist()]
    true_set, rec_set = set(true), set(rec)
    true_subsets = {frozenset(r) for r in frontend.subset_table.cpu().tolist()}
    rec_subsets = {frozenset(r) for r in rec}
    pos = [max((sum(a == b for a, b in zip(t, r)) / len(t) for r in rec), default=0.0) for t in true]
    return {
        "n_queries": table.n_queries,
        "layouts_true": len(true_set),
        "layouts_recovered": len(rec_set),
        "layouts_exact": len(true_set & rec_set) / len(true_set),
        "false_layouts": len(rec_set - true_set),
        "subsets_exact": len(true_subsets & rec_subsets) / len(true_subsets),
        "position_accuracy": float(np.mean(pos)),
        "consistent_structure": table.consistent,
    }


def recovery_curve(frontend: PartialFace, profile: FrequencyProfile, images: Tensor, cfg: RecoveryConfig,
                   *, progress: bool = False) -> tuple[list[dict[str, Any]], RecoveredTable]:
    """Recovered fraction of the table against the number of intercepted queries, and the
    recovery the ``recovered`` attacks are fed (after ``cfg.fed_queries`` queries).

    Queries are made from ``images`` (any population: only their protected tensors are used)
    by the real ``frontend``; a smaller count uses the first queries of the larger stream.
    """
    counts = sorted({*cfg.queries, cfg.fed_queries})
    g = torch.Generator().manual_seed(cfg.seed * 7919 + 31)
    t0 = time.perf_counter()
    ll, _ = intercept(frontend, images, counts[-1], profile, g, cfg.batch_size)
    intercept_s = time.perf_counter() - t0
    rows, fed = [], None
    from tqdm import tqdm

    for n in tqdm(counts, desc="table recovery", unit="N", disable=not progress, leave=False):
        t = time.perf_counter()
        table = recover_table(ll[:n], frontend.kept, frontend.n_subsets, frontend.n_permutations, cfg)
        row = {**score_recovery(table, frontend), "seconds": round(time.perf_counter() - t, 2)}
        if n in cfg.queries:
            rows.append(row)
        if n == cfg.fed_queries:
            fed = table
    assert fed is not None
    for r in rows:
        r["intercept_seconds_total"] = round(intercept_s, 2)
    return rows, fed
