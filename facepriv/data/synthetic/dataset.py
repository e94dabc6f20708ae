"""Synthetic identities as a torch ``Dataset`` and as an LFW-style image folder.

Why its own module: indexing (item -> identity, image), naming, caching and writing files
are the data-pipeline side of synthetic faces; they call the renderer and never change
what it draws.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..images import to_tensor, write_image
from .identity import IdentityParams, identity_name, identity_params, image_params
from .render import FaceRenderer


class SyntheticFaces(Dataset):
    """Synthetic identities as a torch Dataset: item ``k`` is image ``k % K`` of identity
    ``first_identity + k // K`` with label ``k // K``.

    Images are rendered on demand (deterministic, worker-safe); ``cache=True`` keeps
    rendered uint8 images in memory for repeated epochs.
    """

    def __init__(
        self,
        n_identities: int,
        images_per_identity: int,
        seed: int = 0,
        *,
        image_size: int = 112,
        first_identity: int = 0,
        first_image: int = 0,
        difficulty: float = 1.0,
        dtype: str = "float",
        cache: bool = False,
    ) -> None:
        if n_identities <= 0 or images_per_identity <= 0:
            raise ValueError("n_identities and images_per_identity must be positive")
        if dtype not in ("float", "uint8"):
            raise ValueError(f"dtype must be 'float' or 'uint8', got {dtype!r}")
        self.n_identities = int(n_identities)
        self.images_per_identity = int(images_per_identity)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.first_identity = int(first_identity)
        self.first_image = int(first_image)
        self.difficulty = float(difficulty)
        self.dtype = dtype
        self.renderer = FaceRenderer(image_size)
        self._ids: dict[int, IdentityParams] = {}
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    @property
    def num_classes(self) -> int:
        return self.n_identities

    @property
    def class_names(self) -> list[str]:
        return [identity_name(self.first_identity + i) for i in range(self.n_identities)]

    @property
    def targets(self) -> list[int]:
        return [k // self.images_per_identity for k in range(len(self))]

    def __len__(self) -> int:
        return self.n_identities * self.images_per_identity

    def identity(self, label: int) -> IdentityParams:
        idx = self.first_identity + label
        p = self._ids.get(idx)
        if p is None:
            p = self._ids[idx] = identity_params(self.seed, idx)
        return p

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8 RGB, landmarks)`` of item ``index``."""
        label, j = divmod(int(index), self.images_per_identity)
        idp = self.identity(label)
        imp = image_params(self.seed, idp.index, self.first_image + j, self.difficulty)
        return self.renderer.render(idp, imp)

    def describe(self, index: int) -> str:
        """Stable name of item ``index`` (e.g. for caches keyed by sample)."""
        label, j = divmod(int(index), self.images_per_identity)
        return f"synthetic/seed{self.seed}/d{self.difficulty:g}/{self.image_size}/{identity_name(self.first_identity + label)}/{self.first_image + j}"

    def rgb(self, index: int) -> np.ndarray:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        img = self.render(index)[0]
        if self._cache is not None:
            self._cache[index] = img
        return img

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return to_tensor(self.rgb(index), self.dtype), index // self.images_per_identity

    def as_array(self) -> np.ndarray:
        """All images as ``N x H x W x 3`` uint8 (small sets only)."""
        return np.stack([self.rgb(i) for i in range(len(self))])


def write_folder(
    out: str | os.PathLike[str],
    n_identities: int,
    images_per_identity: int,
    seed: int = 0,
    *,
    image_size: int = 112,
    first_identity: int = 0,
    difficulty: float = 1.0,
    ext: str = "jpg",
    quality: int = 95,
    landmarks: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``out/<synth_NNNNNN>/<synth_NNNNNN>_%04d.<ext>`` (LFW naming, 1-based), so
    ``pairs.txt`` tools work on it. Returns a summary (counts, seconds, images/s)."""
    import json
    import time

    from tqdm import tqdm

    ds = SyntheticFaces(n_identities, images_per_identity, seed, image_size=image_size, first_identity=first_identity, difficulty=difficulty)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    lms: dict[str, list[list[float]]] = {}
    t0 = time.perf_counter()
    for k in tqdm(range(len(ds)), desc="synth", unit="img", disable=not progress):
        label, j = divmod(k, images_per_identity)
        name = identity_name(first_identity + label)
        rel = f"{name}/{name}_{j + 1:04d}.{ext.lstrip('.')}"
        img, lm = ds.render(k)
        write_image(root / rel, img, quality)
        if landmarks:
            lms[rel] = lm.round(2).tolist()
    secs = time.perf_counter() - t0
    summary = {
        "out": str(root),
        "identities": n_identities,
        "images_per_identity": images_per_identity,
        "images": len(ds),
        "seed": seed,
        "image_size": image_size,
        "difficulty": difficulty,
        "seconds": round(secs, 3),
        "images_per_second": round(len(ds) / secs, 1) if secs > 0 else None,
    }
    if landmarks:
        (root / "landmarks.json").write_text(json.dumps(lms))
    return summary
