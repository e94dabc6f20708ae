"""Known answers for the reconstruction metrics (PSNR, SSIM) and strict-JSON output."""

from __future__ import annotations

import json
import math

import pytest
import torch

from facepriv.eval.attacks.metrics import PSNR_CAP_DB, image_metrics, json_safe, luma, psnr, ssim, summarise


def _img(seed: int, b: int = 2, h: int = 24, w: int = 24) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_psnr_identical_is_inf_and_summary_is_json_safe():
    x = _img(0)
    p = psnr(x, x)
    assert torch.isinf(p).all() and (p > 0).all()
    s = summarise(p, cap=PSNR_CAP_DB)
    assert s["mean"] == PSNR_CAP_DB and s["n_capped"] == 2
    text = json.dumps(json_safe({"raw": p, "summary": s}), allow_nan=False)
    assert json.loads(text)["raw"] == [None, None]


def test_psnr_known_perturbation():
    x = torch.full((1, 3, 16, 16), 0.5, dtype=torch.float64)
    assert psnr(x, x + 0.1).item() == pytest.approx(20.0, abs=1e-9)  # MSE 0.01
    y = x.clone()
    y[..., :8, :] += 0.2  # half the pixels off by 0.2: MSE 0.02
    assert psnr(x, y).item() == pytest.approx(10 * math.log10(1 / 0.02), abs=1e-9)
    assert psnr(x * 255, y * 255, data_range=255.0).item() == pytest.approx(10 * math.log10(1 / 0.02), abs=1e-6)


@pytest.mark.parametrize("channel", ["luma", "rgb"])
def test_ssim_identical_is_one(channel):
    x = _img(1)
    assert torch.allclose(ssim(x, x, channel=channel), torch.ones(2, dtype=torch.float64), atol=1e-12)


def test_ssim_of_constant_images_is_the_luminance_term():
    # flat images: sigma = 0, so SSIM = (2 a b + C1) / (a^2 + b^2 + C1) exactly
    a, b = 0.3, 0.5
    x, y = torch.full((1, 3, 20, 20), a), torch.full((1, 3, 20, 20), b)
    c1 = 0.01**2
    assert ssim(x, y).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-6)


def _ssim_reference(x: torch.Tensor, y: torch.Tensor) -> float:
    """Direct per-window SSIM with explicit loops (an independent implementation)."""
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    w = torch.outer(g, g)
    w = w / w.sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(torch.stack(vals).mean())


def test_ssim_matches_direct_window_computation_and_falls_with_noise():
    x = _img(2, b=1, h=16, w=18).double()
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)).clamp(0, 1)
    ref = _ssim_reference(luma(x)[0, 0], luma(y)[0, 0])
    assert ssim(x, y).item() == pytest.approx(ref, abs=1e-10)
    more = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)).clamp(0, 1)
    assert ssim(x, more).item() < ssim(x, y).item() < 1.0


def test_metrics_refuse_bad_input():
    x = _img(5)
    with pytest.raises(ValueError, match="shape"):
        psnr(x, x[:, :, :10])
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ssim(x, bad)
    with pytest.raises(ValueError, match="smaller than"):
        ssim(x[..., :8, :8], x[..., :8, :8])


def test_image_metrics_summary():
    x = _img(6)
    m = image_metrics(x, x)
    assert m["psnr_db"]["mean"] == PSNR_CAP_DB and m["ssim_luma"]["mean"] == pytest.approx(1.0)
    json.dumps(json_safe(m), allow_nan=False)
