"""facepriv.io: atomic writes leave the old file or the new one, never a torn or stray file."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from facepriv.io import atomic_path, atomic_write, atomic_write_json


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writes_bytes_and_text_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.bin"
    atomic_write(target, b"\x00\x01old")
    assert target.read_bytes() == b"\x00\x01old"
    atomic_write(target, "neu \u00e9", encoding="latin-1")
    assert target.read_bytes() == "neu \u00e9".encode("latin-1")
    assert _names(target.parent) == ["a.bin"]


def test_surrogateescape_text_round_trips(tmp_path: Path) -> None:
    text = b"caf\xe9".decode("utf-8", errors="surrogateescape")
    target = atomic_write(tmp_path / "keys.txt", text, errors="surrogateescape")
    assert target.read_bytes() == b"caf\xe9"


def test_json(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "r.json", {"b": 1, "a": [1.5]}, indent=2, sort_keys=True)
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": [1.5], "b": 1}
    assert (tmp_path / "r.json").read_text().startswith('{\n  "a"')


def test_unserialisable_json_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["r.json"]


def test_failure_mid_write_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"good checkpoint")
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a chec")  # the writer got part way, then failed
            raise OSError("disk full")
    assert target.read_bytes() == b"good checkpoint"
    assert _names(tmp_path) == ["model.pt"]


def test_wrong_data_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"x\.txt.*int"):
        atomic_write(tmp_path / "x.txt", 3)  # type: ignore[arg-type]
    assert _names(tmp_path) == []


def test_atomic_path_with_fsync_and_private_mode(tmp_path: Path) -> None:
    target = tmp_path / "secret.pt"
    with atomic_path(target, fsync=True, mode=0o600) as tmp:
        assert tmp.parent == tmp_path and tmp.exists()
        tmp.write_bytes(b"key")
    assert target.read_bytes() == b"key"
    assert (target.stat().st_mode & 0o777) == 0o600


def test_default_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert ((tmp_path / "r.json").stat().st_mode & 0o777) == 0o644


def test_temp_names_unique_within_a_process(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a"  # the outer (last to finish) wins; neither clobbered the other's temp
    assert _names(tmp_path) == ["r.json"]


def _hold_temp(target: str, queue: "mp.Queue[str]", go: "mp.Event") -> None:  # type: ignore[name-defined]
    with atomic_path(target) as tmp:
        tmp.write_text(str(os.getpid()))
        queue.put(tmp.name)
        go.wait(30)


def test_temp_names_unique_across_processes(tmp_path: Path) -> None:
    """Two processes writing one file at once each get their own temp (a shared ``x.tmp``
    would let one rename the other's half-written file into place)."""
    ctx = mp.get_context("spawn")
    queue, go = ctx.Queue(), ctx.Event()
    target = str(tmp_path / "timings.json")
    procs = [ctx.Process(target=_hold_temp, args=(target, queue, go)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        names = [queue.get(timeout=60) for _ in procs]
    finally:
        go.set()
        for p in procs:
            p.join(60)
    assert len(set(names)) == 2
    assert all(p.exitcode == 0 for p in procs)
    assert _names(tmp_path) == ["timings.json"]
    assert int((tmp_path / "timings.json").read_text()) in {p.pid for p in procs}
