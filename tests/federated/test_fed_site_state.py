"""The private site state is ``Trainer.state_dict()`` + frontend buffers, versioned: states
written before the version key (``progress`` as a tuple) still load, newer versions are
refused with a message naming the version."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("flwr.app")

from facepriv.federated import protocol as P  # noqa: E402


def _round(tmp_path, global_model_message, ctx):
    from flwr.app import MessageType

    from facepriv.federated.client_app import train_round

    msg = global_model_message(tmp_path, {P.LOCAL_STEPS: 2, P.DATA: json.dumps(
        {"format": "synthetic", "ids_per_client": 3, "images_per_identity": 2})}, MessageType.TRAIN)
    return train_round(msg, ctx)


def _ctx(tmp_path):
    from flwr.app import Context, RecordDict

    return Context(run_id=4, node_id=1, node_config={"partition-id": 0, "num-partitions": 1,
                                                     "state-dir": str(tmp_path / "site")},
                   state=RecordDict(), run_config={})


def test_site_state_versions(task_identity, tmp_path, global_model_message):
    from facepriv.federated.site import SITE_STATE_VERSION, load_site_state, save_site_state, state_file

    ctx = _ctx(tmp_path)
    _round(tmp_path, global_model_message, ctx)
    path = state_file(ctx.node_config, str(ctx.run_id))
    state = load_site_state(path)
    assert state["site_state_version"] == SITE_STATE_VERSION and state["progress"]["step"] == 2

    # version 1 (before Trainer.state_dict): no version key, progress a tuple -> continues at step 2
    old = {k: v for k, v in state.items() if k != "site_state_version"}
    pr = state["progress"]
    old["progress"] = (pr["step"], pr["epoch"], pr["batch_in_epoch"])
    save_site_state(old, path)
    restarted = _ctx(tmp_path)  # Context.state lost: the site reads state-dir
    _round(tmp_path, global_model_message, restarted)
    assert load_site_state(path)["progress"]["step"] == 4

    save_site_state({**state, "site_state_version": 99}, path)
    with pytest.raises(ValueError, match="version 99"):
        _round(tmp_path, global_model_message, _ctx(tmp_path))
