"""Exact discrete Laplace noise from raw random bits: DCTDP's release mechanism.

Why not ``b * Laplace(0, 1)`` in floating point: a float sampler has a bounded, uneven support
(the old float32 inverse CDF stopped at about [-16.6, 16] scales, so the claimed ``delta = 0``
was false), and adding float noise to a float value leaks through which outputs are reachable
(Mironov 2012, "On significance of the least significant bits for differential privacy").
Here every released element is an *integer on a grid* plus *integer* noise, computed exactly:

    K = clamp(round(f / g), -D, D) + Z,    Z ~ DLap(q):  P(Z = z) = (1 - q) / (1 + q) * q^|z|,
    q = 2^(-1/LEVEL),  y = g * K  (cast to float32: post-processing of the exact integer K).

``clamp`` bounds the change of the integer part under any change of the image by ``2 D``, so
``K`` is ``2 D ln(1/q)``-DP for the ideal DLap. The sampler below realises DLap exactly up
to tabulated rounding of its probabilities, which is *measured exactly* when the tables are
built: every realised probability is within a factor ``[1 + eta_min, 1 + eta_max]`` of the
ideal one, so the implemented mechanism is pure ``(2 D ln 2 / LEVEL + kappa)``-DP with
``kappa = ln((1 + eta_max) / (1 + eta_min))`` (about 2e-5) and **delta = 0**: the support is all
integers (no truncation; the level count below is an unbounded geometric draw).

Sampling, from uniform 32-bit words (the bit source is the caller's: a CSPRNG keystream on
CPU, see :mod:`facepriv.frontends.randomness`):

* ``Z`` has a *head* ``|z| < H = LEVEL * HEAD_LEVELS`` whose probabilities are tabulated as
  integer counts out of 2^32, and a *tail* ``|z| >= H`` (count = the rest).
* Fast path (98.9 % of draws): 16 random bits pick one of 65536 cells of that 32-bit layout;
  a cell that lies inside a single head outcome *is* that outcome (one table lookup).
* A cell containing an outcome boundary draws 16 more bits and locates the exact 32-bit
  position; a tail position draws ``|Z| - H = L * LEVEL + R`` by memorylessness of the
  geometric: ``L ~ Geometric(1/2)`` as the number of leading zero bits of a fresh bit stream
  (exact, unbounded), ``R`` from a 2^32-count table on ``[0, LEVEL)``, and a fresh sign bit.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from facepriv.frontends import release_kernel

#: The pmf halves every LEVEL grid steps (q = 2^(-1/LEVEL)); the noise std is ~ sqrt(2) * LEVEL / ln 2 steps.
LEVEL = 32
#: Levels of the head (tabulated outcomes |z| < LEVEL * HEAD_LEVELS); the tail is 0.1 % of draws.
HEAD_LEVELS = 10
CELL_BITS = 16
#: Largest integer half-range D used (K = k + Z stays exactly representable in float32 on the fast path).
MAX_HALF_RANGE = 2**24 - 2**9
LN_Q = -math.log(2.0) / LEVEL  # ln q

#: ``words(n)``: n independent uniform 32-bit words as an int32 tensor (any sign).
WordSource = Callable[[int], Tensor]


@dataclass(frozen=True)
class DiscreteLaplaceTables:
    """The fixed tables of the sampler and the exact deviation of what they realise from DLap(q)."""

    fast: Tensor  # float32 (2^16,): by virtual cell: the value of a pure head cell (0 for the others)
    physical_cell: Tensor  # int64 (2^16,): the layout cell of each virtual cell
    n_pure: int  # virtual cells [0, n_pure) are pure; [n_pure, 2^16) need the exact path
    # for the impure virtual cells (index v - n_pure): one head boundary at 16-bit offset
    # ``split`` between outcomes ``below`` and ``above`` (``simple``), else the full search
    split: Tensor  # int64
    below: Tensor  # float64
    above: Tensor  # float64
    simple: Tensor  # bool
    head_values: Tensor  # float64 (n_head,): head outcomes in layout order (-H+1 .. H-1)
    head_cum: Tensor  # int64 (n_head + 1,): 32-bit layout boundaries; [n_head] = start of the tail
    tail_r_cum: Tensor  # int64 (LEVEL + 1,): 32-bit layout of R in [0, LEVEL)
    eta_min: float
    eta_max: float

    @property
    def kappa(self) -> float:
        """Additive epsilon slack of the realised sampler over the ideal DLap (exact, see module doc)."""
        return math.log1p(self.eta_max) - math.log1p(self.eta_min) + 1e-12  # + float64 evaluation margin


def _counts(probabilities: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` closest to ``total * probabilities`` (largest remainder)."""
    raw = probabilities * total
    counts = np.floor(raw).astype(np.int64)
    short = total - int(counts.sum())
    counts[np.argsort(raw - counts)[::-1][:short]] += 1
    return counts


