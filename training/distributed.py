"""Process-group setup for torchrun: one code path for 1 CPU process up to N nodes x 8 GPUs.

torchrun (and SLURM + torchrun) export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; we read them rather than inventing flags, so the same script runs unchanged
under ``python -m facepriv.training.cli``, ``torchrun --nproc_per_node 8 ...`` and a multi-node
rendezvous. NCCL is used when every process owns a GPU, gloo otherwise (CPU tests/CI).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def resolve_device(preference: str = "auto", local_rank: int = 0, *, share_devices: bool = False) -> torch.device:
    """``auto`` picks this process's GPU (cuda:LOCAL_RANK) when CUDA is available.

    ``share_devices`` (gloo only: NCCL refuses two ranks on one GPU) lets more ranks than
    GPUs share them round-robin, e.g. a 2-rank DDP check on a one-GPU machine.
    """
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device: cuda requested but torch.cuda.is_available() is False (CPU-only torch build?)")
        n = torch.cuda.device_count()
        if local_rank >= n and share_devices and n > 0:
            return torch.device("cuda", local_rank % n)
        if local_rank >= n:
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {n} CUDA devices are visible")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device: str = "auto", backend: str = "auto", timeout_minutes: float = 30.0) -> DistEnv:
    """Initialise the default process group if launched by torchrun with WORLD_SIZE > 1.

    Safe to call when already initialised (returns the current environment) and in a plain
    single process (returns rank 0 of 1 without creating a group).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank, share_devices=backend == "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend())
    if world_size <= 1:
        return DistEnv(0, 1, local_rank, dev, None)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise RuntimeError("distributed.backend nccl needs one CUDA device per process; use gloo on CPU")
    kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(minutes=timeout_minutes)}
    if backend == "nccl":
        kwargs["device_id"] = dev
    dist.init_process_group(**kwargs)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_dist():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from ``src`` to every rank (e.g. the run folder name)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(values: list[float], device: torch.device) -> list[float]:
    """Average a few scalars over ranks (for logging only: never on the training path)."""
    if not is_dist() or not values:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= dist.get_world_size()
    return t.tolist()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not is_dist() or not values:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_true(flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` is true on every rank (used to agree on early stops)."""
    if not is_dist():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())
