"""The compiled DCTDP release kernels give exactly the NumPy / torch path's bits."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from facepriv.frontends import DCTDP, release_kernel
from facepriv.frontends.laplace import _slow_values, release_grid_cpu, tables
from facepriv.frontends.randomness import KeystreamWords

pytest.importorskip("numba")


def _release(kernel: bool, workers: int, arrays: tuple[torch.Tensor, ...], key: bytes) -> torch.Tensor:
    values, inv, half, grid = arrays
    out = torch.empty_like(values)
    release_grid_cpu(values.numpy(), inv.numpy(), half.numpy(), grid.numpy(), out.numpy(), KeystreamWords(key),
                     workers=workers, kernel=kernel)
    return out


def test_kernel_release_is_bit_identical_to_numpy() -> None:
    g = torch.Generator().manual_seed(3)
    n = 400_000  # ~4,400 exact-path draws per row, tail draws included
    values = (torch.rand(3, n, generator=g) - 0.5) * 600
    values[0, :1000] = -0.0  # signed zeros
    inv = torch.rand(3, n, generator=g) * 2
    inv[1, :5000] = 0.0  # noise-only elements (D = 0)
    half = torch.randint(0, 300, (3, n), generator=g).float()
    half[1, :5000] = 0.0
    grid = torch.rand(3, n, generator=g) + 0.25
    key = bytes(range(32))
    reference = _release(False, 1, (values, inv, half, grid), key)
    for workers in (1, 2):
        assert torch.equal(_release(True, workers, (values, inv, half, grid), key), reference)
    assert not torch.equal(_release(True, 1, (values, inv, half, grid), bytes(32)), reference)  # the bits matter


def test_exact_path_kernel_agrees_for_every_kind_of_impure_cell() -> None:
    t = tables()
    impure = torch.arange(t.n_pure, 2**16, dtype=torch.int32)  # one-boundary, several boundaries and tail cells
    cells = impure.repeat(40)
    assert bool((~t.simple).any()) and bool(t.simple.any())
    key = bytes(range(1, 33))
    fast = _slow_values(cells, KeystreamWords(key), kernel=True)
    slow = _slow_values(cells, KeystreamWords(key), kernel=False)
    assert torch.equal(fast, slow)
    assert float(fast.abs().max()) >= 320  # tail outcomes occurred


def test_training_release_and_noise_are_identical_with_and_without_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    results = []
    for available in (False, True):
        monkeypatch.setattr(release_kernel, "AVAILABLE", available)
        dp = DCTDP(input_size=16, train_seed=11).train()
        y = dp(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append((y.detach(), dp.budget_logits.grad.clone()))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_environment_switch_disables_the_kernels() -> None:
    code = "from facepriv.frontends import release_kernel as k; print(k.AVAILABLE)"
    env = {"FACEPRIV_NUMBA": "0", "PATH": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    assert release_kernel.AVAILABLE  # numba is installed here and not disabled


def test_kernel_module_runs_as_plain_python_without_numba() -> None:
    """The kernels' Python bodies (what runs if numba is missing) compute the same thing."""
    t = tables()
    rng = np.random.default_rng(0)
    n = 5000
    values = (rng.standard_normal(n) * 80).astype(np.float32)
    inv, half, grid = (np.full(n, v, np.float32) for v in (0.9, 60.0, 1.1))
    cells = rng.integers(0, 2**16, n).astype(np.uint16)
    outs = []
    for fn in (release_kernel.release_row.py_func, release_kernel.release_row):
        out, pos, before = np.empty(n, np.float32), np.empty(n, np.int64), np.empty(n, np.float32)
        m = fn(values, inv, half, grid, cells, t.fast.numpy(), t.n_pure, out, pos, before)
        outs.append((out, pos[:m], before[:m]))
    for a, b in zip(*outs):
        assert np.array_equal(a, b)
