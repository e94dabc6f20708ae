"""Block DCT of (optionally up-sampled) faces: the one DCT implementation in facepriv.

Layout (bit-compatible with the TFace PartialFace/DCTDP frontends):

* RGB in [0, 1] -> JPEG full-range YCbCr on the 0-255 scale, minus 128
  (Y = .299R + .587G + .114B; Cb, Cr centred on 128, so after the shift they are centred on 0),
* optional bilinear up-sampling by ``upsample`` with ``align_corners=True`` (TFace: 8),
* orthonormal 8x8 block DCT-II,
* channels colour-major ``[Y k=0..63, Cb k=0..63, Cr k=0..63]`` with ``k = 8*u + v``
  (u vertical, v horizontal frequency), spatial size = number of blocks.

Why the fast path exists: the 8x up-sampled 112x112 face is 896x896 and the full layout is
192 x 112 x 112 floats (9.6 MB per image). Up-sampling and the block DCT are both linear and
separable, so the whole map is ``Z = M X M^T`` per colour plane with ``M = blockdiag(D) U``.
Each 8-row block of the up-sampled image interpolates only 2-3 source rows, so ``M`` is
banded: output block ``b`` depends on source rows ``start[b] .. start[b] + W - 1`` (W <= 3 for
upsample=8). We apply the band directly (a column pass producing 8 horizontal frequencies,
then a row pass producing 8 vertical ones), never materialise the 896x896 image, and write the
output once, in batch chunks small enough that the intermediates stay in cache.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from facepriv.frontends.base import validate_images

BLOCK = 8
COEFFS_PER_BLOCK = BLOCK * BLOCK  # 64
N_COLORS = 3
FULL_CHANNELS = N_COLORS * COEFFS_PER_BLOCK  # 192
COLOR_NAMES = ("Y", "Cb", "Cr")

# JPEG (JFIF) full-range RGB -> YCbCr, the same coefficients as torchjpeg's to_ycbcr that
# TFace uses, applied on the 0-255 scale.
_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)
# Offsets after the -128 level shift: Y loses 128, the chroma offsets of +128 cancel.
_YCBCR_SHIFT = (-128.0, 0.0, 0.0)

#: Bytes of intermediate + output a chunk may use; chosen so a chunk fits the L2/L3 caches of
#: ordinary CPUs. The output is then written to main memory exactly once.
_CHUNK_BYTES = 12 * 2**20


def channel_index(color: int, u: int, v: int) -> int:
    """Channel of colour ``color`` (0=Y, 1=Cb, 2=Cr), vertical frequency u, horizontal v."""
    if not (0 <= color < N_COLORS and 0 <= u < BLOCK and 0 <= v < BLOCK):
        raise ValueError(f"channel_index: out of range (color={color}, u={u}, v={v})")
    return color * COEFFS_PER_BLOCK + BLOCK * u + v


def dct_matrix(n: int = BLOCK, dtype: torch.dtype = torch.float64) -> Tensor:
    """Orthonormal DCT-II matrix ``D`` (rows = frequencies): ``coeffs = D @ x``."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype)


