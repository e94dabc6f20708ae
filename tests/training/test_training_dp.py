"""DP-SGD through Opacus: the private path trains, clips per sample and reports epsilon."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("opacus")

from facepriv.training.config import ConfigError  # noqa: E402
from facepriv.training.dp_sgd import adapt_config_for_dp  # noqa: E402
from facepriv.training.trainer import Trainer  # noqa: E402


def _dp_cfg(tiny_config, max_steps: int = 3, **kw):
    return tiny_config(
        model={"name": "iresnet18", "width": 0.0625, "embedding_size": 16, "norm": "batch", "norm_groups": 2},
        dp={"enabled": True, "epsilon": 4.0, "delta": 1e-5, "max_grad_norm": 1.0},
        schedule={"max_steps": max_steps},
        **kw,
    )


def test_dp_sgd_runs_and_reports_epsilon(tmp_path: Path, tiny_config) -> None:
    trainer = Trainer(_dp_cfg(tiny_config, frontend={"name": "dctdp", "epsilon_mean": 4.0}), run_dir=tmp_path / "dp")
    # BatchNorm was switched to GroupNorm, the DCTDP budget logits are frozen
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in trainer.recognizer.modules())
    assert not any(p.requires_grad for p in trainer.frontend.parameters())
    assert trainer.dp.noise_multiplier > 0
    before = {k: v.clone() for k, v in trainer.recognizer.backbone.state_dict().items()}
    logits_before = trainer.frontend.budget_logits.detach().clone()

    summary = trainer.fit()
    eps = summary["epsilon"]
    assert 0 < eps <= 4.0 + 1e-6  # spent so far, never more than the target
    assert math.isfinite(eps)
    changed = [k for k, v in trainer.recognizer.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "DP-SGD step did not update the backbone"
    assert torch.equal(trainer.frontend.budget_logits, logits_before)
    with open(tmp_path / "dp" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    logged = [float(r["epsilon"]) for r in rows]
    assert logged == sorted(logged) and logged[-1] == pytest.approx(eps, rel=1e-3)
    # the checkpoint carries the accountant, so a resumed run keeps counting
    resumed = Trainer(_dp_cfg(tiny_config, frontend={"name": "dctdp", "epsilon_mean": 4.0}),
                      run_dir=tmp_path / "dp", resume="auto")
    assert resumed.epsilon() == pytest.approx(eps)


def test_dp_sgd_clips_per_sample(tiny_config) -> None:
    """With zero noise, one step moves the weights by at most lr * max_grad_norm (mean of clipped grads)."""
    cfg = _dp_cfg(tiny_config, optim={"lr": 1.0, "momentum": 0.0, "weight_decay": 0.0, "name": "sgd"})
    trainer = Trainer(cfg)
    trainer.optimizer.noise_multiplier = 0.0
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    batch = trainer.next_batch()
    trainer.train_step(batch)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(params, before)])
    # scaled by the expected batch size (Poisson) rather than the realised one, hence the factor
    realised = max(1, len(batch[1]))
    bound = cfg.dp.max_grad_norm * realised / cfg.data.batch_size
    assert 0 < float(step.norm()) <= bound * 1.0001


def test_dp_config_guards() -> None:
    from facepriv.training.config import config_from_dict

    base = {"data": {"format": "synthetic"}, "dp": {"enabled": True}}
    with pytest.raises(ConfigError, match="sample_multiplier: 1"):
        adapt_config_for_dp(config_from_dict({**base, "frontend": {"name": "partialface"}}))
    with pytest.raises(ConfigError, match="Partial FC"):
        adapt_config_for_dp(config_from_dict({**base, "head": {"type": "partial_fc"}}))
    ok = adapt_config_for_dp(config_from_dict({**base, "frontend": {"name": "partialface", "sample_multiplier": 1}}))
    assert ok.model["norm"] == "group" and ok.optim.amp == "none"
