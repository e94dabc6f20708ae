"""Shared by the eval tests: one intra-op torch thread, and a tiny recogniser factory."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from facepriv.models import FaceRecognizer

#: image side of the tiny recognisers (the eval tests shrink their faces to it)
TINY_SIZE = 16


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors on a shared 2-core machine: one intra-op thread is faster and far more
    predictable than torch's default."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_model() -> Callable[[dict], FaceRecognizer]:
    """``tiny_model(frontend_config)``: an untrained 16x16 IResNet recogniser, same weights every call
    (the frontend's own randomness is the frontend config's business)."""

    def make(frontend: dict) -> FaceRecognizer:
        torch.manual_seed(0)
        backbone = {"name": "iresnet", "layers": [1, 1, 1, 1], "width": 0.125, "embedding_size": 16,
                    "input_size": TINY_SIZE}
        return FaceRecognizer.from_config({"frontend": frontend, "backbone": backbone, "image_size": TINY_SIZE})

    return make
