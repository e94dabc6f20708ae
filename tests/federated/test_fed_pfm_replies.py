"""PFM survives bad replies: each site's ``lr-sum-*`` is validated before its update counts,
bad replies are excluded and reported, and failures are recorded per round instead of
ending ``run_server``. Nesterov is refused; PFM + DCTDP + DP-SGD runs its first round."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("flwr.app")
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402

from facepriv.federated.strategies import PFM  # noqa: E402
from facepriv.federated.protocol import MOMENTUM, numpy_to_record, record_to_numpy  # noqa: E402

LR, STEPS = 0.05, 2


def _global() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"backbone.w": rng.standard_normal((4, 3)).astype(np.float32), "backbone.b": np.zeros(3, np.float32)}


def _reply(msg, arrays, metrics):
    return Message(RecordDict({"arrays": numpy_to_record(arrays), "metrics": MetricRecord(metrics)}), reply_to=msg)


BAD = {"missing": None, "nan": math.nan, "negative": -0.1, "zero": 0.0, "huge": 1e9, "list": [0.1, 0.1]}


@pytest.mark.parametrize("bad", list(BAD), ids=list(BAD))
def test_bad_lr_sum_excludes_that_reply_only(task_identity, fake_grid, bad):
    """Before: a missing/NaN lr-sum raised out of server_step, a negative or 1e9 one silently
    rescaled the global momentum (1e9 -> momentum ~1e-10 of what it should be)."""
    s = PFM(param_keys=["backbone.w", "backbone.b"], max_lr_sum={"backbone": STEPS * LR},
            min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0)
    g = _global()
    msgs = list(s.configure_train(1, numpy_to_record(g), ConfigRecord(), fake_grid([1, 2, 3])))
    good = {k: v - 0.01 for k, v in g.items()}
    replies, bad_node = [], None
    for i, m in enumerate(msgs):
        metrics = {"num-examples": 8, "lr-sum-backbone": STEPS * LR}
        arrays = good
        if i == 2:
            bad_node = int(m.metadata.dst_node_id)
            arrays = {k: v - 5.0 for k, v in g.items()}  # would dominate the step if it were averaged
            if BAD[bad] is None:
                del metrics["lr-sum-backbone"]
            else:
                metrics["lr-sum-backbone"] = BAD[bad]
        replies.append(_reply(m, arrays, metrics))
    new, summary = s.aggregate_train(1, replies)
    report = s.reports[-1]
    assert new is not None and summary["clients-accepted"] == 2 and summary["clients-rejected"] == 1
    assert "lr-sum-backbone" in report.rejected[bad_node], report.rejected
    out = record_to_numpy(new)
    np.testing.assert_allclose(out["backbone.w"], good["backbone.w"], rtol=1e-6)
    # momentum = (w_r - w_{r+1}) / L with L = 2 x 0.05 from the two good sites
    np.testing.assert_allclose(s.momentum["backbone.w"], np.full((4, 3), 0.01 / (STEPS * LR), np.float32), rtol=1e-4)


def test_failures_are_recorded_per_round_and_the_run_continues(task_identity, fake_grid, tmp_path, tiny_cfg):
    """run_server over three rounds of a tiny model: round 1's exchange fails outright, in
    round 2 every site reports a broken lr-sum (and one a huge num-examples), round 3 is
    healthy. Every round is in metrics.json with its reasons; the run ends normally."""
    from facepriv.federated.server_app import FedSettings, run_server
    settings = FedSettings(train_config=tiny_cfg(), out=str(tmp_path / "run"), strategy="pfm", rounds=3,
                           local_steps=STEPS, min_train_nodes=3, min_available_nodes=3)
    calls = {"n": 0}

    def responder(msg):
        rnd = int(msg.content["config"]["server-round"])
        if rnd == 1:
            raise ConnectionError("SuperLink unreachable")
        arrays = {k: (v - 1e-3).astype(v.dtype) if v.dtype.kind == "f" else v
                  for k, v in record_to_numpy(msg.content["arrays"]).items()}
        node = int(msg.metadata.dst_node_id)
        metrics = {"num-examples": 8, "lr-sum-backbone": STEPS * 0.05}
        if rnd == 2:
            metrics["lr-sum-backbone"] = {1: math.nan, 2: 1e9, 3: -1.0}[node]
            if node == 2:
                metrics["num-examples"] = 10**12
        calls["n"] += 1
        return _reply(msg, arrays, metrics)

    class Grid(fake_grid):
        def send_and_receive(self, messages, *, timeout=None):
            return [responder(m) for m in messages]

    history = run_server(Grid([1, 2, 3]), settings)
    rows = {r["round"]: r for r in history}
    assert sorted(rows) == [1, 2, 3]
    assert "SuperLink unreachable" in rows[1]["error"] and rows[1]["aggregation"]["kept_previous_model"]
    rej = rows[2]["aggregation"]["rejected"]
    assert sorted(rej) == ["1", "2", "3"] and all("lr-sum-backbone" in v for v in rej.values())
    assert rows[2]["aggregation"]["kept_previous_model"] and not rows[2]["aggregation"]["accepted"]
    assert sorted(rows[3]["aggregation"]["accepted"]) == [1, 2, 3] and "error" not in rows[3]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == [1, 2, 3] and "input_norm" in saved["privacy"]
    assert (tmp_path / "run" / "checkpoints" / "global_round0003.pt").exists()


def test_an_exception_inside_aggregation_keeps_the_model(task_identity, fake_grid):
    s = PFM(param_keys=["backbone.w"], min_train_nodes=1, min_available_nodes=1, fraction_evaluate=0.0)

    def boom(*a, **k):
        raise RuntimeError("strategy bug")

    s.server_step = boom  # type: ignore[method-assign]
    msg = list(s.configure_train(1, numpy_to_record(_global()), ConfigRecord(), fake_grid([1])))[0]
    new, summary = s.aggregate_train(1, [_reply(msg, _global(), {"num-examples": 4, "lr-sum-backbone": 0.1})])
    assert new is None and summary["aggregation-error"] == 1
    rep = s.reports[-1].as_dict()
    assert rep["kept_previous_model"] and "strategy bug" in rep["error"]


def test_nesterov_is_refused_with_pfm(tmp_path, tiny_cfg):
    from facepriv.federated.momentum import install_momentum, require_pfm_optimizer
    from facepriv.federated.server_app import FedSettings, build_global_model, make_strategy
    cfg = tiny_cfg()
    cfg["optim"]["nesterov"] = True
    settings = FedSettings(train_config=cfg, out=str(tmp_path), strategy="pfm")
    model, _ = build_global_model(settings)
    with pytest.raises(ValueError, match="[Nn]esterov"):
        make_strategy(settings, model)
    make_strategy(FedSettings(train_config=cfg, out=str(tmp_path), strategy="fedavg"), model)  # FedAvg resets buffers
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov"):
        require_pfm_optimizer(opt)
    with pytest.raises(ValueError, match="Nesterov"):
        install_momentum(opt, {"p": p}, {"p": np.zeros(2, np.float32)})
    heavy_ball = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="NaN"):
        install_momentum(heavy_ball, {"p": p}, {"p": np.array([np.nan, 0], np.float32)})


def _dp_cfg(tiny_cfg, frontend: dict) -> dict:
    cfg = tiny_cfg()
    cfg["frontend"] = frontend
    cfg["model"].update({"norm": "group", "norm_groups": 2})  # Opacus: no BatchNorm
    cfg["dp"] = {"enabled": True, "epsilon": 8.0}
    cfg["schedule"]["max_steps"] = 20
    return cfg


def test_pfm_dctdp_dp_sgd_first_round(task_identity, fake_grid, tmp_path, tiny_cfg):
    """DP-SGD freezes DCTDP's budget logits at the site, so its optimiser has no frontend
    param group and reports no lr-sum-frontend; the server used to expect one (crash in
    round 1). The real client round's reply is aggregated by the strategy run_server builds."""
    from facepriv.federated.arrays import shared_state, state_to_numpy
    from facepriv.federated.client_app import train_round
    from facepriv.federated.server_app import FedSettings, build_global_model, make_strategy

    cfg = _dp_cfg(tiny_cfg, {"name": "dctdp", "epsilon_mean": 4.0, "input_size": 32})
    settings = FedSettings(train_config=cfg, out=str(tmp_path), strategy="pfm", local_steps=STEPS,
                           min_train_nodes=1, min_available_nodes=1)
    model, cfg_dict = build_global_model(settings)
    strategy = make_strategy(settings, model)
    assert strategy.lr_groups == ["backbone"] and not any(k.startswith("frontend.") for k in strategy.param_keys)
    conf = ConfigRecord({"train-config": json.dumps(cfg_dict), "local-steps": STEPS,
                         "data": json.dumps({"format": "synthetic", "ids_per_client": 3, "images_per_identity": 2})})
    ctx = Context(run_id=5, node_id=9, node_config={"partition-id": 0, "num-partitions": 1}, state=RecordDict(),
                  run_config={})
    for rnd in (1, 2):
        (msg,) = strategy.configure_train(rnd, numpy_to_record(state_to_numpy(shared_state(model))), conf,
                                          fake_grid([9]))
        assert (MOMENTUM in msg.content) == (rnd == 2)
        reply = Message(train_round(msg, ctx), reply_to=msg)
        assert "lr-sum-frontend" not in reply.content["metrics"]
        new, summary = strategy.aggregate_train(rnd, [reply])
        assert new is not None and summary["clients-accepted"] == 1, strategy.reports[-1].as_dict()
        assert all(np.all(np.isfinite(v)) for v in strategy.momentum.values())
        from facepriv.federated.arrays import load_shared_state

        load_shared_state(model, record_to_numpy(new))


def test_dp_sgd_with_data_calibrated_clipping_is_refused(tmp_path, tiny_cfg):
    from facepriv.federated.server_app import FedSettings, build_global_model, make_strategy

    cfg = _dp_cfg(tiny_cfg, {"name": "dctdp", "epsilon_mean": 4.0, "input_size": 32, "clip": "calibrated"})
    settings = FedSettings(train_config=cfg, out=str(tmp_path), strategy="fedavg")
    model, _ = build_global_model(settings)
    with pytest.raises(ValueError, match="clip: calibrated"):
        make_strategy(settings, model)
