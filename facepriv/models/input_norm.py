"""Fixed per-channel standardisation of the protected tensor before the backbone stem.

Why: block-DCT coefficients span orders of magnitude (the Y-channel DC term reaches about
+-1000, high frequencies are around 1). Fed raw to the stem, the few DC channels dominate the
first convolution and its gradient, and the high frequencies the privacy frontend keeps are
effectively ignored. Standardising each channel to zero mean / unit variance fixes that.

Why *fixed* statistics (buffers computed once by ``calibrate``) instead of a BatchNorm: the
transform must behave identically at training and inference, must not mix samples (Opacus
per-sample gradients forbid batch statistics), and must travel in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


class ChannelStandardize(nn.Module):
    """``y = (x - mean[c]) / std[c]`` over dim 1 with non-trainable buffers.

    Until ``calibrate`` runs (or ``set_statistics`` is called) the transform is the identity;
    ``calibrated`` records which state a checkpoint is in.
    """

    def __init__(self, num_channels: int, *, min_std: float = 1e-6, rel_min_std: float = 1e-6) -> None:
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"ChannelStandardize: num_channels must be >= 1, got {num_channels}")
        self.num_channels = int(num_channels)
        #: Channels whose spread is below ``max(min_std, rel_min_std * largest std)`` are treated
        #: as constant: centred but not scaled, so float round-off in an (almost) empty channel
        #: is not blown up to unit variance.
        self.min_std = float(min_std)
        self.rel_min_std = float(rel_min_std)
        self.register_buffer("mean", torch.zeros(num_channels))
        self.register_buffer("std", torch.ones(num_channels))
        self.register_buffer("calibrated", torch.tensor(False))

    @property
    def config(self) -> dict[str, Any]:
        return {"num_channels": self.num_channels, "min_std": self.min_std, "rel_min_std": self.rel_min_std}

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}, calibrated={bool(self.calibrated)}"

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"ChannelStandardize: expected B x {self.num_channels} x ... input, got shape {tuple(x.shape)}"
            )
        view = (1, self.num_channels) + (1,) * (x.dim() - 2)
        mean = self.mean.to(x.dtype).view(view)
        std = self.std.to(x.dtype).view(view)
        return (x - mean) / std

    def set_statistics(self, mean: Tensor, std: Tensor) -> None:
        """Install known statistics (e.g. computed elsewhere); std below the floor becomes 1."""
        mean = torch.as_tensor(mean, dtype=torch.float64).flatten()
        std = torch.as_tensor(std, dtype=torch.float64).flatten()
        if mean.numel() != self.num_channels or std.numel() != self.num_channels:
            raise ValueError(
                f"ChannelStandardize: expected {self.num_channels} means and stds, got {mean.numel()} and {std.numel()}"
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()) or bool((std < 0).any()):
            raise ValueError("ChannelStandardize: statistics must be finite and std >= 0")
        floor = max(self.min_std, self.rel_min_std * float(std.max()))
        std = torch.where(std > floor, std, torch.ones_like(std))
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))
        self.calibrated.fill_(True)

    @torch.no_grad()
    def calibrate(
        self,
        batches: Iterable[Any],
        *,
        max_batches: int | None = None,
        distributed: bool = False,
    ) -> ChannelStandardize:
        """Set mean/std from data: population statistics over batch and spatial positions.

        ``batches`` yields tensors ``B x C x ...`` (or tuples/lists whose first element is one,
        as a DataLoader of ``(x, label)`` does). Statistics are accumulated per batch in
        float64 and merged with Chan et al.'s parallel update, so a long stream of large
        coefficients does not lose precision the way a running sum of squares would.
        ``distributed=True`` merges the statistics of all ranks of the default process group
        (every rank must call it) so each rank installs identical buffers.
        """
        count = torch.zeros((), dtype=torch.float64)
        mean = torch.zeros(self.num_channels, dtype=torch.float64)
        m2 = torch.zeros(self.num_channels, dtype=torch.float64)
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[1] != self.num_channels:
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(
                    f"ChannelStandardize.calibrate: batch {i}: expected B x {self.num_channels} x ... tensor, got {shape}"
                )
            x = x.detach().to(device="cpu", dtype=torch.float64).transpose(0, 1).reshape(self.num_channels, -1)
            if x.shape[1] == 0:
                continue
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"ChannelStandardize.calibrate: batch {i} contains NaN or infinite values")
            count, mean, m2 = _merge(count, mean, m2, *_batch_stats(x))
        if distributed and dist.is_available() and dist.is_initialized():
            count, mean, m2 = _merge_across_ranks(count, mean, m2)
        if count.item() == 0:
            raise ValueError("ChannelStandardize.calibrate: no data (the batch iterable was empty)")
        self.set_statistics(mean, (m2 / count).sqrt())
        return self



class PerSampleStandardize(nn.Module):
    """``y[b, c] = (x[b, c] - mean_hw) / sqrt(var_hw + eps)``: each channel of each sample on
    its own spatial statistics (instance normalisation without affine parameters).

    Why, for PartialFace: channel ``c`` of a query carries a *different frequency* for each
    secret subset/permutation, so a fixed per-channel scale (``ChannelStandardize``) averages
    over frequencies whose energies differ by orders of magnitude. The energy pattern then
    tells the network which subset it is looking at, and embeddings cluster by subset instead
    of by identity (measured on LFW: same-subset impostors at cosine 0.4-0.85, cross-subset
    pairs near 0; verification at chance). Per-sample statistics remove that cue without the
    server ever knowing the subset. Nothing is calibrated, nothing mixes samples (safe for
    Opacus per-sample gradients), and there are no buffers to federate.
    """

    kind = "per_sample"

    def __init__(self, num_channels: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"PerSampleStandardize: num_channels must be >= 1, got {num_channels}")
        self.num_channels = int(num_channels)
        self.eps = float(eps)

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_channels": self.num_channels, "eps": self.eps}

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}, eps={self.eps:g}"

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 3 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"PerSampleStandardize: expected B x {self.num_channels} x H x W input, got shape {tuple(x.shape)}"
            )
        dims = tuple(range(2, x.dim()))
        var, mean = torch.var_mean(x, dim=dims, keepdim=True, unbiased=False)
        return (x - mean) * torch.rsqrt(var + self.eps)


#: What a config may say about the normalisation between frontend and backbone.
INPUT_NORM_MODES = ("auto", "standardize", "per_sample", "none")


def input_norm_kind(mode: str, frontend: nn.Module) -> str | None:
    """Which normalisation sits between frontend and backbone: ``"standardize"`` (fixed
    per-channel statistics), ``"per_sample"`` or None.

    "auto": none for plain RGB; per-sample for frontends whose channel meaning changes from
    query to query (PartialFace's secret subsets, ``channels_vary_per_query``), where one
    fixed scale per channel position would mix frequencies; fixed statistics otherwise.
    """
    if mode not in INPUT_NORM_MODES:
        raise ValueError(f"input_norm mode must be one of {list(INPUT_NORM_MODES)}, got {mode!r}")
    if mode in ("standardize", "per_sample"):
        return mode
    if mode == "none" or getattr(frontend, "name", "") == "rgb":
        return None
    return "per_sample" if getattr(frontend, "channels_vary_per_query", False) else "standardize"


def input_norm_spec(spec: Any, frontend: nn.Module) -> dict[str, Any] | None:
    """Resolve what a model config says about input normalisation into ``build_input_norm``'s
    dict: ``None``/``False`` (none), ``True`` (fixed per-channel statistics, the older
    spelling), a mode from ``INPUT_NORM_MODES`` (the policy of ``input_norm_kind``), or an
    explicit dict (a checkpoint's resolved config, used as is)."""
    if spec is None or spec is False:
        return None
    if isinstance(spec, dict):
        return dict(spec)
    kind = "standardize" if spec is True else input_norm_kind(str(spec), frontend)
    return None if kind is None else {"kind": kind, "num_channels": int(frontend.out_channels)}


def build_input_norm(config: dict[str, Any] | None) -> nn.Module | None:
    """The input normalisation a checkpoint's ``input_norm`` config describes (None: none)."""
    if not config:
        return None
    cfg = dict(config)
    kind = cfg.pop("kind", "standardize")
    if kind == "standardize":
        return ChannelStandardize(**cfg)
    if kind == PerSampleStandardize.kind:
        return PerSampleStandardize(**cfg)
    raise ValueError(f"unknown input_norm kind {kind!r} (expected 'standardize' or 'per_sample')")

def _batch_stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(count, per-channel mean, per-channel sum of squared deviations) of a C x N block."""
    n = torch.tensor(float(x.shape[1]), dtype=torch.float64)
    mean = x.mean(dim=1)
    m2 = ((x - mean[:, None]) ** 2).sum(dim=1)
    return n, mean, m2


def _merge(na: Tensor, mean_a: Tensor, m2_a: Tensor, nb: Tensor, mean_b: Tensor, m2_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Chan et al. pairwise merge of two (count, mean, M2) summaries."""
    n = na + nb
    if n.item() == 0:
        return n, mean_a, m2_a
    delta = mean_b - mean_a
    mean = mean_a + delta * (nb / n)
    m2 = m2_a + m2_b + delta**2 * (na * nb / n)
    return n, mean, m2


def _merge_across_ranks(count: Tensor, mean: Tensor, m2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    world = dist.get_world_size()
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    packed = torch.cat([count.view(1), mean, m2]).to(device)
    gathered = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(gathered, packed)
    c = mean.numel()
    total = (torch.zeros((), dtype=torch.float64), torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64))
    for g in gathered:  # same order on every rank, so every rank gets bit-identical buffers
        g = g.cpu()
        total = _merge(*total, g[0], g[1 : 1 + c], g[1 + c :])
    return total
