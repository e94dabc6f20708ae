"""The SuperLink's SQLite lock wait: the cause of the deployment test's ``database is locked``
on a loaded machine, reproduced without load.

With ``--database FILE`` a SuperLink request waits at most 5 s (Flower 1.41's hard-coded
``busy_timeout``) for another request's write transaction; on a loaded machine Flower's own
transactions (storing a message preregisters every model array) were measured holding the
lock for up to 5.2 s. Here a second process holds the write lock for 6 s, which stands in for
such a slow transaction: Flower's store gives up with ``database is locked``, the store of
``facepriv fed superlink`` (``facepriv.federated.deploy.run_superlink``) waits and succeeds.
Each case runs in its own interpreter: the setting is process-wide, as in the SuperLink.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("flwr")
pytestmark = pytest.mark.slow  # two interpreters wait out a 6 s lock each (no CPU load)

HOLD_S = 6.0  # > Flower's 5 s

WRITER = """
import json, sys, time
import numpy as np
path, patched = sys.argv[1], sys.argv[2] == "1"
if patched:
    from facepriv.federated.deploy import BUSY_TIMEOUT_S, set_sqlite_busy_timeout
    set_sqlite_busy_timeout(BUSY_TIMEOUT_S)
from flwr.app import Array
from flwr.supercore.inflatable.inflatable_object import get_object_tree
from flwr.supercore.object_store.sql_object_store import SqlObjectStore
store = SqlObjectStore(path)
store.initialize()
pragma = store.query("PRAGMA busy_timeout")[0]
print("ready", flush=True)
sys.stdin.readline()  # the other process now holds the write lock
t0 = time.perf_counter()
try:
    store.preregister(1, get_object_tree(Array(np.arange(3.0))))
    result = "stored"
except Exception as exc:
    result = f"{type(exc).__name__}: {exc}"
print(json.dumps({"pragma": pragma, "result": result[:200], "waited_s": time.perf_counter() - t0}), flush=True)
"""

HOLDER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("COMMIT")
"""


def _write_while_locked(path: str, patched: bool) -> dict:
    import json

    writer = subprocess.Popen([sys.executable, "-c", WRITER, path, "1" if patched else "0"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    holder = None
    try:
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, path, str(HOLD_S)], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "locked"
        writer.stdin.write("go\n")
        writer.stdin.flush()
        out, err = writer.communicate(timeout=120)
        return json.loads(out.strip().splitlines()[-1])
    finally:
        for p in (writer, holder):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_flower_default_lock_wait_fails_and_the_facepriv_superlink_waits(tmp_path):
    flower = _write_while_locked(str(tmp_path / "flower.db"), patched=False)
    assert flower["pragma"] == {"timeout": 5000}, flower  # Flower's default (what the failure was)
    assert "database is locked" in flower["result"], flower
    ours = _write_while_locked(str(tmp_path / "ours.db"), patched=True)
    assert ours["pragma"] == {"timeout": 300000}, ours
    assert ours["result"] == "stored" and ours["waited_s"] >= HOLD_S - 1.0, ours


def test_busy_timeout_must_be_positive():
    from facepriv.federated.deploy import set_sqlite_busy_timeout

    with pytest.raises(ValueError, match="> 0"):
        set_sqlite_busy_timeout(0)
