"""Distillation: a student on protected tensors learns to reproduce a teacher's embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from facepriv.training.batches import images_to_float
from facepriv.training.distill import DistillTargets, teacher_identity
from facepriv.training.trainer import Trainer


class ToyTeacher:
    """A fixed random projection of 4x4-pooled RGB: a deterministic "face embedding"."""

    teacher_id = "toy-projection-v1"

    def __init__(self, dim: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(3 * 8 * 8, dim, generator=g)
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        pooled = F.adaptive_avg_pool2d(images, 8).flatten(1)
        return (pooled - pooled.mean(dim=1, keepdim=True)) @ self.weight


def _cosine_gap(trainer: Trainer, teacher: ToyTeacher) -> float:
    """Mean 1 - cos(student, teacher) over the training images, through the deployment path."""
    images = torch.stack([images_to_float(trainer.dataset[i][0][None])[0] for i in range(len(trainer.dataset))])
    student = trainer.recognizer.embed(images)
    target = F.normalize(teacher(images), dim=1)
    return float((1 - (student * target).sum(dim=1)).mean())


def test_distillation_reduces_cosine_loss(tmp_path: Path, tiny_config) -> None:
    teacher = ToyTeacher()
    cfg = tiny_config(
        frontend={"name": "partialface", "sample_multiplier": 2, "secret_seed": 3},
        input_norm={"calibration_batches": 2},
        distill={"enabled": True, "cosine_weight": 1.0, "head_weight": 0.0, "batch_size": 32},
        optim={"name": "adamw", "lr": 0.01, "weight_decay": 0.0},
        schedule={"max_steps": 60, "warmup_steps": 0, "type": "constant"},
        data={"format": "synthetic", "synthetic": {"n_identities": 8, "images_per_identity": 8, "cache": True},
              "image_size": 32, "batch_size": 16, "num_workers": 0, "hflip": False},
        logging={"every_steps": 10, "progress": False},
    )
    trainer = Trainer(cfg, run_dir=tmp_path / "run", teacher=teacher)
    assert trainer.head is None  # pure distillation: no margin head
    calls = teacher.calls
    before = _cosine_gap(trainer, teacher)
    trainer.fit()
    after = _cosine_gap(trainer, teacher)
    assert after < 0.5 * before, (before, after)

    # the cache was written with the file list and the teacher's identity, and is reused
    cache = tmp_path / "run" / "teacher_embeddings.safetensors"
    assert cache.is_file() and cache.with_suffix(".keys.txt").is_file()
    keys = cache.with_suffix(".keys.txt").read_text().splitlines()
    assert len(keys) == len(trainer.dataset)
    again = Trainer(cfg, run_dir=tmp_path / "run", teacher=teacher)
    assert teacher.calls == calls + 2  # only the two _cosine_gap calls: the cache was reused
    assert torch.equal(again.distill.embeddings, trainer.distill.embeddings)

    # a different teacher invalidates the cache instead of silently reusing it
    other = ToyTeacher(seed=1)
    other.teacher_id = "toy-projection-v2"
    third = Trainer(cfg, run_dir=tmp_path / "run", teacher=other)
    assert other.calls > 0 and not torch.equal(third.distill.embeddings, trainer.distill.embeddings)


def test_distill_rejects_mismatched_embedding_size(tiny_config) -> None:
    cfg = tiny_config(distill={"enabled": True}, schedule={"max_steps": 1})
    with pytest.raises(ValueError, match="teacher's embeddings have 8 dimensions"):
        Trainer(cfg, teacher=ToyTeacher(dim=8))


def test_teacher_identity_of_a_checkpoint_hashes_its_content(tmp_path: Path) -> None:
    a = tmp_path / "a.pt"
    a.write_bytes(b"weights-1")
    first = teacher_identity(a)
    a.write_bytes(b"weights-2")
    assert teacher_identity(a) != first and first.startswith("checkpoint:a.pt:sha256=")
    assert DistillTargets.read_cache(tmp_path / "missing.safetensors", "t", "h", 1) is None


def test_centering_removes_the_common_teacher_direction() -> None:
    import torch
    import torch.nn.functional as F

    from facepriv.training.distill import center_embeddings

    g = torch.Generator().manual_seed(0)
    common = F.normalize(torch.randn(1, 16, generator=g), dim=1)
    emb = F.normalize(3.0 * common + 0.5 * torch.randn(200, 16, generator=g), dim=1)  # dlib-like: shared direction
    emb[7] = 0.0  # an unreadable sample
    raw_cos = (emb[:100] @ emb[100:].T).mean()
    out = center_embeddings(emb)
    assert raw_cos > 0.6 and abs(float((out[:100] @ out[100:].T).mean())) < 0.05
    assert torch.equal(out[7], torch.zeros(16))
    ok = torch.ones(200, dtype=torch.bool)
    ok[7] = False
    assert torch.allclose(out[ok].norm(dim=1), torch.ones(199), atol=1e-5)


def test_dlib_teacher_resolves_from_its_config_string() -> None:
    import pytest
    import torch

    pytest.importorskip("dlib")
    from facepriv.training.distill import resolve_teacher, teacher_identity

    teacher = resolve_teacher("dlib", torch.device("cpu"))
    emb = teacher(torch.rand(2, 3, 112, 112))
    assert emb.shape == (2, 128) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    assert teacher_identity(teacher).startswith("judge:") and "dlib" in teacher_identity(teacher)


class _Files(torch.utils.data.Dataset):
    """Items ``(uint8 image, label, index)`` named by fake file paths (``samples``), the
    interface distillation caches key on."""

    def __init__(self, names: list[str]) -> None:
        self.samples = [(n, i) for i, n in enumerate(names)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(int(self.samples[i][0].split("_")[-1]))
        return torch.randint(0, 256, (3, 16, 16), generator=g, dtype=torch.uint8), i, i


def test_a_cache_folder_serves_a_subset_from_a_covering_cache(tmp_path: Path, tiny_config) -> None:
    """A federated site's share of images that the data owner already embedded centrally
    gets its rows from the central cache (no teacher call), in the site's own order; a key
    list that no longer matches its cache's hash is not trusted."""
    from facepriv.training.distributed import DistEnv

    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    cfg = tiny_config(distill={"enabled": True, "cache": str(tmp_path / "teacher") + "/", "center": False})
    teacher = ToyTeacher()
    names = [f"id{i // 3}/img_{i}" for i in range(12)]
    full = DistillTargets.prepare(cfg, _Files(names), teacher=teacher, run_dir=None, env=env, device=torch.device("cpu"))
    calls = teacher.calls
    site_names = [names[i] for i in (9, 4, 5, 0)]
    site = DistillTargets.prepare(cfg, _Files(site_names), teacher=teacher, run_dir=None, env=env,
                                  device=torch.device("cpu"))
    assert teacher.calls == calls
    assert torch.equal(site.embeddings, full.embeddings[[9, 4, 5, 0]])
    assert len(list((tmp_path / "teacher").glob("teacher_*.safetensors"))) == 2  # the site's own file, for next time
    # a key outside every cache: the teacher runs
    DistillTargets.prepare(cfg, _Files(site_names[:2] + ["id9/img_99"]), teacher=teacher, run_dir=None, env=env,
                           device=torch.device("cpu"))
    assert teacher.calls > calls
    # a tampered key list (order swapped) no longer matches its hash: skipped
    for keys_file in (tmp_path / "teacher").glob("*.keys.txt"):
        lines = keys_file.read_text().splitlines()
        keys_file.write_text("\n".join([lines[1], lines[0]] + lines[2:]) + "\n")
    assert DistillTargets.read_covering_cache(tmp_path / "teacher", teacher.teacher_id, site_names) is None
