"""``init_from``: a protected student starts from a trained RGB model's backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facepriv.models import FaceRecognizer
from facepriv.training.trainer import Trainer
from facepriv.training.warm_start import WarmStartError


@pytest.fixture
def rgb_checkpoint(tmp_path: Path, tiny_config) -> Path:
    t = Trainer(tiny_config(schedule={"max_steps": 2, "warmup_steps": 1}), run_dir=tmp_path / "rgb")
    t.fit()
    return tmp_path / "rgb" / "model.pt"


def test_dct_student_gets_the_rgb_backbone_but_a_fresh_stem(tmp_path: Path, tiny_config, rgb_checkpoint: Path) -> None:
    donor = FaceRecognizer.load(rgb_checkpoint).backbone.state_dict()
    cfg = tiny_config(frontend={"name": "dct"}, init_from=str(rgb_checkpoint), input_norm={"calibration_batches": 1})
    fresh = Trainer(tiny_config(frontend={"name": "dct"}, input_norm={"calibration_batches": 1}))
    warm = Trainer(cfg)
    got = warm.recognizer.backbone.state_dict()
    rep = warm.warm_start
    assert rep is not None and rep["source"] == str(rgb_checkpoint)
    # the stem sees 192 DCT channels instead of 3 RGB: its input convolution cannot transfer
    assert rep["reinitialised"] and all(got[k].shape != donor[k].shape for k in rep["reinitialised"])
    stem = rep["reinitialised"][0]
    assert torch.equal(got[stem], fresh.recognizer.backbone.state_dict()[stem])  # same seed: the fresh init
    moved = [k for k in got if k not in rep["reinitialised"]]
    assert len(moved) == rep["transferred_tensors"] > 10
    assert all(torch.equal(got[k].cpu(), donor[k]) for k in moved)
    assert 0.5 < rep["transferred_parameter_fraction"] < 1.0
    assert warm.summary()["warm_start"]["transferred_tensors"] == rep["transferred_tensors"]
    warm.run_steps(1)  # trains from there


@pytest.mark.parametrize("frontend", [{"name": "partialface", "upsample": 2}, {"name": "dctdp", "upsample": 1}])
def test_compact_layout_student_warm_starts_from_the_tface_rgb_model(tmp_path: Path, tiny_config, rgb_checkpoint: Path,
                                                                      frontend: dict) -> None:
    """A compact layout (28x28 / 14x14 maps) runs the first stages at stride 1 instead of
    changing shapes: everything but the stem transfers from the 112x112 RGB model."""
    donor = FaceRecognizer.load(rgb_checkpoint).backbone.state_dict()
    warm = Trainer(tiny_config(frontend=frontend, init_from=str(rgb_checkpoint), input_norm={"calibration_batches": 1}))
    bcfg = warm.recognizer.backbone.config
    face = warm.cfg.data.image_size
    assert bcfg["input_size"] == face * frontend["upsample"] // 8
    assert bcfg["strided_stages"] == {2: 2, 1: 1}[frontend["upsample"]]  # 4 strides less one per halving
    got = warm.recognizer.backbone.state_dict()
    rep = warm.warm_start
    assert rep["reinitialised"] == ["conv1.weight"]
    assert all(torch.equal(got[k].cpu(), donor[k]) for k in got if k != "conv1.weight")
    warm.run_steps(1)


def test_warm_start_errors_name_the_problem(tmp_path: Path, tiny_config, rgb_checkpoint: Path) -> None:
    with pytest.raises(WarmStartError, match="init_from: .*not a file"):
        Trainer(tiny_config(init_from=str(tmp_path / "missing.pt")))
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(WarmStartError, match="cannot load"):
        Trainer(tiny_config(init_from=str(bogus)))
    # another architecture shares (almost) nothing: a configuration mistake, refused
    with pytest.raises(WarmStartError, match="shares only"):
        Trainer(tiny_config(model={"name": "mobilefacenet", "width": 0.25, "embedding_size": 16, "norm": "group",
                                   "norm_groups": 2}, init_from=str(rgb_checkpoint)))


def test_resume_ignores_init_from(tmp_path: Path, tiny_config, rgb_checkpoint: Path) -> None:
    cfg = tiny_config(init_from=str(rgb_checkpoint), checkpoint={"every_steps": 1},
                      schedule={"max_steps": 2, "warmup_steps": 1})
    first = Trainer(cfg, run_dir=tmp_path / "run")
    assert first.warm_start is not None
    first.fit(max_steps=1)
    resumed = Trainer(cfg, run_dir=tmp_path / "run", resume="auto")
    assert resumed.warm_start is None and resumed.step == 1
