"""FedFace federated validation (FV): candidates, scores, selection, robustness, and the
momentum state of FedAvgM / PFM following the chosen candidate.

The strategy-level tests drive the real strategies with a fake grid whose "sites" score the
candidate models with the real ``separation_score`` on private validation data: a linear
embedder ``e = W x`` where ``W`` is the (only) shared array.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

flwr_app = pytest.importorskip("flwr.app")
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict  # noqa: E402

from facepriv.federated.fv import candidate_weights, combine_scores, separation_score  # noqa: E402
from facepriv.federated.protocol import CANDIDATE_PREFIX, FV_MESSAGE_TYPE, FV_SCORES  # noqa: E402
from facepriv.federated.strategies import PFM, RobustFedAvg, RobustFedAvgM  # noqa: E402
from facepriv.federated.protocol import numpy_to_record, record_to_numpy  # noqa: E402

# ----------------------------------------------------------------------------- pure parts


def test_candidate_weights_rows_and_reproducibility():
    p = [3.0, 10.0, 1000.0]
    q = candidate_weights(p, 5, seed=(0, 1))
    assert q.shape == (5, 3)
    np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-12)
    assert np.all(q >= 0)
    np.testing.assert_allclose(q[0], np.asarray(p) / sum(p))  # sample counts first
    np.testing.assert_allclose(q[1], 1 / 3)  # then uniform
    assert len({tuple(np.round(r, 12)) for r in q}) == 5  # all distinct
    np.testing.assert_array_equal(q, candidate_weights(p, 5, seed=(0, 1)))  # reproducible (resume)
    assert not np.allclose(q[2:], candidate_weights(p, 5, seed=(0, 2))[2:])  # another round, other draws
    # equal sites: uniform == sample weights, replaced by a draw so K distinct rows remain
    q2 = candidate_weights([1, 1, 1, 1], 3, seed=0)
    assert q2.shape == (3, 4) and len({tuple(np.round(r, 12)) for r in q2}) == 3
    # draws concentrate around p as the concentration grows
    far = candidate_weights([1, 2, 3, 4], 40, seed=0, concentration=0.5)[2:]
    near = candidate_weights([1, 2, 3, 4], 40, seed=0, concentration=200.0)[2:]
    p4 = np.array([1, 2, 3, 4]) / 10
    assert np.abs(near - p4).mean() < 0.3 * np.abs(far - p4).mean()
    assert candidate_weights([7], 4).tolist() == [[1.0]]  # one site: one candidate
    with pytest.raises(ValueError):
        candidate_weights([1, 0], 2)
    with pytest.raises(ValueError):
        candidate_weights([1, 2], 0)


def test_separation_score_orders_embeddings():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(3)
    centres = torch.randn(4, 8, generator=g)
    tight = centres[labels] + 0.05 * torch.randn(12, 8, generator=g)
    loose = centres[labels] + 1.0 * torch.randn(12, 8, generator=g)
    noise = torch.randn(12, 8, generator=g)
    s_tight, s_loose, s_noise = (separation_score(e, labels) for e in (tight, loose, noise))
    assert s_tight > s_loose > s_noise and s_tight > 0.5 and abs(s_noise) < 0.3
    assert separation_score(tight * 7.0, labels) == pytest.approx(s_tight)  # cosine: scale-free
    with pytest.raises(ValueError, match="impostor"):
        separation_score(tight[:3], labels[:3])  # one identity: no impostor pair
    with pytest.raises(ValueError, match="genuine"):
        separation_score(tight[::3], labels[::3])  # one image each: no genuine pair


def test_combine_scores_weights_and_ties():
    agg, best = combine_scores({1: [0.1, 0.5], 2: [0.3, 0.0]}, {1: 1, 2: 3}, 2)
    np.testing.assert_allclose(agg, [0.25, 0.125])
    assert best == 0
    assert combine_scores({1: [0.2, 0.2]}, {1: 5}, 2)[1] == 0  # ties -> sample-count candidate
    assert combine_scores({}, {}, 2) is None


# ----------------------------------------------------------------------------- strategy with fake sites

D_IN, D_EMB = 4, 2
W_GOOD = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float64)  # reads the identity dimensions
W_BAD = np.array([[0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float64)  # reads the nuisance dimensions


def validation_data(seed: int, identities: int = 4, per_id: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity code (scale 3) in dims 0-1, per-image nuisance (scale 1) in dims 2-3."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(identities).repeat_interleave(per_id)
    codes = 3.0 * torch.randn(identities, 2, generator=g, dtype=torch.float64)
    x = torch.cat([codes[labels] + 0.05 * torch.randn(len(labels), 2, generator=g, dtype=torch.float64),
                   torch.randn(len(labels), 2, generator=g, dtype=torch.float64)], 1)
    return x, labels


def score(w: np.ndarray, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    x, y = data
    return separation_score(x @ torch.from_numpy(w).T, y)


class Sites:
    """Fake sites: each trains to a fixed ``W`` (its reply) and scores FV candidates on its
    own validation data. ``fv_behaviour[node]``: "ok", "error", "nan", "short", "silent"."""

    def __init__(self, updates: dict[int, np.ndarray], sizes: dict[int, int], lr_sums: dict[int, float] | None = None,
                 fv_behaviour: dict[int, str] | None = None) -> None:
        self.updates, self.sizes = updates, sizes
        self.lr_sums = lr_sums or {n: 0.1 for n in updates}
        self.fv_behaviour = fv_behaviour or {}
        self.data = {n: validation_data(100 + n) for n in updates}
        self.fv_messages: list[Message] = []

    def train_reply(self, msg: Message) -> Message:
        n = int(msg.metadata.dst_node_id)
        arrays = {"w": self.updates[n].copy(), "steps": np.array(5 + n, dtype=np.int64)}
        metrics = MetricRecord({"num-examples": self.sizes[n], "lr-sum-backbone": self.lr_sums[n]})
        return Message(RecordDict({"arrays": numpy_to_record(arrays), "metrics": metrics}), reply_to=msg)

    def __call__(self, msg: Message) -> Message | None:  # the grid's responder: FV queries only
        assert msg.metadata.message_type == FV_MESSAGE_TYPE
        self.fv_messages.append(msg)
        n = int(msg.metadata.dst_node_id)
        behaviour = self.fv_behaviour.get(n, "ok")
        if behaviour == "silent":
            return None
        if behaviour == "error":
            return Message(Error(code=1, reason="site crashed while validating"), reply_to=msg)
        k = int(msg.content["config"]["fv-candidates"])
        scores = [score(record_to_numpy(msg.content[f"{CANDIDATE_PREFIX}{j}"])["w"], self.data[n]) for j in range(k)]
        if behaviour == "nan":
            scores[1] = float("nan")
        if behaviour == "short":
            scores = scores[:-1]
        return Message(RecordDict({"metrics": MetricRecord({FV_SCORES: scores, "num-examples": 12})}), reply_to=msg)


def run_rounds(strategy, sites: Sites, fake_grid, rounds: int = 1, start: np.ndarray | None = None):
    arrays = {"w": np.zeros((D_EMB, D_IN)) if start is None else start, "steps": np.array(0, dtype=np.int64)}
    grid = fake_grid(sorted(sites.updates), responder=sites)
    history = []
    for r in range(1, rounds + 1):
        msgs = list(strategy.configure_train(r, numpy_to_record(arrays), ConfigRecord({"train-config": "{}"}), grid))
        # replies in node order: Flower samples nodes in random order, and float sums depend on order
        msgs.sort(key=lambda m: int(m.metadata.dst_node_id))
        new, metrics = strategy.aggregate_train(r, [sites.train_reply(m) for m in msgs])
        assert new is not None
        arrays = record_to_numpy(new)
        history.append((arrays, metrics, strategy.reports[-1].as_dict()))
    return history


KW = {"min_train_nodes": 2, "min_available_nodes": 2, "fraction_evaluate": 0.0}


def test_fv_picks_the_candidate_that_is_better_on_the_sites_validation_data(task_identity, fake_grid):
    """Site 2 is 99x larger but learned the nuisance; sample-count weighting follows it, the
    uniform candidate mixes in site 1's identity-reading model and separates identities."""
    sites = Sites({1: W_GOOD, 2: W_BAD}, {1: 1, 2: 99})
    strategy = RobustFedAvg(fv_candidates=2, **KW)
    [(arrays, metrics, report)] = run_rounds(strategy, sites, fake_grid)
    fv = report["fv"]
    # what each candidate scores on each site's validation data, computed independently
    uniform, sample = 0.5 * (W_GOOD + W_BAD), 0.01 * W_GOOD + 0.99 * W_BAD
    expected = np.mean([[score(sample, sites.data[n]), score(uniform, sites.data[n])] for n in (1, 2)], axis=0)
    assert expected[1] > expected[0] + 0.3  # the uniform candidate is clearly better
    np.testing.assert_allclose(fv["aggregate"], expected, rtol=1e-9)
    assert fv["chosen"] == 1 and not fv["fallback"] and not fv["ignored"]
    np.testing.assert_allclose(arrays["w"], uniform, rtol=1e-12)
    top = fv["nodes"][int(np.argmax(fv["candidates"][fv["chosen"]]))]
    assert int(arrays["steps"]) == 5 + top  # integer arrays: the chosen weighting's largest-weight site
    assert metrics["fv-chosen"] == 1 and metrics["fv-sites"] == 2
    by_node = [dict(zip(fv["nodes"], q)) for q in fv["candidates"]]  # weights are in the order of fv["nodes"]
    assert by_node[0] == pytest.approx({1: 0.01, 2: 0.99}) and by_node[1] == pytest.approx({1: 0.5, 2: 0.5})
    # the FV messages went to the contributing sites, as queries carrying K models and no site's update
    assert sorted(int(m.metadata.dst_node_id) for m in sites.fv_messages) == [1, 2]
    msg = sites.fv_messages[0]
    assert sorted(msg.content.array_records) == [f"{CANDIDATE_PREFIX}0", f"{CANDIDATE_PREFIX}1"]
    json.dumps(report)  # the round report (metrics.json) is plain JSON
    # without FV the same round ends on the sample-count average
    [(plain, _, _)] = run_rounds(RobustFedAvg(**KW), Sites({1: W_GOOD, 2: W_BAD}, {1: 1, 2: 99}), fake_grid)
    np.testing.assert_allclose(plain["w"], sample, rtol=1e-12)


