"""MinusFace-style frontend: send the residue of a learned regeneration, selected PartialFace-style.

Mi et al., "Privacy-Preserving Face Recognition Using Trainable Feature Subtraction"
(MinusFace, CVPR 2024). The idea, in facepriv's notation (``E`` = :func:`block_dct`, the
64x over-complete 192-channel layout for ``upsample=8``; ``D`` = :func:`block_idct`, its exact
least-squares inverse):

    X  = E(x)                     the face in the frequency domain
    X' = g(x)                     a client-side generator's regeneration, in the same layout
    R  = X - X'                   the residue ("feature subtraction")
    sent = R[c_1..c_J]            one secret random subset of R's channels, as PartialFace

trained with ``L = L_rec(x) + L_fr(R)``, ``L_rec = w * mean |2 D(X') - 2 x|`` (L1 on the [-1, 1]
scale). ``L_rec`` makes the regeneration *look like* the face, i.e. fixes X' on the range of
``E`` (everything ``D`` sees), so ``D(R) = x - D(X') ~ 0``: decoding the whole residue shows
(almost) nothing. ``L_fr`` (the recogniser's margin loss, back-propagated through R into g)
fills R with what recognition needs; because ``E`` is over-complete, that content can live in
the null space of ``D``, invisible to decoding. Selection (pruned low frequencies, a secret
subset table, a per-query subset and order from the CSPRNG, identity-restricted subsets in
training) is inherited unchanged from :class:`PartialFace`.

Why this shape (departures from the paper and the reference code, see docs/frontends.md):

* one stage, trained jointly: ``L_rec`` is the frontend's ``auxiliary_loss()``, which the trainer
  adds to the recognition loss, and g is an ``nn.Module`` inside the frontend, so its weights get
  the frontend's param group (``optim.frontend_lr``), travel in checkpoints and federated
  rounds, and are exported with the device graph. The reference trains g with a recogniser on
  the unshuffled residue (stage 1), then freezes g and trains a fresh recogniser on shuffled,
  decoded residues (stage 2); here the recogniser sees the sent tensor from the first step.
* sent in the frequency domain as PartialFace channels (the reference shuffles all 192 residue
  channels and decodes them back to a 3-channel image): selection restricts each query to a
  fraction of the spectrum and lets the attack suite place the tensor like PartialFace's.
* a compact generator on the image (the reference: a 5-level U-Net on the 192-channel DCT,
  far too heavy for CPU training). ``E`` is linear and injective, so the image carries the same
  information as ``E(x)``; the output head still writes all 192 channels, so the null-space
  freedom above is kept. Its last layer starts at zero: an untrained MinusFace sends exactly
  what PartialFace with the same secret sends.

Threat model: g runs on the client, so its weights are treated as public (Kerckhoffs); the
secret is PartialFace's ``secret_seed``. No formal guarantee: the protection is empirical and
is measured with ``facepriv attack``.
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facepriv.frontends.dct import (
    BLOCK, FULL_CHANNELS, N_COLORS, _band_on, axis_operator, block_dct, block_dct_select_graph,
    rgb_to_ycbcr_shifted, ycbcr_shifted_to_rgb,
)
from facepriv.frontends.partial import PartialFace, PartialFaceDevice
from facepriv.frontends.randomness import make_generator

#: Face size the generator's output gains are computed for (a scale only; any size works).
GAIN_REFERENCE_SIZE = 112
#: Mixed into ``train_seed`` for the generator's initial weights, so they do not reuse the
#: stream of the training-time subset draws (which ``train_seed`` seeds directly).
_INIT_SEED_SALT = 0x4D696E75  # "Minu"
_UPSAMPLES = (1, 2, 4, 8)


def channel_gain(upsample: int, size: int = GAIN_REFERENCE_SIZE) -> Tensor:
    """``(192,)`` RMS of every block-DCT channel when the pixels are i.i.d. uniform in [0, 1].

    Why: channel scales differ by orders of magnitude (the Y DC coefficient reaches ~1000,
    high frequencies of an 8x up-sampled face are ~1), so the generator writes each channel
    as ``gain_c * (W h + b)_c`` and one learning rate moves every channel at its own scale.
    Exact, from the encoder's linear map: for coefficient ``(c, u, v)`` at block ``(i, j)``,
    ``Var = (1/12) * ||m_c||^2 * ||M[8i+u]||^2 * ||M[8j+v]||^2`` with ``m_c`` the colour row of
    the 0-255 YCbCr transform and ``M`` the per-axis "up-sample then DCT" operator; averaged
    over block positions.
    """
    m = axis_operator(size, upsample)  # (8 * n_blocks, size) float64, row 8b + f
    per_freq = m.pow(2).sum(1).view(-1, BLOCK).mean(0)  # (8,) mean over blocks of ||row||^2
    basis = torch.eye(N_COLORS, dtype=torch.float64).view(N_COLORS, N_COLORS, 1, 1)
    zero = torch.zeros(1, N_COLORS, 1, 1, dtype=torch.float64)
    colour = (rgb_to_ycbcr_shifted(basis) - rgb_to_ycbcr_shifted(zero)).view(N_COLORS, N_COLORS)  # [rgb, ycc]
    colour_norm = colour.pow(2).sum(0).sqrt()  # (3,) ||m_c|| per YCbCr channel
    gain = colour_norm.view(N_COLORS, 1, 1) * math.sqrt(1.0 / 12.0) * torch.sqrt(per_freq.view(1, BLOCK, 1) * per_freq.view(1, 1, BLOCK))
    return gain.reshape(FULL_CHANNELS).float()


@functools.lru_cache(maxsize=32)
def _gram_inverse64(n: int, upsample: int) -> Tensor:
    """``(M^T M)^-1`` for the per-axis operator ``M`` (``8 * n_blocks x n``, full column rank), so
    that ``pinv(M) = (M^T M)^-1 M^T``: the exact inverse through the banded ``M^T``."""
    m = axis_operator(n, upsample)
    return torch.linalg.inv(m.T @ m)


class ResidueGenerator(nn.Module):
    """g: face ``B x 3 x H x W`` in [0, 1] -> regeneration ``X'`` in the 192-channel block-DCT layout.

    A small U-Net (two resolutions: ``H`` and ``H/2``, ``width`` and ``2*width`` features, one
    skip), then average pooling to the layout's spatial size (``H * upsample / 8``) and a 1x1
    output head ``(W, b)`` scaled per channel by :func:`channel_gain`. The head can be applied
    to all 192 channels (:meth:`full`, for the reconstruction loss) or only to each sample's
    selected channels (:meth:`selected`, what is sent; a gathered matrix product, so deployment
    never computes the other 165). No normalisation layers: no running statistics (buffers)
    that would stay behind in federated rounds or couple the samples of a batch.
    """

    def __init__(self, width: int, upsample: int, seed: int) -> None:
        super().__init__()
        w = int(width)
        conv = lambda cin, cout, k, stride=1: nn.utils.skip_init(  # noqa: E731 - no draw from the global RNG
            nn.Conv2d, cin, cout, k, stride=stride, padding=k // 2)
        self.enc = conv(3, w, 3)
        self.down = conv(w, 2 * w, 3, 2)
        self.mid = conv(2 * w, 2 * w, 3)
        self.up = conv(2 * w, 4 * w, 1)  # + pixel shuffle: 4w channels at H/2 -> w channels at H
        self.fuse = conv(2 * w, w, 3)
        self.head_weight = nn.Parameter(torch.zeros(FULL_CHANNELS, w))
        self.head_bias = nn.Parameter(torch.zeros(FULL_CHANNELS))
        self.upsample = int(upsample)
        self.pool = BLOCK // self.upsample
        self.register_buffer("gain", channel_gain(int(upsample)), persistent=False)  # a constant: re-derived, never loaded
        g = make_generator(seed)
        with torch.no_grad():
            for layer in (self.enc, self.down, self.mid, self.up, self.fuse):  # torch's default Conv2d init, seeded
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=g)
                bound = 1.0 / math.sqrt(layer.weight[0].numel())
                nn.init.uniform_(layer.bias, -bound, bound, generator=g)

    def features(self, images: Tensor) -> Tensor:
        """``B x width x h x w`` features at the layout's spatial size."""
        e = F.relu(self.enc(images * 2.0 - 1.0))
        d = F.relu(self.mid(F.relu(self.down(e))))
        u = F.pixel_shuffle(self.up(d), 2)
        f = F.relu(self.fuse(torch.cat([e, u], dim=1)))
        return F.avg_pool2d(f, self.pool) if self.pool > 1 else f

    def full(self, features: Tensor) -> Tensor:
        """All 192 channels of ``X'``."""
        out = torch.einsum("ck,bkhw->bchw", self.head_weight, features) + self.head_bias.view(1, -1, 1, 1)
        return out * self.gain.view(1, -1, 1, 1)

    def selected(self, features: Tensor, channels: Tensor) -> Tensor:
        """``X'`` at per-sample full-layout channels ``(B, J)`` only: ``B x J x h x w``."""
        b, _, h, w = features.shape
        gain = self.gain[channels].unsqueeze(-1)  # (B, J, 1)
        weight = self.head_weight[channels] * gain  # (B, J, width)
        bias = self.head_bias[channels] * gain.squeeze(-1)  # (B, J)
        out = torch.bmm(weight, features.flatten(2))  # (B, J, h*w)
        return out.view(b, -1, h, w) + bias.view(b, -1, 1, 1)

    def regeneration(self, features: Tensor) -> Tensor:
        """``D(X')`` as an RGB image (not clamped), ``D`` = ``block_idct(method="exact")``, without
        materialising the 192 channels of ``X'``.

        Why: the reconstruction loss needs it for every training image, and ``block_idct`` of a
        full ``192 x 112 x 112`` tensor is a dense ``112 x 896`` by ``896 x 896`` product per colour;
        here the head, the banded adjoint ``M^T Z M`` (each block touches at most a few source
        rows) and ``(M^T M)^-1`` are applied in that order. Equal to
        ``block_idct(self.full(features))`` to float rounding (the tests check it).
        """
        b, k, nh, nw = features.shape
        height, width = nh * BLOCK // self.upsample, nw * BLOCK // self.upsample
        start_r, w_r = _band_on(height, self.upsample, features.device, features.dtype)  # w_r: (A, 8 u, nh)
        start_c, w_c = _band_on(width, self.upsample, features.device, features.dtype)   # w_c: (A', 8 v, nw)
        a_r, a_c = w_r.shape[0], w_c.shape[0]
        weight = (self.head_weight * self.gain.unsqueeze(1)).view(N_COLORS, BLOCK, BLOCK, k)  # (c, u, v, k)
        bias = (self.head_bias * self.gain).view(N_COLORS, BLOCK, BLOCK)
        # V[b, c, e, a, i, j] = sum_uv M[8i+u, start_r[i]+e] M[8j+v, start_c[j]+a] X'[b, c, u, v, i, j]. X' is
        # linear in the features, so fold head and band into one (3 A A' x width) matrix per block position,
        # shared by the batch, and apply it as a batched product over positions.
        kernel = torch.einsum("eui,cuakj->ijceak", w_r, torch.einsum("avj,cuvk->cuakj", w_c, weight))
        kernel = kernel.reshape(nh * nw, N_COLORS * a_r * a_c, k)
        v = torch.bmm(kernel, features.permute(2, 3, 1, 0).reshape(nh * nw, k, b))  # (positions, 3 A A', B)
        v = v.view(nh, nw, N_COLORS, a_r, a_c, b).permute(5, 2, 3, 4, 0, 1)
        v = v + torch.einsum("eui,avj,cuv->ceaij", w_r, w_c, bias)
        # scatter-add the band back onto source pixels: Z -> M^T Z M
        cols = features.new_zeros(b, N_COLORS, a_r, nh, width)
        for a in range(a_c):
            cols = cols.index_add(-1, start_c + a, v[:, :, :, a])
        planes = features.new_zeros(b, N_COLORS, height, width)
        for e in range(a_r):
            planes = planes.index_add(2, start_r + e, cols[:, :, e])
        g_r = _gram_inverse64(height, self.upsample).to(features.device, features.dtype)
        g_c = g_r if width == height else _gram_inverse64(width, self.upsample).to(features.device, features.dtype)
        return ycbcr_shifted_to_rgb(g_r @ planes @ g_c.T)

    def forward(self, images: Tensor) -> Tensor:
        return self.full(self.features(images))


