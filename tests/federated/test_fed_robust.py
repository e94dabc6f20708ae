"""Update screening and robust aggregation against poisoning sites: retyped arrays, inflated
sample counts, and a minority of well-formed but malicious updates."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr.app")
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402

from facepriv.federated.aggregators import Aggregator, clip_to_norm  # noqa: E402
from facepriv.federated.arrays import screen_update  # noqa: E402
from facepriv.federated.strategies import RobustFedAvg  # noqa: E402
from facepriv.federated.protocol import numpy_to_record, record_to_numpy  # noqa: E402


def _global() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((4, 3)).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32),
            "bn.num_batches_tracked": np.array(7, dtype=np.int64), "calibrated": np.array(True)}


def _honest(g: dict[str, np.ndarray], shift: float) -> dict[str, np.ndarray]:
    return {k: (v + shift).astype(v.dtype) if v.dtype.kind == "f" else v.copy() for k, v in g.items()}


def _reply(msg, arrays, n=10):
    return Message(RecordDict({"arrays": numpy_to_record(arrays), "metrics": MetricRecord({"num-examples": n})}),
                   reply_to=msg)


def _round(strategy, grid, make_replies):
    g = _global()
    msgs = list(strategy.configure_train(1, numpy_to_record(g), ConfigRecord(), grid))
    new, metrics = strategy.aggregate_train(1, make_replies(msgs, g))
    return g, (record_to_numpy(new) if new is not None else None), metrics


@pytest.mark.parametrize("bad", [
    np.full((4, 3), 10**15, dtype=np.int64),        # moved the weights by 5e14 before
    np.full((4, 3), 255, dtype=np.uint8),
    np.ones((4, 3), dtype=bool),
    np.full((4, 3), 1e15 + 0j, dtype=np.complex128),
    np.zeros((4, 3), dtype=np.float64),             # right values, wrong dtype: not cast either
    np.zeros((3, 4), dtype=np.float32),             # wrong shape
], ids=["int64", "uint8", "bool", "complex", "float64", "shape"])
def test_retyped_or_reshaped_arrays_are_rejected(task_identity, fake_grid, bad):
    """The exploit: a poisoner replaces a float32 array with another dtype (or shape), which
    screening used to skip as "not float" and the mean then cast into the model."""
    s = RobustFedAvg(min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0, max_update_norm=1.0)

    def replies(msgs, g):
        poisoned = _honest(g, 0.0)
        poisoned["w"] = bad
        return [_reply(msgs[0], _honest(g, 0.1)), _reply(msgs[1], poisoned)]

    g, new, metrics = _round(s, fake_grid([1, 2]), replies)
    assert metrics["clients-accepted"] == 1 and metrics["clients-rejected"] == 1
    (reason,) = s.reports[-1].rejected.values()
    assert ("dtype" in reason or "shape" in reason) and "'w'" in reason, reason
    np.testing.assert_allclose(new["w"], g["w"] + 0.1, rtol=1e-6)
    assert new["w"].dtype == np.float32


def test_every_array_is_screened_integer_buffers_too():
    ref = _global()
    counter = _honest(ref, 0.0)
    counter["bn.num_batches_tracked"] = np.array(10**12, dtype=np.int64)
    check = screen_update(counter, ref)
    assert not check.ok and "num_batches_tracked" in check.reason
    assert screen_update(_honest(ref, 0.0), ref).ok
    ok = _honest(ref, 0.0)
    ok["bn.num_batches_tracked"] = np.array(12, dtype=np.int64)  # a few more local steps: fine
    assert screen_update(ok, ref).ok
    assert not screen_update(_honest(ref, 0.0), None).ok  # nothing to compare with: refused
    obj = _honest(ref, 0.0)
    obj["b"] = np.array(["a", "b", "c"])
    assert "dtype" in screen_update(obj, ref).reason


def test_inflated_num_examples_is_clipped_to_max_examples(task_identity, fake_grid):
    """num-examples=1e12 used to give one site all of the weight."""
    s = RobustFedAvg(min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0, max_examples=10)

    def replies(msgs, g):
        return [_reply(msgs[0], _honest(g, 0.1), n=10), _reply(msgs[1], _honest(g, 1.0), n=10**12)]

    g, new, _ = _round(s, fake_grid([1, 2]), replies)
    np.testing.assert_allclose(new["w"], g["w"] + 0.55, atol=1e-6)  # equal weights after clipping
    rep = s.reports[-1].as_dict()
    assert list(rep["clipped_weights"].values()) == [1e12] and sorted(rep["accepted"]) == [1, 2]


@pytest.mark.parametrize("n", [float("nan"), -3, 0, "many", [1, 2]])
def test_invalid_num_examples_is_rejected(task_identity, fake_grid, n):
    s = RobustFedAvg(min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0)

    def replies(msgs, g):
        bad = Message(RecordDict({"arrays": numpy_to_record(_honest(g, 9.0)),
                                  "metrics": MetricRecord({"num-examples": 1, "note": 0})}), reply_to=msgs[1])
        if isinstance(n, str):
            bad.content["metrics"] = MetricRecord({})  # no num-examples at all
        else:
            bad.content["metrics"]["num-examples"] = n
        return [_reply(msgs[0], _honest(g, 0.1)), bad]

    g, new, _ = _round(s, fake_grid([1, 2]), replies)
    (reason,) = s.reports[-1].rejected.values()
    assert "num-examples" in reason
    np.testing.assert_allclose(new["w"], g["w"] + 0.1, rtol=1e-6)


# --------------------------------------------------------------------------- robust aggregators

HONEST, POISONERS = 4, 3


def _poisoning_round(task_identity, fake_grid, **kwargs):
    """7 sites: 4 honest (small random steps), 3 poisoners sending a well-formed, finite
    update 5e5 away in every coordinate (under max_abs_value, no max_update_norm) and
    claiming 1e12 examples (clipped to max_examples)."""
    rng = np.random.default_rng(1)
    nodes = list(range(1, HONEST + POISONERS + 1))
    s = RobustFedAvg(min_train_nodes=len(nodes), min_available_nodes=len(nodes), fraction_evaluate=0.0,
                     max_examples=100, **kwargs)
    honest: list[dict[str, np.ndarray]] = []
    honest_weights: list[float] = []
    poisoner_nodes: set[int] = set()

    def replies(msgs, g):
        out = []
        for i, m in enumerate(msgs):
            if i < HONEST:
                upd = {k: (v + rng.normal(0, 0.05, v.shape)).astype(v.dtype) if v.dtype.kind == "f" else v + 1
                       for k, v in g.items() if k != "calibrated"}
                upd["calibrated"] = np.array(True)
                honest.append(upd)
                honest_weights.append(float(rng.integers(50, 101)))
                out.append(_reply(m, upd, n=honest_weights[-1]))
            else:
                poisoner_nodes.add(int(m.metadata.dst_node_id))
                upd = {k: (v + 5e5).astype(v.dtype) if v.dtype.kind == "f" else v + 10**5 for k, v in g.items()
                       if k != "calibrated"}
                upd["calibrated"] = np.array(False)
                out.append(_reply(m, upd, n=10**12))
        return out

    g, new, metrics = _round(s, fake_grid(nodes), replies)
    assert metrics["clients-accepted"] == HONEST + POISONERS  # screening alone lets them all in
    assert set(s.reports[-1].clipped_weights) == poisoner_nodes  # each now weighs max_examples = 100
    return g, new, honest, honest_weights, s


@pytest.mark.parametrize("kwargs", [{"aggregator": "median"},
                                    {"aggregator": "trimmed-mean", "trim_fraction": 0.43}])
def test_minority_of_poisoners_cannot_leave_the_honest_range(task_identity, fake_grid, kwargs):
    """Stated bound (facepriv.federated.aggregators): with f < K/2 poisoners (median) or
    f <= floor(trim_fraction K) (trimmed mean), every coordinate of the new model lies
    between the smallest and largest honest value of that coordinate."""
    g, new, honest, _, _ = _poisoning_round(task_identity, fake_grid, **kwargs)
    for k in g:
        stack = np.stack([h[k] for h in honest])
        assert np.all(new[k] >= stack.min(axis=0)) and np.all(new[k] <= stack.max(axis=0)), k
        assert new[k].dtype == g[k].dtype
    assert bool(new["calibrated"]) is True  # the majority's flag, not the poisoners'


def test_norm_clip_bounds_the_step_and_the_poisoners_share(task_identity, fake_grid):
    """Stated bound: ||w_{r+1} - w_r|| <= C, and sites holding a fraction q of the (bounded)
    weight move the model at most 2 q C from where the other sites alone would put it."""
    C = 1.0
    g, new, honest, honest_weights, s = _poisoning_round(task_identity, fake_grid, aggregator="norm-clip", clip_norm=C)
    floats = [k for k in g if g[k].dtype.kind == "f"]

    def dist(a, b):
        return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k].astype(np.float64)) ** 2) for k in floats)))

    assert dist(new, g) <= C * (1 + 1e-5)
    honest_only = Aggregator("norm-clip", clip_norm=C)(honest, honest_weights, g)
    q = 100.0 * POISONERS / (100.0 * POISONERS + sum(honest_weights))
    assert dist(new, honest_only) <= 2 * q * C * (1 + 1e-5)
    assert dist(new, honest_only) > 0.1  # the poisoners did pull: the bound is what holds, not zero


def test_plain_mean_is_dragged_by_the_same_poisoners(task_identity, fake_grid):
    """The attack of the tests above succeeds against the mean (so they can fail)."""
    g, new, _, _, _ = _poisoning_round(task_identity, fake_grid, aggregator="mean")
    assert float(np.max(np.abs(new["w"] - g["w"]))) > 1e5


def test_aggregator_identity_and_validation():
    g = _global()
    same = [_honest(g, 0.25) for _ in range(5)]
    for agg in (Aggregator("median"), Aggregator("trimmed-mean", trim_fraction=0.2),
                Aggregator("norm-clip", clip_norm=100.0), Aggregator("mean")):
        out = agg(same, [1, 2, 3, 4, 5], g)
        for k in g:
            np.testing.assert_array_equal(out[k], same[0][k])
    clipped = clip_to_norm(_honest(g, 1.0), g, 0.5)
    d = np.sqrt(sum(np.sum((clipped[k].astype(np.float64) - g[k]) ** 2) for k in ("w", "b")))
    assert abs(d - 0.5) < 1e-5 and clipped["bn.num_batches_tracked"] == g["bn.num_batches_tracked"]
    with pytest.raises(ValueError, match="aggregator"):
        Aggregator("krum")
    with pytest.raises(ValueError, match="clip_norm"):
        Aggregator("norm-clip")
    with pytest.raises(ValueError, match="trim_fraction"):
        Aggregator("trimmed-mean", trim_fraction=0.5)
    with pytest.raises(ValueError, match="weight"):
        RobustFedAvg(aggregator="median", fv_candidates=3)


def test_client_level_dp_needs_a_mean(tmp_path, tiny_cfg):
    """Flower's client-level DP noise is calibrated to a mean of clipped updates."""
    from facepriv.federated.server_app import FedSettings, build_global_model, make_strategy

    settings = FedSettings(train_config=tiny_cfg(), out=str(tmp_path), client_dp_noise=1.0, aggregator="median")
    model, _ = build_global_model(settings)
    with pytest.raises(ValueError, match="client-level DP"):
        make_strategy(settings, model)
    settings.aggregator = "norm-clip"
    settings.clip_norm = 1.0
    make_strategy(settings, model)


