"""Exact discrete Laplace release: no truncation, exact pmf, grid outputs, CSPRNG bits, reproducible training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facepriv.frontends import AC_INDEX, DCTDP, block_dct
from facepriv.frontends.laplace import (
    CELL_BITS,
    HEAD_LEVELS,
    LEVEL,
    add_discrete_laplace_,
    discrete_laplace,
    discrete_laplace_from_uniform,
    release_grid_cpu,
    tables,
)
from facepriv.frontends.randomness import KeystreamWords, word_source

Q = 2.0 ** (-1.0 / LEVEL)


def ideal_pmf(z: np.ndarray) -> np.ndarray:
    return (1 - Q) / (1 + Q) * Q ** np.abs(z)


def test_tables_realise_the_ideal_pmf_within_the_stated_factor() -> None:
    t = tables()
    counts = np.diff(np.append(t.head_cum.numpy(), 2**32))
    z = t.head_values.numpy()
    ratio = counts[:-1] / 2.0**32 / ideal_pmf(z)
    assert ratio.min() - 1 >= t.eta_min - 1e-12 and ratio.max() - 1 <= t.eta_max + 1e-12  # kappa carries this margin
    assert 0 < t.kappa < 1e-4
    assert counts.sum() == 2**32
    # ~99 % of cells are pure; a pure cell lies inside exactly one head outcome, which the table holds
    assert 0.98 < t.n_pure / 2**CELL_BITS < 1.0
    assert sorted(t.physical_cell.tolist()) == list(range(2**CELL_BITS))  # a relabelling of the cells
    cum = np.append(t.head_cum.numpy(), 2**32)
    for virtual in (0, 123, t.n_pure // 2, t.n_pure - 1):
        start = int(t.physical_cell[virtual]) << (32 - CELL_BITS)
        first = np.searchsorted(cum, start, side="right") - 1
        last = np.searchsorted(cum, start + 2 ** (32 - CELL_BITS) - 1, side="right") - 1
        assert first == last < len(z) and t.fast[virtual].item() == z[first]
    start = int(t.physical_cell[t.n_pure]) << (32 - CELL_BITS)  # the first impure cell straddles or is tail
    assert np.searchsorted(cum, start, side="right") != np.searchsorted(cum, start + 2 ** (32 - CELL_BITS) - 1,
                                                                        side="right") or start >= cum[-2]


def test_sampler_has_the_discrete_laplace_distribution() -> None:
    draws = discrete_laplace(KeystreamWords(bytes(range(32))), 2_000_000).numpy()
    assert np.all(draws == np.round(draws))
    variance = 2 * Q / (1 - Q) ** 2
    assert draws.mean() == pytest.approx(0.0, abs=5 * math.sqrt(variance / draws.size))
    assert draws.var() == pytest.approx(variance, rel=0.01)
    edges = np.arange(-400, 401, 20)
    observed, _ = np.histogram(draws, bins=edges)
    grid = np.arange(-400, 400)
    expected = np.add.reduceat(ideal_pmf(grid), np.arange(0, 800, 20)) * draws.size
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 120  # 40 bins: chi2 mean 40, sd ~9
    assert np.abs(draws).max() > LEVEL * HEAD_LEVELS  # the tail is sampled too


class _ForcedTail:
    """A word source that lands in the tail and then supplies 96 zero bits before a one."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, n: int) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:  # low 16 bits of the position inside the last cell: tail
            return torch.full((n,), 0xFFFF, dtype=torch.int32)
        if self.calls <= 4:  # leading zero words: the level continues
            return torch.zeros(n, dtype=torch.int32)
        return torch.full((n,), 1, dtype=torch.int32)  # 31 more zeros, then the run ends; also R = 0, sign bit 1

    def cells(self, n: int) -> torch.Tensor:
        return torch.full((n,), 2**CELL_BITS - 1, dtype=torch.int32)  # impure: the exact path


