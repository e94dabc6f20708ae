"""Scoring attack outputs: image metrics, identity leakage with confidence intervals, best attack per victim.

Every attack row of a report is scored here, so the rows are comparable:

* reconstructions (``images``): PSNR / SSIM against the original probes, and the judge's
  embeddings of the reconstructions verified / identified against the victims' raw gallery;
* linkage embeddings (``embeddings``): no image, the embeddings themselves against the raw
  gallery (or, for protected-to-protected linkage, against the network's embeddings of the
  protected gallery).

Every identity figure carries a bootstrap confidence interval over victims
(``facepriv.judges.leakage``). The scorer keeps each row's score matrices (per knowledge
level) so that ``best_per_victim`` can fuse the rows that answer the same question —
probe against the raw gallery — into the headline "best attack per victim" figure.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from facepriv.eval.attacks.data import VictimSplit
from facepriv.eval.attacks.metrics import image_metrics

__all__ = ["JudgeCache", "Scorer", "mean_ssim"]


class JudgeCache:
    """Judge embeddings of the raw probes and the gallery, shared by all frontends of a run."""

    def __init__(self, judge: Any) -> None:
        self.judge = judge
        self._store: dict[tuple[Any, ...], Tensor] = {}

    def embed(self, key: str, images_u8: Tensor, progress: bool, *, flip: bool = False) -> Tensor:
        """Embeddings of uint8 ``images_u8`` (horizontally flipped first when ``flip``), cached."""
        # keyed by the tensor too, so a cache shared across calls never mixes image sets
        full = (key, id(images_u8), tuple(images_u8.shape), flip)
        if full not in self._store:
            x = images_u8.flip(-1) if flip else images_u8
            self._store[full] = self.judge.embed(x.float() / 255.0, progress=progress, desc=f"judge {key}")
        return self._store[full]


class Scorer:
    """Scores rows for one frontend's run and remembers what ``best_per_victim`` fuses."""

    def __init__(self, judge_cache: JudgeCache | None, victims: VictimSplit, *, bootstrap: int, level: float,
                 seed: int, progress: bool) -> None:
        self.cache = judge_cache
        self.victims = victims
        self.bootstrap = int(bootstrap)
        self.level = float(level)
        self.seed = int(seed)
        self.progress = progress
        self._fusable: dict[str, dict[str, Any]] = {}

    @property
    def has_judge(self) -> bool:
        return self.cache is not None

    def gallery(self) -> Tensor:
        assert self.cache is not None
        return self.cache.embed("gallery", self.victims.gallery, self.progress)

    def identity(self, emb: Tensor, *, probes: slice | None = None, gallery: Tensor | None = None,
                 bootstrap: bool = True) -> tuple[dict[str, Any], Any]:
        """Leakage of probe embeddings ``emb`` (all probes, or the ``probes`` slice) against the
        raw gallery (or ``gallery`` embeddings of the same gallery images); returns the
        figures and the score matrices."""
        from facepriv.judges.leakage import leakage_from_scores, leakage_scores

        ids = self.victims.probe_ids if probes is None else self.victims.probe_ids[probes]
        s = leakage_scores(emb, ids, self.gallery() if gallery is None else gallery, self.victims.gallery_ids)
        return leakage_from_scores(s, bootstrap=self.bootstrap if bootstrap else 0, seed=self.seed,
                                   level=self.level), s

    def images(self, recon: Tensor, originals: Tensor, label: str, *, probes: slice | None = None,
               fuse_as: tuple[str, str] | None = None) -> dict[str, Any]:
        """Image metrics and identity leakage of reconstructions; ``fuse_as=(level, name)``
        enters the row into that knowledge level's best-per-victim fusion."""
        out: dict[str, Any] = {"image": image_metrics(recon, originals)}
        if self.cache is not None:
            emb = self.cache.judge.embed(recon.clamp(0, 1), progress=self.progress, desc=f"judge {label}")
            out["identity"], scores = self.identity(emb, probes=probes)
            if fuse_as is not None:
                self._fusable.setdefault(fuse_as[0], {})[fuse_as[1]] = scores
        return out

    def embeddings(self, emb: Tensor, *, gallery: Tensor | None = None,
                   fuse_as: tuple[str, str] | None = None) -> dict[str, Any]:
        """Identity leakage of attack embeddings (linkage rows have no image metrics)."""
        ident, scores = self.identity(emb, gallery=gallery)
        if fuse_as is not None and gallery is None:
            self._fusable.setdefault(fuse_as[0], {})[fuse_as[1]] = scores
        return {"image": None, "identity": ident}

    def agreement(self, emb: Tensor) -> dict[str, float]:
        """How well attack embeddings reproduce the judge on the victims' *original* probes:
        mean cosine, and how often a probe's embedding is nearest to its own original among
        all probes' originals (chance ``1 / probes``)."""
        assert self.cache is not None
        raw = self.cache.embed("probes", self.victims.probes, self.progress)
        sim = emb.float() @ raw.float().T
        return {"mean_cosine": float(sim.diagonal().mean()),
                "original_rank1": float((sim.argmax(1) == torch.arange(sim.shape[0])).float().mean()),
                "chance": 1.0 / max(1, sim.shape[0])}

    def best_per_victim(self, level: str) -> dict[str, Any] | None:
        """Leakage of the best attack per victim among the fused rows of ``level`` (None if none)."""
        from facepriv.judges.leakage import fused_leakage

        parts = self._fusable.get(level)
        if not parts:
            return None
        return fused_leakage(parts, bootstrap=self.bootstrap, seed=self.seed, level=self.level)

    def measure(self, emb: Tensor, metric: str) -> tuple[str, float | None]:
        """One leakage figure for the convergence check (``rank1`` when ``metric`` is not measurable)."""
        ident, _ = self.identity(emb, bootstrap=False)
        value = ident.get(metric)
        if value is None and metric != "rank1":
            return "rank1", ident.get("rank1")
        return metric, value


def mean_ssim(recon: Tensor, originals: Tensor) -> float:
    """Mean luma SSIM: the convergence measurement of a decoder when no judge is available."""
    return float(image_metrics(recon, originals)["ssim_luma"]["mean"])
