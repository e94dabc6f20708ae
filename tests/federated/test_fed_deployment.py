"""A real Flower deployment on loopback **with TLS and SuperNode authentication**: one
SuperLink, two SuperNodes, `flwr run`, one round.

Exactly the steps of docs/federated.md ("Deployment at partner sites"): certificates from
``facepriv fed certs`` (our generator) in ``tmp_path``; the SuperLink serves its HTTP APIs
over TLS (``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``) with
``--enable-supernode-auth``; both SuperNodes' public keys are registered through the
Control API (``flwr supernode register``), then each SuperNode connects over TLS
(``--root-certificates``) signing its requests with its private key
(``--auth-supernode-private-key``). A third, *unregistered* key is also tried: the SuperLink
must refuse it, which is what shows authentication is actually enforced.

Every process is started in its own session and killed (whole process group) in
``finally``, pass or fail.

Load: the test must fail only when the deployment is broken, not because the machine is
busy. The SuperLink runs through ``facepriv fed superlink`` (a long SQLite lock wait; with
Flower's 5 s a loaded machine ended runs with ``database is locked``, see
``facepriv.federated.deploy``). Waits are generous, and the test fails *early* on what
shows a broken deployment: a Flower process exiting, or the run finishing without a round.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
#: how long a healthy deployment may take on a heavily loaded machine before the test gives up
#: (an unloaded 2-core machine needs about 40 s for the round; a broken one fails well before).
SLOW_MACHINE_S = 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "wb") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every process group, then SIGKILL what is still alive after 10 s."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=5)


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "flower-superlink exited during start-up"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"flower-superlink did not listen on {port} within {timeout:.0f}s")


def run_status(flwr, run_id: str) -> str:
    """The run's status as ``flwr ls`` reports it (``running``, ``finished:failed``, ...)."""
    ls = flwr("ls", "partners", "--run-id", run_id, "--format", "json")
    if ls.returncode != 0:
        return "unknown"
    try:
        runs = json.loads(ls.stdout).get("runs", [])
    except json.JSONDecodeError:
        return "unknown"
    return next((str(r.get("status")) for r in runs if str(r.get("run-id")) == run_id), "unknown")


def wait_for_round(metrics: Path, procs: list[subprocess.Popen], intruder: subprocess.Popen, status,
                   tmp_path: Path) -> list[dict]:
    """Rows of ``metrics`` once round 1 is in it. Fails at once when a Flower process exits
    or the run finishes without that round (a broken deployment); otherwise waits up to
    ``SLOW_MACHINE_S`` (a slow machine is not a broken deployment)."""
    deadline = time.time() + SLOW_MACHINE_S
    next_status = time.time() + 10
    while time.time() < deadline:
        try:
            rounds = json.loads(metrics.read_text())["rounds"] if metrics.exists() else []
        except json.JSONDecodeError:  # caught the server mid-write
            rounds = []
        if any(r.get("round") == 1 for r in rounds):
            return rounds
        for p in procs:
            if p is not intruder and p.poll() is not None:
                pytest.fail(f"a Flower process exited early (code {p.returncode})\n{logs(tmp_path)}")
        if time.time() >= next_status:  # a ServerApp that crashed ends the run: no need to wait it out
            state = status()
            if state.startswith("finished"):
                time.sleep(2)  # the last metrics write may land just before the status changes
                if metrics.exists() and '"round": 1' in metrics.read_text():
                    continue
                pytest.fail(f"the run ended ({state}) without finishing round 1\n{logs(tmp_path)}")
            next_status = time.time() + 10
        time.sleep(1)
    pytest.fail(f"no round finished within {SLOW_MACHINE_S} s although every process is alive\n{logs(tmp_path)}")


def logs(tmp_path: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(tmp_path.glob("*.log")))


