"""DCTDP ``clip: exact``: the per-coefficient ranges are exact (dense operator, LP, extreme images)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import scipy.optimize
import torch
import torch.nn.functional as F

from facepriv.frontends import AC_INDEX, DCTDP, analytic_ac_bounds, block_dct
from facepriv.frontends.sensitivity import exact_ac_bounds, exact_coefficient_bounds

SIZE, UP = 16, 8
RGB2YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168735892, -0.331264108, 0.5], [0.5, -0.418687589, -0.081312411]])


def reference_coefficients(images: torch.Tensor) -> np.ndarray:
    """Independent of the library: x8 bilinear (align_corners), YCbCr - 128, per-block scipy DCT."""
    x = F.interpolate(images.double() * 255.0, scale_factor=UP, mode="bilinear", align_corners=True).numpy()
    ycc = np.einsum("ij,bjhw->bihw", RGB2YCBCR, x) + np.array([0, 128, 128]).reshape(1, 3, 1, 1) - 128
    b, c, h, w = ycc.shape
    blocks = ycc.reshape(b, c, h // 8, 8, w // 8, 8).transpose(0, 1, 2, 4, 3, 5)
    coeffs = scipy.fft.dctn(blocks, type=2, norm="ortho", axes=(4, 5))  # (b, c, bi, bj, u, v)
    return coeffs.transpose(0, 1, 4, 5, 2, 3).reshape(b, c * 64, h // 8, w // 8)


@pytest.fixture(scope="module")
def dense() -> tuple[np.ndarray, np.ndarray]:
    """The affine map image -> coefficients as (constant, matrix rows = coefficients), built from unit images."""
    n = 3 * SIZE * SIZE
    basis = torch.eye(n, dtype=torch.float64).view(n, 3, SIZE, SIZE)
    zero = reference_coefficients(torch.zeros(1, 3, SIZE, SIZE, dtype=torch.float64)).reshape(-1)
    cols = reference_coefficients(basis).reshape(n, -1) - zero
    return zero, cols.T  # (n_coeffs,), (n_coeffs, n)


def test_exact_bounds_equal_half_the_l1_norm_of_each_functional(dense) -> None:
    const, rows = dense
    bounds = exact_coefficient_bounds(SIZE, SIZE, UP).numpy().reshape(-1)
    np.testing.assert_allclose(0.5 * np.abs(rows).sum(axis=1), bounds, rtol=1e-9, atol=1e-9)
    ac = exact_ac_bounds(SIZE, UP).numpy()
    full = exact_coefficient_bounds(SIZE, SIZE, UP).numpy()
    assert np.array_equal(ac, full[AC_INDEX])
    ac_rows = rows.reshape(192, -1, rows.shape[1])[AC_INDEX].reshape(-1, rows.shape[1])
    assert np.abs(const.reshape(192, -1)[AC_INDEX]).max() < 1e-9  # AC: no constant term
    assert np.abs(ac_rows.sum(axis=1)).max() < 1e-9  # so the range is symmetric: [-B, B]
    # borders differ from the interior (why bounds are per block position)
    assert not np.allclose(ac[:, 0, 0], ac[:, SIZE // 2, SIZE // 2])


def test_linear_programme_agrees_on_sampled_coefficients(dense) -> None:
    const, rows = dense
    bounds = exact_coefficient_bounds(SIZE, SIZE, UP).numpy().reshape(-1)
    rng = np.random.default_rng(0)
    per_channel = rows.shape[0] // 192
    picks = [c * per_channel + p for c in (1, 9, 63, 64 + 27, 128 + 62) for p in (0, per_channel - 1)]
    picks += list(rng.choice(rows.shape[0], 6, replace=False))
    for i in picks:
        hi = scipy.optimize.linprog(-rows[i], bounds=[(0, 1)] * rows.shape[1], method="highs")
        lo = scipy.optimize.linprog(rows[i], bounds=[(0, 1)] * rows.shape[1], method="highs")
        assert hi.status == 0 and lo.status == 0
        assert (-hi.fun) - lo.fun == pytest.approx(2 * bounds[i], rel=1e-7, abs=1e-7)


def test_no_image_exceeds_the_bound_and_corner_images_attain_it(dense) -> None:
    _, rows = dense
    bounds = torch.as_tensor(exact_ac_bounds(SIZE, UP))
    g = torch.Generator().manual_seed(1)
    random_images = torch.rand(16, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    binary = (torch.rand(64, 3, SIZE, SIZE, generator=g) > 0.5).double()
    ac_rows = rows.reshape(192, -1, rows.shape[1])[AC_INDEX].reshape(-1, rows.shape[1])
    pick = torch.randperm(ac_rows.shape[0], generator=g)[:48]
    corners = torch.as_tensor(ac_rows[pick.numpy()] > 0, dtype=torch.float64).view(-1, 3, SIZE, SIZE)
    for images in (random_images, binary, corners, 1 - corners):
        coeffs = block_dct(images, UP)[:, AC_INDEX]  # the frontend's own fast path
        assert torch.all(coeffs.abs() <= bounds * (1 + 1e-9) + 1e-9)
    attained = block_dct(corners, UP)[:, AC_INDEX].reshape(corners.shape[0], -1)
    hit = attained[torch.arange(len(pick)), pick]
    assert torch.allclose(hit, bounds.reshape(-1)[pick], rtol=1e-9)  # adversarial images reach the bound exactly


def test_exact_is_the_default_and_needs_less_noise() -> None:
    dp = DCTDP(input_size=SIZE)
    assert dp.clip == "exact" and DCTDP(input_size=SIZE, clip="analytic").clip == "analytic"
    exact_scales = dp.noise_scales()
    analytic = DCTDP(input_size=SIZE, clip="analytic").noise_scales().expand_as(exact_scales)
    assert torch.all(exact_scales <= analytic * (1 + 1e-6))
    assert (exact_scales / analytic).mean() < 0.2  # same epsilon, far less noise
    assert "exact_bound" not in dp.state_dict()  # derived from the config, never read from a file
    report = dp.privacy_report()
    assert report["sensitivity"]["mode"] == "exact" and report["released_statistics"].startswith("none")
    assert report["sensitivity"]["max"] == pytest.approx(2 * float(exact_ac_bounds(SIZE, UP).max()))


def test_exact_mode_never_clips_a_valid_image() -> None:
    dp = DCTDP(input_size=SIZE, epsilon_total=1e30).eval()  # practically noiseless
    x = (torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    with torch.no_grad():
        out = dp(x)
    clean = block_dct(x)[:, AC_INDEX]
    assert torch.allclose(out, clean, atol=0.05)  # extreme images pass unclipped
    calibrated = DCTDP(input_size=SIZE, epsilon_total=1e30, clip_quantile=0.5)
    calibrated.calibrate([torch.rand(4, 3, SIZE, SIZE)])
    with torch.no_grad():
        assert (calibrated.eval()(x) - clean).abs().max() > 1.0  # a data quantile does clip


def test_calibrated_mode_does_not_claim_dp_for_the_calibration_images() -> None:
    dp = DCTDP(input_size=SIZE, clip="calibrated")
    dp.calibrate([torch.rand(4, 3, SIZE, SIZE)])
    report = dp.privacy_report()
    assert "NOT used for calibration" in report["formal_guarantee"]
    assert "NOT accounted" in report["released_statistics"]
    assert report["sensitivity"]["values"].startswith("withheld")
    assert report["noise_scale"].startswith("withheld") and report["grid_step"].startswith("withheld")
    assert "bound_min" not in str(report)


def test_analytic_bounds_are_the_exact_ones_without_upsampling() -> None:
    exact = exact_ac_bounds(SIZE, 1)
    assert torch.allclose(exact, analytic_ac_bounds().double().view(-1, 1, 1).expand_as(exact), rtol=1e-6)
