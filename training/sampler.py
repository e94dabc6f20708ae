"""Deterministic, resumable, sharded batch order (a DistributedSampler that can resume mid-epoch).

Every rank computes the same global permutation from ``(seed, epoch)`` and takes its own
slice of each *global* batch, so:

* rank r's batch b is ``perm[b*G + r*B : b*G + (r+1)*B]`` with ``G = B x world_size``; the
  union over ranks of one step is exactly the single-process batch of size G, which is what
  makes a 2-process run comparable to a 1-process run with the same global batch;
* the order needs no saved generator state: (epoch, batch index) is the whole position, so
  resuming from a checkpoint restarts the sampler at ``start_batch`` and reproduces the
  uninterrupted run bit for bit;
* the incomplete last global batch is dropped, so every rank does the same number of steps
  (DDP deadlocks otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Sampler

from .rng import derive_seed


class ShardedBatchSampler(Sampler[list[int]]):
    """Yields this rank's index lists for one epoch, starting at ``start_batch``."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        epoch: int = 0,
        start_batch: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        global_batch = batch_size * world_size
        if num_samples < global_batch:
            raise ValueError(
                f"dataset has {num_samples} samples, fewer than one global batch "
                f"({batch_size} per process x {world_size} processes = {global_batch}); lower data.batch_size"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = epoch
        self.start_batch = start_batch

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside [0, {self.batches_per_epoch}]")
        self.epoch = epoch
        self.start_batch = start_batch

    def permutation(self, epoch: int | None = None) -> torch.Tensor:
        """The global sample order of an epoch (identical on every rank)."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator()
        g.manual_seed(derive_seed("sampler", self.seed, epoch))
        return torch.randperm(self.num_samples, generator=g)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.permutation()
        global_batch = self.batch_size * self.world_size
        lo = self.rank * self.batch_size
        for b in range(self.start_batch, self.batches_per_epoch):
            chunk = perm[b * global_batch : (b + 1) * global_batch]
            yield chunk[lo : lo + self.batch_size].tolist()

    def state_dict(self) -> dict[str, int | bool]:
        return {
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "epoch": self.epoch,
            "start_batch": self.start_batch,
        }


class PoissonBatchSampler(Sampler[list[int]]):
    """DP-SGD's batches: each step includes every sample independently with rate ``1/steps``.

    ``mask_fn(epoch, step, num_samples, rate)`` returns the inclusion mask of one step; the
    trainer passes ``DPRandomness.poisson_mask``, a pure function of a secret OS key and
    (epoch, step). Like ``ShardedBatchSampler`` the position is the whole state, so a run
    resumes mid-epoch exactly, and batches prefetched by DataLoader workers never advance a
    generator that a checkpoint would have to capture. Batch sizes vary (they may be empty).
    """

    def __init__(self, num_samples: int, steps_per_epoch: int,
                 mask_fn: Callable[[int, int, int, float], torch.Tensor]) -> None:
        if num_samples < 1 or steps_per_epoch < 1:
            raise ValueError(f"Poisson sampling needs samples and steps, got {num_samples} and {steps_per_epoch}")
        self.num_samples = num_samples
        self.steps_per_epoch = steps_per_epoch
        self.sample_rate = 1.0 / steps_per_epoch
        self.mask_fn = mask_fn
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.steps_per_epoch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.steps_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside [0, {self.steps_per_epoch}]")
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.start_batch, self.steps_per_epoch):
            mask = self.mask_fn(self.epoch, b, self.num_samples, self.sample_rate)
            yield mask.nonzero().flatten().tolist()