class MinusFace(PartialFace):
    """PartialFace's selection applied to the residue ``E(x) - g(x)`` of a learned generator g.

    Args (the selection arguments are :class:`PartialFace`'s):
        upsample, pruned, n_subsets, subsets_per_identity, n_permutations, sample_multiplier,
        secret_seed, train_seed, inference_seed: as in PartialFace (``secret_seed`` is the model
            secret; inference choices come from the OS CSPRNG unless ``inference_seed`` is set).
        generator_width: feature width of g (``width`` at full and ``2*width`` at half
            resolution); its parameter count is in :meth:`privacy_report`.
        reconstruction_weight: ``w`` of ``L_rec = w * mean |2 D(g(x)) - 2 x|``, returned by
            :meth:`auxiliary_loss` after each training forward (5.0: the reference's weight on
            the same [-1, 1] scale). 0 switches the loss off (g then only serves recognition).

    g's initial weights are a function of ``train_seed`` (not of torch's global RNG), so a
    config rebuilds the same untrained frontend; its trained weights are parameters: they
    travel in the state dict (checkpoints, federated rounds), never in the config.
    """

    name = "minusface"

    def __init__(
        self,
        upsample: int = 8,
        pruned: Sequence[int] | None = None,
        n_subsets: int = 6,
        subsets_per_identity: int = 3,
        n_permutations: int = 3,
        sample_multiplier: int = 3,
        generator_width: int = 16,
        reconstruction_weight: float = 5.0,
        secret_seed: int | None = None,
        train_seed: int = 0,
        inference_seed: int | None = None,
    ) -> None:
        if isinstance(upsample, bool) or upsample not in _UPSAMPLES:
            raise ValueError(f"minusface: upsample must be one of {_UPSAMPLES}, got {upsample!r}")
        if isinstance(generator_width, bool) or not isinstance(generator_width, int) or generator_width < 1:
            raise ValueError(f"minusface: generator_width must be a positive integer, got {generator_width!r}")
        if isinstance(reconstruction_weight, bool) or not isinstance(reconstruction_weight, (int, float)) \
                or not math.isfinite(reconstruction_weight) or reconstruction_weight < 0:
            raise ValueError(f"minusface: reconstruction_weight must be a finite number >= 0, got {reconstruction_weight!r}")
        super().__init__(upsample=upsample, pruned=pruned, n_subsets=n_subsets, subsets_per_identity=subsets_per_identity,
                         n_permutations=n_permutations, sample_multiplier=sample_multiplier, secret_seed=secret_seed,
                         train_seed=train_seed, inference_seed=inference_seed)
        self.generator_width = int(generator_width)
        self.reconstruction_weight = float(reconstruction_weight)
        self.generator = ResidueGenerator(self.generator_width, self.upsample, self.train_seed ^ _INIT_SEED_SALT)
        #: ``L_rec`` of the last training forward, until :meth:`auxiliary_loss` collects it.
        self._pending_reconstruction: Tensor | None = None

    # ------------------------------------------------------------------ contract
    @property
    def config(self) -> dict[str, Any]:
        cfg = super().config
        cfg.update({"generator_width": self.generator_width, "reconstruction_weight": self.reconstruction_weight})
        return cfg

    def __getstate__(self) -> dict[str, Any]:
        # a pending loss holds the autograd graph of one batch; copies (deepcopy, pickling) drop it
        state = super().__getstate__()
        state = dict(state) if state is not None else dict(self.__dict__)
        state["_pending_reconstruction"] = None
        return state

    # ------------------------------------------------------------------ the residue
    def coefficients(self, images: Tensor, channels: Tensor) -> Tensor:
        """What is sent for per-sample channels ``(B, J)``: ``E(x)[c] - g(x)[c]``.

        In training mode with gradients on, also computes ``L_rec`` for :meth:`auxiliary_loss`
        from the same generator features (one generator pass per image, whatever ``r``).
        """
        features = self.generator.features(images)
        observed = super().coefficients(images, channels)
        residue = observed - self.generator.selected(features, channels).to(observed.dtype)
        if self.training and torch.is_grad_enabled() and self.reconstruction_weight > 0 \
                and any(p.requires_grad for p in self.generator.parameters()):
            self._pending_reconstruction = self._reconstruction_loss(images, features)
        return residue

    def residue(self, images: Tensor) -> Tensor:
        """All 192 residue channels ``E(x) - g(x)`` (``B x 192 x h x w``; differentiable)."""
        full = block_dct(images, self.upsample, validate=False)
        return full - self.generator(images).to(full.dtype)

    def regenerate(self, images: Tensor) -> Tensor:
        """``D(g(x))``: the generator's regeneration as an RGB image (not clamped)."""
        return self.generator.regeneration(self.generator.features(images))

    def _reconstruction_loss(self, images: Tensor, features: Tensor) -> Tensor:
        # float32 even under autocast: (M^T M)^-1 and an L1 of small differences need the precision
        with torch.autocast(images.device.type, enabled=False):
            regenerated = self.generator.regeneration(features.float())
            return self.reconstruction_weight * 2.0 * (regenerated - images.float()).abs().mean()

    def auxiliary_loss(self) -> Tensor | None:
        """``L_rec`` of the last training forward (then cleared: each batch's loss is added once).

        The trainer adds it to the recognition loss after every forward
        (``facepriv.training.trainer``); None in eval mode, without gradients, with a frozen
        generator (DP-SGD) or with ``reconstruction_weight: 0``.
        """
        loss, self._pending_reconstruction = self._pending_reconstruction, None
        return loss

    # ------------------------------------------------------------------ report, export
    @torch.no_grad()
    def privacy_report(self) -> dict[str, Any]:
        report = super().privacy_report()
        active = bool(self.generator.head_weight.abs().max() > 0 or self.generator.head_bias.abs().max() > 0)
        # PartialFace's rank analysis and attack results are about the linear map E restricted to a
        # subset; the residue subtracts a nonlinear g(x), so neither carries over once g is trained
        report.pop("one_subset_determines", None)
        report.update({
            "what_attacks_found": (
                "No MinusFace attack result is recorded in facepriv's docs: run `facepriv attack --checkpoint` on the "
                "trained model. Untrained (zero output head) it sends PartialFace's tensors, with PartialFace's "
                "measured weakness."),
            "frontend": self.name,
            "mechanism": "learned feature subtraction (block-DCT residue of a client-side regeneration) "
                         "+ frequency pruning + secret random subset selection",
            "generator": {
                "parameters": sum(p.numel() for p in self.generator.parameters()),
                "width": self.generator_width,
                "reconstruction_weight": self.reconstruction_weight,
                "regeneration_active": active,
                "weights_secret": False,
            },
            "note": ("Empirical protection: measure it with `facepriv attack`. The residue hides what decoding the "
                     "whole residue would show, not what a learned attacker can infer from the sent channels. The "
                     "generator runs on the client, so its weights count as public; the secret seed must stay with "
                     "the model owner." + ("" if active else " The generator's output head is still zero (untrained): "
                                           "this frontend currently sends exactly what PartialFace sends.")),
        })
        return report

    def _device_graph(self) -> nn.Module:
        return _MinusFaceDevice(self)


class _MinusFaceDevice(PartialFaceDevice):
    """PartialFace's device graph minus the generator's regeneration of the same channels."""

    def __init__(self, f: MinusFace) -> None:
        super().__init__(f)
        self.generator = copy.deepcopy(f.generator).eval()

    def forward(self, images: Tensor, subset_ids: Tensor, permutation_ids: Tensor) -> Tensor:
        channels = self.channels(subset_ids, permutation_ids)
        observed = block_dct_select_graph(images, channels, self.upsample)
        return observed - self.generator.selected(self.generator.features(images), channels)
