"""A partner site: its private training data and the state that never leaves it.

Data: in deployment ``--node-config "data-path='/site/faces'"`` points at the site's own
identity folders (all of them are this site's identities; labels are local). In simulation
Flower gives every virtual node ``partition-id`` / ``num-partitions`` and the run's data spec
decides which identities it owns (synthetic identities, or a shared folder split with
``facepriv.data.partition_identities`` — disjoint label spaces, as at real sites).

State: the margin head, the optimiser state (the head's momentum), the LR-schedule position,
the data order, the RNG states and the Opacus accountant are kept in the node's
``Context.state`` between rounds (``SiteState``), and also written atomically to
``state-dir`` from the node config when one is given, so a restarted SuperNode continues.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

#: Context.state keys.
HEAD_KEY = "facepriv.head"
SITE_KEY = "facepriv.site"

_DATASETS: dict[tuple[Any, ...], Dataset] = {}


def site_dataset(data_spec: Mapping[str, Any], node_config: Mapping[str, Any], image_size: int) -> tuple[Dataset, int]:
    """This site's training dataset and its site index (used to decorrelate seeds).

    Cached per process: rebuilding (and re-rendering synthetic faces) every round would
    dominate a tiny round's time.
    """
    spec = dict(data_spec)
    if "data-path" in node_config:
        spec = {"format": "folder-site", "path": str(node_config["data-path"])}
    pid = int(node_config.get("partition-id", node_config.get("site-index", 0)))
    nparts = int(node_config.get("num-partitions", spec.get("num_partitions", 1)))
    key = (json.dumps(spec, sort_keys=True), pid, nparts, image_size)
    if key in _DATASETS:
        return _DATASETS[key], pid
    fmt = spec.get("format", "synthetic")
    if fmt == "synthetic":
        from facepriv.data import SyntheticFaces

        per = int(spec.get("ids_per_client", 8))
        ds: Dataset = SyntheticFaces(per, int(spec.get("images_per_identity", 8)), seed=int(spec.get("seed", 0)),
                                     image_size=image_size, first_identity=pid * per, dtype="uint8", cache=True,
                                     difficulty=float(spec.get("difficulty", 1.0)))
    elif fmt == "folder":
        from facepriv.data import ImageFolderDataset, partition_identities
        from facepriv.data.folders import list_identity_folders

        names = [n for n in list_identity_folders(spec["path"]) if n not in set(spec.get("held_out", []))]
        mine = partition_identities(names, nparts, seed=int(spec.get("seed", 0)))[pid]
        ds = ImageFolderDataset(spec["path"], identities=mine, image_size=image_size, dtype="uint8")
    elif fmt == "folder-site":
        from facepriv.data import ImageFolderDataset

        ds = ImageFolderDataset(spec["path"], image_size=image_size, dtype="uint8")
    else:
        raise ValueError(f"unknown data format {fmt!r} (synthetic, folder, or node-config data-path)")
    if len(ds) == 0:  # type: ignore[arg-type]
        raise ValueError(f"site {pid}: no training images in {spec}")
    _DATASETS[key] = ds
    return ds, pid


# --------------------------------------------------------------------------- state


def pack(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def unpack(blob: bytes, where: str) -> Any:
    """``torch.load(weights_only=True)``: plain containers and tensors only, no code runs."""
    try:
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{where}: corrupt or unsafe site state ({exc})") from exc


def state_file(node_config: Mapping[str, Any], run_key: str) -> Path | None:
    d = node_config.get("state-dir")
    return Path(str(d)) / f"site-{run_key}.pt" if d else None


def save_site_state(state: dict[str, Any], path: Path | None) -> None:
    """Atomic write (temp file + rename) so a crash mid-write leaves the previous state."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pack(state))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_site_state(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    return unpack(path.read_bytes(), str(path))