def test_pfm_momentum_follows_the_chosen_candidate(task_identity, fake_grid):
    """PFM: w_{r+1} = sum_k q*_k w_k and m_{r+1} = (w_r - w_{r+1}) / sum_k q*_k L_k, with the
    *chosen* weights q* in both (so the momentum is the step that was actually taken)."""
    start = np.full((D_EMB, D_IN), 0.25)
    sites = Sites({1: W_GOOD, 2: W_BAD}, {1: 1, 2: 99}, lr_sums={1: 0.1, 2: 0.3})
    strategy = PFM(param_keys=["w"], fv_candidates=2, **KW)
    [(arrays, _, report)] = run_rounds(strategy, sites, fake_grid, start=start)
    assert report["fv"]["chosen"] == 1
    q = np.array([0.5, 0.5])
    chosen = q[0] * W_GOOD + q[1] * W_BAD
    np.testing.assert_allclose(arrays["w"], chosen, rtol=1e-12)
    np.testing.assert_allclose(strategy.momentum["w"], (start - chosen) / (q @ [0.1, 0.3]), rtol=1e-12)
    p = np.array([0.01, 0.99])
    assert not np.allclose(strategy.momentum["w"], (start - (p[0] * W_GOOD + p[1] * W_BAD)) / (p @ [0.1, 0.3]))


