"""Optimisation inversion: search for an image whose protected tensor matches the observation.

The frontend's graph is differentiable (``block_dct`` / ``block_dct_select`` support
autograd), so the attacker can run Adam on the image itself::

    x = sigmoid(z)                         (keeps every pixel in [0, 1])
    loss = data(forward(x), observation) + tv_weight * TV(x)

* ``data``: for exact observations (RGB, DCT, PartialFace) the mean squared error over the
  observed coefficients, divided by their typical size (the RMS auxiliary-data spread of the
  channels this query observes: plain least squares within the observation, but a
  high-frequency-only PartialFace tensor is not drowned by the prior); for DCTDP the Laplace negative log-likelihood
  ``mean |forward(x) - y| / b`` with the known per-element scales ``b`` (and the
  mechanism's clipping applied in ``forward``).
* ``TV``: anisotropic total variation, the classic natural-image prior; it decides what the
  data leave open (PartialFace's pruned low frequencies, everything DCTDP's noise hides).
* Initialisation (``init``): the auxiliary mean face, the analytic least-squares estimate,
  or the learned decoder's output; ``auto`` starts each image from whichever of those fits
  its observation best (lowest data term, computable without ground truth), so
  optimisation refines the other attacks instead of starting from nothing.

PartialFace without the secret: the data term uses the attacker's *estimated* placement
(``facepriv.eval.attacks.placement``); wrongly placed channels then pull towards wrong frequencies,
which is exactly the uncertainty the secret is meant to create. (Marginalising over all
subsets is intractable without the table: 54!/(45!) orderings per query.) With the secret,
the identified hypothesis places the channels exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from facepriv.eval.attacks.views import AttackerView, AuxStats, Placed

__all__ = ["DataTerm", "INITS", "OptimConfig", "best_start", "optimise_inversion", "total_variation"]

INITS = ("auto", "mean", "analytic", "learned")


@dataclass
class OptimConfig:
    steps: int = 300
    lr: float = 0.05
    tv_weight: float = 0.02
    init: str = "auto"
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"OptimConfig.init must be one of {INITS}, got {self.init!r}")
        if self.steps < 0 or self.lr <= 0 or self.tv_weight < 0 or self.batch_size < 1:
            raise ValueError(f"OptimConfig: invalid settings {self}")


def total_variation(x: Tensor) -> Tensor:
    """Per-image anisotropic TV, mean absolute difference of neighbouring pixels."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


def _logit(x: Tensor, eps: float = 0.01) -> Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x) - torch.log1p(-x)


def _selected_channels(placed: Placed) -> Tensor | None:
    """``(B, J)`` observed channels when every row observes the same number (fast path)."""
    if placed.domain != "dct" or placed.clip is not None:
        return None
    counts = placed.mask.sum(1)
    if counts.numel() == 0 or not bool((counts == counts[0]).all()) or int(counts[0]) == placed.mask.shape[1]:
        return None
    return placed.mask.nonzero()[:, 1].view(placed.mask.shape[0], -1)


