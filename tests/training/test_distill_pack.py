"""``distill.teacher: pack:DIR``: train on a pack's train.rec against its precomputed teacher rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facepriv.data import write_folder
from facepriv.data.pack import Pack, write_pack
from facepriv.data.verification import pairs_txt_for_folder
from facepriv.training.trainer import Trainer


def _teacher(images: torch.Tensor) -> torch.Tensor:
    proj = torch.randn(48, 16, generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.adaptive_avg_pool2d(images, 4).flatten(1) @ proj


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("distill_pack")
    write_folder(root / "train", 8, 4, seed=0, image_size=32, progress=False)
    write_folder(root / "test", 6, 3, seed=0, image_size=32, first_identity=100, progress=False)
    pairs = pairs_txt_for_folder(root / "test", root / "pairs.txt", n_folds=1, per_fold=4)
    write_pack(root / "pack", root / "train", pairs, root / "test", teacher=_teacher, teacher_info={"kind": "toy"},
               progress=False)
    return root / "pack"


def test_pack_teacher_serves_its_rows_without_running_a_model(pack: Path, tiny_config) -> None:
    cfg = tiny_config(data={"format": "recordio", "path": str(pack / "train.rec"), "image_size": 32, "batch_size": 8,
                            "num_workers": 0},
                      distill={"enabled": True, "teacher": f"pack:{pack}", "center": False, "head_weight": 0.0})
    t = Trainer(cfg)
    want = Pack(pack).teacher_embeddings()
    got = t.distill.targets(torch.arange(len(want))).cpu()
    assert torch.allclose(got, want, atol=1e-6)
    assert t.distill.identity()["teacher"].startswith("pack:")
    t.run_steps(1)


def test_pack_teacher_refuses_another_dataset(pack: Path, tmp_path: Path, tiny_config) -> None:
    write_folder(tmp_path / "other", 8, 4, seed=1, image_size=32, progress=False)
    cfg = tiny_config(data={"format": "folder", "path": str(tmp_path / "other"), "image_size": 32, "batch_size": 8,
                            "num_workers": 0},
                      distill={"enabled": True, "teacher": f"pack:{pack}", "head_weight": 0.0})
    with pytest.raises(ValueError, match="its embeddings are for the 32 records of .*train.rec; this dataset"):
        Trainer(cfg)
