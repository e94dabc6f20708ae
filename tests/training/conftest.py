"""Shared fixtures for the training tests: tiny configs that run in a second or two on CPU."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from facepriv.training.config import TrainConfig, config_from_dict


def tiny_config_dict(**overrides: Any) -> dict[str, Any]:
    """32x32 synthetic faces, a 1/16-width IResNet-18 (GroupNorm), 8 identities x 8 images."""
    cfg: dict[str, Any] = {
        "name": "tiny",
        "seed": 7,
        "device": "cpu",
        "data": {
            "format": "synthetic",
            "synthetic": {"n_identities": 8, "images_per_identity": 8, "cache": True},
            "image_size": 32,
            "batch_size": 8,
            "num_workers": 0,
        },
        "frontend": {"name": "rgb"},
        # norm_groups=2: at 1/16 width a 1-channel group over a 2x2 map has near-zero variance and
        # amplifies float round-off chaotically (that made 1- vs 2-process runs drift apart).
        "model": {"name": "iresnet18", "width": 0.0625, "embedding_size": 16, "norm": "group", "norm_groups": 2},
        "head": {"type": "softmax", "margin": "arcface", "s": 16.0, "m": 0.2},
        "optim": {"lr": 0.05},
        "schedule": {"max_steps": 6, "warmup_steps": 1},
        "checkpoint": {"every_steps": 0},
        "logging": {"every_steps": 1, "progress": False},
    }
    for key, value in overrides.items():
        node = cfg
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return cfg


@pytest.fixture
def tiny_config() -> Any:
    """Factory: ``tiny_config(schedule__max_steps=4, frontend={...})`` -> TrainConfig."""

    def make(**overrides: Any) -> TrainConfig:
        return config_from_dict(tiny_config_dict(**overrides))

    return make


@pytest.fixture(autouse=True)
def _few_threads() -> Any:
    # Bitwise comparisons need the same thread count in both runs; 1 thread is also the
    # fastest for these tiny models on the shared 2-core machine.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
