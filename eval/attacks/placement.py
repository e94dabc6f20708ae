"""Which DCT frequency does each channel of a PartialFace tensor hold? The attacker's estimate.

A PartialFace tensor holds ``s`` frequencies (the same ``s`` for Y, Cb and Cr, colour-major),
chosen by the secret table and a per-query subset and permutation. An attacker without the
secret does not know which of the ``K`` kept frequencies (54 by default) sits at each of the
``s`` positions, but frequencies are not interchangeable: their energy, their Y/Cb/Cr
balance and the orientation and smoothness of their block-position maps differ
systematically (a horizontal frequency (0, v) responds to vertical edges, energy falls with
u + v, and so on). The attacker learns those signatures on its auxiliary faces and reads
them off the intercepted tensor:

* ``FrequencyProfile.fit`` computes a small feature vector per frequency and image on
  auxiliary data (through the real ``block_dct``) and keeps a diagonal Gaussian per
  frequency;
* ``estimate`` (no secret): the most likely assignment of the ``s`` positions to ``s``
  *distinct* kept frequencies (Hungarian algorithm on the Gaussian log-likelihoods);
* ``best_hypothesis`` (secret known): the table is known, the per-query (subset,
  permutation) draw is not (it comes from the client's CSPRNG); score every one of the
  ``n_subsets x n_permutations`` hypotheses with the same log-likelihoods and take the best.

Both return full-layout channel indices that ``facepriv.eval.attacks.views`` uses to place the
tensor; the report states how often they are right (known on victims, whose true choices we
record when we protect them).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from facepriv.frontends import block_dct
from facepriv.frontends.dct import COEFFS_PER_BLOCK, N_COLORS

__all__ = ["FrequencyProfile", "position_features", "FEATURE_NAMES"]

FEATURE_NAMES = (
    "log_energy_Y", "log_energy_Cb", "log_energy_Cr",
    "log_dx_over_dy_Y", "autocorr_h1_Y", "autocorr_v1_Y", "autocorr_h2_Y", "autocorr_v2_Y",
    "log_kurtosis_Y", "log_abs_mean_over_rms_Y",
)
_EPS = 1e-8


def position_features(planes: Tensor) -> Tensor:
    """Features ``(B, F)`` of one frequency position: ``planes`` is ``(B, 3, h, w)`` (Y, Cb, Cr maps).

    Scale-free features (ratios, correlations) carry orientation and smoothness; the
    log-energies carry the frequency's magnitude, which falls steeply with u + v.
    """
    p = planes.double()
    e = p.pow(2).mean((-2, -1))  # (B, 3)
    y = p[:, 0]
    ey = e[:, 0] + _EPS
    dx = (y[..., :, 1:] - y[..., :, :-1]).pow(2).mean((-2, -1))
    dy = (y[..., 1:, :] - y[..., :-1, :]).pow(2).mean((-2, -1))

    def corr(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).mean((-2, -1)) / ey

    feats = [
        torch.log(e + _EPS),
        torch.log((dx + _EPS) / (dy + _EPS)).unsqueeze(1),
        corr(y[..., :, 1:], y[..., :, :-1]).unsqueeze(1),
        corr(y[..., 1:, :], y[..., :-1, :]).unsqueeze(1),
        corr(y[..., :, 2:], y[..., :, :-2]).unsqueeze(1),
        corr(y[..., 2:, :], y[..., :-2, :]).unsqueeze(1),
        torch.log(y.pow(4).mean((-2, -1)) / ey.pow(2) + _EPS).unsqueeze(1),
        torch.log(y.abs().mean((-2, -1)) / ey.sqrt() + _EPS).unsqueeze(1),
    ]
    return torch.cat(feats, dim=1)


class FrequencyProfile:
    """Per-frequency Gaussian model of ``position_features`` over auxiliary faces."""

    def __init__(self, kept: Sequence[int], upsample: int = 8, coefficients: Callable[[Tensor], Tensor] | None = None) -> None:
        """``coefficients``: images -> the 192-channel values the channels are taken from
        (default ``block_dct``; MinusFace's view passes its residue)."""
        self.kept = [int(k) for k in kept]
        self.coefficients = coefficients
        if not self.kept or any(not 0 <= k < COEFFS_PER_BLOCK for k in self.kept):
            raise ValueError(f"kept frequencies must be in [0, 63], got {self.kept}")
        self.upsample = int(upsample)
        self.mean: Tensor | None = None  # (K, F)
        self.var: Tensor | None = None   # (K, F)
        self.n_images = 0

    # ------------------------------------------------------------------ fitting
    @torch.no_grad()
    def fit(self, batches: Any) -> "FrequencyProfile":
        """Fit on an iterable of RGB float batches ``B x 3 x H x W`` in [0, 1]."""
        kept = torch.tensor(self.kept)
        s1 = s2 = None
        n = 0
        for images in batches:
            full = block_dct(images.float(), self.upsample) if self.coefficients is None else self.coefficients(images.float())
            b, _, h, w = full.shape
            planes = full.view(b, N_COLORS, COEFFS_PER_BLOCK, h, w)[:, :, kept]  # (B, 3, K, h, w)
            planes = planes.permute(0, 2, 1, 3, 4).reshape(b * len(self.kept), N_COLORS, h, w)
            f = position_features(planes).view(b, len(self.kept), -1)  # (B, K, F)
            s1 = f.sum(0) if s1 is None else s1 + f.sum(0)
            s2 = f.pow(2).sum(0) if s2 is None else s2 + f.pow(2).sum(0)
            n += b
        if n < 2:
            raise ValueError("FrequencyProfile.fit: need at least two auxiliary images")
        self.mean = s1 / n
        self.var = (s2 / n - self.mean.pow(2)).clamp(min=0) + 1e-4  # floor: a constant feature must not dominate
        self.n_images = n
        return self

    def _check(self) -> None:
        if self.mean is None:
            raise RuntimeError("FrequencyProfile: call fit() on auxiliary images first")

    # ------------------------------------------------------------------ scoring
    def loglik(self, protected: Tensor, subset_size: int) -> Tensor:
        """``(B, s, K)``: log-likelihood that position j holds kept frequency k."""
        self._check()
        b, c, h, w = protected.shape
        if c != N_COLORS * subset_size:
            raise ValueError(f"expected {N_COLORS * subset_size} channels (3 colours x {subset_size}), got {c}")
        planes = protected.view(b, N_COLORS, subset_size, h, w).permute(0, 2, 1, 3, 4).reshape(b * subset_size, N_COLORS, h, w)
        f = position_features(planes).view(b, subset_size, 1, -1)
        mu, var = self.mean.to(f.device), self.var.to(f.device)
        return -0.5 * (((f - mu) ** 2) / var + torch.log(var)).sum(-1)  # (B, s, K)

    def estimate(self, protected: Tensor, subset_size: int) -> Tensor:
        """Most likely distinct-frequency assignment; returns full-layout channels ``(B, 3*s)``."""
        from scipy.optimize import linear_sum_assignment

        ll = self.loglik(protected, subset_size).cpu().numpy()
        kept = np.asarray(self.kept)
        freqs = np.empty((ll.shape[0], subset_size), dtype=np.int64)
        for i in range(ll.shape[0]):
            rows, cols = linear_sum_assignment(-ll[i])
            freqs[i, rows] = kept[cols]
        return _to_channels(torch.from_numpy(freqs))

    def best_hypothesis(self, protected: Tensor, hypotheses: Tensor) -> tuple[Tensor, Tensor]:
        """Pick among known candidate layouts. ``hypotheses``: ``(Hn, 3*s)`` full-layout channels
        (every subset x permutation of the secret table). Returns ``(channels (B, 3*s), index (B,))``."""
        s = hypotheses.shape[1] // N_COLORS
        ll = self.loglik(protected, s)  # (B, s, K)
        col = {k: i for i, k in enumerate(self.kept)}
        freq_of = hypotheses[:, :s].remainder(COEFFS_PER_BLOCK)  # Y block of each hypothesis = its frequencies
        try:
            idx = torch.tensor([[col[int(k)] for k in row] for row in freq_of.tolist()], device=ll.device)  # (Hn, s)
        except KeyError as exc:
            raise ValueError(f"hypothesis frequency {exc} is not among the profile's kept frequencies") from exc
        pos = torch.arange(s, device=ll.device)
        scores = ll[:, pos.view(1, s).expand_as(idx), idx].sum(-1)  # (B, Hn)
        best = scores.argmax(1)
        return hypotheses.to(best.device)[best], best

    def to(self, device: str | torch.device) -> "FrequencyProfile":
        if self.mean is not None:
            self.mean, self.var = self.mean.to(device), self.var.to(device)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "n_images": self.n_images, "features": list(FEATURE_NAMES)}


def _to_channels(freqs: Tensor) -> Tensor:
    """Frequencies ``(B, s)`` -> colour-major full-layout channels ``(B, 3*s)`` (PartialFace's layout)."""
    colors = torch.arange(N_COLORS).view(1, N_COLORS, 1) * COEFFS_PER_BLOCK
    return (colors + freqs.unsqueeze(1)).reshape(freqs.shape[0], -1)