class DataTerm:
    """Per-image data misfit ``data(x)`` of candidate images ``x`` against one placed observation.

    Exact observations: squared error over the observed coefficients divided by one scale per
    image, the RMS auxiliary spread of the channels it observes (plain least squares within
    the observed set, well conditioned in pixel space, and normalised so faint
    high-frequency-only observations still outweigh the TV prior). DCTDP: the Laplace
    negative log-likelihood ``|f(x) - y| / b`` per element. Both are averaged over the
    observed elements.
    """

    def __init__(self, view: AttackerView, placed: Placed, stats: AuxStats | None) -> None:
        self.view = view
        self.laplace = placed.inv_scale is not None
        self.channels = _selected_channels(placed)
        dev = placed.values.device
        obs = placed.values
        if self.channels is not None:
            obs = torch.gather(obs, 1, self.channels.view(*self.channels.shape, 1, 1).expand(-1, -1, *obs.shape[-2:]))
        self.obs = obs
        if self.laplace:
            w = placed.inv_scale * placed.mask.view(*placed.mask.shape, 1, 1)
            m = placed.mask
        elif placed.domain == "dct":
            if stats is None:
                raise ValueError("optimisation attack needs auxiliary statistics for DCT observations")
            var = stats.coeff_std.to(dev).clamp(min=1e-6).pow(2)
            mask = placed.mask.to(var.dtype)
            scale = ((mask * var).sum(1) / mask.sum(1).clamp(min=1)).sqrt()  # (B,)
            width = self.channels.shape[1] if self.channels is not None else obs.shape[1]
            w = (1.0 / scale).view(-1, 1).expand(-1, width)
            m = torch.ones_like(w) if self.channels is not None else placed.mask
            w = (w * m).view(*w.shape, 1, 1)
        else:
            m = placed.mask
            w = m.view(*m.shape, 1, 1).to(obs.dtype)
        self.w = w
        self.n_obs = (m.sum(1) * obs.shape[-2] * obs.shape[-1]).clamp(min=1)

    def __call__(self, x: Tensor) -> Tensor:
        if self.channels is not None:
            pred = self.view.forward_selected(x, self.channels)
        else:
            pred = self.view.forward_model(x)
        err = (pred - self.obs) * self.w
        return (err.abs() if self.laplace else err.pow(2)).flatten(1).sum(1) / self.n_obs


@torch.no_grad()
def best_start(view: AttackerView, placed: Placed, candidates: dict[str, Tensor]) -> tuple[Tensor, dict[str, int]]:
    """Per image, the candidate start that fits the observation best (lowest data term).

    The attacker can compute this without ground truth, so ``init="auto"`` starts every
    victim from whichever attack explained *its* tensor best. Returns the starts and how
    many images each candidate won.
    """
    names = list(candidates)
    term = DataTerm(view, placed, view.stats)
    losses = torch.stack([term(candidates[n].to(placed.values.device).clamp(0, 1)) for n in names])  # (K, B)
    best = losses.argmin(0)
    stacked = torch.stack([candidates[n].to(placed.values.device) for n in names])  # (K, B, 3, H, W)
    chosen = stacked[best, torch.arange(best.shape[0], device=best.device)]
    return chosen, {n: int((best == i).sum()) for i, n in enumerate(names)}


def _optimise_batch(view: AttackerView, placed: Placed, init: Tensor, stats: AuxStats | None, cfg: OptimConfig,
                    progress: bool) -> tuple[Tensor, dict[str, float]]:
    z = _logit(init.detach().clone()).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=cfg.lr)
    term = DataTerm(view, placed, stats)
    from tqdm import tqdm

    last: dict[str, float] = {}
    for _ in tqdm(range(cfg.steps), desc="optimise", unit="step", disable=not progress, leave=False):
        x = torch.sigmoid(z)
        data = term(x)
        tv = total_variation(x)
        loss = (data + cfg.tv_weight * tv).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = {"data": float(data.detach().mean()), "tv": float(tv.detach().mean())}
    return torch.sigmoid(z).detach(), last


def optimise_inversion(view: AttackerView, placed: Placed, init: Tensor, cfg: OptimConfig | None = None,
                       *, progress: bool = False) -> tuple[Tensor, dict[str, Any]]:
    """Refine ``init`` (``B x 3 x H x W`` in [0, 1]) to match ``placed``; returns images and loss info."""
    cfg = cfg or OptimConfig()
    if init.shape[0] != placed.values.shape[0]:
        raise ValueError(f"init has {init.shape[0]} images for {placed.values.shape[0]} observations")
    outs, info = [], []
    n = init.shape[0]
    for i in range(0, n, cfg.batch_size):
        sl = slice(i, i + cfg.batch_size)
        x, last = _optimise_batch(view, placed.select(sl), init[sl].to(placed.values.device), view.stats, cfg, progress)
        outs.append(x.cpu())
        info.append(last)
    summary = {k: sum(d[k] for d in info) / len(info) for k in info[0]} if info and info[0] else {}
    return torch.cat(outs), {"final_loss": summary, "steps": cfg.steps, "lr": cfg.lr, "tv_weight": cfg.tv_weight}