def test_tls_superlink_two_authenticated_supernodes_one_round(tmp_path):
    if shutil.which("flower-superlink") is None or shutil.which("flower-supernode") is None:
        pytest.skip("flwr deployment binaries not installed")
    pytest.importorskip("cryptography")
    from facepriv.federated.cli import main as fed_main

    # 1. certificates: our generator, as an operator would run it (`facepriv fed certs`)
    certs = tmp_path / "certs"
    assert fed_main(["certs", "--out", str(certs), "--nodes", "3"]) == 0
    # the run's settings (`facepriv fed settings`), a tiny model
    out = tmp_path / "run"
    assert fed_main([
        "settings", "--out", str(out), "--clients", "2", "--rounds", "1", "--strategy", "pfm", "--local-steps", "1",
        "--image-size", "32", "--ids-per-client", "3", "--images-per-identity", "2", "--eval-identities", "0",
        "--batch-size", "4", "--width", "0.0625", "--round-timeout", str(SLOW_MACHINE_S)]) == 0
    app_dir = tmp_path / "app"
    shutil.copytree(REPO / "federated" / "app", app_dir)
    flwr_home = tmp_path / "flwr_home"
    flwr_home.mkdir()
    # Flower 1.41 serves the Fleet, Control and Runtime APIs over one (here HTTPS) port
    link = free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "partners"\n\n[superlink.partners]\naddress = "127.0.0.1:{link}"\n'
        f'root-certificates = "{certs / "ca.crt"}"\n')
    env = {**os.environ, "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    bindir = Path(shutil.which("flower-superlink")).parent
    procs: list[subprocess.Popen] = []

    def flwr(*cli: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(bindir / "flwr"), *cli], env=env, capture_output=True, text=True, timeout=timeout,
                              cwd=tmp_path)

    def supernode(i: int, key: str) -> subprocess.Popen:
        node_cfg = f"partition-id={i} num-partitions=2 state-dir='{tmp_path / f'site{i}'}'"
        return start([str(bindir / "flower-supernode"), "--superlink", f"127.0.0.1:{link}",
                      "--root-certificates", str(certs / "ca.crt"), "--auth-supernode-private-key", str(certs / key),
                      "--port", str(free_port()), "--node-config", node_cfg], tmp_path / f"supernode{i}.log", env)

    try:
        # 2. SuperLink: TLS + SuperNode authentication (flower-superlink with a robust SQLite lock wait)
        procs.append(start([sys.executable, "-m", "facepriv.federated.cli", "superlink", "--",
                            "--ssl-ca-certfile", str(certs / "ca.crt"),
                            "--ssl-certfile", str(certs / "server.pem"), "--ssl-keyfile", str(certs / "server.key"),
                            "--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(link),
                            "--database", str(tmp_path / "state.db"), "--disable-runtime-dependency-installation"],
                           tmp_path / "superlink.log", env))
        wait_for_port(link, procs[0])
        # 3. register the two sites' public keys (the third key stays unregistered)
        registered: set[int] = set()
        for i in (1, 2):
            reg = flwr("supernode", "register", str(certs / f"supernode{i}.pub"), "partners", "--format", "json")
            assert reg.returncode == 0, reg.stdout + reg.stderr + logs(tmp_path)
            registered.add(int(json.loads(reg.stdout)["node-id"]))
        assert len(registered) == 2
        # 4. the sites' SuperNodes (TLS, signed with their private keys) + an intruder
        for i in range(2):
            procs.append(supernode(i, f"supernode{i + 1}.key"))
        intruder = start([str(bindir / "flower-supernode"), "--superlink", f"127.0.0.1:{link}",
                          "--root-certificates", str(certs / "ca.crt"),
                          "--auth-supernode-private-key", str(certs / "supernode3.key"), "--max-retries", "0",
                          "--port", str(free_port()), "--node-config", "partition-id=0 num-partitions=2"],
                         tmp_path / "intruder.log", env)
        procs.append(intruder)
        # 5. the run (TLS to the Control API, no run-time `uv sync`)
        run = flwr("run", str(app_dir), "partners", "--format", "json",
                   "--run-config", f"settings-file='{out / 'settings.json'}'")
        assert run.returncode == 0, run.stdout + run.stderr + logs(tmp_path)
        run_id = str(json.loads(run.stdout)["run-id"])
        rounds = wait_for_round(out / "metrics.json", procs, intruder, lambda: run_status(flwr, run_id), tmp_path)
        row = [r for r in rounds if r.get("round") == 1][0]
        # exactly the two registered (authenticated) SuperNodes trained in the round
        assert {int(n) for n in row["aggregation"]["accepted"]} == registered, row
        assert (out / "checkpoints" / "global_round0001.pt").exists()
        # the sites kept their heads on disk (state-dir), the server never got them
        assert list((tmp_path / "site0").glob("site-*.pt")) and list((tmp_path / "site1").glob("site-*.pt"))
        # the SuperLink knows exactly the two registered nodes ...
        ls = flwr("supernode", "list", "partners", "--format", "json")
        assert ls.returncode == 0, ls.stdout + ls.stderr
        assert {int(n["node-id"]) for n in json.loads(ls.stdout)["nodes"]} == registered
        # ... and refused the unregistered key (the intruder gives up: --max-retries 0)
        assert intruder.wait(timeout=300) != 0
        link_log = (tmp_path / "superlink.log").read_text(errors="replace")
        assert "No SuperNode found with the given public key" in link_log, link_log[-3000:]
        assert "running on https://" in link_log  # the APIs were served over TLS
    finally:
        stop(procs)
    assert all(p.poll() is not None for p in procs)
