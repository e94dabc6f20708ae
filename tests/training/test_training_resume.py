"""Exact resume: an interrupted run, resumed from its checkpoint, ends bit-identical to an
uninterrupted one. Uses PartialFace (its subset draws come from a generator that must be
checkpointed), dropout (torch's global RNG), flips and an epoch boundary after the resume."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from facepriv.training import checkpoint as ckpt
from facepriv.training.trainer import Trainer


def _cfg(tiny_config, **kw):
    return tiny_config(
        frontend={"name": "partialface", "secret_seed": 11, "sample_multiplier": 2, "train_seed": 5},
        model={"name": "iresnet18", "width": 0.0625, "embedding_size": 16, "norm": "batch", "dropout": 0.2},
        input_norm={"calibration_batches": 2},
        optim={"lr": 0.05, "name": "sgd", "clip_grad_norm": 5.0},
        schedule={"max_steps": 10, "warmup_steps": 2},  # 8 steps per epoch: crosses into epoch 1
        **kw,
    )


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.clone() for k, v in trainer.recognizer.state_dict().items()}
    out.update({f"head.{k}": v.clone() for k, v in trainer.head.state_dict().items()})
    for i, st in trainer.optimizer.state_dict()["state"].items():
        out[f"opt.{i}"] = st["momentum_buffer"].clone()
    return out


def _losses(run: Path) -> list[str]:
    with open(run / "train_log.csv") as fh:
        return [(r["step"], r["loss"]) for r in csv.DictReader(fh)]


def test_interrupted_and_resumed_run_is_bitwise_identical(tmp_path: Path, tiny_config) -> None:
    full = Trainer(_cfg(tiny_config), run_dir=tmp_path / "full")
    full.fit()
    reference = _state(full)

    # The second run dies (simulated crash) at step 7, after a checkpoint at step 6.
    cfg = _cfg(tiny_config, checkpoint={"every_steps": 3, "keep_last": 1})
    crashing = Trainer(cfg, run_dir=tmp_path / "crash")
    original = crashing.train_step

    def crash_after_6(batch):
        if crashing.step == 7:
            raise KeyboardInterrupt("simulated preemption")
        return original(batch)

    crashing.train_step = crash_after_6  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        crashing.fit()
    ckpts = ckpt.list_checkpoints(tmp_path / "crash")
    assert [p.name for p in ckpts] == ["step_00000006"]  # keep_last=1 pruned step 3
    assert not list((tmp_path / "crash" / "checkpoints").glob("*.partial"))
    # every checkpoint carries a deployable model (frontend secret included)
    from facepriv.models import FaceRecognizer

    saved = FaceRecognizer.load(ckpts[0] / "model.pt")
    assert saved.frontend.config["secret_seed"] == 11 and saved.extra["step"] == 6

    resumed = Trainer(cfg, run_dir=tmp_path / "crash", resume="auto")
    assert (resumed.step, resumed.epoch, resumed.batch_in_epoch) == (6, 0, 6)
    resumed.fit()
    assert resumed.step == 10
    final = _state(resumed)

    assert final.keys() == reference.keys()
    different = [k for k in reference if not torch.equal(reference[k], final[k])]
    assert not different, f"resumed run differs in {different[:5]}"
    # the logs read as if the run had never stopped
    assert _losses(tmp_path / "crash") == _losses(tmp_path / "full")


def test_resume_refuses_mismatched_world_size_and_bad_files(tmp_path: Path, tiny_config) -> None:
    cfg = tiny_config(schedule={"max_steps": 2})
    Trainer(cfg, run_dir=tmp_path / "run").fit()
    last = ckpt.latest_checkpoint(tmp_path / "run")
    shared = torch.load(last / "shared.pt", weights_only=True)
    shared["world_size"] = 4
    torch.save(shared, last / "shared.pt")
    with pytest.raises(RuntimeError, match="written by 4 processes"):
        Trainer(cfg, run_dir=tmp_path / "run", resume="auto")

    (last / "shared.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        # an empty run folder has nothing to resume
        Trainer(cfg, run_dir=tmp_path / "empty", resume="auto")
    with pytest.raises(RuntimeError, match="cannot load checkpoint .*shared.pt"):
        Trainer(cfg, run_dir=tmp_path / "run", resume=last)


def test_checkpoint_loading_refuses_pickled_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "payload": Evil()}, path)
    with pytest.raises(RuntimeError, match="cannot load checkpoint"):
        ckpt.safe_load(path)


def test_training_checkpoints_are_not_unpickled_on_vulnerable_torch(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "state.pt"
    torch.save({"format": ckpt.FORMAT, "x": torch.zeros(2)}, path)
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(RuntimeError, match=r"state\.pt: refusing to unpickle .*torch 2\.5\.1"):
        ckpt.safe_load(path)
    monkeypatch.undo()
    assert torch.equal(ckpt.safe_load(path)["x"], torch.zeros(2))
