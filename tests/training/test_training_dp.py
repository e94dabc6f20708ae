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
    kw.setdefault("dp", {"enabled": True, "epsilon": 4.0, "delta": 1e-5, "max_grad_norm": 1.0})
    return tiny_config(
        model={"name": "iresnet18", "width": 0.0625, "embedding_size": 16, "norm": "batch", "norm_groups": 2},
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


# --------------------------------------------------------------------------- secret DP randomness


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.clone() for k, v in trainer.recognizer.state_dict().items()}
    out.update({f"head.{k}": v.clone() for k, v in trainer.head.state_dict().items()})
    return out


@pytest.mark.parametrize("secure", [False, True], ids=["default", "secure_mode"])
def test_same_config_seed_draws_different_noise_and_batches(tiny_config, secure: bool) -> None:
    """Two trainers with one config (one public seed) and one batch end one step apart:
    the only difference is the DP noise, which comes from the OS, not from ``cfg.seed``."""
    cfg = _dp_cfg(tiny_config, dp={"enabled": True, "epsilon": 4.0, "max_grad_norm": 1.0, "secure_mode": secure})
    a, b = Trainer(cfg), Trainer(cfg)
    assert torch.equal(torch.cat([v.flatten().float() for v in _weights(a).values()]),
                       torch.cat([v.flatten().float() for v in _weights(b).values()]))
    images = torch.rand(8, 3, 32, 32)
    labels = torch.arange(8) % 8
    a.train_step((images, labels))
    b.train_step((images, labels))
    wa, wb = _weights(a), _weights(b)
    assert [k for k in wa if not torch.equal(wa[k], wb[k])], "same config seed gave bit-identical DP noise"
    # the Poisson batches differ too (64 samples, rate 1/8: identical masks have probability 2^-64-ish)
    n, q = 64, 1 / 8
    masks_a = torch.stack([a.dp.randomness.poisson_mask(0, s, n, q) for s in range(4)])
    masks_b = torch.stack([b.dp.randomness.poisson_mask(0, s, n, q) for s in range(4)])
    assert not torch.equal(masks_a, masks_b)
    # ...yet each trainer's masks are a pure function of its own secret and the position
    assert torch.equal(masks_a, torch.stack([a.dp.randomness.poisson_mask(0, s, n, q) for s in range(4)]))


@pytest.mark.parametrize("secure", [False, True], ids=["default", "secure_mode"])
def test_dp_run_resumes_bitwise_from_its_private_checkpoint(tmp_path: Path, tiny_config, secure: bool) -> None:
    """An interrupted DP-SGD run resumed from its checkpoint ends bit-identical to the
    uninterrupted run *of the same trainer lineage* (the secret state is in the rank file)."""
    from facepriv.training import checkpoint as ckpt

    dp = {"enabled": True, "epsilon": 4.0, "max_grad_norm": 1.0, "secure_mode": secure}
    cfg = _dp_cfg(tiny_config, max_steps=10, dp=dp, checkpoint={"every_steps": 5, "keep_last": 2})
    first = Trainer(cfg, run_dir=tmp_path / "run")
    first.fit(max_steps=5)  # stops and checkpoints at step 5 (an epoch is 8 steps: crosses into epoch 1)
    secret = first.dp.randomness.key
    first.fit()  # the uninterrupted continuation to step 10
    reference, eps = _weights(first), first.epsilon()

    # the same run, restarted from its step-5 checkpoint in a fresh process-like Trainer
    resumed = Trainer(cfg, run_dir=tmp_path / "run2", resume=ckpt.checkpoint_dir(tmp_path / "run", 5))
    assert resumed.dp.randomness.key == secret and resumed.step == 5
    resumed.fit()
    final = _weights(resumed)
    different = [k for k in reference if not torch.equal(reference[k], final[k])]
    assert not different, f"resumed DP run differs in {different[:5]}"
    assert resumed.epsilon() == pytest.approx(eps)

    # the secret lives in the rank file only: not in shared.pt, config.yaml or the model file
    last = ckpt.latest_checkpoint(tmp_path / "run")
    rank = torch.load(last / "rank_00000.pt", weights_only=True)
    assert bytes(rank["dp"]["randomness"]["key"].tolist()) == secret
    for public in (last / "shared.pt", last / "model.pt", tmp_path / "run" / "config.yaml", tmp_path / "run" / "summary.json"):
        assert secret not in public.read_bytes() and b"randomness" not in public.read_bytes(), public


def test_secure_noise_is_gaussian_with_the_right_scale() -> None:
    from facepriv.training.dp_random import DPRandomness, keyed_normal

    z = keyed_normal(b"k" * 32, "test", n=200_001)
    assert z.shape == (200_001,) and abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    r = DPRandomness(secure=True)
    noise = r.secure_noise(torch.zeros(300, 300), std=2.5, index=0)
    assert noise.dtype == torch.float32 and abs(float(noise.std()) - 2.5) < 0.05
    r.noise_draws += 1
    assert not torch.equal(noise, r.secure_noise(torch.zeros(300, 300), std=2.5, index=0))


def test_delta_defaults_below_one_over_n_and_warns_when_not(tiny_config, caplog) -> None:
    trainer = Trainer(_dp_cfg(tiny_config, dp={"enabled": True, "epsilon": 4.0}))
    assert trainer.dp.delta == pytest.approx(1 / (10 * 64))  # 8 identities x 8 images
    assert trainer.summary()["dp_sgd"]["delta"] == trainer.dp.delta
    with caplog.at_level("WARNING", logger="facepriv.training.dp_sgd"):
        Trainer(_dp_cfg(tiny_config, dp={"enabled": True, "epsilon": 4.0, "delta": 0.05}))
    assert "not below 1/N" in caplog.text


def test_an_empty_poisson_batch_still_takes_a_noisy_accounted_step(tiny_config) -> None:
    """Skipping would reveal the batch was empty (membership-dependent) and undercount epsilon."""
    trainer = Trainer(_dp_cfg(tiny_config, optim={"lr": 0.5, "momentum": 0.0, "weight_decay": 0.0, "name": "sgd"}))
    before = _weights(trainer)
    empty = (torch.zeros(0, 3, 32, 32), torch.zeros(0, dtype=torch.long))
    result = trainer.train_step(empty)
    assert result.samples == 0 and not result.skipped and trainer.step == 1
    after = _weights(trainer)
    assert [k for k in before if k.startswith("model.backbone") and not torch.equal(before[k], after[k])]
    assert trainer.epsilon() > 0  # the accountant counted the step