def test_fedavgm_candidates_include_the_server_step_and_commit_the_chosen_velocity(task_identity, fake_grid):
    beta, eta = 0.5, 1.0
    sites = Sites({1: W_GOOD, 2: W_BAD}, {1: 1, 2: 99})
    strategy = RobustFedAvgM(server_momentum=beta, server_learning_rate=eta, fv_candidates=2, **KW)
    (w1, _, rep1), (w2, _, rep2) = run_rounds(strategy, sites, fake_grid, rounds=2)
    assert rep1["fv"]["chosen"] == 1
    v1 = np.zeros((D_EMB, D_IN)) - 0.5 * (W_GOOD + W_BAD)  # velocity of the chosen (uniform) candidate
    np.testing.assert_allclose(w1["w"], -eta * v1, rtol=1e-12)
    # round 2: every candidate sent to the sites is the server-momentum step of its average
    round2 = sites.fv_messages[-2:]
    updates = {1: W_GOOD, 2: W_BAD}
    for j, q in enumerate(rep2["fv"]["candidates"]):
        a = sum(qi * updates[n] for qi, n in zip(q, rep2["fv"]["nodes"]))
        expected = w1["w"] - eta * (beta * v1 + (w1["w"] - a))
        np.testing.assert_allclose(record_to_numpy(round2[0].content[f"{CANDIDATE_PREFIX}{j}"])["w"], expected, rtol=1e-12)
    q = rep2["fv"]["candidates"][rep2["fv"]["chosen"]]
    a = sum(qi * updates[n] for qi, n in zip(q, rep2["fv"]["nodes"]))
    np.testing.assert_allclose(strategy.velocity["w"], beta * v1 + (w1["w"] - a), rtol=1e-12)
    np.testing.assert_allclose(w2["w"], w1["w"] - eta * strategy.velocity["w"], rtol=1e-12)