@functools.lru_cache(maxsize=1)
def tables() -> DiscreteLaplaceTables:
    """Build the sampler's tables once (a few ms) and measure their exact deviation from DLap(q)."""
    q = 2.0 ** (-1.0 / LEVEL)
    head = LEVEL * HEAD_LEVELS
    z = np.arange(-head + 1, head, dtype=np.int64)
    p_head = (1 - q) / (1 + q) * np.exp(np.abs(z) * LN_Q)  # ideal P(z) in the head
    p_tail = 2 * q**head / (1 + q)  # ideal P(|Z| >= H)
    total = 2**32
    counts = _counts(np.append(p_head, p_tail), total)
    cum = np.concatenate([[0], np.cumsum(counts)])  # head outcome i occupies [cum[i], cum[i+1]); tail from cum[-2]
    head_cum = cum[:-1]
    # R in [0, LEVEL): truncated geometric 2 (1 - q) q^r (q^LEVEL = 1/2)
    p_r = 2 * (1 - q) * np.exp(np.arange(LEVEL) * LN_Q)
    r_counts = _counts(p_r / p_r.sum(), total)
    r_cum = np.concatenate([[0], np.cumsum(r_counts)])
    # exact realised / ideal ratios: head outcomes, and tail outcomes (tail share x R share; L is exact)
    head_ratio = counts[:-1] / total / p_head
    tail_ratio = (counts[-1] / total / p_tail) * (r_counts / total / p_r)
    ratios = np.concatenate([head_ratio, tail_ratio])
    # fast cells: cell c covers [c * 2^16, (c + 1) * 2^16); pure if inside one head outcome
    cell = np.arange(2**CELL_BITS, dtype=np.int64) << (32 - CELL_BITS)
    first = np.searchsorted(cum, cell, side="right") - 1
    last = np.searchsorted(cum, cell + (1 << (32 - CELL_BITS)) - 1, side="right") - 1
    pure = (first == last) & (first < len(z))
    fast = np.where(pure, z[np.minimum(first, len(z) - 1)], 0).astype(np.float32)
    # Virtual cells: a fixed relabelling of the 2^16 cells (uniform stays uniform) that puts the
    # pure ones first, so "needs the exact path" is one comparison on the 16-bit draw itself.
    order = np.argsort(~pure, kind="stable")
    impure = order[int(pure.sum()):].astype(np.int64) << (32 - CELL_BITS)
    lo_i = np.searchsorted(cum, impure, side="right") - 1
    hi_i = np.searchsorted(cum, impure + (1 << (32 - CELL_BITS)) - 1, side="right") - 1
    simple = (hi_i == lo_i + 1) & (hi_i < len(z))  # one boundary, both sides in the head
    return DiscreteLaplaceTables(
        fast=torch.from_numpy(fast[order]),
        physical_cell=torch.from_numpy(order.astype(np.int64)),
        n_pure=int(pure.sum()),
        split=torch.from_numpy(np.where(simple, cum[np.minimum(hi_i, len(z))] - impure, 0).astype(np.int64)),
        below=torch.from_numpy(z[np.minimum(lo_i, len(z) - 1)].astype(np.float64)),
        above=torch.from_numpy(z[np.minimum(hi_i, len(z) - 1)].astype(np.float64)),
        simple=torch.from_numpy(simple),
        head_values=torch.from_numpy(z.astype(np.float64)),
        head_cum=torch.from_numpy(head_cum.astype(np.int64)),
        tail_r_cum=torch.from_numpy(r_cum.astype(np.int64)),
        eta_min=float(ratios.min() - 1.0),
        eta_max=float(ratios.max() - 1.0),
    )


