"""Client side of the momentum schemes: what happens to the optimiser's momentum buffers of
the *shared* parameters at the start of a round.

Kept free of Flower and of the trainer so the PFM equivalence test drives exactly this code
with a plain ``torch.optim.SGD`` on a toy model, and the real client drives it with the
trainer's optimiser (possibly wrapped by Opacus).

* FedAvg / FedAvgM: shared buffers are reset every round (``install_momentum(..., None)``):
  the received model is a new starting point, and a stale local momentum would push it back
  towards this site's previous local optimum.
* PFM: shared buffers are set to the server's estimated global momentum. torch's SGD then
  computes ``buf = mu * m_global + g`` on the first local step, which is the centralised
  momentum update. Head buffers are never touched: the head is site-local.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn


def base_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimiser under an Opacus ``DPOptimizer`` (which keeps state there)."""
    return getattr(optimizer, "original_optimizer", optimizer)


def require_pfm_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Refuse an optimiser whose update PFM's server estimate does not describe.

    PFM's server sets ``m = (w_r - w_{r+1}) / L``, which is the momentum buffer exactly when
    each step is heavy-ball SGD, ``w -= lr * b``. Nesterov steps ``w -= lr * (g + mu * b)``,
    so the estimate is wrong every round and nothing would say so; Adam has no such buffer.
    """
    opt = base_optimizer(optimizer)
    if not isinstance(opt, torch.optim.SGD):
        raise TypeError(f"PFM needs an SGD optimiser with momentum, got {type(opt).__name__}")
    if any(bool(g.get("nesterov", False)) for g in opt.param_groups):
        raise ValueError("PFM refuses Nesterov momentum (optim.nesterov: true): its global-momentum estimate "
                         "(w_r - w_{r+1}) / L assumes heavy-ball steps w -= lr * b")


def install_momentum(
    optimizer: torch.optim.Optimizer,
    params: Mapping[str, nn.Parameter],
    momentum: Mapping[str, np.ndarray | torch.Tensor] | None,
) -> int:
    """Set (or, with ``momentum=None``, drop) the SGD momentum buffers of ``params``.

    Returns how many buffers were installed. Parameters missing from ``momentum`` get their
    buffer dropped (torch re-initialises it with the first gradient). A broadcast momentum
    that is not finite is refused: installed, it would turn the site's model NaN.
    """
    opt = base_optimizer(optimizer)
    if momentum is not None:
        require_pfm_optimizer(opt)
    installed = 0
    for name, p in params.items():
        state = opt.state[p]
        if momentum is None or name not in momentum:
            state.pop("momentum_buffer", None)
            continue
        m = momentum[name]
        t = m if isinstance(m, torch.Tensor) else torch.from_numpy(np.asarray(m))
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(f"global momentum for {name!r} has shape {tuple(t.shape)}, parameter has {tuple(p.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"global momentum for {name!r} contains NaN/inf")
        state["momentum_buffer"] = t.detach().to(device=p.device, dtype=p.dtype).clone()
        installed += 1
    return installed


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current lr of every named param group (the lr the *next* step will use)."""
    return {str(g.get("name", i)): float(g["lr"]) for i, g in enumerate(base_optimizer(optimizer).param_groups)}


def shared_parameters(model: nn.Module, keys: list[str] | set[str]) -> dict[str, nn.Parameter]:
    """Trainable parameters of ``model`` whose names are in ``keys`` (the travelling ones)."""
    keys = set(keys)
    return {n: p for n, p in model.named_parameters() if n in keys and p.requires_grad}
