"""Exact resume: an interrupted run, resumed from its checkpoint, ends bit-identical to an
uninterrupted one. Uses PartialFace (its subset draws come from a generator that must be
checkpointed), dropout (torch's global RNG), flips and an epoch boundary after the resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

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


# --------------------------------------------------------------------------- lineage: refuse, fork, branch


def _lineage_cfg(tiny_config, **kw):
    kw.setdefault("schedule", {"max_steps": 6, "warmup_steps": 1})
    kw.setdefault("checkpoint", {"every_steps": 2, "keep_last": 3})
    return tiny_config(**kw)


def test_resume_with_changed_settings_is_refused_and_a_fork_applies_them(tmp_path: Path, tiny_config) -> None:
    from facepriv.training.lineage import ResumeError

    src = tmp_path / "src"
    Trainer(_lineage_cfg(tiny_config), run_dir=src).fit(max_steps=4)
    before = sorted(p.name for p in ckpt.list_checkpoints(src))

    changed = _lineage_cfg(tiny_config, optim={"lr": 0.2}, schedule={"max_steps": 10, "warmup_steps": 1})
    with pytest.raises(ResumeError, match=r"optim\.lr: 0\.05 -> 0\.2.*schedule\.max_steps: 6 -> 10.*--fork"):
        Trainer(changed, run_dir=src, resume="auto")
    # what does not change the training may differ
    free = _lineage_cfg(tiny_config, logging={"every_steps": 3, "progress": False}, checkpoint={"every_steps": 1, "keep_last": 5})
    assert Trainer(free, run_dir=src, resume="auto").step == 4

    with pytest.raises(ResumeError, match="new run folder"):
        Trainer(changed, run_dir=src, resume=src, fork=True)
    with pytest.raises(ResumeError, match=r"cannot fork with a different model\.embedding_size"):
        Trainer(_lineage_cfg(tiny_config, model={**changed.model, "embedding_size": 32}),
                run_dir=tmp_path / "bad", resume=src, fork=True)

    fork = Trainer(changed, run_dir=tmp_path / "fork", resume=src, fork=True)
    assert fork.step == 4 and fork.total_steps == 10
    # the new schedule continues at step 4: poly decay of the new peak lr over 10 steps
    expected = 0.2 * fork.scheduler.lr_lambdas[0](4)
    assert fork.current_lrs()["backbone"] == pytest.approx(expected)
    fork.fit()
    assert fork.step == 10
    written = yaml.safe_load((tmp_path / "fork" / "config.yaml").read_text())
    assert written["optim"]["lr"] == 0.2 and written["schedule"]["max_steps"] == 10
    events = json.loads((tmp_path / "fork" / "lineage.json").read_text())
    assert events[-1]["start"] == "fork" and events[-1]["from"].endswith("step_00000004")
    assert events[-1]["changed"]["optim.lr"] == [0.05, 0.2]
    assert sorted(p.name for p in ckpt.list_checkpoints(src)) == before  # the source run is untouched


def test_resume_from_an_older_checkpoint_branches_without_pruning_or_losing_anything(tmp_path: Path, tiny_config) -> None:
    run = tmp_path / "run"
    Trainer(_lineage_cfg(tiny_config), run_dir=run).fit()
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000002", "step_00000004", "step_00000006"]
    assert (run / "model.pt").is_file()

    start = ckpt.checkpoint_dir(run, 2)
    branch = Trainer(_lineage_cfg(tiny_config, checkpoint={"every_steps": 1, "keep_last": 1}), run_dir=run, resume=start)
    branch.fit(max_steps=2)  # steps 3 and 4 of the new lineage; keep_last=1 prunes all but the newest...
    # ...except the checkpoint this run started from
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000002", "step_00000004"]
    # the abandoned lineage's newer checkpoints and its final model are set aside, not deleted
    (aside,) = (run / "abandoned").iterdir()
    assert sorted(p.name for p in (aside / "checkpoints").iterdir()) == ["step_00000004", "step_00000006"]
    assert (aside / "model.pt").is_file() and not (run / "model.pt").exists()

    # a plain --resume continues the new lineage (step 4 written by the branch), not step 6
    again = Trainer(_lineage_cfg(tiny_config), run_dir=run, resume="auto")
    assert again.step == 4
    shared = torch.load(ckpt.latest_checkpoint(run) / "shared.pt", weights_only=True)
    assert shared["lineage"]["started_from"] == str(start)
    # the branch's logs end at its own step 4 (rows of the abandoned steps 5-6 are gone)
    assert [int(s) for s, _ in _losses(run)] == [1, 2, 3, 4]


def test_a_fresh_start_in_a_used_run_folder_sets_the_old_run_aside(tmp_path: Path, tiny_config) -> None:
    run = tmp_path / "run"
    Trainer(_lineage_cfg(tiny_config, schedule={"max_steps": 2}), run_dir=run).fit()
    Trainer(_lineage_cfg(tiny_config, schedule={"max_steps": 4}), run_dir=run).fit(max_steps=1)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000001"]
    (aside,) = (run / "abandoned").iterdir()
    assert [p.name for p in (aside / "checkpoints").iterdir()] == ["step_00000002"]
    assert [int(s) for s, _ in _losses(aside)] == [1, 2] and [int(s) for s, _ in _losses(run)] == [1]


def test_a_run_whose_weights_blow_up_fails_instead_of_exporting_nan(tmp_path: Path, tiny_config) -> None:
    """(A NaN lr is refused at config load; this is the same end state reached by divergence.)"""
    trainer = Trainer(tiny_config(schedule={"max_steps": 3}), run_dir=tmp_path / "run")
    trainer.fit(max_steps=1)
    with torch.no_grad():
        next(trainer.recognizer.backbone.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"NaN/inf at step 3 .*backbone"):
        trainer.fit()
    assert not (tmp_path / "run" / "model.pt").exists()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step_00000001"]  # the last good one


def test_training_state_files_are_owner_only(tmp_path: Path, tiny_config) -> None:
    """Checkpoint files carry the frontend's secrets and DP randomness: 0600, like a key."""
    import stat

    t = Trainer(tiny_config(frontend={"name": "partialface", "sample_multiplier": 2},
                            schedule={"max_steps": 2, "warmup_steps": 1}, checkpoint={"every_steps": 1}),
                run_dir=tmp_path / "run")
    t.fit()
    files = [p for p in (tmp_path / "run" / "checkpoints").rglob("*.pt")]
    assert files
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), {p.name: oct(p.stat().st_mode) for p in files}


