"""MinusFace in a federated round: the generator's weights are learnable parameters, so they
travel (and are averaged) like the backbone's; the secret subset table and the fixed channel
gains are buffers re-derived from the config, so they never leave a site."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

flwr_app = pytest.importorskip("flwr.app")
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict  # noqa: E402

from facepriv.federated.arrays import (  # noqa: E402
    load_frontend_buffers, load_shared_state, shared_keys, shared_state, state_to_numpy,
)
from facepriv.federated.protocol import numpy_to_record, record_to_numpy  # noqa: E402

FRONTEND = {"name": "minusface", "secret_seed": 21, "train_seed": 2, "sample_multiplier": 1, "generator_width": 4}


def _global_model(tmp_path, tiny_cfg):
    from facepriv.federated.server_app import FedSettings, build_global_model

    cfg = tiny_cfg()
    cfg["frontend"] = dict(FRONTEND)
    return build_global_model(FedSettings(train_config=cfg, out=str(tmp_path), strategy="fedavg"))


def test_generator_parameters_travel_and_secrets_stay(tmp_path, tiny_cfg):
    model, _ = _global_model(tmp_path, tiny_cfg)
    keys = shared_keys(model)
    generator = {f"frontend.generator.{k}" for k, _ in model.frontend.generator.named_parameters()}
    assert generator <= set(keys)  # every learnable generator tensor is shared
    assert not [k for k in keys if k.startswith("frontend.") and k not in generator]  # and nothing else of the frontend
    buffers = {k for k, _ in model.frontend.named_buffers()}
    assert {"subset_table", "permutations", "generator.gain"} <= buffers and not buffers & {k[len("frontend."):] for k in keys}
    # a site with the same config receives exactly the server's generator; its own buffers survive a site-state restore
    other, _ = _global_model(tmp_path, tiny_cfg)
    with torch.no_grad():
        for p in model.frontend.generator.parameters():
            p.add_(0.5)
    load_shared_state(other, state_to_numpy(shared_state(model)))
    for a, b in zip(other.frontend.generator.parameters(), model.frontend.generator.parameters()):
        assert torch.equal(a, b)
    saved = {k: v.clone() for k, v in other.frontend.named_buffers()}
    load_frontend_buffers(other.frontend, saved)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model.eval(), other.eval()
    with torch.no_grad():
        assert torch.equal(other.frontend(images, subset=3), model.frontend(images, subset=3))


def test_a_site_round_trains_the_generator_and_replies_with_it(task_identity, tmp_path, tiny_cfg):
    """The real client round: the reply carries the shared keys only, the generator in it has moved
    (the reconstruction loss and the recognition loss both train it at the site), and the site's
    state keeps the frontend buffers (secret table) that the reply never carries."""
    from facepriv.federated.client_app import _site_state, train_round

    model, cfg_dict = _global_model(tmp_path, tiny_cfg)
    with torch.no_grad():  # a generator that already subtracts, as after earlier rounds
        model.frontend.generator.head_weight.normal_(std=0.1, generator=torch.Generator().manual_seed(1))
    sent = state_to_numpy(shared_state(model))
    conf = ConfigRecord({"train-config": json.dumps(cfg_dict), "local-steps": 2, "strategy": "fedavg",
                         "data": json.dumps({"format": "synthetic", "ids_per_client": 3, "images_per_identity": 2})})
    ctx = Context(run_id=5, node_id=9, node_config={"partition-id": 0, "num-partitions": 2, "state-dir": str(tmp_path / "site")},
                  state=RecordDict(), run_config={})
    msg = Message(RecordDict({"arrays": numpy_to_record(sent), "config": conf}), dst_node_id=9, message_type=MessageType.TRAIN)
    reply = train_round(msg, ctx)
    got = record_to_numpy(reply["arrays"])
    assert set(got) == set(shared_keys(model))
    moved = [k for k in got if k.startswith("frontend.generator.") and not np.array_equal(got[k], sent[k])]
    assert "frontend.generator.head_weight" in moved and "frontend.generator.enc.weight" in moved
    assert not any("subset" in k or "permutation" in k or k.endswith(".gain") for k in got)
    buffers = _site_state(ctx)["frontend_buffers"]
    assert torch.equal(buffers["subset_table"], model.frontend.subset_table)