def upsample_matrix(n: int, upsample: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Matrix of 1-D bilinear up-sampling by ``upsample`` with ``align_corners=True``.

    Output pixel ``p`` samples source coordinate ``p * (n - 1) / (n * upsample - 1)`` exactly as
    ``F.interpolate(..., scale_factor=upsample, mode="bilinear", align_corners=True)`` does.
    """
    n_out = n * upsample
    if upsample == 1:
        return torch.eye(n, dtype=dtype)
    pos = torch.arange(n_out, dtype=torch.float64) * (n - 1) / (n_out - 1)
    i0 = pos.floor().long().clamp(max=n - 2)
    frac = pos - i0
    u = torch.zeros(n_out, n, dtype=torch.float64)
    rows = torch.arange(n_out)
    u[rows, i0] = 1 - frac
    u[rows, i0 + 1] += frac
    return u.to(dtype)


@functools.lru_cache(maxsize=64)
def axis_operator(n: int, upsample: int) -> Tensor:
    """Dense float64 ``M = blockdiag(D) @ U`` for one axis: row ``8*b + f`` is frequency f of block b."""
    if n <= 0 or (n * upsample) % BLOCK:
        raise ValueError(f"axis length {n} x upsample {upsample} is not a multiple of {BLOCK}")
    u = upsample_matrix(n, upsample)
    n_blocks = n * upsample // BLOCK
    d = dct_matrix()
    return torch.einsum("fi,bin->bfn", d, u.view(n_blocks, BLOCK, n)).reshape(n_blocks * BLOCK, n)


@functools.lru_cache(maxsize=64)
def _band(n: int, upsample: int) -> tuple[Tensor, Tensor]:
    """Banded form of :func:`axis_operator`: ``start`` (n_blocks,) and ``weights`` (W, 8, n_blocks).

    ``M[8*b + f, start[b] + a] == weights[a, f, b]`` and M is zero outside that band.
    """
    m = axis_operator(n, upsample)
    n_blocks = m.shape[0] // BLOCK
    support = (m.view(n_blocks, BLOCK, n).abs() > 1e-12).any(dim=1)  # (n_blocks, n)
    cols = torch.arange(n).expand(n_blocks, n)
    first = torch.where(support, cols, n).min(dim=1).values
    last = torch.where(support, cols, -1).max(dim=1).values
    width = int((last - first).max().item()) + 1
    start = first.clamp(max=n - width)  # keep every window inside the axis
    gather = start.unsqueeze(1) + torch.arange(width).unsqueeze(0)  # (n_blocks, W)
    blocks = m.view(n_blocks, BLOCK, n)
    w = torch.gather(blocks, 2, gather.unsqueeze(1).expand(n_blocks, BLOCK, width))  # (n_blocks, 8, W)
    return start, w.permute(2, 1, 0).contiguous()


@functools.lru_cache(maxsize=128)
def _band_on(n: int, upsample: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    start, w = _band(n, upsample)
    return start.to(device), w.to(device=device, dtype=dtype)


def _ycbcr_weights(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    m = torch.tensor(_RGB_TO_YCBCR, dtype=torch.float64) * 255.0
    return m.to(device=device, dtype=dtype), torch.tensor(_YCBCR_SHIFT, dtype=dtype, device=device)


def rgb_to_ycbcr_shifted(images: Tensor) -> Tensor:
    """RGB in [0, 1] -> level-shifted YCbCr on the 0-255 scale (Y - 128, Cb - 128, Cr - 128)."""
    m, shift = _ycbcr_weights(images.device, images.dtype)
    return torch.einsum("ij,bjhw->bihw", m, images) + shift.view(1, 3, 1, 1)


def ycbcr_shifted_to_rgb(ycbcr: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_ycbcr_shifted` (no clamping: callers decide)."""
    m, shift = _ycbcr_weights(ycbcr.device, torch.float64)
    inv = torch.linalg.inv(m).to(ycbcr.dtype)
    return torch.einsum("ij,bjhw->bihw", inv, ycbcr - shift.to(ycbcr.dtype).view(1, 3, 1, 1))


def _column_pass(y: Tensor, upsample: int) -> Tensor:
    """``S[b, c, v, r, bj] = sum_a M[8*bj + v, start[bj] + a] * y[b, c, r, start[bj] + a]``."""
    start, w = _band_on(y.shape[-1], upsample, y.device, y.dtype)
    s = None
    for a in range(w.shape[0]):
        term = w[a].unsqueeze(1) * y.index_select(-1, start + a).unsqueeze(2)  # (B,C,8,H,nbw)
        s = term if s is None else s + term
    return s


def _full_rows(s: Tensor, upsample: int, out: Tensor | None) -> Tensor:
    """Row pass for all 64 frequencies: ``out[b,c,u,v,bi,bj] = sum_a M[8bi+u, .] S[b,c,v,.,bj]``."""
    start, w = _band_on(s.shape[-2], upsample, s.device, s.dtype)
    n_blocks = start.shape[0]
    if out is None:  # differentiable path: plain out-of-place ops that autograd records
        acc = None
        for a in range(w.shape[0]):
            term = w[a].view(1, 1, BLOCK, 1, n_blocks, 1) * s.index_select(3, start + a).unsqueeze(2)
            acc = term if acc is None else acc + term
        return acc
    for a in range(w.shape[0]):
        rows = s.index_select(3, start + a).unsqueeze(2)
        weight = w[a].view(1, 1, BLOCK, 1, n_blocks, 1)
        if a == 0:
            torch.mul(weight, rows, out=out)
        else:
            out.addcmul_(weight, rows)
    return out


def _selected_rows(s: Tensor, upsample: int, color: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Row pass for selected channels only. ``color, u, v``: (B, J) long; returns (B, J, nbh, nbw)."""
    b, _, _, h, nbw = s.shape
    start, w = _band_on(h, upsample, s.device, s.dtype)
    n_blocks = start.shape[0]
    j = color.shape[1]
    planes = s.reshape(b, N_COLORS * BLOCK * h, nbw)  # plane (c, v) row r at (c*8 + v)*h + r
    base = ((color * BLOCK + v) * h).unsqueeze(-1)  # (B, J, 1)
    inplace = not (torch.is_grad_enabled() and s.requires_grad)
    acc = None
    for a in range(w.shape[0]):
        rows = (base + (start + a)).reshape(b, j * n_blocks, 1).expand(b, j * n_blocks, nbw)
        picked = torch.gather(planes, 1, rows).view(b, j, n_blocks, nbw)
        weight = w[a][u].unsqueeze(-1)  # (B, J, nbh, 1)
        if acc is None:
            acc = weight * picked
        elif inplace:
            acc.addcmul_(weight, picked)
        else:
            acc = acc + weight * picked
    return acc


def _chunk_size(per_image_bytes: int, batch: int) -> int:
    return max(1, min(batch, _CHUNK_BYTES // max(1, per_image_bytes)))


def block_dct(images: Tensor, upsample: int = 8, *, validate: bool = True, out: Tensor | None = None) -> Tensor:
    """Block DCT of RGB faces: ``B x 3 x H x W`` in [0, 1] -> ``B x 192 x (H*upsample/8) x (W*upsample/8)``.

    Exact (to float rounding) equivalent of up-sampling with ``F.interpolate(bilinear,
    align_corners=True)``, converting to level-shifted YCbCr and taking the orthonormal 8x8
    DCT of every block, without materialising the up-sampled image. Differentiable.
    ``out``: a contiguous tensor of the output's shape and dtype to write into (no-grad path
    only): a caller that reuses one buffer skips the page faults of a fresh allocation.
    """
    if validate:
        validate_images(images, multiple_of=BLOCK)
    _check_upsample(upsample)
    y = rgb_to_ycbcr_shifted(images)
    b, _, h, w = y.shape
    nbh, nbw = h * upsample // BLOCK, w * upsample // BLOCK
    if torch.is_grad_enabled() and y.requires_grad:
        if out is not None:
            raise ValueError("block_dct: out= is for the no-grad path; the differentiable path allocates its result")
        return _block_dct_graph(y, upsample)
    if out is None:
        out = torch.empty(b, N_COLORS, BLOCK, BLOCK, nbh, nbw, dtype=y.dtype, device=y.device)
    elif tuple(out.shape) != (b, FULL_CHANNELS, nbh, nbw) or out.dtype != y.dtype or not out.is_contiguous():
        raise ValueError(f"block_dct: out must be a contiguous {y.dtype} tensor of shape {(b, FULL_CHANNELS, nbh, nbw)}, "
                         f"got {out.dtype} {tuple(out.shape)}")
    else:
        out = out.view(b, N_COLORS, BLOCK, BLOCK, nbh, nbw)
    per_image = out[0].numel() * out.element_size() * 3 // 2
    step = _chunk_size(per_image, b)
    for i in range(0, b, step):
        _full_rows(_column_pass(y[i : i + step], upsample), upsample, out[i : i + step])
    return out.view(b, FULL_CHANNELS, nbh, nbw)


def _block_dct_graph(y: Tensor, upsample: int) -> Tensor:
    b, _, h, w = y.shape
    out = _full_rows(_column_pass(y, upsample), upsample, None)
    return out.reshape(b, FULL_CHANNELS, h * upsample // BLOCK, w * upsample // BLOCK)


def block_dct_graph(images: Tensor, upsample: int = 8) -> Tensor:
    """:func:`block_dct` as plain out-of-place tensor ops, no checks and no Python-level chunking.

    What autograd records, and what TorchScript tracing / ONNX export capture for devices.
    """
    return _block_dct_graph(rgb_to_ycbcr_shifted(images), upsample)


def block_dct_select_graph(images: Tensor, channels: Tensor, upsample: int = 8) -> Tensor:
    """:func:`block_dct_select` for ``(B, J)`` channels as plain traceable ops (see :func:`block_dct_graph`)."""
    color, k = channels // COEFFS_PER_BLOCK, channels % COEFFS_PER_BLOCK
    return _selected_rows(_column_pass(rgb_to_ycbcr_shifted(images), upsample), upsample, color, k // BLOCK, k % BLOCK)


def block_dct_select(images: Tensor, channels: Tensor, upsample: int = 8, *, validate: bool = True) -> Tensor:
    """Only the requested DCT channels, computed directly (never the full 192).

    ``channels``: long tensor of full-layout channel indices (``color*64 + 8*u + v``), either
    ``(J,)`` shared by the batch or ``(B, J)`` per sample. Returns ``B x J x nbh x nbw`` equal to
    ``block_dct(images)[:, channels]`` (per sample for the 2-D form).
    """
    if validate:
        validate_images(images, multiple_of=BLOCK)
    _check_upsample(upsample)
    b = images.shape[0]
    channels = torch.as_tensor(channels, device=images.device, dtype=torch.long)
    if channels.dim() == 1:
        channels = channels.unsqueeze(0).expand(b, -1)
    if channels.dim() != 2 or channels.shape[0] != b:
        raise ValueError(f"channels must be (J,) or (B={b}, J), got shape {tuple(channels.shape)}")
    if channels.numel() and (int(channels.min()) < 0 or int(channels.max()) >= FULL_CHANNELS):
        raise ValueError(f"channel indices must be in [0, {FULL_CHANNELS}), got range "
                         f"[{int(channels.min())}, {int(channels.max())}]")
    color, k = channels // COEFFS_PER_BLOCK, channels % COEFFS_PER_BLOCK
    u, v = k // BLOCK, k % BLOCK
    y = rgb_to_ycbcr_shifted(images)
    if torch.is_grad_enabled() and y.requires_grad:
        return _selected_rows(_column_pass(y, upsample), upsample, color, u, v)
    h, w = y.shape[-2:]
    per_image = (N_COLORS * BLOCK * h + channels.shape[1] * h * upsample // BLOCK * 2) * (w * upsample // BLOCK)
    step = _chunk_size(per_image * y.element_size(), b)
    parts = [
        _selected_rows(_column_pass(y[i : i + step], upsample), upsample,
                       color[i : i + step], u[i : i + step], v[i : i + step])
        for i in range(0, b, step)
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def block_idct(coeffs: Tensor, upsample: int = 8, *, method: str = "exact") -> Tensor:
    """Inverse of :func:`block_dct`: ``B x 192 x h x w`` coefficients -> ``B x 3 x H x W`` RGB (not clamped).

    ``method="exact"``: the least-squares inverse of the linear map (block IDCT, then the
    pseudo-inverse of the bilinear up-sampling). It recovers the image to float precision
    from any output of :func:`block_dct`, and is the least-squares estimate for perturbed or
    partially zeroed coefficients (what reconstruction attacks need).
    ``method="bilinear"``: TFace's inverse (block IDCT, then bilinear down-sampling with
    ``align_corners=True``); kept for compatibility, it is not exact for ``upsample > 1``.
    """
    _check_upsample(upsample)
    if coeffs.dim() != 4 or coeffs.shape[1] != FULL_CHANNELS:
        raise ValueError(f"block_idct: expected B x {FULL_CHANNELS} x h x w coefficients, got shape {tuple(coeffs.shape)}")
    if not coeffs.is_floating_point():
        raise ValueError(f"block_idct: expected floating-point coefficients, got {coeffs.dtype}")
    if method not in {"exact", "bilinear"}:
        raise ValueError(f"block_idct: method must be 'exact' or 'bilinear', got {method!r}")
    b, _, nbh, nbw = coeffs.shape
    if (nbh * BLOCK) % upsample or (nbw * BLOCK) % upsample:
        raise ValueError(f"block_idct: {nbh}x{nbw} blocks cannot come from upsample={upsample}")
    h, w = nbh * BLOCK // upsample, nbw * BLOCK // upsample
    if method == "exact" or upsample == 1:
        # Z (interleaved 8x8 frequency planes) -> X = pinv(M_rows) Z pinv(M_cols)^T
        z = coeffs.view(b, N_COLORS, BLOCK, BLOCK, nbh, nbw).permute(0, 1, 4, 2, 5, 3)
        z = z.reshape(b, N_COLORS, nbh * BLOCK, nbw * BLOCK)
        pr = _pinv(h, upsample, coeffs.device, coeffs.dtype)
        pc = pr if w == h else _pinv(w, upsample, coeffs.device, coeffs.dtype)
        y = pr @ z @ pc.T
    else:
        d = dct_matrix(dtype=coeffs.dtype).to(coeffs.device)
        blocks = coeffs.view(b, N_COLORS, BLOCK, BLOCK, nbh, nbw).permute(0, 1, 4, 5, 2, 3)
        pixels = d.T @ blocks @ d  # (B, 3, nbh, nbw, 8, 8)
        up = pixels.permute(0, 1, 2, 4, 3, 5).reshape(b, N_COLORS, nbh * BLOCK, nbw * BLOCK)
        y = F.interpolate(up, size=(h, w), mode="bilinear", align_corners=True)
    return ycbcr_shifted_to_rgb(y)


@functools.lru_cache(maxsize=32)
def _pinv64(n: int, upsample: int) -> Tensor:
    return torch.linalg.pinv(axis_operator(n, upsample))


def _pinv(n: int, upsample: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    return _pinv64(n, upsample).to(device=device, dtype=dtype)


def _check_upsample(upsample: int) -> None:
    if not isinstance(upsample, int) or upsample < 1 or BLOCK % upsample:
        raise ValueError(f"upsample must be one of 1, 2, 4, 8, got {upsample!r}")


def reference_block_dct(images: Tensor, upsample: int = 8) -> Tensor:
    """The straightforward TFace-style path: materialise the up-sampled image, then DCT each block.

    Kept as the executable definition of the layout and as the benchmark's "naive" baseline;
    :func:`block_dct` must match it.
    """
    validate_images(images, multiple_of=BLOCK)
    x = images * 255.0
    if upsample > 1:
        x = F.interpolate(x, scale_factor=upsample, mode="bilinear", align_corners=True)
    m = torch.tensor(_RGB_TO_YCBCR, dtype=x.dtype, device=x.device)
    x = torch.einsum("ij,bjhw->bihw", m, x) + torch.tensor([0.0, 128.0, 128.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x = x - 128.0
    b, c, hh, ww = x.shape
    nbh, nbw = hh // BLOCK, ww // BLOCK
    blocks = x.view(b, c, nbh, BLOCK, nbw, BLOCK).permute(0, 1, 2, 4, 3, 5)
    d = dct_matrix(dtype=x.dtype).to(x.device)
    coeffs = d @ blocks @ d.T  # (B, C, nbh, nbw, u, v)
    return coeffs.permute(0, 1, 4, 5, 2, 3).reshape(b, c * COEFFS_PER_BLOCK, nbh, nbw)
