"""DCTDP-style frontend: Laplace noise in the DCT domain with a learned budget allocation.

Mechanism, for one image x and every released element i (AC channel c, block position p):

    y_i = clip(f_i(x), -C_c, C_c) + Lap(0, b_i),   b_i = 2 * C_c / eps_i,
    eps = eps_total * softmax(rho)      (so sum_i eps_i == eps_total by construction)

* The DC coefficient of every block is removed (189 of 192 channels remain).
* Clipping makes the L1 sensitivity of element i exactly ``2 * C_c`` under replacement of
  the whole image, so element i is eps_i-DP and the released tensor is eps_total-DP by basic
  composition. Bounds are either ``analytic`` (the worst case over all images: clipping is a
  no-op and never distorts) or ``calibrated`` from data (a high quantile of |coefficient|:
  smaller bounds, hence less noise for the same epsilon, at the cost of clipping outliers).
* Noise is zero-mean and drawn independently for every sample (fresh per image and call).
  It is reparameterised as ``b_i * xi`` with standard Laplace xi, so the recognition loss
  back-propagates into the allocation logits ``rho``.

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

from facepriv.frontends.base import Frontend, validate_images
from facepriv.frontends.dct import BLOCK, COEFFS_PER_BLOCK, N_COLORS, block_dct, dct_matrix
from facepriv.frontends.randomness import laplace, make_generator

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
        clip: ``"analytic"`` (worst-case bounds, clipping never changes a coefficient) or
            ``"calibrated"`` (bounds from :meth:`calibrate`; until calibrated, analytic).
        clip_quantile: the quantile of |coefficient| used by :meth:`calibrate`.
        noise_reward_weight: weight of DCTDP's auxiliary term ``-log(mean noise scale)``
            (rewards allocations that put most noise where recognition does not need
            precision); 0 disables it.
        train_seed / inference_seed: noise sources. Inference noise comes from a generator
            freshly seeded with 64 bits of OS entropy for every call, unless ``inference_seed``
            is set (reproducible evaluation). A set ``inference_seed`` is a secret (whoever
            knows it can regenerate and subtract the noise): ``public_config`` drops it, and
            using it in eval mode logs a one-time warning.
    """

    name = "dctdp"

    def __init__(
        self,
        upsample: int = 8,
        input_size: int = 112,
        epsilon_mean: float = 4.0,
        epsilon_total: float | None = None,
        allocation: str = "element",
        clip: str = "analytic",
        clip_quantile: float = 0.99,
        noise_reward_weight: float = 0.0,
        train_seed: int = 0,
        inference_seed: int | None = None,
    ) -> None:
        super().__init__()
        if allocation not in {"element", "channel"}:
            raise ValueError(f"allocation must be 'element' or 'channel', got {allocation!r}")
        if clip not in {"analytic", "calibrated"}:
            raise ValueError(f"clip must be 'analytic' or 'calibrated', got {clip!r}")
        if not 0.0 < clip_quantile <= 1.0:
            raise ValueError(f"clip_quantile must be in (0, 1], got {clip_quantile}")
        if input_size % BLOCK:
            raise ValueError(f"input_size must be a multiple of {BLOCK}, got {input_size}")
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
        self.register_buffer("clip_bound", analytic_ac_bounds())
        self.register_buffer("calibrated", torch.tensor(False))
        self._train_generator = make_generator(self.train_seed)
        self._inference_generator = None if self.inference_seed is None else make_generator(self.inference_seed)

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

    def noise_scales(self) -> Tensor:
        """Laplace scale ``b_i = sensitivity_i / eps_i = 2 C_c / eps_i``."""
        return (2.0 * self.clip_bound).view(-1, 1, 1) / self.epsilons()

    def auxiliary_loss(self) -> Tensor | None:
        """DCTDP's noise reward ``-w * log(mean b_i)``; added to the training loss by the trainer."""
        if self.noise_reward_weight == 0.0:
            return None
        scales = self.noise_scales().expand(AC_CHANNELS, self.spatial, self.spatial)
        return -self.noise_reward_weight * torch.log(scales.mean())

    # ------------------------------------------------------------------ calibration
    @torch.no_grad()
    def calibrate(self, batches: Iterable[Tensor], values_per_channel: int = 200_000, seed: int = 0) -> Tensor:
        """Set the clipping bounds to the ``clip_quantile`` of |AC coefficient| over ``batches``.

        A random sample of at most ``values_per_channel`` values per channel is kept, so any
        amount of data fits in memory. Returns the bounds (189,). Bounds never exceed the
        analytic ones.
        """
        g = torch.Generator().manual_seed(seed)
        pools: list[Tensor] = []
        seen = 0
        for images in batches:
            coeffs = block_dct(images.to(self.clip_bound.device), self.upsample)[:, AC_INDEX].abs()
            flat = coeffs.transpose(0, 1).reshape(AC_CHANNELS, -1).cpu()
            take = min(flat.shape[1], values_per_channel)
            idx = torch.randperm(flat.shape[1], generator=g)[:take]
            pools.append(flat[:, idx])
            seen += flat.shape[1]
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
    def forward(self, images: Tensor, labels: Tensor | None = None, *, noise_uniform: Tensor | None = None) -> Tensor:
        """Clip, then add fresh Laplace noise per sample.

        ``noise_uniform``: optional uniforms in (0, 1) of the output's shape, for callers that
        bring their own randomness (device export); otherwise the training generator (train
        mode) or a per-call OS-entropy-seeded generator / the inference seed (eval mode).
        """
        validate_images(images)
        full = block_dct(images, self.upsample, validate=False)
        b, _, h, w = full.shape
        ac = full.view(b, N_COLORS, COEFFS_PER_BLOCK, h, w)[:, :, 1:]  # a view: no copy before clipping
        bound = self.clip_bound.to(full.dtype).view(1, N_COLORS, COEFFS_PER_BLOCK - 1, 1, 1)
        clipped = torch.clamp(ac, -bound, bound).reshape(b, AC_CHANNELS, h, w)
        shape = tuple(clipped.shape)
        if noise_uniform is not None:
            if tuple(noise_uniform.shape) != shape:
                raise ValueError(f"noise_uniform must have shape {shape}, got {tuple(noise_uniform.shape)}")
            u = noise_uniform.to(clipped.dtype) - 0.5
            xi = -torch.sign(u) * torch.log1p(-2.0 * u.abs())
        else:
            if not self.training:
                self._warn_if_fixed_inference_seed()
            generator = self._train_generator if self.training else self._inference_generator
            xi = laplace(shape, generator, dtype=clipped.dtype, device=clipped.device)
        scales = self.noise_scales().to(clipped.dtype)
        if torch.is_grad_enabled() and (scales.requires_grad or clipped.requires_grad):
            return torch.addcmul(clipped, scales, xi)
        return clipped.addcmul_(scales, xi)

    # ------------------------------------------------------------------ report
    @torch.no_grad()
    def privacy_report(self) -> dict[str, Any]:
        eps = self.epsilons().expand(AC_CHANNELS, self.spatial, self.spatial)
        bounds = self.clip_bound
        return {
            "frontend": self.name,
            "mechanism": "Laplace mechanism on clipped AC block-DCT coefficients (DC removed)",
            "neighbouring_relation": "replacement of the whole face image",
            "formal_guarantee": f"({self.epsilon_total:.6g}, 0)-DP per released tensor (basic composition over elements)",
            "epsilon_per_image": self.epsilon_total,
            "delta": 0.0,
            "released_elements": self.n_elements,
            "epsilon_per_element": {"mean": float(eps.mean()), "min": float(eps.min()), "max": float(eps.max())},
            "sensitivity": "L1 sensitivity of element (c, p) = 2 * C_c",
            "clipping": {
                "mode": "calibrated" if bool(self.calibrated) else "analytic (no coefficient is ever clipped)",
                "quantile": self.clip_quantile if bool(self.calibrated) else None,
                "bound_min": float(bounds.min()), "bound_max": float(bounds.max()), "bound_mean": float(bounds.mean()),
            },
            "noise_scale": {"min": float(self.noise_scales().min()), "max": float(self.noise_scales().max())},
            "noise_source": "seeded generator (reproducible)" if self.inference_seed is not None
            else "fresh generator per call, seeded with 64 bits from the OS CSPRNG",
            "composition_note": "Each query releases a fresh noisy tensor; k queries of the same face cost k * epsilon_per_image.",
            "honest_note": (
                "epsilon_per_image is the formal bound. At the budgets used for recognition it is large "
                "(millions), so the formal guarantee alone is weak; measure practical leakage with `facepriv attack`."
            ),
        }