def test_aggregator_is_exposed_in_cli_and_app_config(tmp_path):
    """``facepriv fed simulate/settings --aggregator`` and the deployed app's run config."""
    import tomllib
    from pathlib import Path

    from facepriv.federated.cli import build_parser, build_settings
    from facepriv.federated.server_app import settings_from_run_config

    args = build_parser("t").parse_args(["settings", "--out", str(tmp_path), "--aggregator", "trimmed-mean",
                                         "--trim-fraction", "0.3", "--max-examples", "64"])
    settings = build_settings(args)
    assert (settings.aggregator, settings.trim_fraction, settings.max_examples) == ("trimmed-mean", 0.3, 64)
    (tmp_path / "settings.json").write_text(settings.to_json())
    app = tomllib.loads((Path(__file__).resolve().parents[2] / "federated" / "app" / "pyproject.toml").read_text())
    conf = app["tool"]["flwr"]["app"]["config"]
    assert {"aggregator", "clip-norm", "trim-fraction", "max-examples"} <= set(conf)
    deployed = settings_from_run_config({**conf, "settings-file": str(tmp_path / "settings.json"),
                                         "aggregator": "norm-clip", "clip-norm": 2.5})
    assert (deployed.aggregator, deployed.clip_norm, deployed.trim_fraction) == ("norm-clip", 2.5, 0.3)
