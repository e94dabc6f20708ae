"""`facepriv bench fed`'s overhead figure: a federated round against the local steps it
contains, with the sites of a round running one after another."""

from __future__ import annotations

import argparse
import json

import pytest

pytest.importorskip("flwr.app")

from facepriv.eval.benchmarks import fed as bench  # noqa: E402
from facepriv.federated import protocol as P  # noqa: E402


def _args(**kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args([])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def _row(rnd: int, round_s: float, site_s: float, steps_s: float, sites: int = 4) -> dict:
    return {"round": rnd, "round_time_s": round_s,
            "train": {"clients-accepted": sites, P.TRAIN_TIME_S: site_s, P.STEP_TIME_S: steps_s}}


def test_overhead_is_the_round_against_its_own_steps():
    args = _args(clients=4, num_cpus=1)
    rounds = [{"round": 0, "verification": {}}, _row(1, 99.0, 20.0, 1.0),  # round 1 (warm-up) is excluded
              _row(2, 11.0, 2.6, 2.5), _row(3, 12.0, 2.6, 2.5), _row(4, 10.5, 2.6, 2.5)]
    out = bench._overhead(args, {"fedavg": {"rounds": rounds}}, [9.0, 10.0, 30.0])
    e = out["strategies"]["fedavg"]
    assert e["federated_round_s"] == 11.0 and e["site_steps_s"] == 10.0 and e["site_round_s"] == pytest.approx(10.4)
    assert e["overhead_pct"] == pytest.approx(10.0)
    assert e["breakdown_s"]["messaging_and_aggregation"] == pytest.approx(0.6)
    assert e["vs_direct_pct"] == pytest.approx(10.0)  # median direct round 10.0
    assert out["overhead_pct_max"] == pytest.approx(10.0) and not out["direct_is_estimate"]
    two = bench._overhead(_args(clients=4, num_cpus=2), {"fedavg": {"rounds": rounds}}, [20.0])
    assert two["strategies"]["fedavg"]["site_steps_s"] == 5.0 and two["direct_is_estimate"]


def test_simulation_gives_each_site_a_whole_cpu(monkeypatch, tmp_path):
    """Regression: a fractional CPU share (num_cpus / clients) ran every site of a round at
    once, on however many cores the machine had, while the direct arm ran them one after
    another, so the overhead compared different amounts of parallelism."""
    import facepriv.federated.simulate as sim

    calls = []

    def fake_simulate(settings, *, num_clients, num_cpus, cpus_per_client):
        calls.append((num_clients, num_cpus, cpus_per_client))
        return [_row(r, 1.1, 1.0, 1.0, num_clients) for r in range(1, settings.rounds + 1)]

    monkeypatch.setattr(sim, "simulate", fake_simulate)
    monkeypatch.setattr(bench, "_central", lambda a, s: {"rounds": [{"round": 0, "verification": {"auc": 0.5}}],
                                                         "train_time_s": 0.0, "steps": 0})
    monkeypatch.setattr(bench, "_direct_rounds", lambda a, s: [1.0])
    out = bench.run(_args(clients=4, num_cpus=1, rounds=3, strategies="fedavg,pfm", out=tmp_path))
    assert calls == [(4, 1, 1.0), (4, 1, 1.0)]
    assert out["overhead"]["direct_rounds_s"] == [1.0, 1.0]
    json.dumps(out)


def test_site_reports_its_step_time(task_identity, tmp_path, global_model_message):
    from flwr.app import Context, MessageType, RecordDict

    from facepriv.federated.client_app import train_round

    ctx = Context(run_id=3, node_id=1, node_config={"partition-id": 0, "num-partitions": 1}, state=RecordDict(),
                  run_config={})
    msg = global_model_message(tmp_path, {P.LOCAL_STEPS: 2, P.DATA: json.dumps(
        {"format": "synthetic", "ids_per_client": 3, "images_per_identity": 2})}, MessageType.TRAIN)
    metrics = train_round(msg, ctx)[P.METRICS]
    assert 0.0 < metrics[P.STEP_TIME_S] <= metrics[P.TRAIN_TIME_S]
