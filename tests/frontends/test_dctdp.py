"""DCTDP: budget accounting, clipping, per-sample zero-mean Laplace noise, learnable allocation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from facepriv.frontends import AC_INDEX, DCTDP, analytic_ac_bounds, block_dct, build_frontend


def faces(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_epsilons_sum_to_total_for_any_logits() -> None:
    for allocation in ("element", "channel"):
        dp = DCTDP(input_size=16, epsilon_mean=0.5, allocation=allocation)
        with torch.no_grad():
            dp.budget_logits.normal_(0, 3)
        eps = dp.epsilons().expand(189, 16, 16)
        assert eps.sum().item() == pytest.approx(dp.epsilon_total, rel=1e-5)
        assert dp.epsilon_total == pytest.approx(0.5 * 189 * 16 * 16)
        assert dp.privacy_report()["epsilon_per_image"] == dp.epsilon_total


def test_drops_dc_and_layout() -> None:
    assert len(AC_INDEX) == 189 and 0 not in AC_INDEX and 64 not in AC_INDEX and 128 not in AC_INDEX
    dp = DCTDP(input_size=16, epsilon_total=1e30).eval()  # practically noiseless (grid step ~ bound / 2^24)
    x = faces(2)
    with torch.no_grad():
        assert torch.allclose(dp(x), block_dct(x)[:, AC_INDEX], atol=0.05)


def test_analytic_bounds_hold_for_extreme_images() -> None:
    bounds = analytic_ac_bounds()
    # checkerboards and edges at full contrast in every channel push AC coefficients to the extremes
    g = torch.Generator().manual_seed(0)
    extreme = (torch.rand(64, 3, 8, 8, generator=g) > 0.5).float()
    coeffs = block_dct(extreme, 1)[:, AC_INDEX].abs().amax(dim=(0, 2, 3))
    assert torch.all(coeffs <= bounds + 1e-3)


def test_noise_is_zero_mean_laplace_with_the_right_scale() -> None:
    dp = DCTDP(input_size=16, epsilon_mean=2.0, allocation="channel", clip="analytic", train_seed=1234).train()
    x = faces(1).expand(40, 3, 16, 16).contiguous()  # identical images: output - signal = noise
    clean = block_dct(x)[:, AC_INDEX]
    with torch.no_grad():
        noise = (dp(x) - clean).double()
        scale = dp.noise_scales().double()
    z = (noise / scale).flatten().numpy()  # Laplace(0, 1) up to the grid (~1/46 of a scale) and 0.4 % more spread
    assert abs(z.mean()) < 4 * np.sqrt(2 / z.size)  # mean 0, sd sqrt(2)/sqrt(n)
    assert z.var() == pytest.approx(2.0, rel=0.03)
    jitter = np.random.default_rng(0).uniform(-0.5, 0.5, 200_000) * float(dp.release_parameters()["grid"].max() / scale.min())
    assert scipy.stats.kstest(z[:200_000] / 1.004 + jitter, "laplace").pvalue > 1e-3
    expected = 2 * analytic_ac_bounds().double() / 2.0  # uniform allocation: eps_i = 2.0
    assert torch.allclose(scale.flatten(), expected, rtol=1e-5)


def test_noise_is_independent_per_sample() -> None:
    dp = DCTDP(input_size=16, epsilon_mean=1.0, train_seed=5).train()
    x = faces(1).expand(8, 3, 16, 16).contiguous()
    with torch.no_grad():
        out = dp(x)
    # standardised: exact bounds span orders of magnitude, and raw noise would be a few elements' noise
    n = ((out - block_dct(x)[:, AC_INDEX]) / dp.noise_scales().detach()).flatten(1).numpy()
    corr = np.corrcoef(n)
    off_diagonal = corr[~np.eye(8, dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.05  # independent draws (same draw would give 1.0)


def test_calibrated_clipping_is_respected() -> None:
    dp = DCTDP(input_size=16, epsilon_total=1e30, clip_quantile=0.9).eval()
    bounds = dp.calibrate([faces(8, seed=s) for s in range(3)])
    assert bool(dp.calibrated) and dp.clip == "calibrated"
    assert torch.all(bounds <= analytic_ac_bounds()) and torch.all(bounds > 0)
    x = faces(4, seed=10)
    with torch.no_grad():
        out = dp(x)
    assert torch.all(out.abs() <= bounds.view(1, -1, 1, 1) + 1e-2)
    clean = block_dct(x)[:, AC_INDEX]
    assert (clean.abs() > bounds.view(1, -1, 1, 1)).any()  # some coefficients really were clipped
    # a rebuilt frontend gets the calibrated bounds through the state dict
    clone = build_frontend(dp.config)
    clone.load_state_dict(dp.state_dict())
    assert torch.equal(clone.clip_bound, dp.clip_bound) and bool(clone.calibrated)


def test_gradients_reach_the_allocation() -> None:
    dp = DCTDP(input_size=16, epsilon_mean=4.0, noise_reward_weight=0.1).train()
    out = dp(faces(2))
    loss = out.pow(2).mean() + dp.auxiliary_loss()
    loss.backward()
    grad = dp.budget_logits.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_inference_noise_is_fresh_and_seedable() -> None:
    x = faces(2)
    dp = DCTDP(input_size=16).eval()
    assert not torch.equal(dp(x), dp(x))
    a, b = DCTDP(input_size=16, inference_seed=3).eval(), DCTDP(input_size=16, inference_seed=3).eval()
    assert torch.equal(a(x), b(x))


def test_external_noise_grid_reproduces_the_release() -> None:
    dp = DCTDP(input_size=16).eval()
    x = faces(2)
    z = torch.randint(-100, 101, (2, 189, 16, 16)).float()
    with torch.no_grad():
        assert torch.equal(dp(x, noise_grid=z), dp(x, noise_grid=z))
        with pytest.raises(ValueError, match="noise_grid"):
            dp(x, noise_grid=torch.zeros(1, 189, 16, 16))
        with pytest.raises(ValueError, match="integer"):
            dp(x, noise_grid=z + 0.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"allocation": "pixel"}, "allocation"), ({"clip": "none"}, "clip"), ({"epsilon_mean": 0.0}, "epsilon_mean"),
     ({"epsilon_total": float("inf")}, "epsilon_total"), ({"input_size": 100}, "multiple"),
     ({"upsample": 3}, "upsample"), ({"clip_quantile": 0.0}, "clip_quantile")],
)
def test_bad_configuration(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DCTDP(**kwargs)


def test_generator_on_keeps_same_device_generator_and_seeds_fresh_ones():
    import torch

    from facepriv.frontends.randomness import generator_on, make_generator

    g = make_generator(3)
    assert generator_on(g, "cpu") is g  # CPU draws are unchanged (checkpointed state advances)
    a, b = generator_on(None, "cpu"), generator_on(None, "cpu")
    assert a is not b and not torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=b))
    if torch.cuda.is_available():  # a device generator derived from the CPU state: reproducible
        s = g.get_state()
        x = torch.rand(4, generator=generator_on(g, "cuda"), device="cuda")
        g.set_state(s)
        assert torch.equal(x, torch.rand(4, generator=generator_on(g, "cuda"), device="cuda"))


def test_wrong_image_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="input_size=16"):
        DCTDP(input_size=16).eval()(faces(1, size=24))


@pytest.mark.parametrize("upsample", [8, 1])
def test_batched_release_equals_the_per_image_release(monkeypatch, upsample: int) -> None:
    """Accelerators release the whole batch in one pass; with the same noise the output and the
    allocation's gradient equal the CPU's image-by-image path exactly (checked here on CPU)."""
    x = faces(3)
    z = torch.randint(-50, 51, (3, 189, 2 * upsample, 2 * upsample)).float()

    def run(per_image: bool):
        monkeypatch.setattr(DCTDP, "_per_image", staticmethod(lambda device: per_image))
        dp = DCTDP(input_size=16, upsample=upsample, epsilon_mean=4.0, noise_reward_weight=0.1).train()
        out = dp(x, noise_grid=z)
        (out.pow(2).mean() + dp.auxiliary_loss()).backward()
        return out.detach(), dp.budget_logits.grad.clone()

    (out_a, grad_a), (out_b, grad_b) = run(True), run(False)
    assert torch.equal(out_a, out_b)
    assert torch.allclose(grad_a, grad_b, rtol=1e-5, atol=1e-12)


def test_batched_release_draws_laplace_noise_from_the_keystream(monkeypatch) -> None:
    """Without external noise the batched path samples the same exact discrete Laplace mechanism."""
    monkeypatch.setattr(DCTDP, "_per_image", staticmethod(lambda device: False))
    dp = DCTDP(input_size=16, epsilon_mean=2.0, allocation="channel", clip="analytic", train_seed=7).train()
    x = faces(1).expand(40, 3, 16, 16).contiguous()
    with torch.no_grad():
        z = ((dp(x) - block_dct(x)[:, AC_INDEX]).double() / dp.noise_scales().double()).flatten().numpy()
    assert abs(z.mean()) < 4 * np.sqrt(2 / z.size) and z.var() == pytest.approx(2.0, rel=0.03)
    first = z[:189 * 256].reshape(189, 256)
    assert not np.array_equal(first, z[189 * 256: 2 * 189 * 256].reshape(189, 256))  # fresh noise per image
