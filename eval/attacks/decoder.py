"""The learned attack's network: a small U-Net from a placed protected tensor to an RGB face.

Input: the standardised placed observation (``C`` channels: 192 block-DCT coefficients or 3
for the RGB baseline, at the tensor's spatial size, which for the 8x up-sampled frontends is
the image size) and a per-sample side vector (the channel mask: which coefficients this query
holds). The mask enters as a per-sample bias of the first layer — mathematically a 1x1
convolution over ``C`` constant mask planes, at the cost of a linear layer.

Why a U-Net: reconstruction is local (a pixel depends on nearby blocks) but filling in what
the tensor lacks (low frequencies for PartialFace, everything under DCTDP's noise) needs
context; the skip connections keep detail, the bottleneck sees the whole face. A parallel
linear 3x3 path from input to output (``linear_skip``) lets the network represent the exact
linear inverse of an unprotected DCT from the first steps, so the baselines do not need a
long training run to show they are invertible.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNetDecoder"]


def _groups(ch: int) -> int:
    for g in (8, 4, 2):
        if ch % g == 0:
            return g
    return 1


class _Block(nn.Module):
    """Two 3x3 convolutions with GroupNorm + SiLU, residual."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm1 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.silu(h + self.skip(x))


class _LinearConv3x3(nn.Module):
    """A 3x3 convolution written as one matrix product plus 9 shifted sums.

    Same maths as ``nn.Conv2d(cin, cout, 3, padding=1)`` with zero padding, but with ~200
    input channels and few outputs the matrix product on a channels-last view is far faster
    on CPU than the im2col / oneDNN paths.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.cout = cout
        self.proj = nn.Linear(cin, cout * 9, bias=False)  # weight row (o, dy, dx) = conv tap
        self.bias = nn.Parameter(torch.zeros(cout))
        nn.init.zeros_(self.proj.weight)  # starts as "no contribution"; the U-Net output starts at grey

    def forward(self, x_last: Tensor) -> Tensor:
        """``x_last``: ``B x H x W x C`` (channels last) -> ``B x cout x H x W``."""
        b, h, w, _ = x_last.shape
        y = self.proj(x_last).view(b, h, w, self.cout, 3, 3).permute(0, 3, 4, 5, 1, 2)  # B, o, dy, dx, H, W
        y = F.pad(y.reshape(b, self.cout * 9, h, w), (1, 1, 1, 1)).view(b, self.cout, 3, 3, h + 2, w + 2)
        out = None
        for dy in range(3):
            for dx in range(3):
                # cross-correlation: output (i, j) takes tap (dy, dx) of input (i + dy - 1, j + dx - 1)
                term = y[:, :, dy, dx, dy : dy + h, dx : dx + w]
                out = term if out is None else out + term
        return out + self.bias.view(1, -1, 1, 1)


class UNetDecoder(nn.Module):
    """``(B, C, H, W)`` standardised observation + ``(B, S)`` side vector -> ``(B, 3, sH, sW)`` RGB (unclamped).

    Args:
        in_channels: channels of the placed observation.
        side_channels: length of the side vector (the channel mask), 0 for none.
        width: channels at full resolution (doubles per level, capped at ``8 * width``).
        depth: number of 2x down-samplings.
        linear_skip: add a linear 3x3 path from the input to the output.
        out_scale: pixels per map cell ``s``. 1 for RGB and the TFace layout (the x8 up-sampled
            DCT map has the face's size); 8 // upsample for the compact layouts, whose cells
            are s x s pixel blocks: the head and the linear path emit ``3 s^2`` channels per
            cell and a pixel shuffle lays them out (exact for the linear inverse of a block
            DCT at ``upsample: 1``, where one cell's 192 coefficients are its 8x8x3 pixels).
    """

    def __init__(self, in_channels: int, side_channels: int = 0, width: int = 32, depth: int = 3,
                 linear_skip: bool = True, out_scale: int = 1) -> None:
        super().__init__()
        if in_channels < 1 or width < 2 or depth < 0 or out_scale < 1:
            raise ValueError(f"UNetDecoder: bad sizes in_channels={in_channels}, width={width}, depth={depth}, "
                             f"out_scale={out_scale}")
        self.cfg = {"in_channels": int(in_channels), "side_channels": int(side_channels), "width": int(width),
                    "depth": int(depth), "linear_skip": bool(linear_skip), "out_scale": int(out_scale)}
        out = 3 * int(out_scale) ** 2
        chans = [min(width * 2**i, width * 8) for i in range(depth + 1)]
        # 1x1 stem as a matrix product on a channels-last view: with ~200 input channels this is
        # several times faster on CPU than a 1x1 convolution (and identical maths)
        self.stem = nn.Linear(in_channels, width)
        self.side = nn.Linear(side_channels, width, bias=False) if side_channels else None
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        prev = width
        for i, ch in enumerate(chans):
            self.enc.append(_Block(prev, ch))
            if i < depth:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
            prev = ch
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(depth)):
            self.up.append(nn.Conv2d(chans[i + 1], chans[i], 3, padding=1))
            self.dec.append(_Block(2 * chans[i], chans[i]))
        self.head = nn.Conv2d(width, out, 1)
        # linear path: a linear map of each 3x3 neighbourhood of the input, straight to RGB
        self.linear = _LinearConv3x3(in_channels, out) if linear_skip else None

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.cfg)

    def forward(self, x: Tensor, side: Tensor | None = None) -> Tensor:
        h0, w0 = x.shape[-2:]
        mult = 2 ** self.cfg["depth"]
        ph, pw = (-h0) % mult, (-w0) % mult
        if ph or pw:  # the U-Net needs sizes divisible by 2**depth; pad, crop at the end
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        x_last = x.permute(0, 2, 3, 1)
        h = self.stem(x_last).permute(0, 3, 1, 2)
        lin = self.linear(x_last) if self.linear is not None else None
        if self.side is not None:
            if side is None:
                raise ValueError("UNetDecoder: this decoder needs the side (mask) vector")
            h = h + self.side(side).view(side.shape[0], -1, 1, 1)
        skips = []
        for i, block in enumerate(self.enc):
            h = block(h)
            if i < len(self.down):
                skips.append(h)
                h = self.down[i](h)
        for up, block in zip(self.up, self.dec):
            skip = skips.pop()
            h = up(F.interpolate(h, size=skip.shape[-2:], mode="nearest"))
            h = block(torch.cat([h, skip], 1))
        out = 0.5 + self.head(h)
        if lin is not None:
            out = out + lin
        out = out[..., :h0, :w0]
        scale = self.cfg["out_scale"]
        return F.pixel_shuffle(out, scale) if scale > 1 else out
