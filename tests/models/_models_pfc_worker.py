"""Worker for the 2-process Partial FC test (spawned by test_models_partial_fc.py).

Not a test module itself (no ``test_`` prefix): torch.multiprocessing.spawn needs the worker
function importable by module name in the child processes.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from facepriv.models import ArcFaceLoss, ChannelStandardize, PartialFC

WORLD = 2
DIM, CLASSES = 8, 11  # 11 classes over 2 ranks: uneven shards (6 + 5)
BATCH_SIZES = (3, 2)  # uneven local batches exercise the padded all-gather


def problem() -> dict[str, torch.Tensor]:
    """The shared global problem every process (and the single-process reference) uses."""
    g = torch.Generator().manual_seed(1234)
    n = sum(BATCH_SIZES)
    return {
        "embeddings": torch.randn(n, DIM, generator=g, dtype=torch.float64) * 2,
        "labels": torch.tensor([3, 7, 10, -1, 3]),  # both shards, a repeat and an ignored sample
        "weight": torch.randn(CLASSES, DIM, generator=g, dtype=torch.float64),
        "calib": torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64) * 100 + 1000,
    }


def margin() -> ArcFaceLoss:
    return ArcFaceLoss(s=16.0, m=0.3)


def _local_rows(rank: int) -> slice:
    start = sum(BATCH_SIZES[:rank])
    return slice(start, start + BATCH_SIZES[rank])


def _run_case(rank: int, data: dict[str, torch.Tensor], sample_rate: float) -> dict[str, torch.Tensor]:
    head = PartialFC(margin(), DIM, CLASSES, sample_rate, seed=5).double()
    assert head.distributed and head.world_size == WORLD and head.rank == rank
    with torch.no_grad():
        head.weight.copy_(data["weight"][head.class_start : head.class_start + head.num_local])
    emb = data["embeddings"][_local_rows(rank)].clone().requires_grad_()
    loss = head(emb, data["labels"][_local_rows(rank)])
    loss.backward()
    return {
        "loss": loss.detach(),
        "emb_grad": emb.grad.detach(),
        "weight_grad": head.weight.grad.detach(),
        "class_start": torch.tensor(head.class_start),
        "sampled_classes": head.sampled_classes.detach(),
        "gathered_weight": head.gather_weight(),
    }


def run(rank: int, store_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD)
    try:
        data = problem()
        result = {
            "full": _run_case(rank, data, 1.0),
            "sampled": _run_case(rank, data, 0.4),
        }
        norm = ChannelStandardize(4)
        half = data["calib"][rank * 3 : rank * 3 + 3]
        norm.calibrate([half[:1], half[1:]], distributed=True)
        result["calib"] = {"mean": norm.mean.clone(), "std": norm.std.clone()}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
