"""A partner site: its private training data and the state that never leaves it.

Data: in deployment ``--node-config "data-path='/site/faces'"`` points at the site's own
identity folders (all of them are this site's identities; labels are local). In simulation
Flower gives every virtual node ``partition-id`` / ``num-partitions`` and the run's data spec
decides which identities it owns (synthetic identities, or a shared folder split with
``facepriv.data.partition_identities`` — disjoint label spaces, as at real sites).

Validation identities: with federated validation on (``fv_candidates > 0``, ``facepriv.federated.fv``)
each site holds ``val_identities`` of its identities out of training; they are only ever
embedded to score candidate global models. The split is a deterministic function of the
site's identity list and the data seed, so every round and every restart uses the same one.

State: the margin head, the optimiser state (the head's momentum), the LR-schedule position,
the data order, the RNG states and the Opacus accountant are kept in the node's
``Context.state`` between rounds (``SiteState``), and also written atomically to
``state-dir`` from the node config when one is given, so a restarted SuperNode continues.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from facepriv.io import atomic_write

#: Context.state keys.
HEAD_KEY = "facepriv.head"
SITE_KEY = "facepriv.site"
#: format of the private site state: 1 = written before ``Trainer.state_dict`` (no version
#: key, ``progress`` a (step, epoch, batch) tuple), 2 = ``Trainer.state_dict()`` + frontend buffers.
SITE_STATE_VERSION = 2

_DATASETS: dict[tuple[Any, ...], Dataset] = {}


def split_validation_identities(names: Sequence[str], val_identities: int, seed: int = 0,
                                where: str = "site") -> tuple[list[str], list[str]]:
    """``(train, validation)`` identity names: ``val_identities`` names drawn with ``seed``.

    Raises ``ValueError`` naming ``where`` when fewer than ``val_identities + 1`` identities
    exist (a site must keep at least one identity to train on).
    """
    names = sorted(names)
    if val_identities <= 0:
        return names, []
    if len(names) < val_identities + 1:
        raise ValueError(f"{where}: {len(names)} identities, but federated validation holds out {val_identities} "
                         "and at least one must remain for training")
    order = np.random.default_rng(seed).permutation(len(names))
    val = sorted(names[i] for i in order[:val_identities])
    return sorted(set(names) - set(val)), val


def site_dataset(data_spec: Mapping[str, Any], node_config: Mapping[str, Any], image_size: int, *,
                 val_identities: int = 0, split: str = "train") -> tuple[Dataset, int]:
    """This site's training (or, ``split="val"``, validation) dataset and its site index
    (used to decorrelate seeds).

    ``val_identities > 0`` removes that many of the site's identities from ``"train"`` and
    makes them the ``"val"`` set (synthetic data: the site's last identities, which are
    i.i.d. draws anyway; folders: a seeded draw). Cached per process: rebuilding (and
    re-rendering synthetic faces) every round would dominate a tiny round's time.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if split == "val" and val_identities < 2:
        raise ValueError(f"a validation set needs at least 2 identities (impostor pairs), got {val_identities}")
    spec = dict(data_spec)
    if "data-path" in node_config:
        spec = {"format": "folder-site", "path": str(node_config["data-path"]), "seed": int(spec.get("seed", 0))}
    pid = int(node_config.get("partition-id", node_config.get("site-index", 0)))
    nparts = int(node_config.get("num-partitions", spec.get("num_partitions", 1)))
    key = (json.dumps(spec, sort_keys=True), pid, nparts, image_size, int(val_identities), split)
    if key in _DATASETS:
        return _DATASETS[key], pid
    fmt = spec.get("format", "synthetic")
    seed = int(spec.get("seed", 0))
    where = f"site {pid} ({spec.get('path', fmt)})"
    min_images = 2 if split == "val" else 1
    if fmt == "synthetic":
        from facepriv.data import SyntheticFaces

        per = int(spec.get("ids_per_client", 8))
        n_val = max(0, int(val_identities))
        if n_val and per < n_val + 1:
            raise ValueError(f"{where}: {per} identities, but federated validation holds out {n_val} "
                             "and at least one must remain for training")
        first, count = (pid * per, per - n_val) if split == "train" else (pid * per + per - n_val, n_val)
        ds: Dataset = SyntheticFaces(count, int(spec.get("images_per_identity", 8)), seed=seed,
                                     image_size=image_size, first_identity=first, dtype="uint8", cache=True,
                                     difficulty=float(spec.get("difficulty", 1.0)))
    elif fmt in ("folder", "folder-site"):
        from facepriv.data import ImageFolderDataset, partition_identities
        from facepriv.data.folders import list_identity_folders

        if fmt == "folder":
            names = [n for n in list_identity_folders(spec["path"]) if n not in set(spec.get("held_out", []))]
            mine = partition_identities(names, nparts, seed=seed)[pid]
        else:
            mine = list_identity_folders(spec["path"])
        train, val = split_validation_identities(mine, int(val_identities), seed, where)
        ds = ImageFolderDataset(spec["path"], identities=train if split == "train" else val, image_size=image_size,
                                dtype="uint8", min_images=min_images)
    else:
        raise ValueError(f"unknown data format {fmt!r} (synthetic, folder, or node-config data-path)")
    if len(ds) == 0:  # type: ignore[arg-type]
        raise ValueError(f"{where}: no {split} images in {spec}")
    _DATASETS[key] = ds
    return ds, pid


def site_validation_images(data_spec: Mapping[str, Any], node_config: Mapping[str, Any], image_size: int,
                           val_identities: int, *, max_per_identity: int = 32) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(uint8 images N x 3 x H x W, labels N, site index)`` of this site's validation
    identities, at most ``max_per_identity`` images each (bounds the cost of scoring K
    candidates on a site with large identity folders)."""
    ds, pid = site_dataset(data_spec, node_config, image_size, val_identities=val_identities, split="val")
    targets = list(getattr(ds, "targets"))
    taken: dict[int, int] = {}
    keep = []
    for i, t in enumerate(targets):
        if taken.get(int(t), 0) < max_per_identity:
            taken[int(t)] = taken.get(int(t), 0) + 1
            keep.append(i)
    items = [ds[i] for i in keep]
    images = torch.stack([torch.as_tensor(x) for x, _ in items])
    labels = torch.tensor([int(y) for _, y in items], dtype=torch.long)
    return images, labels, pid


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
    """Atomic, owner-only write (``facepriv.io.atomic_write``): a crash mid-write leaves the
    previous state, and the file holds the site's secrets (DP randomness, frontend secrets)."""
    if path is None:
        return
    atomic_write(path, pack(state), fsync=True, mode=0o600)


def load_site_state(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    return unpack(path.read_bytes(), str(path))
