"""Data plumbing: sharded sampler, flips, and runs that survive corrupt images."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from facepriv.training.batches import SafeDataset, collate_samples, flip_mask
from facepriv.training.sampler import ShardedBatchSampler
from facepriv.training.trainer import Trainer


def test_shards_partition_the_single_process_batches() -> None:
    single = list(ShardedBatchSampler(50, 8, world_size=1, seed=3, epoch=2))
    r0 = list(ShardedBatchSampler(50, 4, world_size=2, rank=0, seed=3, epoch=2))
    r1 = list(ShardedBatchSampler(50, 4, world_size=2, rank=1, seed=3, epoch=2))
    assert len(single) == len(r0) == len(r1) == 6  # 50 // 8, incomplete last global batch dropped
    for s, a, b in zip(single, r0, r1):
        assert s == a + b
    # a new epoch reshuffles; resuming mid-epoch continues the same order
    assert single != list(ShardedBatchSampler(50, 8, seed=3, epoch=3))
    assert list(ShardedBatchSampler(50, 8, seed=3, epoch=2, start_batch=4)) == single[4:]


def test_flips_depend_only_on_seed_epoch_and_index() -> None:
    idx = torch.arange(64)
    full = flip_mask(idx, seed=1, epoch=0)
    assert torch.equal(torch.cat([flip_mask(idx[:32], seed=1, epoch=0), flip_mask(idx[32:], seed=1, epoch=0)]), full)
    assert not torch.equal(full, flip_mask(idx, seed=1, epoch=1))
    assert 16 < int(full.sum()) < 48


def test_safe_dataset_drops_bad_samples_with_a_count() -> None:
    class Flaky(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int):
            if i == 1:
                raise OSError("disk hiccup on face_0001.jpg")
            if i == 2:
                return torch.full((3, 8, 8), float("nan")), 0
            return torch.rand(3, 8, 8), i

    ds = SafeDataset(Flaky(), image_size=8)
    batch = collate_samples([ds[i] for i in range(4)])
    assert batch.num_bad == 2 and batch.indices.tolist() == [0, 3] and batch.images.shape == (2, 3, 8, 8)


def test_training_survives_corrupt_image_files(tmp_path: Path, tiny_config) -> None:
    from facepriv.data.synthetic import write_folder

    root = tmp_path / "faces"
    write_folder(root, 4, 8, seed=0, image_size=32, progress=False)
    files = sorted(root.rglob("*.jpg"))
    files[0].write_bytes(files[0].read_bytes()[:200])  # truncated JPEG
    files[9].write_bytes(b"this is not an image")
    cfg = tiny_config(data={"format": "folder", "path": str(root), "image_size": 32, "batch_size": 16,
                            "num_workers": 0}, schedule={"max_steps": 4})
    summary = Trainer(cfg, run_dir=tmp_path / "run").fit()
    assert summary["step"] == 4 and summary["bad_samples"] >= 2
    with open(tmp_path / "run" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert int(rows[-1]["bad_samples_total"]) >= 2
    failures = (tmp_path / "run" / "data_failures.rank0.jsonl").read_text()
    assert files[0].name in failures and files[9].name in failures


def test_periodic_verification_on_a_bin_set(tmp_path: Path, tiny_config) -> None:
    """An insightface-style .bin set is evaluated every N steps and logged to eval_log.csv."""
    import numpy as np

    from facepriv.data.synthetic import SyntheticFaces
    from facepriv.data.verification import make_pairs, write_bin

    faces = SyntheticFaces(20, 3, seed=5, image_size=32, first_identity=100)  # people not in training
    pairs, same, _ = make_pairs(faces.targets, n_folds=10, pairs_per_fold=4, seed=0)
    images = faces.as_array()
    write_bin(tmp_path / "heldout.bin", [images[i] for ab in pairs for i in ab], same.tolist())
    cfg = tiny_config(schedule={"max_steps": 4},
                      eval={"every_steps": 2, "sets": [{"name": "heldout", "path": str(tmp_path / "heldout.bin")}]})
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    summary = trainer.fit()
    with open(tmp_path / "run" / "eval_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["step"], r["set"], r["pairs"]) for r in rows] == [("2", "heldout", "40"), ("4", "heldout", "40")]
    acc = summary["verification"]["heldout"]["accuracy"]
    assert 0.0 <= acc <= 1.0 and np.isfinite(float(rows[-1]["auc"]))
