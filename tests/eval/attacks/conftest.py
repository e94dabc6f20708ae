"""Shared fixtures for the attack tests: tiny generated faces (one CPU thread: tests/eval/conftest.py).

Faces are 32 x 32 (the frontends accept any multiple of 8) so decoders train in seconds;
auxiliary and victim identities come from disjoint identity indices of the generator.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facepriv.data import SyntheticFaces, write_folder

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
