"""Compiled CPU kernels for DCTDP's release: one pass over each row instead of nine NumPy passes.

Why: in the TFace layout DCTDP releases 2.4 M coefficients per face. The NumPy path of
:func:`facepriv.frontends.laplace.release_grid_cpu` walks every chunk nine times (scale,
round, two clamps, the table gather, the slow-cell scan, add, rescale) and its 16-bit table
gather alone costs ~2 ns per element. These numba kernels do the same float32 operations,
in the same order, element by element, in one pass: the output is bit-identical (tested
against the NumPy path), and DCTDP runs ~1.3x faster end to end (`facepriv bench frontends`,
``dctdp_release_kernel_speedup``); what is left is memory traffic (docs/frontends.md, Speed).

numba is optional (``pip install "facepriv[fast]"``). Without it, or with
``FACEPRIV_NUMBA=0`` in the environment, :data:`AVAILABLE` is false and callers keep the NumPy
path. The kernels release the GIL (``nogil``), so the caller's thread pool runs them in parallel.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

try:  # pragma: no cover - exercised by whichever environment runs the tests
    import numba
except ImportError:  # the core imports without numba
    numba = None

#: Whether the compiled kernels can be used (numba importable and not disabled by FACEPRIV_NUMBA=0).
AVAILABLE = numba is not None and os.environ.get("FACEPRIV_NUMBA", "1") != "0"


def _jit(fn: Any) -> Any:
    """Compile ``fn`` lazily on first call (cached on disk), or leave it as plain Python without numba."""
    if numba is None:
        return fn
    return numba.njit(cache=True, nogil=True, boundscheck=False)(fn)


@_jit
def release_row(values: np.ndarray, inv_grid: np.ndarray, half_range: np.ndarray, grid: np.ndarray,
                cells: np.ndarray, fast: np.ndarray, n_pure: int, out: np.ndarray,
                slow_pos: np.ndarray, slow_before: np.ndarray) -> int:  # pragma: no cover - compiled
    """``out = grid * (clamp(rint(values * inv_grid), -D, D) + fast[cells])`` over one 1-D row, float32.

    Cells ``>= n_pure`` need the exact path: their positions and their integer part before the
    noise go to ``slow_pos`` / ``slow_before`` (their ``fast`` entry is 0); returns how many.
    Same operations, types and rounding (half to even) as the NumPy path.
    """
    m = 0
    for i in range(out.size):
        k = np.rint(values[i] * inv_grid[i])
        d = half_range[i]
        if k > d:
            k = d
        if k < -d:
            k = -d
        c = cells[i]
        if c >= n_pure:
            slow_pos[m] = i
            slow_before[m] = k
            m += 1
        out[i] = (k + fast[c]) * grid[i]
    return m


@_jit
def single_boundary_values(j: np.ndarray, low: np.ndarray, split: np.ndarray, below: np.ndarray,
                           above: np.ndarray, simple: np.ndarray, values: np.ndarray) -> int:  # pragma: no cover
    """The exact draw of every impure cell ``j`` holding one head boundary: ``below`` if its extra 16
    bits ``low`` fall before the boundary ``split[j]``, else ``above``. The other cells ("deep":
    several boundaries, the tail) are left for the full search; returns how many there are."""
    deep = 0
    for i in range(j.size):
        c = j[i]
        if simple[c]:
            values[i] = below[c] if low[i] < split[c] else above[c]
        else:
            deep += 1
    return deep


@_jit
def standardised_noise_row(ac: np.ndarray, released: np.ndarray, bound: np.ndarray, inv_scale: np.ndarray,
                           xi: np.ndarray) -> None:  # pragma: no cover - compiled
    """``xi = (released - clamp(ac, -bound, bound)) * inv_scale`` over one 1-D row (float32): the
    realised noise in units of its scale, what training's reparameterisation needs."""
    for i in range(xi.size):
        f = ac[i]
        b = bound[i]
        if f < -b:
            f = -b
        if f > b:
            f = b
        xi[i] = (released[i] - f) * inv_scale[i]


@_jit
def apply_exact(out: np.ndarray, grid: np.ndarray, pos: np.ndarray, before: np.ndarray, z: np.ndarray,
                offset: int) -> None:  # pragma: no cover - compiled
    """``out[pos] = float32(before + z[offset:]) * grid[pos]`` over one 1-D row: the exact-path draws
    ``z`` (float64 integers) added to the integer parts ``before`` in float64, then rescaled."""
    for i in range(pos.size):
        p = pos[i]
        out[p] = np.float32(np.float64(before[i]) + z[offset + i]) * grid[p]
