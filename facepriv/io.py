"""Atomic file writes: the one implementation every layer saves through.

A reader (a resumed run, a report generator, a parallel process on the same folder) must
see either the old file or the new one, never a torn one, and a crash or full disk
mid-write must leave the previous version intact. So every write goes to a temporary file
in the destination's folder (same filesystem, so the rename is atomic) and is
``os.replace``-d over the target only once complete.

Temp names are unique per process *and* per call (pid + random suffix, created with
``O_EXCL``): several processes share output folders (``facepriv experiment lfw-half
--only ...`` runs in parallel), and a fixed ``name.tmp`` would let one process rename
another's half-written file into place. The temp file is removed on any failure.

``fsync=True`` flushes the data to disk before the rename (checkpoints: a power cut after
the rename must not leave an empty file in place of the last good checkpoint). ``mode`` is
the permission the file is created with before the umask; checkpoints that carry frontend
secrets pass ``0o600``.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write", "atomic_write_json"]


def _create_temp(path: Path, mode: int) -> Path:
    """Create an empty, exclusively owned temp file next to ``path``."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path.parent}: could not create a unique temp file for {path.name}")


def _fsync(path: Path) -> None:
    # fsync on any descriptor of the inode flushes its data, whoever wrote it
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = False, mode: int = 0o666) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on a clean exit it replaces ``path``.

    For writers that take a file name (``torch.save``, ``safetensors.save_file``). On an
    exception the temp file is deleted and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path, mode)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str,
    *,
    encoding: str = "utf-8",
    errors: str = "strict",
    fsync: bool = False,
    mode: int = 0o666,
) -> Path:
    """Write ``data`` (``str`` is encoded with ``encoding``/``errors``) to ``path`` atomically."""
    if isinstance(data, str):
        data = data.encode(encoding, errors)
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{path}: atomic_write takes bytes or str, got {type(data).__name__}")
    path = Path(path)
    with atomic_path(path, fsync=fsync, mode=mode) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return path


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, fsync: bool = False, **json_kwargs: Any) -> Path:
    """``json.dumps(obj, **json_kwargs)`` written atomically (UTF-8).

    The text is built before the temp file is opened, so an object that cannot be
    serialised raises without touching the folder.
    """
    return atomic_write(path, json.dumps(obj, **json_kwargs), fsync=fsync)
