"""A fixed DCTDP ``inference_seed`` is a secret: redacted from ``public_config``, and warned about in use."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import facepriv.frontends.base as base
from facepriv.frontends import DCTDP, PartialFace, build_frontend

SEED = 987_654_321


@pytest.fixture
def fresh_warning(monkeypatch):
    """Forget which classes were already warned about (the warning is once per process)."""
    monkeypatch.setattr(base, "_WARNED_FIXED_INFERENCE_SEED", set())


def _images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_public_config_drops_the_inference_seed_and_still_builds() -> None:
    dp = DCTDP(input_size=16, train_seed=3, inference_seed=SEED)
    public = dp.public_config()
    assert str(SEED) not in json.dumps(public)
    assert public["inference_seed"] is None
    assert dp.config["inference_seed"] == SEED  # the checkpoint config keeps it
    assert {k: v for k, v in public.items() if k != "inference_seed"} == {
        k: v for k, v in dp.config.items() if k != "inference_seed"
    }
    rebuilt = build_frontend(public).eval()
    assert isinstance(rebuilt, DCTDP) and rebuilt.inference_seed is None
    x = _images()
    with torch.no_grad():
        a, b = rebuilt(x), rebuilt(x)
    assert not torch.equal(a, b)  # fresh, secure noise per call
    seeded = DCTDP(input_size=16, inference_seed=SEED).eval()
    with torch.no_grad():
        assert not torch.equal(rebuilt(x), seeded(x))


def test_partialface_inference_seed_is_redacted_too() -> None:
    pf = PartialFace(secret_seed=5, inference_seed=SEED)
    public = pf.public_config()
    assert public["secret_seed"] == "<secret>" and public["inference_seed"] is None
    assert str(SEED) not in json.dumps(public) and "5" not in str(public["secret_seed"])
    assert str(SEED) not in repr(pf)


def test_fixed_seed_in_eval_mode_warns_once(fresh_warning, caplog) -> None:
    x = _images()
    dp = DCTDP(input_size=16, inference_seed=SEED)
    with caplog.at_level(logging.WARNING, logger="facepriv.frontends.base"):
        dp.train()
        dp(x)  # training mode: the train generator, no warning
        assert not caplog.records
        dp.eval()
        with torch.no_grad():
            dp(x)
            dp(x)
            DCTDP(input_size=16, inference_seed=SEED + 1).eval()(x)  # once per process, not per instance
    warnings = [r for r in caplog.records if "inference_seed" in r.getMessage()]
    assert len(warnings) == 1
    assert "DCTDP" in warnings[0].getMessage() and "reproducible" in warnings[0].getMessage()


def test_no_warning_without_a_seed_or_with_explicit_noise(fresh_warning, caplog) -> None:
    x = _images()
    with caplog.at_level(logging.WARNING, logger="facepriv.frontends.base"), torch.no_grad():
        DCTDP(input_size=16).eval()(x)
        seeded = DCTDP(input_size=16, inference_seed=SEED).eval()
        seeded(x, noise_grid=torch.zeros(2, 189, 16, 16))  # caller-supplied noise: seed unused
    assert not caplog.records
