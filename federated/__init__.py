"""Federated training across partner sites with Flower (ClientApp/ServerApp, PFM strategy).

Layout: ``arrays`` (what travels, screening, averaging), ``momentum`` (client-side momentum
buffers: reset or PFM's global momentum), ``strategies`` (robust FedAvg / FedAvgM / PFM),
``site`` (a site's data and persistent state), ``client_app`` / ``server_app`` (Flower apps),
``fv`` (FedFace federated validation of aggregation weights), ``simulate`` (Ray
simulation: ``from federated.simulate import simulate``; not re-exported, because the name
would shadow the submodule), ``deploy`` (test certificates), ``cli`` (``facepriv fed``).
See docs/federated.md.
"""

from __future__ import annotations

from facepriv.lazy import lazy_exports

# Lazy: `import federated` must not import flwr/Ray (the facepriv CLI imports it to dispatch).
_EXPORTS = {
    "shared_keys": "federated.arrays",
    "shared_state": "federated.arrays",
    "load_shared_state": "federated.arrays",
    "load_frontend_buffers": "federated.arrays",
    "screen_update": "federated.arrays",
    "weighted_average": "federated.arrays",
    "install_momentum": "federated.momentum",
    "RobustFedAvg": "federated.strategies",
    "RobustFedAvgM": "federated.strategies",
    "PFM": "federated.strategies",
    "build_strategy": "federated.strategies",
    "candidate_weights": "federated.fv",
    "separation_score": "federated.fv",
    "combine_scores": "federated.fv",
    "FVRound": "federated.fv",
    "FedSettings": "federated.server_app",
    "run_server": "federated.server_app",
    "make_server_app": "federated.server_app",
    "make_client_app": "federated.client_app",
    "train_round": "federated.client_app",
    "validate_round": "federated.client_app",
    "make_test_certificates": "federated.deploy",
    "main": "federated.cli",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
