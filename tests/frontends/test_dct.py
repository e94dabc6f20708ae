"""Exactness, layout, invertibility and input checks of the block DCT."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from facepriv.frontends import block_dct, block_dct_select, block_idct, channel_index, reference_block_dct

# TFace (torchjpeg) JPEG full-range constants, written out independently of the library.
RGB2YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168735892, -0.331264108, 0.5], [0.5, -0.418687589, -0.081312411]])


def naive_reference(images: torch.Tensor, upsample: int) -> np.ndarray:
    """Up-sample (TFace: bilinear, align_corners=True), YCbCr - 128, per-block scipy DCT-II (ortho)."""
    x = images.double() * 255.0
    if upsample > 1:
        x = F.interpolate(x, scale_factor=upsample, mode="bilinear", align_corners=True)
    x = x.numpy()
    ycc = np.einsum("ij,bjhw->bihw", RGB2YCBCR, x) + np.array([0, 128, 128]).reshape(1, 3, 1, 1) - 128
    b, c, h, w = ycc.shape
    out = np.zeros((b, c * 64, h // 8, w // 8))
    for i in range(h // 8):
        for j in range(w // 8):
            block = ycc[:, :, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8]
            coeffs = scipy.fft.dctn(block, type=2, norm="ortho", axes=(2, 3))  # [.., u, v]
            out[:, :, i, j] = coeffs.reshape(b, c * 64)  # colour-major, k = 8u + v
    return out


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 112, 112, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("upsample", [1, 2, 8])
def test_matches_naive_reference_float64(faces: torch.Tensor, upsample: int) -> None:
    x = faces[:, :, :32, :48] if upsample == 8 else faces
    ref = naive_reference(x, upsample)
    out = block_dct(x, upsample).numpy()
    assert out.shape == ref.shape == (x.shape[0], 192, x.shape[2] * upsample // 8, x.shape[3] * upsample // 8)
    assert np.abs(out - ref).max() < 1e-3  # absolute, 0-255 coefficient scale
    assert np.abs(reference_block_dct(x, upsample).numpy() - ref).max() < 1e-3


def test_full_size_112_float64_and_float32(faces: torch.Tensor) -> None:
    ref = reference_block_dct(faces, 8)
    # full size: the fast path against the library's materialising reference (itself checked
    # against the independent one below), float64 absolute and float32 relative
    fast64 = block_dct(faces, 8)
    assert fast64.shape == (2, 192, 112, 112)
    assert (fast64 - ref).abs().max().item() < 1e-3
    fast32 = block_dct(faces.float(), 8).double()
    rel = ((fast32 - ref).abs().max() / ref.abs().max()).item()
    assert rel < 1e-5


def test_gradient_path_matches_no_grad_path(faces: torch.Tensor) -> None:
    x = faces[:1].clone().requires_grad_(True)
    with_grad = block_dct(x, 8)
    assert torch.allclose(with_grad.detach(), block_dct(faces[:1], 8), atol=1e-9)


def test_gradcheck_small() -> None:
    x = torch.rand(1, 3, 8, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: block_dct(t, 8, validate=False), (x,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(
        lambda t: block_dct_select(t, torch.tensor([5, 70, 191]), 8, validate=False), (x,), eps=1e-6, atol=1e-5
    )


def test_channel_layout() -> None:
    # constant grey -> only the three DC channels are non-zero (Y DC = 8 * (Y - 128) per block)
    grey = torch.full((1, 3, 16, 16), 0.5, dtype=torch.float64)
    out = block_dct(grey, 1)
    nz = (out.abs() > 1e-9).flatten(2).any(-1)[0].nonzero().flatten().tolist()
    assert nz == [channel_index(0, 0, 0)]  # Cb = Cr = 0 for grey
    assert torch.allclose(out[0, 0], torch.full((2, 2), 8 * (0.5 * 255 - 128), dtype=torch.float64))
    # a pattern varying only horizontally (along W) -> only u = 0 (vertical frequency 0) channels
    ramp = torch.linspace(0, 1, 16, dtype=torch.float64).view(1, 1, 1, 16).expand(1, 3, 16, 16)
    out = block_dct(ramp.contiguous(), 1)
    active = {int(c) for c in (out.abs() > 1e-9).flatten(2).any(-1)[0].nonzero().flatten()}
    assert active and all(((c % 64) // 8) == 0 for c in active)
    # a blue-only image puts energy in Cb (channels 64..127) more than Cr
    blue = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    blue[:, 2] = 1.0
    out = block_dct(blue, 1)
    assert out[0, 64, 0, 0] > 0 > out[0, 128, 0, 0]


@pytest.mark.parametrize("upsample", [1, 8])
def test_round_trip_exact(faces: torch.Tensor, upsample: int) -> None:
    x = faces.float()
    rec = block_idct(block_dct(x, upsample), upsample)
    assert (rec - x).abs().max().item() < 1e-4


def test_round_trip_bilinear_is_approximate_on_faces_only(faces: torch.Tensor) -> None:
    smooth = F.avg_pool2d(faces, 5, stride=1, padding=2)  # face-like smooth content
    rec = block_idct(block_dct(smooth, 8), 8, method="bilinear")
    err = (rec - smooth).abs().max().item()
    assert 1e-6 < err < 0.05  # documented: TFace's inverse is not exact, but close on smooth images


def test_select_matches_full(faces: torch.Tensor) -> None:
    full = block_dct(faces, 8)
    shared = torch.tensor([0, 9, 63, 64, 100, 191])
    assert torch.allclose(block_dct_select(faces, shared, 8), full[:, shared], atol=1e-9)
    per_sample = torch.tensor([[1, 2, 3], [190, 64, 7]])
    out = block_dct_select(faces, per_sample, 8)
    for i in range(2):
        assert torch.allclose(out[i], full[i, per_sample[i]], atol=1e-9)


def test_non_square_and_other_sizes() -> None:
    x = torch.rand(1, 3, 64, 96, dtype=torch.float64)
    assert block_dct(x, 8).shape == (1, 192, 64, 96)
    assert np.abs(block_dct(x[:, :, :16, :24], 8).numpy() - naive_reference(x[:, :, :16, :24], 8)).max() < 1e-3


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.rand(3, 112, 112), "rank"),
        (torch.rand(1, 1, 112, 112), "channels"),
        (torch.randint(0, 255, (1, 3, 112, 112), dtype=torch.uint8), "floating-point"),
        (torch.rand(1, 3, 112, 112) * 255, "range"),
        (torch.rand(1, 3, 112, 112) * 2 - 1, "range"),
        (torch.full((1, 3, 112, 112), float("nan")), "NaN"),
        (torch.full((1, 3, 112, 112), float("inf")), "NaN or infinite"),
        (torch.rand(1, 3, 110, 112), "multiples of 8"),
        ("not a tensor", "torch.Tensor"),
    ],
)
def test_bad_input_errors(bad, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        block_dct(bad)


def test_bad_idct_input() -> None:
    with pytest.raises(ValueError, match="192"):
        block_idct(torch.zeros(1, 27, 112, 112))
    with pytest.raises(ValueError, match="method"):
        block_idct(torch.zeros(1, 192, 14, 14), 1, method="magic")
    with pytest.raises(ValueError, match="upsample"):
        block_dct(torch.rand(1, 3, 8, 8), 3)