def test_fv_ignores_failed_nan_malformed_and_silent_sites(task_identity, fake_grid):
    updates = {1: W_GOOD, 2: W_BAD, 3: W_BAD, 4: W_BAD, 5: W_BAD}
    sizes = {1: 1, 2: 50, 3: 20, 4: 20, 5: 8}
    behaviour = {2: "error", 3: "nan", 4: "short", 5: "silent"}
    sites = Sites(updates, sizes, fv_behaviour=behaviour)
    strategy = RobustFedAvg(fv_candidates=3, min_train_nodes=5, min_available_nodes=5, fraction_evaluate=0.0)
    [(arrays, metrics, report)] = run_rounds(strategy, sites, fake_grid)
    fv = report["fv"]
    assert list(fv["scores"]) == ["1"] and metrics["fv-sites"] == 1
    assert set(fv["ignored"]) == {"2", "3", "4", "5"}
    assert "crashed" in fv["ignored"]["2"] and "non-finite" in fv["ignored"]["3"]
    assert "2 scores for 3 candidates" in fv["ignored"]["4"] and "no FV reply" in fv["ignored"]["5"]
    # the one usable site decides: the chosen candidate is its best one
    own = [score(np.einsum("k,kij->ij", np.asarray(q), np.stack([updates[n] for n in fv["nodes"]])), sites.data[1])
           for q in fv["candidates"]]
    assert fv["chosen"] == int(np.argmax(own)) and not fv["fallback"]