def test_noise_is_not_truncated() -> None:
    """Regression: the float32 inverse CDF stopped at ~16.6 Laplace scales (delta > 0); the exact
    sampler reaches any magnitude: here 96 + 31 = 127 levels, i.e. > 90 scales."""
    k = torch.zeros(4)
    add_discrete_laplace_(k, torch.full((4,), 2**CELL_BITS - 1, dtype=torch.int32), _ForcedTail())
    expected = LEVEL * HEAD_LEVELS + (3 * 32 + 31) * LEVEL  # |Z| = H + L * LEVEL + R with R = 0
    assert torch.all(k.abs() == expected)
    scales = expected / (LEVEL / math.log(2.0))
    assert scales > 90 > 16.6


def test_released_values_lie_on_the_grid_and_report_delta_zero() -> None:
    dp = DCTDP(input_size=16, epsilon_mean=2.0).eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = dp(x)
    grid = dp.release_parameters()["grid"].float()
    k = y.double() / grid.double()
    assert torch.allclose(k, torch.round(k), atol=1e-3)  # y = g * integer (old float noise: anywhere)
    report = dp.privacy_report()
    assert report["delta"] == 0.0 and "no truncation" in report["delta_exact_because"]
    assert report["epsilon_realised"] <= dp.epsilon_total
    assert report["epsilon_realised"] > 0.99 * dp.epsilon_total
    assert "post-processing" in report["what_the_guarantee_covers"]
    assert "OS CSPRNG" in report["noise_source"]


def test_noise_has_the_stated_scale_and_is_zero_mean() -> None:
    dp = DCTDP(input_size=16, epsilon_mean=2.0, allocation="channel", train_seed=1234).train()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)).expand(40, 3, 16, 16).contiguous()
    params = dp.release_parameters()
    with torch.no_grad():
        y = dp(x).double()
    k = torch.clamp(torch.round(block_dct(x)[:, AC_INDEX].double() * params["inv_grid"]), -params["half_range"],
                    params["half_range"])
    z = torch.round(y / params["grid"] - k)  # the integer noise
    assert torch.allclose(y / params["grid"] - k, z, atol=1e-3)
    variance = 2 * Q / (1 - Q) ** 2
    assert float(z.mean()) == pytest.approx(0.0, abs=5 * math.sqrt(variance / z.numel()))
    assert float(z.var()) == pytest.approx(variance, rel=0.03)
    # the noise std matches the Laplace scale 2 B / eps to within the grid rounding
    with torch.no_grad():
        ratio = (params["grid"] * math.sqrt(variance)) / (dp.noise_scales().double() * math.sqrt(2))
    assert float(ratio.min()) >= 1.0 and float(ratio.max()) < 1.02


def test_cpu_fast_path_equals_the_torch_path() -> None:
    g = torch.Generator().manual_seed(5)
    n = 300_000
    values = (torch.rand(2, n, generator=g) - 0.5) * 400
    inv = torch.rand(2, n, generator=g) * 2
    half = torch.full((2, n), 150.0)
    grid = torch.rand(2, n, generator=g) + 0.5
    key = bytes(range(32))
    outs = []
    for workers in (1, 3):  # the thread count changes nothing
        out = torch.empty(2, n)
        release_grid_cpu(values.numpy(), inv.numpy(), half.numpy(), grid.numpy(), out.numpy(), KeystreamWords(key),
                         workers=workers)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    k = torch.clamp(torch.round(values * inv), -half, half)
    words = KeystreamWords(key)
    add_discrete_laplace_(k, words.cells(k.numel()).view_as(k), words)
    assert torch.equal(outs[0], k * grid)


def test_training_noise_is_reproducible_and_resumable() -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a, b = DCTDP(input_size=16, train_seed=7).train(), DCTDP(input_size=16, train_seed=7).train()
    with torch.no_grad():
        first = a(x)
        assert torch.equal(first, b(x))
        state = a.get_rng_state()
        second = a(x)
        a.set_rng_state(state)
        assert torch.equal(a(x), second) and not torch.equal(first, second)


def test_inference_keystream_is_keyed_by_the_os(monkeypatch: pytest.MonkeyPatch) -> None:
    import facepriv.frontends.randomness as randomness

    keys = []
    real = randomness.os.urandom

    def spy(n: int) -> bytes:
        keys.append(n)
        return real(n)

    monkeypatch.setattr(randomness.os, "urandom", spy)
    source = word_source(None, "cpu")
    assert isinstance(source, KeystreamWords) and keys == [32]  # 256-bit AES key from the OS CSPRNG
    x = torch.rand(1, 3, 16, 16)
    dp = DCTDP(input_size=16).eval()
    with torch.no_grad():
        assert not torch.equal(dp(x), dp(x))


