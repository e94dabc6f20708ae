"""Analytic inversion: fill what the tensor lacks, then invert the (linear) block DCT.

Three ways to fill, from naive to strongest:

* ``zeros``: unobserved coefficients are 0, then the exact least-squares inverse
  ``block_idct(method="exact")``. For DCTDP this also keeps the noise; it is the "naive
  rendering" of a tensor.
* ``mean``: unobserved coefficients take the auxiliary-data mean (the attacker's average
  face in the DCT domain); observed ones are kept as they are.
* ``lstsq``: a MAP / regularised least-squares estimate of the *image*:

      minimise  sum_(c,u,v observed) w_cuv || M_u X_c M_v^T - Y_cuv ||^2 + lam_c || X_c - X0_c ||^2

  per colour plane ``X_c`` (level-shifted YCbCr, 0-255 scale), where ``M_u`` are the rows of
  the 1-D "bilinear up-sample then 8-point DCT" operator for frequency u
  (``facepriv.frontends.dct.axis_operator``) and ``X0`` is the auxiliary mean face. This is
  "least squares from neighbouring blocks" done globally: up-sampling makes neighbouring
  blocks share source pixels, so a few observed high frequencies constrain the whole image
  (with 8x up-sampling a single frequency plane already has as many equations as the image
  has pixels). Weights: exact observations get ``1 / (obs_noise * s)^2`` with ``s`` the RMS
  auxiliary spread of the channels the query holds (a tiny relative noise: the fit is nearly
  exact but well posed), DCTDP elements
  ``1 / (2 b^2)`` (the variance of their Laplace noise, averaged over positions). The prior
  weight is ``prior_weight / var_c`` with ``var_c`` the pixel variance of auxiliary faces: a
  Gaussian image prior, so ``lstsq`` is the MAP estimate under Gaussian noise.
  Solved by Jacobi-preconditioned conjugate gradients started at ``X0`` (directions the data
  do not determine stay at the prior), with the normal operator applied through the
  separable structure ``sum_u G_u (sum_v w_uv X G_v)``, ``G_u = M_u^T M_u`` (never a dense
  12544 x 12544 matrix).
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import Tensor

from facepriv.frontends import block_idct
from facepriv.frontends.dct import BLOCK, N_COLORS, axis_operator, rgb_to_ycbcr_shifted, ycbcr_shifted_to_rgb

from facepriv.eval.attacks.views import AuxStats, Placed

__all__ = ["AnalyticConfig", "FILLS", "fill_and_invert", "lstsq_invert", "analytic_invert"]

FILLS = ("zeros", "mean", "lstsq")


@dataclass
class AnalyticConfig:
    """Settings of the ``lstsq`` solver (the fills have none)."""

    iterations: int = 200
    prior_weight: float = 1.0
    obs_noise: float = 1e-3
    batch_size: int = 16
    dtype: str = "float64"


def fill_and_invert(placed: Placed, fill: str, stats: AuxStats | None = None, *, upsample: int | None = None) -> Tensor:
    """``zeros`` / ``mean`` fill, then the exact inverse; RGB in [0, 1] (clamped).

    ``upsample`` defaults to the statistics' (the frontend's) factor; the ``zeros`` fill
    needs no statistics, only that factor.
    """
    if placed.domain == "image":
        return placed.values.clamp(0, 1)
    if fill not in {"zeros", "mean"}:
        raise ValueError(f"fill must be 'zeros' or 'mean' here, got {fill!r}")
    coeffs = placed.values
    if fill == "mean":
        if stats is None:
            raise ValueError("the 'mean' fill needs auxiliary statistics")
        m = placed.mask.view(*placed.mask.shape, 1, 1).to(coeffs.dtype)
        coeffs = m * coeffs + (1 - m) * stats.coeff_mean.to(coeffs.device, coeffs.dtype).unsqueeze(0)
    if upsample is None:
        if stats is None:
            raise ValueError("fill_and_invert: pass upsample= (or auxiliary statistics carrying it)")
        upsample = stats.upsample
    return block_idct(coeffs.float(), int(upsample), method="exact").clamp(0, 1)


def _operators(n: int, upsample: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``Mr (8, n_blocks, n)`` (rows of frequency u) and ``G (8, n, n) = Mr_u^T Mr_u``."""
    m = axis_operator(n, upsample)  # (8 * n_blocks, n), row 8b + u
    mr = m.view(-1, BLOCK, n).permute(1, 0, 2).contiguous()  # (8, n_blocks, n)
    g = mr.transpose(1, 2) @ mr
    return mr.to(device, dtype), g.to(device, dtype)


