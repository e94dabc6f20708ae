"""Shared fixtures for the attack tests: tiny generated faces (one CPU thread: tests/eval/conftest.py).

Faces are 32 x 32 (the frontends accept any multiple of 8) so decoders train in seconds;
auxiliary and victim identities come from disjoint identity indices of the generator.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facepriv.data import SyntheticFaces, write_folder
from facepriv.judges import Judge

SIZE = 32


def _faces(n_ids: int, per: int, first: int) -> torch.Tensor:
    arr = SyntheticFaces(n_ids, per, seed=0, image_size=SIZE, first_identity=first).as_array()
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


@pytest.fixture(scope="session")
def aux_u8() -> torch.Tensor:
    """Attacker's auxiliary faces: 60 identities x 3 images, uint8."""
    return _faces(60, 3, 0)


@pytest.fixture(scope="session")
def victims_f() -> torch.Tensor:
    """Held-out victims (identities 500+), float in [0, 1]."""
    return _faces(16, 1, 500).float() / 255.0


@pytest.fixture(scope="session")
def face_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    write_folder(root / "aux", 30, 3, seed=0, image_size=SIZE, progress=False)
    write_folder(root / "victims", 10, 3, seed=0, image_size=SIZE, first_identity=500, progress=False)
    return root


class PixelJudge(Judge):
    """A judge that needs no download and whose embedding is a fixed function of the face:
    a random projection of the 8 x 8 mean-pooled, mean-removed image. Enough to test what an
    attack carries over (it is not a face recogniser: identity figures on it mean little)."""

    kind = "pixels"

    def __init__(self) -> None:
        super().__init__(64)
        self.w = torch.randn(3 * 8 * 8, 32, generator=torch.Generator().manual_seed(0))

    def _embed_batch(self, images: torch.Tensor) -> torch.Tensor:
        p = torch.nn.functional.adaptive_avg_pool2d(images, 8).flatten(1)
        return (p - p.mean(1, keepdim=True)) @ self.w


@pytest.fixture(scope="session")
def pixel_judge() -> PixelJudge:
    return PixelJudge()