def test_checkpoint_files_keep_their_layout(tmp_path: Path, tiny_config) -> None:
    """The keys of a checkpoint's rank and shared files: checkpoints written before the trainer
    was split into build / step / evaluate / persist must keep loading, and vice versa."""
    t = Trainer(tiny_config(schedule={"max_steps": 1, "warmup_steps": 0}), run_dir=tmp_path / "run")
    t.fit()
    (path,) = ckpt.list_checkpoints(tmp_path / "run")
    rank = ckpt.safe_load(ckpt.rank_file(path, 0))
    shared = ckpt.safe_load(path / "shared.pt")
    assert sorted(rank) == sorted(["format", "version", "rank", "head", "optimizer", "scaler", "scheduler", "progress",
                                   "rng", "sampler", "bad_samples", "substituted_samples", "nonfinite_steps", "dp",
                                   "distill"])
    assert sorted(shared) == sorted(["format", "version", "frontend_config", "backbone_config", "scheduler", "progress",
                                     "world_size", "num_classes", "num_samples", "config", "epsilon", "lineage"])
    assert (rank["format"], rank["version"]) == (ckpt.FORMAT, 1) and rank["progress"] == shared["progress"] == {
        "step": 1, "epoch": 0, "batch_in_epoch": 1}
    assert shared["lineage"] == {"started_from": None, "fork": False}
    assert sorted(t.state_dict()) == sorted(k for k in rank if k not in ("format", "version", "rank"))
