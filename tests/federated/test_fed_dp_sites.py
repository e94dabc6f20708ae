"""DP at the sites: DP-SGD randomness is the site's own (never the server's seed) and stays
in the site's private state; no statistic of a site's images travels outside the DP
accounting (the input standardiser is calibrated by the server on generated faces)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("flwr.app")
pytest.importorskip("opacus")
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict  # noqa: E402

from facepriv.federated.protocol import numpy_to_record, record_to_numpy  # noqa: E402

DATA = json.dumps({"format": "synthetic", "ids_per_client": 3, "images_per_identity": 2})


def _cfg(tiny_cfg, *, dp: bool, frontend: str = "rgb") -> dict:
    cfg = tiny_cfg()
    cfg["frontend"] = {"name": frontend}
    cfg["model"].update({"norm": "group", "norm_groups": 2})  # the same model with and without DP-SGD
    cfg["schedule"]["max_steps"] = 20
    if dp:
        cfg["dp"] = {"enabled": True, "epsilon": 8.0}
    return cfg


def _setup(tmp_path, cfg):
    from facepriv.federated.arrays import shared_state, state_to_numpy
    from facepriv.federated.server_app import FedSettings, build_global_model

    model, cfg_dict = build_global_model(FedSettings(train_config=cfg, out=str(tmp_path / "server"), seed=3))
    return state_to_numpy(shared_state(model)), cfg_dict


def _round(sent, cfg_dict, ctx, steps=2):
    from facepriv.federated.client_app import train_round

    conf = ConfigRecord({"train-config": json.dumps(cfg_dict), "local-steps": steps, "strategy": "fedavg", "data": DATA})
    msg = Message(RecordDict({"arrays": numpy_to_record(sent), "config": conf}), dst_node_id=ctx.node_id,
                  message_type=MessageType.TRAIN)
    return train_round(msg, ctx)


def _site(tmp_path, name: str, node_id: int) -> Context:
    # identical node config (the same partition, as deployed sites without site-index have):
    # nothing public tells the two sites apart
    return Context(run_id=5, node_id=node_id, node_config={"partition-id": 0, "num-partitions": 1,
                                                          "state-dir": str(tmp_path / name)},
                   state=RecordDict(), run_config={})


def _float_arrays(reply) -> dict[str, np.ndarray]:
    return {k: v for k, v in record_to_numpy(reply["arrays"]).items() if v.dtype.kind == "f"}


def test_sites_given_the_same_server_seed_draw_different_dp_noise(task_identity, tmp_path, tiny_cfg):
    """Before: every site's DP-SGD noise and Poisson batches came from ``cfg.seed``, which the
    server chooses, so it could regenerate and subtract the noise (and two sites with the
    same partition drew the very same noise). Control: without DP-SGD the two sites' updates
    are identical, so the difference below is the DP randomness and nothing else."""
    from facepriv.federated.client_app import _site_state, build_site_trainer

    sent, cfg_dict = _setup(tmp_path / "plain", _cfg(tiny_cfg, dp=False))
    a, b = (_float_arrays(_round(sent, cfg_dict, _site(tmp_path / "plain", n, i))) for i, n in ((1, "a"), (2, "b")))
    assert all(np.array_equal(a[k], b[k]) for k in a)

    sent, cfg_dict = _setup(tmp_path / "dp", _cfg(tiny_cfg, dp=True))
    ctx_a, ctx_b = _site(tmp_path / "dp", "a", 1), _site(tmp_path / "dp", "b", 2)
    reply_a, reply_b = _round(sent, cfg_dict, ctx_a), _round(sent, cfg_dict, ctx_b)
    a, b = _float_arrays(reply_a), _float_arrays(reply_b)
    changed = [k for k in a if not np.array_equal(a[k], b[k])]
    assert len(changed) > len(a) // 2, f"only {changed} differ"
    # the secret state is in each site's private state (memory and disk) and differs per site ...
    key_a = _site_state(ctx_a)["dp"]["randomness"]["key"]
    key_b = _site_state(ctx_b)["dp"]["randomness"]["key"]
    assert key_a.numel() == 32 and not torch.equal(key_a, key_b)
    # ... never in a reply: the shared arrays and the round's metrics only
    assert set(reply_a.keys()) == {"arrays", "metrics"}
    assert not any(w in k for k in reply_a["metrics"].keys() for w in ("seed", "key", "rng", "random"))
    # a restarted site (Context.state lost, state-dir kept) continues its own randomness
    fresh = _site(tmp_path / "dp", "a", 1)
    trainer, _ = build_site_trainer(cfg_dict, json.loads(DATA), fresh, sent)
    try:
        assert torch.equal(torch.frombuffer(bytearray(trainer.dp.randomness.key), dtype=torch.uint8), key_a)
    finally:
        trainer.close()


def test_input_norm_statistics_never_leave_a_dp_site(task_identity, tmp_path, tiny_cfg):
    """Under DP-SGD the server calibrates the input standardiser on generated faces, so the
    sites compute no statistic of their images and the buffers come back as sent; without
    DP the site calibrates it on its own images and says so (input-norm-from-site-data)."""
    sent, cfg_dict = _setup(tmp_path / "plain", _cfg(tiny_cfg, dp=False, frontend="dct"))
    assert not bool(sent["input_norm.calibrated"])
    reply = _round(sent, cfg_dict, _site(tmp_path / "plain", "a", 1), steps=1)
    assert reply["metrics"]["input-norm-from-site-data"] == 1
    assert not np.array_equal(record_to_numpy(reply["arrays"])["input_norm.mean"], sent["input_norm.mean"])

    sent, cfg_dict = _setup(tmp_path / "dp", _cfg(tiny_cfg, dp=True, frontend="dct"))
    assert bool(sent["input_norm.calibrated"]) and float(np.abs(sent["input_norm.mean"]).max()) > 0
    reply = _round(sent, cfg_dict, _site(tmp_path / "dp", "a", 1), steps=1)
    assert reply["metrics"]["input-norm-from-site-data"] == 0
    got = record_to_numpy(reply["arrays"])
    for k in ("input_norm.mean", "input_norm.std"):
        np.testing.assert_array_equal(got[k], sent[k])
    # a server that sends an uncalibrated standardiser under DP-SGD is refused by the site
    uncalibrated = dict(sent, **{"input_norm.calibrated": np.array(False)})
    with pytest.raises(ValueError, match="uncalibrated"):
        _round(uncalibrated, cfg_dict, _site(tmp_path / "dp", "b", 2), steps=1)
