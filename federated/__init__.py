"""Federated training across partner sites with Flower (ClientApp/ServerApp, PFM strategy).

Layout: ``arrays`` (what travels, screening, averaging), ``momentum`` (client-side momentum
buffers: reset or PFM's global momentum), ``strategies`` (robust FedAvg / FedAvgM / PFM),
``site`` (a site's data and persistent state), ``client_app`` / ``server_app`` (Flower apps),
``fv`` (FedFace federated validation of aggregation weights), ``protocol`` (message keys,
record <-> arrays), ``settings`` (``FedSettings``, from which CLI flags and run-config keys derive), ``simulate`` (Ray
simulation: ``from facepriv.federated.simulate import simulate``; not re-exported, because the name
would shadow the submodule), ``deploy`` (test certificates), ``cli`` (``facepriv fed``).
See docs/federated.md.
"""

from __future__ import annotations

from facepriv.lazy import lazy_exports

# Lazy: `import federated` must not import flwr/Ray (the facepriv CLI imports it to dispatch).
_EXPORTS = {
    "shared_keys": "facepriv.federated.arrays",
    "shared_state": "facepriv.federated.arrays",
    "load_shared_state": "facepriv.federated.arrays",
    "load_frontend_buffers": "facepriv.federated.arrays",
    "screen_update": "facepriv.federated.arrays",
    "weighted_average": "facepriv.federated.arrays",
    "install_momentum": "facepriv.federated.momentum",
    "RobustFedAvg": "facepriv.federated.strategies",
    "RobustFedAvgM": "facepriv.federated.strategies",
    "PFM": "facepriv.federated.strategies",
    "build_strategy": "facepriv.federated.strategies",
    "candidate_weights": "facepriv.federated.fv",
    "separation_score": "facepriv.federated.fv",
    "combine_scores": "facepriv.federated.fv",
    "FVRound": "facepriv.federated.fv",
    "FedSettings": "facepriv.federated.settings",
    "run_server": "facepriv.federated.server_app",
    "make_server_app": "facepriv.federated.server_app",
    "make_client_app": "facepriv.federated.client_app",
    "train_round": "facepriv.federated.client_app",
    "validate_round": "facepriv.federated.client_app",
    "make_test_certificates": "facepriv.federated.deploy",
    "main": "facepriv.federated.cli",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
