"""Flower simulation (Ray backend) of a facepriv federation on one machine.

For development, tests and benchmarks only: partner sites run real SuperNodes
(docs/federated.md). Ray is kept small: no dashboard, no usage stats, ``num_cpus`` for the
whole simulation capped (default 2) and a fractional CPU share per virtual client.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .server_app import FedSettings, make_server_app

log = logging.getLogger(__name__)

#: Environment that keeps Ray quiet and small on a shared machine.
RAY_ENV = {
    "RAY_DISABLE_USAGE_STATS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_memory_monitor_refresh_ms": "0",
    "RAY_INCLUDE_DASHBOARD": "0",
}


def backend_config(num_cpus: int = 2, cpus_per_client: float = 0.5) -> dict[str, Any]:
    return {
        "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
        "init_args": {"num_cpus": num_cpus, "num_gpus": 0, "include_dashboard": False, "log_to_driver": False},
    }


def simulate(settings: FedSettings, *, num_clients: int, num_cpus: int = 2, cpus_per_client: float = 0.5) -> list[dict[str, Any]]:
    """Run ``settings`` with ``num_clients`` virtual sites; returns the per-round history."""
    from flwr.simulation import run_simulation

    from .client_app import make_client_app

    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    # each Ray actor gets its own torch; one thread each keeps 2 cores from thrashing
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_simulation(
        server_app=make_server_app(settings),
        client_app=make_client_app(client_dp=settings.client_dp_noise is not None),
        num_supernodes=num_clients,
        backend_config=backend_config(num_cpus, cpus_per_client),  # type: ignore[arg-type]
    )
    import json
    from pathlib import Path

    path = Path(settings.out) / "metrics.json"
    if not path.exists():
        raise RuntimeError(f"the simulation ended without writing {path}; see the Flower log above")
    return json.loads(path.read_text())["rounds"]