@functools.lru_cache(maxsize=8)
def _split_on(device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    t = tables()
    return t.split.to(device), t.below.to(device), t.above.to(device), t.simple.to(device)


@functools.lru_cache(maxsize=8)
def _tables_on(device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    t = tables()
    return (t.fast.to(device), t.head_values.to(device), t.head_cum.to(device), t.tail_r_cum.to(device),
            t.physical_cell.to(device))


def _unsigned(words: Tensor) -> Tensor:
    """int32 words (any sign) -> int64 in [0, 2^32)."""
    return words.long() & 0xFFFFFFFF


def _leading_zero_count(words: WordSource, n: int, device: torch.device) -> Tensor:
    """``n`` draws of Geometric(1/2) (P(L = l) = 2^-(l+1)): leading zero bits of a fresh bit stream, unbounded."""
    total = torch.zeros(n, dtype=torch.int64, device=device)
    pending = torch.arange(n, device=device)
    while pending.numel():
        w = _unsigned(words(pending.numel()))
        # floor(log2 w) from the float64 exponent (exact for w < 2^53): leading zeros = 31 - floor(log2 w)
        _, exponent = torch.frexp(w.double())
        zeros = torch.where(w == 0, torch.full_like(w, 32), 32 - exponent.long())
        total.index_add_(0, pending, zeros)
        pending = pending[w == 0]  # an all-zero word: the run of zeros continues into the next word
    return total


def _slow_values(cells: Tensor, words: WordSource, *, kernel: bool | None = None) -> Tensor:
    """Exact draws for the (virtual) cells the fast table cannot settle: 16 more bits, then the tail if there.

    A cell with one head boundary compares the 16 bits with it; the others (tail cells, the cell
    holding the head/tail boundary, cells with several boundaries) search the 32-bit layout.
    ``kernel``: settle the one-boundary cells with the compiled CPU kernel (default: on CPU when
    numba is available; same values, see :mod:`facepriv.frontends.release_kernel`).
    """
    device = cells.device
    _, head_values, head_cum, r_cum, physical = _tables_on(device)
    split, below, above, simple = _split_on(device)
    low = _unsigned(words(cells.numel())) & ((1 << (32 - CELL_BITS)) - 1)
    j = cells.long() - tables().n_pure
    if kernel is None:
        kernel = release_kernel.AVAILABLE and device.type == "cpu"
    if kernel:
        values = torch.empty(j.numel(), dtype=torch.float64)
        n_deep = release_kernel.single_boundary_values(j.numpy(), low.numpy(), split.numpy(), below.numpy(),
                                                       above.numpy(), simple.numpy(), values.numpy())
        if not n_deep:
            return values
    else:
        values = torch.where(low < split[j], below[j], above[j])
    deep = (~simple[j]).nonzero().squeeze(1)
    if not deep.numel():
        return values
    position = (physical[cells.long()[deep]] << (32 - CELL_BITS)) | low[deep]  # the 32-bit layout position
    index = torch.searchsorted(head_cum, position, right=True) - 1
    n_head = head_values.numel()
    values[deep] = head_values[index.clamp(max=n_head - 1)]
    tail = torch.zeros_like(values, dtype=torch.bool)
    tail[deep] = index >= n_head
    if bool(tail.any()):
        m = int(tail.sum())
        levels = _leading_zero_count(words, m, device)
        r = torch.searchsorted(r_cum, _unsigned(words(m)), right=True) - 1
        sign = torch.where((_unsigned(words(m)) & 1) == 1, 1.0, -1.0).to(torch.float64)
        head = LEVEL * HEAD_LEVELS
        values = values.clone()
        values[tail] = sign * (head + levels.double() * LEVEL + r.double())
    return values


def discrete_laplace(words: WordSource, n: int, device: torch.device | str = "cpu") -> Tensor:
    """``n`` i.i.d. DLap(q) draws, float64, exact (see the module doc). Reference sampler, also for apps."""
    device = torch.device(device)
    fast, *_ = _tables_on(device)
    cells = _unsigned(words(n)) >> (32 - CELL_BITS)
    values = fast[cells].double()
    slow = cells >= tables().n_pure
    if bool(slow.any()):
        values[slow] = _slow_values(cells[slow], words)
    return values


def discrete_laplace_from_uniform(u: Tensor) -> Tensor:
    """DLap(q) draws by the inverse CDF of uniforms ``u`` in (0, 1), float64 integers of ``u``'s shape.

    For callers that bring their own uniforms (reproducible attack simulation, older device apps):
    the distribution is exact only up to the resolution of ``u`` (a float32 uniform has 24 bits,
    so the far tail is cut where ``u`` runs out); the released path uses :func:`add_discrete_laplace_`.
    CDF: ``F(z) = q^-z / (1 + q)`` for z < 0 and ``1 - q^(z+1) / (1 + q)`` for z >= 0.
    """
    u = u.double()
    q = 2.0 ** (-1.0 / LEVEL)
    negative = u < q / (1 + q)
    pos = torch.clamp(torch.ceil(torch.log((1 - u) * (1 + q)) / LN_Q - 1e-12) - 1, min=0)
    neg = torch.clamp(torch.ceil(-torch.log(u * (1 + q)) / LN_Q - 1e-12), max=-1)
    return torch.where(negative, neg, pos)


def add_discrete_laplace_(k: Tensor, cells: Tensor, words: WordSource) -> Tensor:
    """In place ``k += Z`` for float32 integer-valued ``k`` (|k| <= MAX_HALF_RANGE), Z ~ DLap(q) i.i.d.

    ``cells``: int32 uniform in [0, 2^16), one per element of ``k`` (the fast path's bits);
    ``words`` supplies fresh bits for the ~1 % of draws the fast table cannot settle. Returns the
    flat indices of those draws. Float32 arithmetic is exact here: on the fast path both terms
    are integers below 2^24; the exact path adds in float64 (``|k + Z| >= 2^24`` would need more
    than 2^18 consecutive zero bits).
    """
    fast, *_ = _tables_on(k.device)
    index = cells.reshape(-1)
    z = fast.index_select(0, index)
    where = (index >= tables().n_pure).nonzero().squeeze(1)
    flat_k = k.view(-1)
    exact = flat_k[where].double() + _slow_values(index[where], words) if where.numel() else None
    flat_k.add_(z)
    if exact is not None:
        flat_k[where] = exact.float()
    return where


#: Elements per step of :func:`release_grid_cpu`: all of a step's arrays fit in a core's L2 cache.
_CPU_CHUNK = 1 << 17


@functools.lru_cache(maxsize=4)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="facepriv-dlap")


def release_grid_cpu(values: np.ndarray, inv_grid: np.ndarray, half_range: np.ndarray, grid: np.ndarray,
                     out: np.ndarray, words: WordSource, workers: int = 1, *, kernel: bool | None = None) -> None:
    """``out = grid * (clamp(rint(values * inv_grid), -D, D) + Z)`` on the CPU, Z ~ DLap(q) i.i.d.

    All arrays float32 ``(rows, L)`` with contiguous rows (``values`` may have a row stride). The
    same arithmetic and the same random bits, in the same order, as :func:`add_discrete_laplace_`
    (round half to even, exact integers below 2^24), in steps of ``_CPU_CHUNK`` elements spread
    over ``workers`` threads (the result does not depend on the thread count). Each step is one
    pass of the compiled kernel (``kernel``; default: when numba is available, see
    :mod:`facepriv.frontends.release_kernel`) or NumPy passes whose operands stay in cache; both
    give the same bits. A 16-bit cell index feeds the table gather without a conversion pass;
    the ~1 % of draws needing the exact path are drawn together at the end.
    """
    fast, n_pure = tables().fast.numpy(), tables().n_pure
    rows, n = out.shape
    cells = np.frombuffer(words.bytes(2 * rows * n), dtype=np.uint16).reshape(rows, n)
    if kernel is None:
        kernel = release_kernel.AVAILABLE

    def numpy_step(r: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        k = out[r, start:stop]
        np.multiply(values[r, start:stop], inv_grid[r, start:stop], out=k)
        np.rint(k, out=k)
        np.minimum(k, half_range[r, start:stop], out=k)
        np.maximum(k, -half_range[r, start:stop], out=k)
        z = np.take(fast, cells[r, start:stop])  # 0 where the exact path takes over
        where = np.flatnonzero(cells[r, start:stop] >= n_pure)
        before = k[where].copy()
        np.add(k, z, out=k)
        np.multiply(k, grid[r, start:stop], out=k)
        return where, before

    def kernel_step(r: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        where, before = np.empty(stop - start, dtype=np.int64), np.empty(stop - start, dtype=np.float32)
        m = release_kernel.release_row(values[r, start:stop], inv_grid[r, start:stop], half_range[r, start:stop],
                                       grid[r, start:stop], cells[r, start:stop], fast, n_pure, out[r, start:stop],
                                       where, before)
        return where[:m], before[:m]

    one_step = kernel_step if kernel else numpy_step

    def step(task: tuple[int, int]) -> tuple[int, np.ndarray, np.ndarray]:
        r, start = task
        where, before = one_step(r, start, min(n, start + _CPU_CHUNK))
        return r, where + start, before

    tasks = [(r, start) for r in range(rows) for start in range(0, n, _CPU_CHUNK)]
    results = list(_pool(workers).map(step, tasks)) if workers > 1 and len(tasks) > 1 else [step(t) for t in tasks]
    slow = [(r, pos, before) for r, pos, before in results if pos.size]
    if slow:
        slow_cells = np.concatenate([cells[r, pos] for r, pos, _ in slow]).astype(np.int64)
        z_exact = _slow_values(torch.from_numpy(slow_cells), words, kernel=kernel).numpy()
        offset = 0
        for r, pos, before in slow:
            if kernel:
                release_kernel.apply_exact(out[r], grid[r], pos, before, z_exact, offset)
            else:
                exact = (before.astype(np.float64) + z_exact[offset : offset + pos.size]).astype(np.float32)
                out[r, pos] = exact * grid[r, pos]
            offset += pos.size
