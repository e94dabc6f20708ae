"""DCTDP-style frontend: discrete Laplace noise in the DCT domain with a learned budget allocation.

Mechanism, for one image x and every released element i (AC channel c, block position p):

    eps = eps_total * softmax(rho)                    (so sum_i eps_i == eps_total by construction)
    B_i = the bound of |f_i(x)|: exact range of the coefficient over all images (``clip: exact``,
          default), the independent-pixel worst case (``analytic``) or a data quantile (``calibrated``)
    D_i = floor((eps_i - kappa) * LEVEL / (2 ln 2)),  g_i = B_i / D_i          (grid step)
    K_i = clamp(round(f_i(x) / g_i), -D_i, D_i) + Z_i,  Z_i ~ DLap(2^(-1/LEVEL)) exact, fresh per sample
    y_i = g_i * K_i

* The DC coefficient of every block is removed (189 of 192 channels remain).
* ``clamp`` bounds the change of ``K_i`` under replacement of the whole image by ``2 D_i``
  grid steps, so element i is ``eps'_i = 2 D_i ln 2 / LEVEL + kappa <= eps_i``-DP (pure, delta = 0;
  ``kappa`` ~ 2e-5 is the exactly measured deviation of the tabulated sampler, see
  :mod:`facepriv.frontends.laplace`) and the released tensor is ``sum eps'_i <= eps_total``-DP by
  basic composition. The noise is, to within one grid step, Laplace with scale ``2 B_i / eps_i``.
* With ``clip: exact`` the clamp never changes an exact coefficient (``B_i`` is the true range,
  see :mod:`facepriv.frontends.sensitivity`) and nothing about the data is released.
* Noise is drawn independently for every sample and call, from an AES-CTR keystream keyed by
  the OS CSPRNG at inference. In training the exact value is released and the loss
  back-propagates into the allocation logits ``rho`` as if ``y = f + b xi`` (straight-through on
  the realised standardised noise ``xi``).

Differences from the published DCTDP code, which this class deliberately does not repeat:
it draws one noise tensor and adds it to every image in the batch (correlated noise, and
the same noise for every sample), sets the sensitivity to 1 without bounding the
coefficients (so the stated epsilon is not a guarantee), and learns a noise *mean* (a
deterministic offset that provides no privacy and can cancel nothing but can leak through
the model). See docs/frontends.md.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor, nn

from facepriv.frontends import release_kernel
from facepriv.frontends.base import Frontend, validate_images
from facepriv.frontends.dct import BLOCK, COEFFS_PER_BLOCK, N_COLORS, block_dct, dct_matrix
from facepriv.frontends.laplace import (
    LEVEL,
    MAX_HALF_RANGE,
    add_discrete_laplace_,
    discrete_laplace_from_uniform,
    release_grid_cpu,
    tables,
)
from facepriv.frontends.randomness import make_generator, word_source
from facepriv.frontends.sensitivity import exact_ac_bounds

CLIP_MODES = ("exact", "analytic", "calibrated")
#: Laplace scale of DLap(2^(-1/LEVEL)) in grid steps: the pmf is proportional to exp(-|z| / GRID_SCALE).
GRID_SCALE = LEVEL / math.log(2.0)

AC_CHANNELS = N_COLORS * (COEFFS_PER_BLOCK - 1)  # 189
#: Full-layout indices of the AC channels, colour-major: [Y k=1..63, Cb k=1..63, Cr k=1..63].
AC_INDEX = [c * COEFFS_PER_BLOCK + k for c in range(N_COLORS) for k in range(1, COEFFS_PER_BLOCK)]


def analytic_ac_bounds() -> Tensor:
    """Largest |AC coefficient| any image can produce, per AC channel (189,).

    Level-shifted Y, Cb, Cr lie in intervals of width 255 (bilinear up-sampling keeps them
    there), and an AC basis function sums to zero, so ``|sum x * b| <= 127.5 * ||b||_1``.
    """
    d = dct_matrix()
    basis_l1 = torch.outer(d.abs().sum(1), d.abs().sum(1)).flatten()  # k = 8u + v
    per_color = 127.5 * basis_l1[1:]
    return per_color.repeat(N_COLORS).float()


class _ReparameterisedRelease(torch.autograd.Function):
    """Returns the exact release; back-propagates into the noise scales as ``y = f + b * xi`` would.

    Why a Function: the straight-through in plain ops (``y + (b xi - (b xi).detach())``) costs three
    batch-sized temporaries forward and one backward; here the backward accumulates
    ``sum_images dL/dy * xi`` image by image into one scales-sized buffer.
    """

    @staticmethod
    def forward(ctx: Any, scales: Tensor, released: Tensor, xi: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(xi)
        ctx.scales_shape = scales.shape
        ctx.mark_non_differentiable(xi)
        return released

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (xi,) = ctx.saved_tensors
        acc = torch.zeros(xi.shape[1:], dtype=xi.dtype, device=xi.device)
        for i in range(xi.shape[0]):
            acc.addcmul_(grad[i], xi[i])
        return acc.sum_to_size(ctx.scales_shape), None, None


class DCTDP(Frontend):
    """Differentially private DCT frontend with a learnable, fixed-total budget allocation.

    Args:
        upsample: up-sampling before the block DCT (TFace: 8).
        input_size: face size in pixels (the allocation has one logit per released element,
            so the spatial size is fixed at construction).
        epsilon_mean: mean budget per released element (TFace's ``budget_mean``); ignored if
            ``epsilon_total`` is given. The per-image guarantee is ``epsilon_total``.
        epsilon_total: total budget per image.
        allocation: ``"element"`` (one logit per channel and block position, as DCTDP) or
            ``"channel"`` (one per frequency channel, shared over positions).
        clip: ``"exact"`` (default: the true range of every coefficient over all images, per
            channel and block position, computed from the operator; nothing is ever clipped and
            nothing about the data is released), ``"analytic"`` (per-channel worst case of an
            8x8 block of independent pixels: up to ~2000x larger, so far more noise) or
            ``"calibrated"`` (per-channel quantile of the data from :meth:`calibrate`; these
            bounds are a statistic of the calibration images that is released with the model
            and *not* accounted for, so the guarantee excludes the calibration images).
        clip_quantile: the quantile of |coefficient| used by :meth:`calibrate`.
        noise_reward_weight: weight of DCTDP's auxiliary term ``-log(mean noise scale)``
            (rewards allocations that put most noise where recognition does not need
            precision); 0 disables it.
        train_seed / inference_seed: noise sources. Inference noise comes from an AES-CTR
            keystream keyed with 256 fresh bits from the OS CSPRNG for every call, unless
            ``inference_seed`` is set (reproducible evaluation). A set ``inference_seed`` is a
            secret (whoever knows it can regenerate and subtract the noise): ``public_config``
            drops it, using it in eval mode logs a one-time warning, and ``facepriv
            protect``/``export`` refuse it unless forced.
    """

    name = "dctdp"

    def __init__(
        self,
        upsample: int = 8,
        input_size: int = 112,
        epsilon_mean: float = 4.0,
        epsilon_total: float | None = None,
        allocation: str = "element",
        clip: str = "exact",
        clip_quantile: float = 0.99,
        noise_reward_weight: float = 0.0,
        train_seed: int = 0,
        inference_seed: int | None = None,
    ) -> None:
        super().__init__()
        if allocation not in {"element", "channel"}:
            raise ValueError(f"allocation must be 'element' or 'channel', got {allocation!r}")
        if clip not in CLIP_MODES:
            raise ValueError(f"clip must be one of {list(CLIP_MODES)}, got {clip!r}")
        if not 0.0 < clip_quantile <= 1.0:
            raise ValueError(f"clip_quantile must be in (0, 1], got {clip_quantile}")
        if input_size <= 0 or input_size % BLOCK:
            raise ValueError(f"input_size must be a positive multiple of {BLOCK}, got {input_size}")
        if upsample not in (1, 2, 4, 8):
            raise ValueError(f"upsample must be one of 1, 2, 4, 8, got {upsample!r}")
        self.upsample = int(upsample)
        self.input_size = int(input_size)
        self.spatial = self.input_size * self.upsample // BLOCK
        self.n_elements = AC_CHANNELS * self.spatial * self.spatial
        if epsilon_total is None:
            if not epsilon_mean > 0:
                raise ValueError(f"epsilon_mean must be > 0, got {epsilon_mean}")
            epsilon_total = float(epsilon_mean) * self.n_elements
        if not (epsilon_total > 0 and math.isfinite(epsilon_total)):
            raise ValueError(f"epsilon_total must be a finite positive number, got {epsilon_total}")
        self.epsilon_total = float(epsilon_total)
        self.allocation = allocation
        self.clip = clip
        self.clip_quantile = float(clip_quantile)
        self.noise_reward_weight = float(noise_reward_weight)
        self.train_seed = int(train_seed)
        self.inference_seed = None if inference_seed is None else int(inference_seed)
        shape = (AC_CHANNELS, self.spatial, self.spatial) if allocation == "element" else (AC_CHANNELS, 1, 1)
        # Zero logits = the uniform allocation eps_i = eps_total / n_elements.
        self.budget_logits = nn.Parameter(torch.zeros(shape))
        exact = exact_ac_bounds(self.input_size, self.upsample)
        # Per-channel bounds of the analytic / calibrated modes (persistent: calibration is state).
        self.register_buffer("clip_bound", analytic_ac_bounds())
        self.register_buffer("calibrated", torch.tensor(False))
        # Exact per-element bounds: a function of (input_size, upsample) only, so re-derived on
        # construction and never read from a file (a tampered state dict cannot shrink them).
        self.register_buffer("exact_bound", exact.float(), persistent=False)
        self._train_generator = make_generator(self.train_seed)
        self._inference_generator = None if self.inference_seed is None else make_generator(self.inference_seed)
        # (allocation/bounds version key, float64 parameters, {device: float32 forward tensors})
        self._release_cache: tuple[tuple, dict[str, Tensor], dict[str, dict[str, Tensor]]] | None = None

    # ------------------------------------------------------------------ contract
    @property
    def out_channels(self) -> int:
        return AC_CHANNELS

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height * self.upsample // BLOCK, width * self.upsample // BLOCK

    @property
    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "upsample": self.upsample,
            "input_size": self.input_size,
            "epsilon_total": self.epsilon_total,
            "allocation": self.allocation,
            "clip": self.clip,
            "clip_quantile": self.clip_quantile,
            "noise_reward_weight": self.noise_reward_weight,
            "train_seed": self.train_seed,
            "inference_seed": self.inference_seed,
        }

    # ------------------------------------------------------------------ budget
    def epsilons(self) -> Tensor:
        """Per-element budgets (189, H, W) (broadcastable for ``channel`` allocation); they sum to eps_total."""
        weights = torch.softmax(self.budget_logits.flatten(), dim=0).view_as(self.budget_logits)
        if self.allocation == "channel":  # each channel logit is shared by H*W elements
            weights = weights / (self.spatial * self.spatial)
        return self.epsilon_total * weights

    def element_bounds(self) -> Tensor:
        """``B_i`` (189, H, W) or (189, 1, 1): half the L1 sensitivity of each released element."""
        if self.clip == "exact":
            return self.exact_bound
        return self.clip_bound.view(-1, 1, 1)

    def noise_scales(self) -> Tensor:
        """Laplace scale ``b_i = sensitivity_i / eps_i = 2 B_i / eps_i`` (the grid noise matches it to one step)."""
        return (2.0 * self.element_bounds()) / self.epsilons()

    def auxiliary_loss(self) -> Tensor | None:
        """DCTDP's noise reward ``-w * log(mean b_i)``; added to the training loss by the trainer."""
        if self.noise_reward_weight == 0.0:
            return None
        scales = self.noise_scales().expand(AC_CHANNELS, self.spatial, self.spatial)
        return -self.noise_reward_weight * torch.log(scales.mean())

    @torch.no_grad()
    def release_parameters(self) -> dict[str, Tensor]:
        """The integer mechanism of every element, float64 (189, H, W): ``half_range`` D, ``grid`` g,
        ``inv_grid`` 1/g (0 where D = 0: that element releases noise only) and the realised
        ``epsilon`` ``2 D ln 2 / LEVEL + kappa`` (<= the allocated eps_i). Cached until the
        allocation or the bounds change."""
        key = (self.budget_logits._version, self.clip_bound._version, self.clip, self.budget_logits.data_ptr(),
               self.clip_bound.data_ptr(), self.exact_bound.data_ptr())
        if self._release_cache is not None and self._release_cache[0] == key:
            return self._release_cache[1]
        kappa = tables().kappa
        eps = self.epsilons().double().expand(AC_CHANNELS, self.spatial, self.spatial)
        bounds = self.element_bounds().double().expand_as(eps)
        half = torch.floor((eps - kappa) * (GRID_SCALE / 2.0)).clamp(0, MAX_HALF_RANGE)
        active = half > 0
        grid = torch.where(active, bounds / half.clamp(min=1), 2.0 * bounds / eps / GRID_SCALE)
        params = {
            "half_range": half,
            "grid": grid,
            "inv_grid": torch.where(active, half / bounds, torch.zeros_like(bounds)),
            "epsilon": torch.where(active, 2.0 * half / GRID_SCALE + kappa, torch.zeros_like(eps)),
        }
        self._release_cache = (key, params, {})
        return params

    # ------------------------------------------------------------------ calibration
    @torch.no_grad()
    def calibrate(self, batches: Iterable[Tensor], values_per_channel: int = 200_000, seed: int = 0) -> Tensor:
        """Set the clipping bounds to the ``clip_quantile`` of |AC coefficient| over ``batches``.

        A random sample of at most ``values_per_channel`` values per channel is kept, so any
        amount of data fits in memory. Returns the bounds (189,). Bounds never exceed the
        analytic ones. Switches the frontend to ``clip: calibrated``: the bounds are a
        non-private statistic of these images, and :meth:`privacy_report` says so.
        """
        g = torch.Generator().manual_seed(seed)
        pools: list[Tensor] = []
        for images in batches:
            coeffs = block_dct(images.to(self.clip_bound.device), self.upsample)[:, AC_INDEX].abs()
            flat = coeffs.transpose(0, 1).reshape(AC_CHANNELS, -1).cpu()
            take = min(flat.shape[1], values_per_channel)
            idx = torch.randperm(flat.shape[1], generator=g)[:take]
            pools.append(flat[:, idx])
            pooled = torch.cat(pools, dim=1)
            if pooled.shape[1] > values_per_channel:  # keep a uniform subsample of everything seen
                keep = torch.randperm(pooled.shape[1], generator=g)[:values_per_channel]
                pooled = pooled[:, keep]
            pools = [pooled]
        if not pools:
            raise ValueError("DCTDP.calibrate: no batches given")
        q = np.quantile(pools[0].double().numpy(), self.clip_quantile, axis=1)
        bounds = torch.minimum(torch.as_tensor(q, dtype=torch.float32), analytic_ac_bounds())
        bounds = bounds.clamp(min=1e-3)  # a zero bound would make the sensitivity (and noise) degenerate
        self.clip_bound.copy_(bounds.to(self.clip_bound.device))
        self.calibrated.fill_(True)
        self.clip = "calibrated"
        return bounds

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, labels: Tensor | None = None, *, noise_grid: Tensor | None = None,
                noise_uniform: Tensor | None = None) -> Tensor:
        """Release every AC coefficient through the exact grid mechanism, fresh noise per sample.

        ``noise_grid``: optional integer-valued DLap(2^(-1/LEVEL)) draws of the output's shape
        (the randomness of a device export, from the platform CSPRNG); ``noise_uniform``: optional
        uniforms in (0, 1) of that shape, turned into such draws by the inverse CDF (reproducible
        simulations; exact only to the uniforms' resolution). Otherwise the training generator's
        keystream (train mode) or a keystream keyed by the OS CSPRNG per call / the inference
        seed (eval mode).
        """
        if noise_uniform is not None:
            if noise_grid is not None:
                raise ValueError("give noise_grid or noise_uniform, not both")
            noise_grid = discrete_laplace_from_uniform(noise_uniform).float()
        validate_images(images)
        b, h, w = images.shape[0], *self.output_size(*images.shape[-2:])
        if (h, w) != (self.spatial, self.spatial):
            raise ValueError(f"DCTDP was built for input_size={self.input_size} ({self.spatial}x{self.spatial} blocks), "
                             f"got images of {images.shape[-2]}x{images.shape[-1]}")
        params = self._release_tensors(images.device)
        out = torch.empty(b, AC_CHANNELS, h, w, dtype=torch.float32, device=images.device)
        if noise_grid is not None:
            if tuple(noise_grid.shape) != tuple(out.shape):
                raise ValueError(f"noise_grid must have shape {tuple(out.shape)}, got {tuple(noise_grid.shape)}")
            if not bool(torch.all(noise_grid == torch.round(noise_grid))):
                raise ValueError("noise_grid must hold integer DLap draws (grid steps), got non-integer values")
            words = None
        else:
            if not self.training:
                self._warn_if_fixed_inference_seed()
            words = word_source(self._train_generator if self.training else self._inference_generator, images.device)
        # Training: the loss reaches the allocation as if y = clip(f) + b * xi, with xi the realised
        # standardised noise, computed per image while its coefficients are still in cache.
        learn = torch.is_grad_enabled() and self.budget_logits.requires_grad and not images.requires_grad
        scales = self.noise_scales() if learn else None
        xi = torch.empty_like(out) if learn else None
        with torch.no_grad():
            if learn:
                inv_scale = (1.0 / scales).float().expand(AC_CHANNELS, h, w).reshape(N_COLORS, COEFFS_PER_BLOCK - 1, h, w).contiguous()
                bound = self.element_bounds().float().expand(AC_CHANNELS, h, w).reshape_as(inv_scale).contiguous()
                neg_bound = -bound
            if self._per_image(images.device):
                # CPU: one image at a time, into one reused buffer, so it stays in cache
                scratch = torch.empty(1, N_COLORS * COEFFS_PER_BLOCK, h, w, dtype=images.dtype, device=images.device)
                for i in range(b):
                    block_dct(images[i : i + 1], self.upsample, validate=False, out=scratch)
                    ac = scratch.view(N_COLORS, COEFFS_PER_BLOCK, h, w)[:, 1:]
                    k = out[i].view(N_COLORS, COEFFS_PER_BLOCK - 1, h, w)
                    self._release_one(ac, k, params, words, None if words is not None else noise_grid[i])
                    if learn:
                        self._standardised_noise(ac, k, xi[i].view_as(k), neg_bound, bound, inv_scale)
            else:
                # accelerators: the whole batch in one pass (a loop would launch ~15 kernels per image)
                full = block_dct(images, self.upsample, validate=False)
                ac = full.view(b, N_COLORS, COEFFS_PER_BLOCK, h, w)[:, :, 1:]
                k = out.view(b, N_COLORS, COEFFS_PER_BLOCK - 1, h, w)
                self._release_one(ac, k, params, words, noise_grid)
                if learn:
                    self._standardised_noise(ac, k, xi.view_as(k), neg_bound, bound, inv_scale)
                del full
        if learn:
            return _ReparameterisedRelease.apply(scales, out, xi)
        if torch.is_grad_enabled() and (self.budget_logits.requires_grad or images.requires_grad):
            full = block_dct(images, self.upsample, validate=False)
            out = self._straight_through(out, full.view(b, N_COLORS, COEFFS_PER_BLOCK, h, w)[:, :, 1:])
        return out

    @staticmethod
    def _per_image(device: torch.device) -> bool:
        """Release image by image (CPU: cache-sized work, the NumPy sampler) or the batch at once."""
        return device.type == "cpu"

    @staticmethod
    def _standardised_noise(ac: Tensor, k: Tensor, x: Tensor, neg_bound: Tensor, bound: Tensor,
                            inv_scale: Tensor) -> None:
        """``x = (release - clip(f)) / b``: the realised noise in units of its scale (training's
        reparameterisation), written into ``x`` without a temporary (one compiled pass on CPU)."""
        if release_kernel.AVAILABLE and x.device.type == "cpu" and ac.dtype == torch.float32 and ac.dim() == 4:
            rows = (N_COLORS, -1)  # per colour the 63 AC planes are contiguous in the DCT buffer
            f, y, lim, inv, out = (t.reshape(rows).numpy() for t in (ac, k, bound, inv_scale, x))
            for c in range(N_COLORS):
                release_kernel.standardised_noise_row(f[c], y[c], lim[c], inv[c], out[c])
            return
        torch.clamp(ac.float(), min=neg_bound, max=bound, out=x)
        torch.sub(k, x, out=x)
        x.mul_(inv_scale)

    @staticmethod
    def _release_one(ac: Tensor, k: Tensor, params: dict[str, Tensor], words: Any, noise: Tensor | None) -> None:
        """Write the release into ``k`` ((B,) 3, 63, H, W) from the AC coefficients ``ac`` of one
        image or a batch (the parameters broadcast over the batch)."""
        if noise is None and k.device.type == "cpu" and ac.dtype == torch.float32 and ac.dim() == 4:
            rows = (N_COLORS, -1)  # per colour the 63 AC planes are contiguous in the DCT buffer
            release_grid_cpu(ac.reshape(rows).numpy(), params["inv_grid"].reshape(rows).numpy(),
                             params["half_range"].reshape(rows).numpy(), params["grid"].reshape(rows).numpy(),
                             k.reshape(rows).numpy(), words, workers=torch.get_num_threads())
            return
        torch.mul(ac, params["inv_grid"], out=k)
        k.round_()
        torch.clamp(k, min=params["neg_half_range"], max=params["half_range"], out=k)
        if noise is not None:
            k.add_(noise.view_as(k).to(k.dtype))
        else:
            add_discrete_laplace_(k, words.cells(k.numel()).view_as(k), words)
        k.mul_(params["grid"])

    def _release_tensors(self, device: torch.device) -> dict[str, Tensor]:
        """:meth:`release_parameters` as float32 (3, 63, H, W) on ``device``, cached with them."""
        self.release_parameters()
        assert self._release_cache is not None
        _, params, per_device = self._release_cache
        cached = per_device.get(str(device))
        if cached is None:
            shape = (N_COLORS, COEFFS_PER_BLOCK - 1, self.spatial, self.spatial)
            half = params["half_range"].float().view(shape).to(device)
            cached = {"half_range": half, "neg_half_range": -half,
                      "grid": params["grid"].float().view(shape).to(device),
                      "inv_grid": params["inv_grid"].float().view(shape).to(device)}
            per_device[str(device)] = cached
        return cached

    def _straight_through(self, released: Tensor, ac: Tensor) -> Tensor:
        """The released values, with the gradients of ``y = clip(f) + b * xi`` (xi = realised noise / b).

        The value is exactly the mechanism's output (``a - a.detach()`` is exactly 0); the loss
        back-propagates into the allocation through ``b`` and into the images through ``f``.
        """
        bounds = self.element_bounds()
        bounds = bounds.to(ac.dtype).view(1, N_COLORS, COEFFS_PER_BLOCK - 1, *bounds.shape[-2:])
        clipped = torch.clamp(ac, -bounds, bounds).reshape(released.shape).to(released.dtype)
        scales = self.noise_scales().to(released.dtype)
        xi = (released - clipped.detach()) / scales.detach()
        noisy = torch.addcmul(clipped, scales, xi)
        return released + (noisy - noisy.detach())

    # ------------------------------------------------------------------ report
    @torch.no_grad()
    def privacy_report(self) -> dict[str, Any]:
        eps = self.epsilons().expand(AC_CHANNELS, self.spatial, self.spatial)
        params = self.release_parameters()
        realised = params["epsilon"]
        bounds = self.element_bounds().double().expand(AC_CHANNELS, self.spatial, self.spatial)
        sens = 2.0 * bounds
        scales = self.noise_scales().expand(AC_CHANNELS, self.spatial, self.spatial)
        lap = tables()
        calibrated = self.clip == "calibrated"
        sensitivity = {
            "definition": "L1 sensitivity of element i = max over two images of |f_i(x) - f_i(x')| = 2 B_i",
            "mode": self.clip,
        }
        if self.clip == "exact":
            sensitivity.update({
                "how": "exact range of the linear functional of each coefficient over all RGB images in [0, 1] "
                       "(YCbCr map, x%d bilinear up-sampling, 8x8 DCT; per channel and block position), "
                       "attained by a corner image; clamping never changes an exact coefficient" % self.upsample,
                "min": float(sens.min()), "max": float(sens.max()), "mean": float(sens.mean()),
                "fraction_of_analytic_mean": float((bounds / analytic_ac_bounds().double().view(-1, 1, 1)).mean()),
                # bounds at float-rounding level: the coefficient is 0 for every image (its functional is 0)
                "identically_zero_fraction": float((bounds < 1e-9 * float(bounds.max())).double().mean()),
            })
        elif self.clip == "analytic":
            sensitivity.update({
                "how": "per-channel worst case of an 8x8 block of independent pixels (127.5 ||basis||_1); "
                       "valid but loose after up-sampling (see clip: exact)",
                "min": float(sens.min()), "max": float(sens.max()), "mean": float(sens.mean()),
            })
        else:
            sensitivity.update({
                "how": f"per-channel {self.clip_quantile} quantile of |coefficient| over the calibration images; "
                       "larger coefficients are clipped",
                "values": "withheld: they are a statistic of the calibration images",
            })
        scope = ("any face image" if not calibrated else
                 "face images NOT used for calibration; none for the calibration images")
        return {
            "frontend": self.name,
            "mechanism": "exact discrete Laplace on a per-element grid over AC block-DCT coefficients (DC removed)",
            "neighbouring_relation": "replacement of the whole face image (one image in, one tensor out)",
            "formal_guarantee": (f"({float(realised.sum()):.6g}, 0)-DP per released tensor for {scope} "
                                 f"(pure, basic composition over elements; allocated total {self.epsilon_total:.6g})"),
            "epsilon_per_image": self.epsilon_total,
            "epsilon_realised": float(realised.sum()),
            "delta": 0.0,
            "delta_exact_because": (
                "noise is integer DLap(2^(-1/%d)) on a grid with unbounded support (no truncation: the level is a "
                "geometric count of leading zero bits); its tabulated probabilities are within a factor "
                "[1%+.1e, 1%+.1e] of the ideal ones, measured exactly and charged as kappa=%.3g per element"
                % (LEVEL, lap.eta_min, lap.eta_max, lap.kappa)),
            "what_the_guarantee_covers": (
                "the integer K = clamp(round(f/g), -D, D) + Z of every element, computed exactly; the released "
                "float32 y = g K is a function of K (post-processing). Assumes the AES-256-CTR keystream is "
                "indistinguishable from uniform bits (it is keyed by 256 bits from the OS CSPRNG per call)."),
            "released_elements": self.n_elements,
            "epsilon_per_element": {"mean": float(eps.mean()), "min": float(eps.min()), "max": float(eps.max())},
            "sensitivity": sensitivity,
            "released_statistics": (
                "none: bounds and grids depend only on the configuration and the learned allocation"
                if not calibrated else
                "clip bounds calibrated on private images are stored in the model (checkpoint, device export, "
                "clipping visible in the outputs) and are NOT accounted for: no guarantee for those images"),
            # derived from the bounds: withheld with them when those are statistics of private images
            "noise_scale": "withheld (derived from the calibrated bounds)" if calibrated else
            {"min": float(scales.min()), "max": float(scales.max()), "mean": float(scales.mean())},
            "grid_step": "withheld (derived from the calibrated bounds)" if calibrated else
            {"min": float(params["grid"].min()), "max": float(params["grid"].max())},
            "noise_source": "seeded keystream (reproducible; never deploy)" if self.inference_seed is not None
            else "AES-256-CTR keystream keyed with 256 bits from the OS CSPRNG, fresh per call",
            "composition_note": "Each query releases a fresh noisy tensor; k queries of the same face cost k * epsilon_realised.",
            "honest_note": (
                "epsilon_per_image is the formal bound. At the budgets used for recognition it is large "
                "(millions), so the formal guarantee alone is weak; measure practical leakage with `facepriv attack`."
            ),
        }