def test_gradients_flow_through_the_straight_through_release() -> None:
    dp = DCTDP(input_size=16, epsilon_mean=4.0, noise_reward_weight=0.1).train()
    x = torch.rand(2, 3, 16, 16)
    out = dp(x)
    (out.pow(2).mean() + dp.auxiliary_loss()).backward()
    grad = dp.budget_logits.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    grid = dp.release_parameters()["grid"].float()
    k = out.detach().double() / grid.double()
    assert torch.allclose(k, torch.round(k), atol=1e-3)  # the value is still the exact release


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_path_is_reproducible_from_the_cpu_generator() -> None:
    x = torch.rand(2, 3, 16, 16, device="cuda")
    a = DCTDP(input_size=16, train_seed=3).train().cuda()
    b = DCTDP(input_size=16, train_seed=3).train().cuda()
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert torch.equal(ya, yb)
    cpu = DCTDP(input_size=16, train_seed=3).train()
    grid = cpu.release_parameters()["grid"].float()
    k = ya.cpu().double() / grid.double()
    assert torch.allclose(k, torch.round(k), atol=1e-3)


def test_inverse_cdf_of_supplied_uniforms_matches_the_pmf() -> None:
    """Callers that bring uniforms (attack simulation) get the same distribution, reproducibly."""
    u = torch.rand(1_000_000, generator=torch.Generator().manual_seed(2), dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    z = discrete_laplace_from_uniform(u).numpy()
    assert np.all(z == np.round(z))
    variance = 2 * Q / (1 - Q) ** 2
    assert z.var() == pytest.approx(variance, rel=0.01) and abs(z.mean()) < 5 * math.sqrt(variance / z.size)
    for value in (0, 1, -1, 40):
        assert (z == value).mean() == pytest.approx(ideal_pmf(np.array(value)), rel=0.05)
    dp = DCTDP(input_size=16).eval()
    x = torch.rand(2, 3, 16, 16)
    uniforms = torch.rand(2, 189, 16, 16)
    with torch.no_grad():
        assert torch.equal(dp(x, noise_uniform=uniforms), dp(x, noise_uniform=uniforms))
        assert torch.equal(dp(x, noise_uniform=uniforms), dp(x, noise_grid=discrete_laplace_from_uniform(uniforms).float()))


def test_allocation_gradient_is_the_reparameterised_one() -> None:
    """d loss / d logits = sum over the batch of dL/dy * xi * d b / d logits, xi = (y - f) / b."""
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    dp = DCTDP(input_size=16, train_seed=9).train()
    with torch.no_grad():
        dp.budget_logits.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    y = dp(x)
    weight = torch.rand(y.shape, generator=torch.Generator().manual_seed(2))
    (y * weight).sum().backward()
    fast = dp.budget_logits.grad.clone()
    dp.budget_logits.grad = None
    bound = dp.element_bounds().float()
    clipped = torch.maximum(torch.minimum(block_dct(x)[:, AC_INDEX], bound), -bound)  # y = clip(f) + b xi
    xi = ((y.detach() - clipped) / dp.noise_scales().detach()).detach()
    (weight * dp.noise_scales() * xi).sum().backward()
    ref = dp.budget_logits.grad
    assert torch.allclose(fast, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))  # float32 sums


def test_single_boundary_cells_agree_with_the_full_search() -> None:
    """The shortcut for cells holding one boundary gives the outcome the 32-bit layout search gives."""
    from facepriv.frontends.laplace import _slow_values

    t = tables()
    simple = t.n_pure + torch.nonzero(t.simple).squeeze(1)
    cells = simple.repeat_interleave(64).int()
    low = torch.randint(0, 2**16, (cells.numel(),), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    values = _slow_values(cells, lambda n: low[:n])
    position = (t.physical_cell[cells.long()] << 16) | low.long()
    expected = t.head_values[torch.searchsorted(t.head_cum, position, right=True) - 1]
    assert torch.equal(values, expected)
    assert bool((values[:-1] != values[1:]).any())  # both sides of the boundaries occur
