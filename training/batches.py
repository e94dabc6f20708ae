"""Turning dataset samples into training batches without ever crashing on one bad sample.

``SafeDataset`` wraps any map-style dataset returning ``(image, label, ...)``: a sample
that fails to load (truncated JPEG, wrong shape, NaN) becomes ``None`` and a warning naming
the problem (the data package's error names the file). ``collate_samples`` drops the
``None``s and reports how many were dropped, so the trainer can log a running count of
corrupt samples instead of dying 14 hours into a run. The dataset index of every sample
travels with the batch (distillation looks teacher embeddings up by it).
"""

from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

#: How many bad-sample warnings one process prints before going quiet (the count is still logged).
MAX_WARNINGS = 20


class Batch(NamedTuple):
    images: Tensor  # B x 3 x H x W float in [0, 1]
    labels: Tensor  # B int64
    indices: Tensor  # B int64, dataset indices
    num_bad: int  # samples dropped from this batch because they failed to load


def to_image_tensor(image: Any, *, image_size: int | None = None, where: str = "sample") -> Tensor:
    """Normalise a decoded image to a ``3 x H x W`` tensor: uint8 (0-255) or float in [0, 1].

    Accepts torch tensors or numpy arrays, CHW or HWC. uint8 stays uint8 (a quarter of the
    bytes through worker queues and host-to-GPU copies); ``images_to_float`` converts the
    batch on the device right before the frontend.
    """
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, Tensor):
        raise ValueError(f"{where}: image must be a tensor or numpy array, got {type(image).__name__}")
    if image.dim() != 3:
        raise ValueError(f"{where}: image must have 3 dimensions (C x H x W), got shape {tuple(image.shape)}")
    if image.shape[0] != 3 and image.shape[-1] == 3:
        image = image.permute(2, 0, 1)
    if image.shape[0] != 3:
        raise ValueError(f"{where}: expected 3 colour channels, got shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        pass
    elif image.is_floating_point():
        image = image.float()
        if not bool(torch.isfinite(image).all()):
            raise ValueError(f"{where}: image contains NaN or infinite values")
        lo, hi = float(image.min()), float(image.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"{where}: float image values must be in [0, 1], found [{lo:.3g}, {hi:.3g}]")
        image = image.clamp_(0.0, 1.0)
    else:
        raise ValueError(f"{where}: unsupported image dtype {image.dtype}")
    if image_size is not None and tuple(image.shape[-2:]) != (image_size, image_size):
        raise ValueError(
            f"{where}: image is {image.shape[-2]}x{image.shape[-1]}, expected {image_size}x{image_size} "
            "(align/resize faces first: `facepriv data align`)"
        )
    return image.contiguous()


class SafeDataset(Dataset):
    """``base[i] -> (image, label, ...)`` becomes ``(image, label, i)`` or ``None`` if broken."""

    def __init__(self, base: Dataset, *, image_size: int | None = None, max_samples: int | None = None) -> None:
        self.base = base
        self.image_size = image_size
        n = len(base)  # type: ignore[arg-type]
        self.length = min(n, max_samples) if max_samples is not None else n
        self._warned = 0

    def __len__(self) -> int:
        return self.length

    def _describe(self, index: int) -> str:
        describe = getattr(self.base, "describe", None)
        if callable(describe):
            try:
                return str(describe(index))
            except Exception:  # noqa: BLE001 - description is best effort
                pass
        return f"sample {index}"

    def __getitem__(self, index: int) -> tuple[Tensor, int, int] | None:
        try:
            item = self.base[index]
            if item is None:
                raise ValueError("dataset returned no sample (unreadable image)")
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise ValueError(f"dataset must return (image, label), got {type(item).__name__}")
            image = to_image_tensor(item[0], image_size=self.image_size, where=self._describe(index))
            label = int(item[1])
            if label < 0:
                raise ValueError(f"{self._describe(index)}: negative label {label}")
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - one bad sample must not end a run
            self._warned += 1
            if self._warned <= MAX_WARNINGS:
                log.warning("skipping unreadable training sample %d (pid %d): %s", index, os.getpid(), exc)
                if self._warned == MAX_WARNINGS:
                    log.warning("further bad-sample warnings suppressed in this process; counts are in the CSV log")
            return None
        return image, label, index


def collate_samples(items: list[tuple[Tensor, int, int] | None]) -> Batch:
    good = [it for it in items if it is not None]
    num_bad = len(items) - len(good)
    if not good:
        empty = torch.zeros(0, dtype=torch.long)
        return Batch(torch.zeros(0, 3, 1, 1), empty, empty.clone(), num_bad)
    images = torch.stack([it[0] for it in good])
    labels = torch.tensor([it[1] for it in good], dtype=torch.long)
    indices = torch.tensor([it[2] for it in good], dtype=torch.long)
    return Batch(images, labels, indices, num_bad)


def as_batch(batch: Any) -> Batch:
    """Accept our Batch, a plain (images, labels[, indices]) tuple/list, or Opacus' empty batch."""
    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, dict):
        images, labels = batch["images"], batch["labels"]
        indices = batch.get("indices", torch.arange(len(labels)))
        return Batch(images, labels, indices, int(batch.get("num_bad", 0)))
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        images, labels = batch[0], batch[1]
        indices = batch[2] if len(batch) > 2 else torch.arange(len(labels))
        num_bad = int(batch[3]) if len(batch) > 3 else 0
        return Batch(images, torch.as_tensor(labels, dtype=torch.long), torch.as_tensor(indices, dtype=torch.long), num_bad)
    raise TypeError(f"cannot interpret training batch of type {type(batch).__name__}")


def images_to_float(images: Tensor) -> Tensor:
    """uint8 0-255 or float 0-1 batch -> float32 in [0, 1] (the frontend contract)."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised SplitMix64 (uint64 arithmetic wraps modulo 2**64 by definition in numpy)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def flip_mask(indices: Tensor, *, seed: int, epoch: int) -> Tensor:
    """Which samples to mirror: a pure function of (seed, epoch, dataset index).

    Stateless on purpose: no RNG state in checkpoints, identical on resume, and independent
    of how samples are split over ranks, so a 2-process run flips exactly the samples a
    1-process run with the same global batch flips.
    """
    from .rng import derive_seed

    key = np.uint64(derive_seed("hflip", seed, epoch))
    idx = indices.detach().cpu().numpy().astype(np.uint64)
    h = _splitmix64(_splitmix64(idx ^ key) + key)
    return torch.from_numpy((h >> np.uint64(63)).astype(bool))


def apply_hflip(images: Tensor, mask: Tensor) -> Tensor:
    if not bool(mask.any()):
        return images
    mask = mask.to(images.device)
    return torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)
