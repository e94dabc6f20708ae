"""A site's evaluate round: the global model's training loss on a few local batches, through
the trainer's public ``batch_loss`` (no step, nothing of the site's state changes)."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("flwr.app")

from facepriv.federated import protocol as P  # noqa: E402


def test_evaluate_round_reports_the_mean_batch_loss_without_training(task_identity, tmp_path, monkeypatch,
                                                                        global_model_message):
    from flwr.app import Context, MessageType, RecordDict

    from facepriv.federated.client_app import evaluate_round
    from facepriv.training.trainer import Trainer

    seen: list[tuple[float, int, int]] = []
    original = Trainer.batch_loss

    def spy(self, batch):
        loss, n = original(self, batch)
        seen.append((float(loss), n, self.step))
        return loss, n

    monkeypatch.setattr(Trainer, "batch_loss", spy)
    msg = global_model_message(tmp_path, {P.EVAL_BATCHES: 3, P.DATA: json.dumps(
        {"format": "synthetic", "ids_per_client": 3, "images_per_identity": 2})}, MessageType.EVALUATE)
    ctx = Context(run_id=6, node_id=1, node_config={"partition-id": 0, "num-partitions": 1}, state=RecordDict(),
                  run_config={})

    metrics = evaluate_round(msg, ctx)[P.METRICS]

    assert len(seen) == 3 and all(step == 0 for _, _, step in seen)  # three batches, no step between them
    n = sum(c for _, c, _ in seen)
    assert metrics[P.NUM_EXAMPLES] == n == 12  # batch 4
    assert math.isfinite(metrics[P.EVAL_LOSS])
    assert metrics[P.EVAL_LOSS] == pytest.approx(sum(loss * c for loss, c, _ in seen) / n)
    assert len(ctx.state) == 0  # evaluating keeps nothing at the site
