"""Partial FC: class centres sharded across ranks, sampled per step, distributed softmax.

Why: with millions of identities the ``num_classes x 512`` classifier and its logits do not
fit on one GPU. Partial FC (An et al., insightface) gives each rank a contiguous slice of the
centres, gathers all ranks' embeddings, computes logits against the local slice only, and
combines the softmax normaliser with two all-reduces (row max, row sum of exponentials) —
so no rank ever materialises the full logit matrix. Sampling a fraction of the local centres
per step (always keeping every class present in the global batch) cuts the cost further with
little accuracy loss.

Semantics with one process (no process group) are identical: the shard is all classes and the
collectives are skipped, so tests and single-GPU runs use the same code path.

How to train with it (read this before wiring it into a trainer):

* Keep this module *outside* DistributedDataParallel (wrap only the backbone). Each rank's
  ``weight`` is a different slice; DDP would average unrelated shards. Its gradient is already
  the exact gradient of the global loss for this rank's centres.
* The loss returned on every rank is the same number: the mean over the *global* batch.
  Embedding gradients are exact too (the all-gather's backward sums every rank's
  contribution), but DDP then *averages* backbone gradients over ranks, so the backbone sees
  ``1/world_size`` of the gradient of the global mean loss (insightface's convention; scale the
  learning rate, or the loss, if you want otherwise).
* Sampling (``sample_rate < 1``): ``weight[index]`` is a differentiable gather, so rows that
  were not sampled get an exactly-zero gradient this step (a dense tensor, not a sparse one).
  Plain SGD (insightface's choice, momentum 0.9, weight decay 5e-4) will still move those
  rows by their momentum and weight decay; that is the reference behaviour. Adaptive
  optimisers (Adam/AdamW) keep updating unsampled rows from stale moments — avoid them for
  the centres, or skip the rows outside ``sampled_index`` yourself.
* Checkpoints: ``state_dict()`` holds only this rank's shard; save one file per rank (or use
  ``gather_weight``) and resume with the same world size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Function

from facepriv.models.margins import MarginLoss, as_float, check_labels


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """``(class_start, num_local)`` of ``rank``'s contiguous slice; the first
    ``num_classes % world_size`` ranks hold one extra class."""
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + int(rank < extra)


def _gather_sizes(n: int, device: torch.device, group: Any) -> list[int]:
    world = dist.get_world_size(group)
    local = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(sizes, local, group=group)
    return [int(s.item()) for s in sizes]


def _all_gather_padded(x: Tensor, sizes: list[int], group: Any) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0 (ranks may hold different row counts)."""
    longest = max(sizes)
    if x.shape[0] < longest:
        x = torch.cat([x, x.new_zeros((longest - x.shape[0],) + tuple(x.shape[1:]))])
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _AllGatherWithGrad(Function):
    """All-gather whose backward returns each rank the *sum* over ranks of the gradient
    with respect to its rows: every rank computed a partial loss (its class slice) from
    the same gathered embeddings, and the total gradient is the sum of those parts."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int], rank: int, group: Any) -> Tensor:  # type: ignore[override]
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return _all_gather_padded(x.detach(), sizes, group)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None, None


class _DistSoftmaxCrossEntropy(Function):
    """Mean cross-entropy over labelled rows when each rank holds a column slice of the logits.

    ``local_labels`` index this rank's columns (-1: target on another rank or ignored row);
    ``valid`` marks rows with a global label. Computed as ``max + log(sum exp) - target`` with
    the max, the sum and the target logit all-reduced, so no probability underflows (with
    s = 64 a softmax probability can be far below float32's smallest normal number).
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, local_labels: Tensor, valid: Tensor, group: Any) -> Tensor:  # type: ignore[override]
        logits = as_float(logits.detach())
        row_max = logits.max(dim=1).values
        if group is not None:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        exp = torch.exp(logits - row_max[:, None])
        sum_exp = exp.sum(dim=1)
        has = local_labels >= 0
        rows = torch.nonzero(has, as_tuple=True)[0]
        target = torch.zeros_like(row_max)
        target[rows] = logits[rows, local_labels[rows]]
        if group is not None:
            dist.all_reduce(sum_exp, op=dist.ReduceOp.SUM, group=group)
            dist.all_reduce(target, op=dist.ReduceOp.SUM, group=group)
        n_valid = valid.sum().clamp_min(1).to(logits.dtype)
        per_row = (row_max + torch.log(sum_exp) - target) * valid.to(logits.dtype)
        prob = exp / sum_exp[:, None]
        ctx.save_for_backward(prob, local_labels, valid, n_valid)
        return per_row.sum() / n_valid

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        prob, local_labels, valid, n_valid = ctx.saved_tensors
        grad = prob.clone()
        rows = torch.nonzero(local_labels >= 0, as_tuple=True)[0]
        grad[rows, local_labels[rows]] -= 1.0
        grad *= (valid.to(grad.dtype) * (grad_out / n_valid))[:, None]
        return grad, None, None, None


