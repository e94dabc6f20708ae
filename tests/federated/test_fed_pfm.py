"""PFM reduces to centralised momentum SGD: IID data, one local step, full participation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from facepriv.federated.arrays import shared_state
from facepriv.federated.momentum import group_lrs, install_momentum
from facepriv.federated.strategies import PFM
from facepriv.federated.protocol import MOMENTUM, numpy_to_record, record_to_numpy

flwr_app = pytest.importorskip("flwr.app")
Message, MetricRecord, RecordDict, ConfigRecord = flwr_app.Message, flwr_app.MetricRecord, flwr_app.RecordDict, flwr_app.ConfigRecord

LR, MU, WD = 0.1, 0.9, 1e-3


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def make_sgd(model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD([{"name": "backbone", "params": list(model.parameters())}], lr=LR, momentum=MU, weight_decay=WD)


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((model(x) - y) ** 2).mean()


def client_round(msg, model: nn.Module, opt: torch.optim.Optimizer, x, y):
    """What the facepriv client does with a PFM train message, on a toy model."""
    with torch.no_grad():
        for k, v in record_to_numpy(msg.content["arrays"]).items():
            model.state_dict()[k].copy_(torch.from_numpy(v))
    momentum = record_to_numpy(msg.content[MOMENTUM]) if MOMENTUM in msg.content else None
    install_momentum(opt, dict(model.named_parameters()), momentum)
    lr = group_lrs(opt)["backbone"]
    opt.zero_grad()
    loss_fn(model, x, y).backward()
    opt.step()
    metrics = MetricRecord({"num-examples": int(x.shape[0]), "lr-sum-backbone": lr})
    arrays = numpy_to_record({k: v.numpy() for k, v in shared_state(model).items()})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@pytest.mark.parametrize("sizes", [(4, 4, 4), (3, 5, 8)])
def test_pfm_matches_centralised_momentum_sgd(task_identity, fake_grid, sizes):
    rounds = 6
    central = make_model()
    central_opt = make_sgd(central)
    param_keys = [n for n, _ in central.named_parameters()]
    strategy = PFM(param_keys=param_keys, min_train_nodes=len(sizes), min_available_nodes=len(sizes),
                   fraction_evaluate=0.0)
    clients = [make_model(seed=100 + i) for i in range(len(sizes))]  # deliberately different inits
    client_opts = [make_sgd(m) for m in clients]
    global_arrays = {k: v.numpy().copy() for k, v in shared_state(make_model()).items()}
    grid = fake_grid(list(range(1, len(sizes) + 1)))
    g = torch.Generator().manual_seed(3)
    for r in range(1, rounds + 1):
        batches = [(torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randn(n, 3, generator=g, dtype=torch.float64))
                   for n in sizes]
        # centralised: one SGD(momentum) step on the union batch
        xu, yu = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        central_opt.zero_grad()
        loss_fn(central, xu, yu).backward()
        central_opt.step()
        # federated: one PFM round
        msgs = list(strategy.configure_train(r, numpy_to_record(global_arrays), ConfigRecord(), grid))
        assert len(msgs) == len(sizes)
        assert (MOMENTUM in msgs[0].content) == (r > 1)
        replies = [client_round(m, clients[i], client_opts[i], *batches[i]) for i, m in enumerate(msgs)]
        new, metrics = strategy.aggregate_train(r, replies)
        assert new is not None and metrics["clients-accepted"] == len(sizes)
        global_arrays = record_to_numpy(new)
        for k, p in central.state_dict().items():
            np.testing.assert_allclose(global_arrays[k], p.numpy(), rtol=1e-10, atol=1e-12, err_msg=f"round {r} {k}")
        # the server's momentum estimate is the centralised optimiser's momentum buffer
        for k, p in central.named_parameters():
            np.testing.assert_allclose(strategy.momentum[k], central_opt.state[p]["momentum_buffer"].numpy(),
                                       rtol=1e-8, atol=1e-10)


def test_fedavg_without_momentum_broadcast_differs(task_identity, fake_grid):
    """Sanity check that the test above can fail: dropping the broadcast momentum (plain
    FedAvg with local momentum reset) does not follow the centralised trajectory."""
    central = make_model()
    central_opt = make_sgd(central)
    client = make_model()
    opt = make_sgd(client)
    strategy = PFM(param_keys=[n for n, _ in central.named_parameters()], min_train_nodes=1, min_available_nodes=1)
    arrays = {k: v.numpy().copy() for k, v in shared_state(make_model()).items()}
    g = torch.Generator().manual_seed(0)
    for r in range(1, 4):
        x, y = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
        central_opt.zero_grad()
        loss_fn(central, x, y).backward()
        central_opt.step()
        msg = list(strategy.configure_train(r, numpy_to_record(arrays), ConfigRecord(), fake_grid([1])))[0]
        msg.content.pop(MOMENTUM, None)
        new, _ = strategy.aggregate_train(r, [client_round(msg, client, opt, x, y)])
        arrays = record_to_numpy(new)
    diff = max(float(np.abs(arrays[k] - v.numpy()).max()) for k, v in central.state_dict().items())
    assert diff > 1e-4
