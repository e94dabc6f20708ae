"""Builders that turn a TrainConfig into the objects the trainer drives.

Kept apart from the loop so federated clients (and tests) can build exactly the same model,
head and optimiser as central training and then call ``Trainer.train_step`` on them.
facepriv.models / facepriv.frontends / facepriv.data are imported inside the functions:
``import training`` stays cheap and a test can substitute stand-ins for any piece.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .config import DataConfig, OptimConfig, TrainConfig

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- data


def build_train_dataset(cfg: DataConfig, *, failure_log: str | os.PathLike[str] | None = None) -> Dataset:
    """The raw training dataset for ``data.format`` (folder, recordio, synthetic)."""
    if cfg.format == "folder":
        from facepriv.data.folders import ImageFolderDataset

        return ImageFolderDataset(
            cfg.path, image_size=cfg.image_size, dtype=cfg.dtype, scan=cfg.scan,
            failure_log=failure_log, progress=cfg.scan,
        )
    if cfg.format == "recordio":
        from facepriv.data.recordio import RecordIODataset

        ds = RecordIODataset(cfg.path, image_size=cfg.image_size, dtype=cfg.dtype, failure_log=failure_log)
        if cfg.scan:
            bad = ds.verify(progress=True)
            if bad:
                log.warning("%d unreadable records in %s (first: %s); they will be substituted", len(bad), cfg.path, bad[0])
        return ds
    if cfg.format == "synthetic":
        from facepriv.data.synthetic import SyntheticFaces

        kwargs = dict(cfg.synthetic)
        kwargs.setdefault("image_size", cfg.image_size)
        kwargs.setdefault("dtype", cfg.dtype)
        return SyntheticFaces(**kwargs)
    raise ValueError(f"unknown data.format {cfg.format!r}")


def infer_num_classes(dataset: Dataset, override: int | None = None) -> int:
    """Identities in the training set: config override, ``dataset.num_classes``, or max label + 1."""
    if override is not None:
        return int(override)
    base = getattr(dataset, "base", dataset)
    n = getattr(base, "num_classes", None)
    if n is not None:
        return int(n() if callable(n) else n)
    labels = getattr(base, "targets", None)
    if labels is None:
        labels = [int(base[i][1]) for i in range(len(base))]  # type: ignore[arg-type]
    return int(max(labels)) + 1


def dataset_failure_count(dataset: Dataset) -> int:
    """Run-time substitutions recorded by the data package (shared over DataLoader workers)."""
    base = getattr(dataset, "base", dataset)
    failures = getattr(base, "failures", None)
    count = getattr(failures, "count", 0) if failures is not None else 0
    return int(count)


def dataset_keys(dataset: Dataset) -> list[str]:
    """Stable names of the samples (file paths / record keys), for distillation caches."""
    base = getattr(dataset, "base", dataset)
    n = len(dataset)  # type: ignore[arg-type]
    samples = getattr(base, "samples", None)
    if samples is not None and len(samples) >= n:
        return [str(s[0]) if isinstance(s, (tuple, list)) else str(s) for s in samples[:n]]
    imgidx = getattr(base, "imgidx", None)
    if imgidx is not None:
        reader = getattr(base, "reader", None)
        prefix = getattr(reader, "rec_path", "record")
        return [f"{prefix}#{int(k)}" for k in imgidx[:n]]
    describe = getattr(base, "describe", None)
    if callable(describe):
        return [str(describe(i)) for i in range(n)]
    return [f"{type(base).__name__}[{i}]" for i in range(n)]


# --------------------------------------------------------------------------- model


def backbone_config(cfg: TrainConfig, frontend: Any) -> dict[str, Any]:
    """The model section with what only the frontend knows filled in (channels, size)."""
    from facepriv.models.recognizer import backbone_for

    return backbone_for(frontend, dict(cfg.model), cfg.data.image_size)


def frontend_config(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg.frontend`` plus what the data section implies (``input_size`` for frontends
    whose parameters depend on the face size, e.g. DCTDP's per-element budget)."""
    import inspect

    from facepriv.frontends import FRONTENDS

    fe = dict(cfg.frontend)
    cls = FRONTENDS.get(str(fe.get("name", "")).lower())
    if cls is not None and "input_size" in inspect.signature(cls.__init__).parameters and "input_size" not in fe:
        fe["input_size"] = cfg.data.image_size
    return fe


def build_recognizer(cfg: TrainConfig, frontend: nn.Module | None = None) -> nn.Module:
    """FaceRecognizer(frontend, backbone, input_norm) as described by the config; the policy
    (channels, map size, which input norm) is ``FaceRecognizer.from_config``'s."""
    from facepriv.models import FaceRecognizer

    config = {"frontend": frontend_config(cfg), "backbone": dict(cfg.model),
              "input_norm": cfg.input_norm.mode, "image_size": cfg.data.image_size}
    return FaceRecognizer.from_config(config, None if frontend is None else (lambda _options: frontend))


def embedding_size(recognizer: nn.Module) -> int:
    cfg = getattr(recognizer.backbone, "config", None) or {}
    if "embedding_size" in cfg:
        return int(cfg["embedding_size"])
    return int(getattr(recognizer, "embedding_size"))


def build_margin_head(cfg: TrainConfig, emb_size: int, num_classes: int) -> nn.Module:
    from facepriv.models import build_head

    return build_head(dict(cfg.head), emb_size, num_classes)


def is_sharded_head(head: nn.Module) -> bool:
    """Partial FC keeps a different slice of the class centres on every rank: never DDP-wrap it."""
    return bool(getattr(head, "sharded", False) or getattr(head, "is_sharded", False)
                or type(head).__name__ in {"PartialFC", "PartialFCHead"})


# --------------------------------------------------------------------------- optimisation


def param_groups(cfg: OptimConfig, recognizer: nn.Module, head: nn.Module | None) -> list[dict[str, Any]]:
    """Three groups: frontend (own lr / weight decay), backbone + input norm, head.

    Each group carries a ``name`` so logs can report the frontend's learning rate and
    federated code can pick groups out. Parameters without ``requires_grad`` are left out,
    empty groups are dropped.
    """
    frontend = getattr(recognizer, "frontend", None)
    front_ids = {id(p) for p in frontend.parameters()} if frontend is not None else set()
    front = [p for p in (frontend.parameters() if frontend is not None else []) if p.requires_grad]
    body = [p for p in recognizer.parameters() if p.requires_grad and id(p) not in front_ids]
    groups = [
        {"name": "frontend", "params": front, "lr": cfg.frontend_lr if cfg.frontend_lr is not None else cfg.lr,
         "weight_decay": cfg.frontend_weight_decay},
        {"name": "backbone", "params": body, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
    ]
    if head is not None:
        groups.append({"name": "head", "params": [p for p in head.parameters() if p.requires_grad],
                       "lr": cfg.lr * cfg.head_lr_scale, "weight_decay": cfg.weight_decay})
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: OptimConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    if not groups:
        raise ValueError("nothing to optimise: no parameter requires gradients")
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        b1, b2 = (list(cfg.betas) + [0.999])[:2]
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(b1, b2), eps=cfg.eps, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optim.name {cfg.name!r} (sgd, adamw)")


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision."""
    if mode == "none":
        return None
    if device.type != "cuda":
        if mode == "auto":
            return None
        if mode == "fp16":
            raise ValueError("optim.amp=fp16 needs a CUDA device; use bf16 or none on CPU")
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    if mode == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def default_run_dir(name: str, root: str | os.PathLike[str] = "runs") -> Path:
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path = base.with_name(f"{base.name}-{i}")
        i += 1
    return path