@pytest.mark.parametrize("behaviour", ["error", "nan", "silent"])
def test_fv_without_usable_replies_falls_back_to_sample_weights(task_identity, fake_grid, behaviour, caplog):
    sites = Sites({1: W_GOOD, 2: W_BAD}, {1: 1, 2: 99}, fv_behaviour={1: behaviour, 2: behaviour})
    [(arrays, metrics, report)] = run_rounds(RobustFedAvg(fv_candidates=3, **KW), sites, fake_grid)
    assert report["fv"]["fallback"] and report["fv"]["chosen"] == 0 and report["fv"]["aggregate"] is None
    [(plain, _, _)] = run_rounds(RobustFedAvg(**KW), Sites({1: W_GOOD, 2: W_BAD}, {1: 1, 2: 99}), fake_grid)
    np.testing.assert_array_equal(arrays["w"], plain["w"])
    assert "no usable federated-validation reply" in caplog.text
    assert "fv-score" not in metrics


def test_fv_exchange_failure_falls_back(task_identity, fake_grid):
    """A grid that cannot exchange messages at all (network down): the round still completes."""
    sites = Sites({1: W_GOOD, 2: W_BAD}, {1: 1, 2: 99})
    strategy = RobustFedAvg(fv_candidates=2, **KW)
    grid = fake_grid([1, 2])  # no responder: send_and_receive raises
    msgs = list(strategy.configure_train(1, numpy_to_record({"w": np.zeros((2, 4)), "steps": np.array(0)}),
                                         ConfigRecord(), grid))
    new, _ = strategy.aggregate_train(1, [sites.train_reply(m) for m in msgs])
    fv = strategy.reports[-1].fv
    assert new is not None and fv.fallback and all("exchange failed" in v for v in fv.ignored.values())


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "pfm"])
def test_one_candidate_equals_the_plain_strategy_exactly(task_identity, fake_grid, name):
    """K=1 (only the sample-count weights): bit-identical models and strategy state."""
    from facepriv.federated.strategies import build_strategy

    rng = np.random.default_rng(0)
    updates = {n: rng.standard_normal((D_EMB, D_IN)) for n in (1, 2, 3)}
    sizes = {1: 3, 2: 10, 3: 1000}
    lr = {1: 0.1, 2: 0.2, 3: 0.05}
    kw = {"min_train_nodes": 3, "min_available_nodes": 3, "fraction_evaluate": 0.0, "param_keys": ["w"],
          "server_momentum": 0.9}
    runs = []
    for k in (0, 1):
        strategy = build_strategy(name, fv_candidates=k, **kw)
        runs.append((strategy, run_rounds(strategy, Sites(updates, sizes, lr), fake_grid, rounds=3)))
    (plain, plain_hist), (fv, fv_hist) = runs
    for (a, _, _), (b, _, rep) in zip(plain_hist, fv_hist):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        assert rep["fv"]["chosen"] == 0 and len(rep["fv"]["candidates"]) == 1 and rep["fv"]["aggregate"]
    for attr in ("velocity", "momentum"):
        if hasattr(plain, attr):
            np.testing.assert_array_equal(getattr(plain, attr)["w"], getattr(fv, attr)["w"])


# ----------------------------------------------------------------------------- the real site


