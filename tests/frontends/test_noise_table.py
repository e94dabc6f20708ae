"""`facepriv frontends noise`: equal-epsilon noise per clipping mode, and the budget/layout sweep."""

from __future__ import annotations

import pytest

from facepriv.frontends.noise_table import budget_sweep, calibration_images, compare, main


@pytest.fixture(scope="module")
def faces():
    images, source = calibration_images(None, 8, 32)
    assert "synthetic" in source and images.shape == (8, 3, 32, 32)
    return images


def test_exact_bounds_need_the_least_noise_and_release_no_statistics(faces) -> None:
    rows = {r["mode"]: r for r in compare(4.0, 32, 8, faces, 0.99)["rows"]}
    assert rows["exact"]["mean_std_over_exact"] == pytest.approx(1.0)
    assert rows["analytic"]["mean_noise_std"] > rows["exact"]["mean_noise_std"]
    assert rows["exact"]["fraction_of_coefficients_clipped"] == 0.0  # the bound is the true range
    assert rows["calibrated"]["releases_data_statistics"] and not rows["exact"]["releases_data_statistics"]


def test_budget_sweep_orders_budgets_and_layouts(faces) -> None:
    rows = budget_sweep([4.0, 256.0], [1, 8], 32, faces)
    by = {(r["upsample"], r["epsilon_mean"]): r for r in rows}
    for u in (1, 8):  # more budget, less noise, a better reconstruction
        assert by[(u, 256.0)]["reconstruction_psnr_db"] > by[(u, 4.0)]["reconstruction_psnr_db"] + 10
        assert by[(u, 256.0)]["mean_noise_std"] < by[(u, 4.0)]["mean_noise_std"]
    # x8 releases 64x more elements: the same per-element budget is 64x the per-image epsilon
    assert by[(8, 4.0)]["epsilon_per_image"] == pytest.approx(64 * by[(1, 4.0)]["epsilon_per_image"])


def test_cli_prints_the_sweep_and_refuses_bad_lists(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--size", "32", "--calibration-images", "4", "--budgets", "16", "--layouts", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| layout | epsilon_mean |") and "| x1 | 16 |" in out
    for bad in (["--budgets", "4,x"], ["--budgets", "0"], ["--budgets", "4", "--layouts", "3"]):
        with pytest.raises(SystemExit):
            main(["--size", "32", "--calibration-images", "4", *bad])
