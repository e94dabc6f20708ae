"""The stepping piece (``training/step.py``) behind ``Trainer.train_step`` and ``Trainer.batch_loss``."""

from __future__ import annotations

import pytest
import torch

from facepriv.training.batches import Batch, as_batch, images_to_float
from facepriv.training.trainer import Trainer


def test_batch_loss_is_the_training_loss_without_a_step(tiny_config) -> None:
    trainer = Trainer(tiny_config())
    batch = as_batch(trainer.next_batch())
    weights = {k: v.clone() for k, v in trainer.recognizer.state_dict().items()}
    head = {k: v.clone() for k, v in trainer.head.state_dict().items()}
    lr = trainer.current_lrs()

    loss, n = trainer.batch_loss(batch)

    assert n == int(batch.labels.numel()) == 8 and loss.dim() == 0 and torch.isfinite(loss)
    # nothing stepped: weights, head, optimiser, schedule, progress, train mode
    assert all(torch.equal(v, trainer.recognizer.state_dict()[k]) for k, v in weights.items())
    assert all(torch.equal(v, trainer.head.state_dict()[k]) for k, v in head.items())
    assert trainer.optimizer.state_dict()["state"] == {} and trainer.current_lrs() == lr
    assert trainer.step == 0 and trainer.recognizer.training and not loss.requires_grad
    # it is the training objective of the deployed (eval-mode) model on that batch
    trainer.recognizer.eval()
    with torch.no_grad():
        emb = trainer.recognizer(images_to_float(batch.images), batch.labels)
        expected = trainer.head(emb.float(), batch.labels)
    torch.testing.assert_close(loss, expected.float())
    # an empty batch (every image failed to load) has no loss and no images
    empty = Batch(batch.images[:0], batch.labels[:0], batch.indices[:0], 8)
    assert trainer.batch_loss(empty)[1] == 0
    trainer.close()


def test_consecutive_nonfinite_steps_stop_the_run_with_a_clear_error(tiny_config, monkeypatch) -> None:
    from facepriv.training import step as step_mod

    monkeypatch.setattr(step_mod, "MAX_NONFINITE_STREAK", 3)
    trainer = Trainer(tiny_config(schedule={"max_steps": 10}))
    with torch.no_grad():
        next(trainer.recognizer.backbone.parameters()).fill_(float("nan"))
    results = trainer.run_steps(2)
    assert all(r.skipped and r.nonfinite for r in results) and trainer.nonfinite_steps == 2
    with pytest.raises(FloatingPointError, match=r"3 consecutive steps had NaN/inf gradients \(step 3\)"):
        trainer.run_steps(1)
    trainer.close()


def test_what_the_trainer_holds_is_what_a_step_uses(tiny_config) -> None:
    """Optimiser, schedule and modules have one copy (on the stepper): assigning one on the
    trainer (as a fork does with the schedule) changes what the next step runs."""
    trainer = Trainer(tiny_config())
    schedule = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda step: 0.5)
    trainer.scheduler = schedule
    trainer.train_step(trainer.next_batch())
    assert trainer.stepper.scheduler is schedule and schedule.last_epoch == 1
    assert trainer.model is trainer.recognizer and trainer.head_module is trainer.head  # one process: no DDP
    trainer.close()