def test_site_scores_candidates_on_held_out_identities_and_replies_scalars_only(task_identity, tmp_path, tiny_cfg):
    from facepriv.federated.arrays import shared_state, state_to_numpy
    from facepriv.federated.client_app import make_client_app, train_round, validate_round
    from facepriv.federated.server_app import FedSettings, build_global_model
    from facepriv.federated.site import HEAD_KEY, site_dataset

    model, cfg_dict = build_global_model(FedSettings(train_config=tiny_cfg(), out=str(tmp_path)))
    sent = state_to_numpy(shared_state(model))
    data = {"format": "synthetic", "ids_per_client": 4, "images_per_identity": 3}
    conf = {"train-config": json.dumps(cfg_dict), "data": json.dumps(data), "local-steps": 1, "strategy": "fedavg",
            "fv-val-identities": 2, "server-round": 1}
    node_config = {"partition-id": 1, "num-partitions": 2}
    ctx = Context(run_id=3, node_id=7, node_config=node_config, state=RecordDict(), run_config={})
    # training excludes the validation identities: the head has 4 - 2 class centres
    msg = Message(RecordDict({"arrays": numpy_to_record(sent), "config": ConfigRecord(conf)}), dst_node_id=7,
                  message_type=MessageType.TRAIN)
    trained = record_to_numpy(train_round(msg, ctx)["arrays"])
    assert any(v.shape[0] == 2 for v in (a.numpy() for a in ctx.state[HEAD_KEY].values()) if v.ndim == 2)
    train_ds, _ = site_dataset(data, node_config, 32, val_identities=2)
    val_ds, _ = site_dataset(data, node_config, 32, val_identities=2, split="val")
    assert set(train_ds.class_names).isdisjoint(val_ds.class_names) and len(val_ds.class_names) == 2
    # FV: candidates 0 and 2 are the same model, so they must score the same
    cands = {f"{CANDIDATE_PREFIX}0": numpy_to_record(sent), f"{CANDIDATE_PREFIX}1": numpy_to_record(trained),
             f"{CANDIDATE_PREFIX}2": numpy_to_record(sent)}
    fv_msg = Message(RecordDict({**cands, "config": ConfigRecord({**conf, "fv-candidates": 3})}), dst_node_id=7,
                     message_type=FV_MESSAGE_TYPE)
    reply = validate_round(fv_msg, ctx)
    assert list(reply.array_records) == [] and list(reply.config_records) == []  # scalars only
    m = reply["metrics"]
    scores = m[FV_SCORES]
    assert len(scores) == 3 and all(np.isfinite(scores)) and all(-2 <= s <= 2 for s in scores)
    assert scores[0] == scores[2]
    assert m["num-examples"] == 2 * 3
    # the ClientApp routes "query.fv" to it
    app = make_client_app()
    out = app(fv_msg, ctx)
    assert out.content["metrics"][FV_SCORES] == scores
    # a site without enough identities for FV fails loudly (its FV reply is an error, ignored upstream)
    bad = {**conf, "data": json.dumps({**data, "ids_per_client": 2}), "fv-candidates": 3}
    with pytest.raises(ValueError, match="holds out 2"):
        validate_round(Message(RecordDict({**cands, "config": ConfigRecord(bad)}), dst_node_id=7,
                               message_type=FV_MESSAGE_TYPE), ctx)


def test_validation_split_is_deterministic_and_disjoint():
    from facepriv.federated.site import split_validation_identities

    names = [f"id{i:03d}" for i in range(20)]
    train, val = split_validation_identities(names, 3, seed=5)
    assert len(val) == 3 and set(train).isdisjoint(val) and sorted(train + val) == sorted(names)
    assert split_validation_identities(list(reversed(names)), 3, seed=5) == (train, val)
    assert split_validation_identities(names, 0) == (sorted(names), [])
    with pytest.raises(ValueError, match="at least one must remain"):
        split_validation_identities(names[:3], 3)


def test_fv_settings_are_validated(tmp_path, tiny_cfg):
    from facepriv.federated.server_app import FedSettings, build_global_model, make_strategy

    model, _ = build_global_model(FedSettings(train_config=tiny_cfg(), out=str(tmp_path)))
    with pytest.raises(ValueError, match="client-level DP"):
        make_strategy(FedSettings(train_config=tiny_cfg(), out=str(tmp_path), fv_candidates=2, client_dp_noise=1.0), model)
    with pytest.raises(ValueError, match="fv_val_identities"):
        make_strategy(FedSettings(train_config=tiny_cfg(), out=str(tmp_path), fv_candidates=2, fv_val_identities=1), model)
    s = make_strategy(FedSettings(train_config=tiny_cfg(), out=str(tmp_path), strategy="pfm", fv_candidates=3), model)
    assert s.fv_candidates == 3 and isinstance(s, PFM)