def _channel_weights(placed: Placed, stats: AuxStats, cfg: AnalyticConfig, dtype: torch.dtype) -> Tensor:
    """``(B, 3, 8, 8)`` data weights per colour and frequency."""
    b = placed.values.shape[0]
    mask = placed.mask.to(dtype)
    if placed.inv_scale is not None:  # Laplace(b): variance 2 b^2, averaged over positions
        inv2 = placed.inv_scale.to(dtype).pow(2).mean((-2, -1))  # (1 or B, 192)
        w = mask * inv2.expand(b, -1) / 2.0
    else:
        # exact observations: one noise level per image, obs_noise times the RMS spread of the
        # channels it observes (plain least squares within the observation: well conditioned
        # for a full DCT, and not dominated by the prior for high-frequency-only tensors)
        var = stats.coeff_std.to(placed.values.device, dtype).clamp(min=1e-6).pow(2)
        rms2 = (mask * var).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
        w = mask / (cfg.obs_noise**2 * rms2)
    return w.view(b, N_COLORS, BLOCK, BLOCK)


def _apply(x: Tensor, w: Tensor, g_row: Tensor, g_col: Tensor, lam: Tensor, used_u: Tensor, used_v: Tensor) -> Tensor:
    xg = torch.einsum("bcij,vjk->bcvik", x, g_col[used_v])
    t = torch.einsum("bcuv,bcvik->bcuik", w[:, :, used_u][:, :, :, used_v], xg)
    return torch.einsum("uhi,bcuik->bchk", g_row[used_u], t) + lam.view(1, -1, 1, 1) * x


@torch.no_grad()
def lstsq_invert(placed: Placed, stats: AuxStats, cfg: AnalyticConfig | None = None, *, progress: bool = False) -> Tensor:
    """Regularised least-squares image from a placed observation (see the module docstring)."""
    cfg = cfg or AnalyticConfig()
    if placed.domain == "image":
        return placed.values.clamp(0, 1)
    dtype = getattr(torch, cfg.dtype)
    device = placed.values.device
    b, _, nbh, nbw = placed.values.shape
    up = stats.upsample
    h, w_ = nbh * BLOCK // up, nbw * BLOCK // up
    mr_row, g_row = _operators(h, up, device, dtype)
    mr_col, g_col = (mr_row, g_row) if h == w_ else _operators(w_, up, device, dtype)
    weights = _channel_weights(placed, stats, cfg, dtype)
    used_u = weights.sum((0, 1, 3)) > 0
    used_v = weights.sum((0, 1, 2)) > 0
    lam = cfg.prior_weight / stats.ycc_var.to(device, dtype)
    x0 = rgb_to_ycbcr_shifted(stats.mean_image.to(device, dtype).unsqueeze(0)).expand(b, -1, -1, -1)
    y = placed.values.to(dtype).view(b, N_COLORS, BLOCK, BLOCK, nbh, nbw)
    # right-hand side sum_uv w_uv M_u^T Y_uv M_v + lam X0
    z1 = torch.einsum("upi,bcuvpq->bcuviq", mr_row, y * (weights > 0).view(b, N_COLORS, BLOCK, BLOCK, 1, 1))
    rhs = torch.einsum("bcuv,bcuviq,vqj->bcij", weights, z1, mr_col) + lam.view(1, -1, 1, 1) * x0
    diag = torch.einsum("bcuv,ui,vj->bcij", weights, torch.diagonal(g_row, dim1=1, dim2=2),
                        torch.diagonal(g_col, dim1=1, dim2=2)) + lam.view(1, -1, 1, 1)
    x = x0.clone()
    r = rhs - _apply(x, weights, g_row, g_col, lam, used_u, used_v)
    z = r / diag
    p = z.clone()
    rz = (r * z).sum((-2, -1), keepdim=True)
    from tqdm import tqdm

    for _ in tqdm(range(cfg.iterations), desc="lstsq", unit="it", disable=not progress, leave=False):
        ap = _apply(p, weights, g_row, g_col, lam, used_u, used_v)
        denom = (p * ap).sum((-2, -1), keepdim=True)
        alpha = torch.where(denom > 0, rz / denom.clamp(min=1e-300), torch.zeros_like(denom))
        x = x + alpha * p
        r = r - alpha * ap
        z = r / diag
        rz_new = (r * z).sum((-2, -1), keepdim=True)
        beta = torch.where(rz > 0, rz_new / rz.clamp(min=1e-300), torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
    return ycbcr_shifted_to_rgb(x).float().clamp(0, 1)


def analytic_invert(placed: Placed, fill: str, stats: AuxStats, cfg: AnalyticConfig | None = None,
                    *, progress: bool = False) -> Tensor:
    """Reconstruct images from a placed observation with one of ``FILLS`` (batched)."""
    if fill not in FILLS:
        raise ValueError(f"analytic fill must be one of {FILLS}, got {fill!r}")
    cfg = cfg or AnalyticConfig()
    out = []
    n = placed.values.shape[0]
    for i in range(0, n, cfg.batch_size):
        part = placed.select(slice(i, i + cfg.batch_size))
        if fill == "lstsq":
            out.append(lstsq_invert(part, stats, cfg, progress=progress and n <= cfg.batch_size))
        else:
            out.append(fill_and_invert(part, fill, stats))
    return torch.cat(out)

