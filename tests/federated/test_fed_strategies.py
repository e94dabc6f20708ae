"""Robust aggregation: identity on identical updates, failed/NaN/huge updates excluded, and
the site-local head never appears in a reply."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

flwr_app = pytest.importorskip("flwr.app")
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict  # noqa: E402

from facepriv.federated.arrays import screen_update, weighted_average  # noqa: E402
from facepriv.federated.strategies import RobustFedAvg, RobustFedAvgM  # noqa: E402
from facepriv.federated.protocol import numpy_to_record, record_to_numpy  # noqa: E402


def _global() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((4, 3)).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32),
            "bn.num_batches_tracked": np.array(7, dtype=np.int64)}


def _reply(msg, arrays=None, n=10, error=None):
    if error is not None:
        return Message(Error(code=1, reason=error), reply_to=msg)
    return Message(RecordDict({"arrays": numpy_to_record(arrays), "metrics": MetricRecord({"num-examples": n})}), reply_to=msg)


def _round(strategy, grid, replies_fn):
    g = _global()
    msgs = list(strategy.configure_train(1, numpy_to_record(g), ConfigRecord(), grid))
    return g, strategy.aggregate_train(1, replies_fn(msgs, g))


@pytest.mark.parametrize("cls", [RobustFedAvg, RobustFedAvgM])
def test_identical_updates_average_to_themselves(task_identity, fake_grid, cls):
    kw = {"server_momentum": 0.0} if cls is RobustFedAvgM else {}
    s = cls(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0, **kw)
    upd = {k: (v + 0.5).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in _global().items()}
    _, (new, metrics) = _round(s, fake_grid([1, 2, 3]), lambda msgs, g: [_reply(m, upd, n) for m, n in zip(msgs, (3, 10, 1000))])
    out = record_to_numpy(new)
    for k in upd:
        assert out[k].dtype == upd[k].dtype
        np.testing.assert_array_equal(out[k], upd[k])
    assert metrics["clients-accepted"] == 3


def test_failed_nan_and_huge_updates_are_excluded(task_identity, fake_grid):
    s = RobustFedAvg(min_train_nodes=4, min_available_nodes=4, fraction_evaluate=0.0, max_update_norm=10.0)

    def replies(msgs, g):
        good = {k: (v + 0.1).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in g.items()}
        nan = {k: v.copy() for k, v in good.items()}
        nan["w"][0, 0] = np.nan
        huge = {k: (v + 100.0).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in g.items()}
        return [_reply(msgs[0], good), _reply(msgs[1], nan), _reply(msgs[2], huge), _reply(msgs[3], error="CUDA OOM")]

    g, (new, metrics) = _round(s, fake_grid([1, 2, 3, 4]), replies)
    out = record_to_numpy(new)
    np.testing.assert_allclose(out["w"], g["w"] + 0.1, rtol=1e-6)  # only the good update counts
    assert (metrics["clients-accepted"], metrics["clients-rejected"], metrics["clients-failed"]) == (1, 2, 1)
    rep = s.reports[-1]
    reasons = sorted(rep.rejected.values())
    assert "NaN" in reasons[0] and "norm" in reasons[1] and "OOM" in next(iter(rep.failed.values()))


def test_round_without_enough_valid_updates_keeps_the_model(task_identity, fake_grid):
    s = RobustFedAvg(min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0, min_train_replies=2)

    def replies(msgs, g):
        inf = {k: v.copy() for k, v in g.items()}
        inf["b"][0] = np.inf
        return [_reply(msgs[0], g), _reply(msgs[1], inf)]

    _, (new, metrics) = _round(s, fake_grid([1, 2]), replies)
    assert new is None and metrics["clients-rejected"] == 1 and s.reports[-1].kept_previous_model


def test_fedavgm_momentum_skips_buffers_so_running_var_stays_positive(task_identity, fake_grid):
    """Server momentum on a BatchNorm running variance extrapolates it below zero (the NaN
    seen in the first fed bench). Only ``param_keys`` get momentum; buffers are averaged."""
    s = RobustFedAvgM(server_momentum=0.9, server_learning_rate=1.0, param_keys=["w"],
                      min_train_nodes=1, min_available_nodes=1, fraction_evaluate=0.0)
    grid = fake_grid([1])
    g = {"w": np.ones((2, 2), np.float32), "bn.running_var": np.full(3, 1.0, np.float32)}
    for rnd in range(1, 8):  # each round the site shrinks w and the variance by 0.4
        msgs = list(s.configure_train(rnd, numpy_to_record(g), ConfigRecord(), grid))
        upd = {"w": g["w"] - 0.4, "bn.running_var": np.full(3, 0.6, np.float32)}
        new, _ = s.aggregate_train(rnd, [_reply(msgs[0], upd)])
        g = record_to_numpy(new)
        np.testing.assert_array_equal(g["bn.running_var"], upd["bn.running_var"])  # plain average
    # the parameter did get momentum: 7 rounds of 0.4 with beta 0.9 move it much further than 2.8
    assert float(g["w"][0, 0]) < 1.0 - 0.4 * 7 - 5.0


def test_non_finite_server_step_keeps_the_previous_model(task_identity, fake_grid):
    s = RobustFedAvgM(server_momentum=0.9, server_learning_rate=1e38, min_train_nodes=1, min_available_nodes=1,
                      fraction_evaluate=0.0)
    grid = fake_grid([1])
    g = {"w": np.ones((2, 2), np.float32)}
    msgs = list(s.configure_train(1, numpy_to_record(g), ConfigRecord(), grid))
    new, metrics = s.aggregate_train(1, [_reply(msgs[0], {"w": g["w"] - 1e3})])  # 1e38 * 1e3 overflows float32
    assert new is None and metrics["diverged"] == 1
    rep = s.reports[-1]
    assert rep.kept_previous_model and "non-finite" in rep.as_dict()["diverged"]
    assert s.velocity is None  # the refused step's state was not committed


def test_screen_and_average_units():
    ref = {"a": np.zeros(3, np.float32)}
    assert not screen_update({"a": np.zeros(4, np.float32)}, ref).ok  # shape change
    assert not screen_update({"x": np.zeros(3, np.float32)}, ref).ok  # key change
    assert screen_update({"a": np.ones(3, np.float32)}, ref, max_update_norm=2.0).ok
    avg = weighted_average([{"a": np.zeros(2)}, {"a": np.ones(2)}], [1, 3])
    np.testing.assert_allclose(avg["a"], [0.75, 0.75])
    with pytest.raises(ValueError):
        weighted_average([{"a": np.zeros(2)}], [0])


def test_head_never_leaves_the_site(task_identity, tmp_path, tiny_cfg):
    """Run the real client round on crafted messages: the reply carries exactly the shared
    keys (no head, no frontend secrets); the head persists in Context.state and on disk."""
    from facepriv.federated.arrays import shared_keys, shared_state, state_to_numpy
    from facepriv.federated.client_app import train_round
    from facepriv.federated.server_app import FedSettings, build_global_model
    from facepriv.federated.site import HEAD_KEY, SITE_KEY

    settings = FedSettings(train_config=tiny_cfg(), out=str(tmp_path), strategy="fedavg")
    model, cfg_dict = build_global_model(settings)
    sent = state_to_numpy(shared_state(model))
    conf = ConfigRecord({"train-config": json.dumps(cfg_dict), "local-steps": 2, "strategy": "fedavg",
                         "data": json.dumps({"format": "synthetic", "ids_per_client": 3, "images_per_identity": 2})})
    ctx = Context(run_id=5, node_id=9, node_config={"partition-id": 0, "num-partitions": 2, "state-dir": str(tmp_path / "site")},
                  state=RecordDict(), run_config={})
    heads = []
    for rnd in (1, 2):
        msg = Message(RecordDict({"arrays": numpy_to_record(sent), "config": conf}), dst_node_id=9, message_type=MessageType.TRAIN)
        reply = train_round(msg, ctx)
        assert list(reply.array_records) == ["arrays"]
        keys = set(reply["arrays"].keys())
        assert keys == set(shared_keys(model))
        head_keys = set(ctx.state[HEAD_KEY].keys())
        assert head_keys and not any(k in keys or k.split(".")[-1] in {"weight"} and k in keys for k in head_keys)
        assert not any("subset" in k or k.startswith("head") for k in keys)
        heads.append({k: v.numpy().copy() for k, v in ctx.state[HEAD_KEY].items()})
        m = reply["metrics"]
        assert m["num-examples"] == 8 and np.isfinite(m["train-loss"]) and m["lr-sum-backbone"] > 0
        sent = record_to_numpy(reply["arrays"])
    assert SITE_KEY in ctx.state and list((tmp_path / "site").glob("site-5.pt"))
    # the head trained in round 2 starting from round 1's head (persisted, not rebuilt)
    assert any(not np.array_equal(heads[0][k], heads[1][k]) for k in heads[0])
    # the head's class-centre count is this site's identities (3), not a global label space
    assert any(v.shape[0] == 3 for v in heads[1].values() if v.ndim == 2)


def test_site_calibrates_its_frontend_once_and_keeps_it_across_rounds(task_identity, tmp_path, monkeypatch, tiny_cfg):
    """DCTDP ``clip: calibrated``: the clipping bounds are fitted on the site's data in its
    first round and persisted with the site state (memory and disk); later rounds, also after
    a restart that lost Context.state, reuse them instead of calibrating again. A state file
    from another frontend is refused by name."""
    from facepriv.federated.arrays import shared_state, state_to_numpy
    from facepriv.federated.client_app import train_round
    from facepriv.federated.server_app import FedSettings, build_global_model
    from facepriv.frontends.dp import DCTDP

    calls = []
    real = DCTDP.calibrate

    def counting(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(DCTDP, "calibrate", counting)
    cfg = tiny_cfg()
    cfg["frontend"] = {"name": "dctdp", "epsilon_mean": 4.0, "clip": "calibrated", "input_size": 32}
    model, cfg_dict = build_global_model(FedSettings(train_config=cfg, out=str(tmp_path), strategy="fedavg"))
    calls.clear()  # the server builds its global model without site data
    sent = state_to_numpy(shared_state(model))
    conf = ConfigRecord({"train-config": json.dumps(cfg_dict), "local-steps": 1, "strategy": "fedavg",
                         "data": json.dumps({"format": "synthetic", "ids_per_client": 3, "images_per_identity": 2})})
    node = {"partition-id": 0, "num-partitions": 2, "state-dir": str(tmp_path / "site")}

    def one_round(ctx):
        msg = Message(RecordDict({"arrays": numpy_to_record(sent), "config": conf}), dst_node_id=9,
                      message_type=MessageType.TRAIN)
        train_round(msg, ctx)
        return ctx

    ctx = one_round(Context(run_id=5, node_id=9, node_config=node, state=RecordDict(), run_config={}))
    from facepriv.federated.client_app import _site_state

    first = _site_state(ctx)["frontend_buffers"]
    assert len(calls) == 1 and bool(first["calibrated"])
    analytic = DCTDP(epsilon_mean=4.0, input_size=32).clip_bound
    assert not torch.equal(first["clip_bound"], analytic)  # fitted to the site's images
    one_round(ctx)
    restarted = one_round(Context(run_id=5, node_id=9, node_config=node, state=RecordDict(), run_config={}))
    assert len(calls) == 1
    assert torch.equal(_site_state(restarted)["frontend_buffers"]["clip_bound"], first["clip_bound"])
    # a state file written for another frontend is an error naming the buffers
    cfg_dict2 = {**cfg_dict, "frontend": {"name": "partialface"}}
    conf["train-config"] = json.dumps(cfg_dict2)
    model2, _ = build_global_model(FedSettings(train_config={**cfg, "frontend": {"name": "partialface"}},
                                               out=str(tmp_path / "b"), strategy="fedavg"))
    sent = state_to_numpy(shared_state(model2))
    with pytest.raises(ValueError, match="frontend buffers"):
        one_round(Context(run_id=5, node_id=9, node_config=node, state=RecordDict(), run_config={}))


def test_zero_dim_arrays_keep_their_shape_through_records(tmp_path, tiny_cfg):
    """0-d buffers (``input_norm.calibrated`` of frequency frontends, BatchNorm's
    ``num_batches_tracked``) must reach the site as 0-d, or ``load_shared_state`` refuses them."""
    from facepriv.federated.arrays import load_shared_state, shared_state, state_to_numpy
    from facepriv.federated.server_app import FedSettings, build_global_model

    cfg = tiny_cfg()
    cfg["frontend"] = {"name": "dct"}
    model, _ = build_global_model(FedSettings(train_config=cfg, out=str(tmp_path)))
    sent = state_to_numpy(shared_state(model))
    scalars = [k for k, v in sent.items() if v.ndim == 0]
    assert scalars  # the test needs one
    received = record_to_numpy(numpy_to_record(sent))
    assert all(received[k].shape == () for k in scalars)
    load_shared_state(model, received)


def test_cli_fails_when_no_site_ever_trained(tmp_path, monkeypatch, capsys):
    """All rounds completed but every site failed: the run must not report success."""
    import facepriv.federated.simulate
    from facepriv.federated.cli import main

    failed = {"accepted": [], "rejected": {}, "failed": {"7": "ValueError: site data missing"}}
    history = [{"round": 0}, {"round": 1, "aggregation": failed}, {"round": 2, "aggregation": failed}]
    monkeypatch.setattr(facepriv.federated.simulate, "simulate", lambda *a, **k: history)
    argv = ["simulate", "--out", str(tmp_path / "fed"), "--rounds", "2", "--clients", "2"]
    assert main(argv) == 1
    assert "site data missing" in capsys.readouterr().err
    ok = {"accepted": [7], "rejected": {}, "failed": {}}
    history[1:] = [{"round": 1, "aggregation": ok}, {"round": 2, "aggregation": failed}]
    assert main(argv) == 0
