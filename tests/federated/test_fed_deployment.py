"""A real Flower deployment on loopback: one SuperLink, two SuperNodes, `flwr run`, one round.

Insecure mode (TLS and SuperNode authentication are documented in docs/federated.md and the
certificate generator is tested separately). Every process is started in its own session
and killed (whole process group) in ``finally``, pass or fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    f = open(log, "wb")
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(procs: list[subprocess.Popen]) -> None:
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


def test_superlink_two_supernodes_one_round(tmp_path):
    if shutil.which("flower-superlink") is None or shutil.which("flower-supernode") is None:
        pytest.skip("flwr deployment binaries not installed")
    from federated.cli import build_parser, build_settings

    out = tmp_path / "run"
    args = build_parser("t").parse_args([
        "settings", "--out", str(out), "--clients", "2", "--rounds", "1", "--strategy", "pfm", "--local-steps", "1",
        "--image-size", "32", "--ids-per-client", "3", "--images-per-identity", "2", "--eval-identities", "0",
        "--batch-size", "4", "--width", "0.0625", "--round-timeout", "120"])
    settings = build_settings(args)
    out.mkdir(parents=True)
    (out / "settings.json").write_text(settings.to_json())
    app_dir = tmp_path / "app"
    shutil.copytree(REPO / "federated" / "app", app_dir)
    flwr_home = tmp_path / "flwr_home"
    flwr_home.mkdir()
    # Flower 1.41 serves the Fleet, Control and Runtime APIs over one HTTP port
    link = free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "local-poc"\n\n[superlink.local-poc]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    bindir = Path(shutil.which("flower-superlink")).parent
    procs: list[subprocess.Popen] = []
    try:
        procs.append(start([str(bindir / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(link),
                            "--database", str(tmp_path / "state.db"), "--disable-runtime-dependency-installation"],
                           tmp_path / "superlink.log", env))
        time.sleep(3)
        for i in range(2):
            node_cfg = f"partition-id={i} num-partitions=2 state-dir='{tmp_path / f'site{i}'}'"
            procs.append(start([str(bindir / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}",
                                "--port", str(free_port()), "--node-config", node_cfg],
                               tmp_path / f"supernode{i}.log", env))
        time.sleep(3)
        run = subprocess.run([str(bindir / "flwr"), "run", str(app_dir), "local-poc", "--format", "json",
                              "--run-config", f"settings-file='{out / 'settings.json'}'"],
                             env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr
        deadline = time.time() + 100
        metrics = out / "metrics.json"
        while time.time() < deadline:
            if metrics.exists():
                rounds = json.loads(metrics.read_text())["rounds"]
                if any(r.get("round") == 1 for r in rounds):
                    break
            for p in procs:
                assert p.poll() is None, f"a Flower process exited early; see logs in {tmp_path}"
            time.sleep(1)
        else:
            logs = "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*.log"))
            pytest.fail(f"no round finished within the deadline\n{logs}")
        row = [r for r in rounds if r.get("round") == 1][0]
        assert row["aggregation"]["accepted"] and len(row["aggregation"]["accepted"]) == 2
        assert (out / "checkpoints" / "global_round0001.pt").exists()
        # the sites kept their heads on disk (state-dir), the server never got them
        assert list((tmp_path / "site0").glob("site-*.pt")) and list((tmp_path / "site1").glob("site-*.pt"))
    finally:
        stop(procs)
    assert all(p.poll() is not None for p in procs)