class PartialFC(nn.Module):
    """Sharded, sampled margin-softmax head: ``forward(embeddings, labels) -> loss``.

    ``embeddings``/``labels`` are this rank's local batch (raw embeddings; normalised here).
    ``labels`` are global class ids in ``[0, num_classes)`` or -1 (ignored sample).
    After each training-mode forward, ``sampled_index`` holds the local centre indices used
    (sorted) and ``sampled_classes`` their global class ids.
    """

    def __init__(
        self,
        margin_loss: MarginLoss,
        embedding_size: int,
        num_classes: int,
        sample_rate: float = 1.0,
        *,
        process_group: Any = None,
        distributed: bool | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"PartialFC: sample_rate must be in (0, 1], got {sample_rate}")
        if embedding_size < 1 or num_classes < 1:
            raise ValueError(f"PartialFC: embedding_size and num_classes must be >= 1, got {embedding_size}, {num_classes}")
        if distributed is None:
            distributed = dist.is_available() and dist.is_initialized()
        self.distributed = bool(distributed)
        self.group = process_group
        self.world_size = dist.get_world_size(process_group) if self.distributed else 1
        self.rank = dist.get_rank(process_group) if self.distributed else 0
        if num_classes < self.world_size:
            raise ValueError(f"PartialFC: num_classes ({num_classes}) must be >= world size ({self.world_size})")
        self.margin_loss = margin_loss
        self.embedding_size = int(embedding_size)
        self.num_classes = int(num_classes)
        self.sample_rate = float(sample_rate)
        self.seed = int(seed)
        self.class_start, self.num_local = shard_range(num_classes, self.world_size, self.rank)
        self.num_sample = max(1, int(self.sample_rate * self.num_local))
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (self.num_local, embedding_size)))
        self.sampled_index: Tensor | None = None
        self._generator: torch.Generator | None = None

    @property
    def config(self) -> dict[str, Any]:
        return {
            "type": "partial_fc",
            **self.margin_loss.config,
            "sample_rate": self.sample_rate,
            "seed": self.seed,
            "embedding_size": self.embedding_size,
            "num_classes": self.num_classes,
        }

    @property
    def sampled_classes(self) -> Tensor | None:
        """Global class ids of the centres used in the last forward."""
        return None if self.sampled_index is None else self.sampled_index + self.class_start

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, shard=[{self.class_start}, {self.class_start + self.num_local}), "
            f"rank={self.rank}/{self.world_size}, sample_rate={self.sample_rate}"
        )

    def _rng(self, device: torch.device) -> torch.Generator:
        # Per-rank stream so ranks draw different negatives; created on the weight's device
        # so sampling needs no host round trip.
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed * 1_000_003 + self.rank)
        return self._generator

    def sample(self, local_labels: Tensor) -> tuple[Tensor, Tensor]:
        """Choose centres: all positives in the shard plus random negatives.

        Returns ``(index, remapped_labels)``: sorted local indices and the labels re-indexed
        into the sampled set (-1 stays -1).
        """
        device = self.weight.device
        if self.num_sample >= self.num_local or not self.training:
            return torch.arange(self.num_local, device=device), local_labels
        positives = torch.unique(local_labels[local_labels >= 0])
        score = torch.rand(self.num_local, generator=self._rng(device), device=device)
        score[positives] = 2.0  # above any uniform draw: positives always win the top-k
        k = max(self.num_sample, int(positives.numel()))
        index = torch.sort(torch.topk(score, k).indices).values
        remapped = torch.searchsorted(index, local_labels.clamp_min(0))
        return index, torch.where(local_labels >= 0, remapped, local_labels)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"PartialFC: expected embeddings of shape (B, {self.embedding_size}), got {tuple(embeddings.shape)}"
            )
        labels = check_labels(labels, embeddings.shape[0], self.num_classes, "PartialFC").to(embeddings.device)
        if self.distributed and self.world_size > 1:
            sizes = _gather_sizes(embeddings.shape[0], embeddings.device, self.group)
            embeddings = _AllGatherWithGrad.apply(embeddings, sizes, self.rank, self.group)
            labels = _all_gather_padded(labels, sizes, self.group)
            group = self.group if self.group is not None else dist.group.WORLD
        else:
            group = None
        in_shard = (labels >= self.class_start) & (labels < self.class_start + self.num_local)
        local_labels = torch.where(in_shard, labels - self.class_start, torch.full_like(labels, -1))
        index, local_labels = self.sample(local_labels)
        self.sampled_index = index.detach()
        weight = self.weight if index.numel() == self.num_local else self.weight[index]
        # float32 (or better) logits even under AMP: s * cos reaches 64, and an fp16 cosine
        # (~1e-3 relative error) would move logits by ~0.06 and blur the margin.
        emb, weight = as_float(embeddings), as_float(weight)
        dtype = torch.promote_types(emb.dtype, weight.dtype)
        with torch.autocast(device_type=emb.device.type, enabled=False):
            cos = F.linear(F.normalize(emb.to(dtype), dim=1), F.normalize(weight.to(dtype), dim=1))
        logits = self.margin_loss.margin_logits(cos, local_labels)
        return _DistSoftmaxCrossEntropy.apply(logits, local_labels, labels >= 0, group)

    @torch.no_grad()
    def gather_weight(self) -> Tensor:
        """The full ``num_classes x D`` centre matrix, assembled from every rank's shard
        (a collective: every rank must call it)."""
        if not (self.distributed and self.world_size > 1):
            return self.weight.detach().clone()
        sizes = [shard_range(self.num_classes, self.world_size, r)[1] for r in range(self.world_size)]
        return _all_gather_padded(self.weight.detach(), sizes, self.group)
