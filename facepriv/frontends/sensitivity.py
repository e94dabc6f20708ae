"""Exact range of every released block-DCT coefficient over all images (DCTDP ``clip: exact``).

Why this exists: a released coefficient is a *fixed linear functional* of the RGB pixels,
``coef = a . x + c`` with ``x`` in ``[0, 1]^(3 H W)``. Over that box its exact range is
``[sum(min(a, 0)), sum(max(a, 0))] + c``, attained at a corner image (``x = 1[a > 0]``). The
analytic bound of an 8x8 block of *independent* pixels (``127.5 * ||basis||_1``) ignores that
after the x8 bilinear up-sampling the 64 pixels of a block are combinations of only 2-3 source
pixels per axis, so it overstates the range by up to ~2000x at high frequencies. Using the
exact range as the sensitivity gives the same epsilon with much less noise, no clipping
distortion (no image ever exceeds it) and no data-dependent statistic.

Structure used (never a dense 37k x 2.4M matrix): the map is
``Z_c = M_h (sum_j 255 A[c, j] X_j) M_w^T`` per colour (``M = blockdiag(D) U``, the same
:func:`facepriv.frontends.dct.axis_operator` that ``block_dct`` applies), so the functional of
coefficient (c, u, v, bi, bj) is the outer product ``255 A[c, :] (x) M_h[8 bi + u, :] (x)
M_w[8 bj + v, :]`` and its absolute sum factorises:

    sum |a| = 255 * ||A[c, :]||_1 * ||M_h[8 bi + u, :]||_1 * ||M_w[8 bj + v, :]||_1.

For an AC coefficient (u > 0 or v > 0) the DCT row sums to zero and the up-sampling rows sum
to one, so ``sum(a) = 0`` and the constant ``c`` (the level shift) vanishes: the range is the
symmetric interval ``[-B, B]`` with ``B = sum|a| / 2``. Border blocks differ from interior
ones (the up-sampling grid is not periodic), hence one bound per channel *and* block position.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from facepriv.frontends.dct import BLOCK, COEFFS_PER_BLOCK, N_COLORS, _RGB_TO_YCBCR, axis_operator


@functools.lru_cache(maxsize=16)
def _row_norms(n: int, upsample: int) -> Tensor:
    """``R[f, b] = ||M[8 b + f, :]||_1`` (8, n_blocks), float64: one axis of the separable map."""
    m = axis_operator(n, upsample)
    return m.abs().sum(dim=1).view(-1, BLOCK).T.contiguous()


def exact_coefficient_bounds(height: int, width: int, upsample: int = 8) -> Tensor:
    """Half-range ``B`` of every block-DCT coefficient, float64 ``(192, nbh, nbw)`` (full layout).

    For AC channels, ``-B <= coefficient <= B`` for every RGB image in [0, 1] and both ends
    are attained. For DC channels ``B`` is half the width of the range (not centred on 0).
    """
    if height <= 0 or width <= 0 or (height * upsample) % BLOCK or (width * upsample) % BLOCK:
        raise ValueError(f"exact_coefficient_bounds: {height}x{width} with upsample={upsample} "
                         f"does not tile into {BLOCK}x{BLOCK} blocks")
    colour_l1 = 255.0 * torch.tensor(_RGB_TO_YCBCR, dtype=torch.float64).abs().sum(dim=1)  # (3,)
    rows, cols = _row_norms(height, upsample), _row_norms(width, upsample)  # (8, nbh), (8, nbw)
    # (3, u, v, bi, bj): colour x vertical frequency/block x horizontal frequency/block
    full = colour_l1.view(N_COLORS, 1, 1, 1, 1) * rows.view(1, BLOCK, 1, -1, 1) * cols.view(1, 1, BLOCK, 1, -1)
    return 0.5 * full.reshape(N_COLORS * COEFFS_PER_BLOCK, rows.shape[1], cols.shape[1])


def exact_ac_bounds(input_size: int, upsample: int = 8) -> Tensor:
    """Exact half-ranges of the 189 released AC channels, float64 ``(189, S, S)``, S = input_size*upsample/8."""
    full = exact_coefficient_bounds(input_size, input_size, upsample)
    keep = [c * COEFFS_PER_BLOCK + k for c in range(N_COLORS) for k in range(1, COEFFS_PER_BLOCK)]
    return full[keep].contiguous()
