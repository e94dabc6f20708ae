"""Learned inversion: train a decoder on (protected aux face, aux face) pairs, apply it to victims.

The attacker protects its own auxiliary faces exactly as the frontend would — with the
frontend's randomness drawn by the attacker: fresh DCTDP noise per sample, a random
PartialFace query choice per sample (under ``public`` knowledge from a fresh random secret
per sample, under ``secret`` knowledge from the real table) — reads them through its view
(``facepriv.eval.attacks.views``: the same placement it will use on intercepted tensors, errors
included) and trains ``UNetDecoder`` to output the original face. Inputs are standardised
per channel with statistics of the attacker's simulated tensors.

Training is a plain loop on in-memory uint8 faces with random horizontal flips, AdamW, a
linear-warmup cosine learning rate and MSE (or L1) loss. It is checkpointed every
``checkpoint_every`` steps (atomic save) with model, optimiser, step and the RNG state,
so ``resume=True`` continues a stopped run exactly where it left off; a checkpoint made with
different settings is refused rather than silently mixed.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from facepriv.eval.attacks.checkpointing import AttackCheckpointError, atomic_save, safe_load
from facepriv.eval.attacks.decoder import UNetDecoder
from facepriv.eval.attacks.views import AttackerView, Placed

__all__ = ["LearnedConfig", "Standardiser", "LearnedInverter", "train_decoder"]

CHECKPOINT_FORMAT = "facepriv.attack_decoder"
CHECKPOINT_VERSION = 1


@dataclass
class LearnedConfig:
    """Decoder size and training budget."""

    steps: int = 2000
    batch_size: int = 16
    width: int = 32
    depth: int = 3
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    loss: str = "mse"
    flip: bool = True
    linear_skip: bool = True
    checkpoint_every: int = 200
    standardise_batches: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.width < 2 or self.depth < 0:
            raise ValueError(f"LearnedConfig: invalid sizes {asdict(self)}")
        if self.loss not in {"mse", "l1"}:
            raise ValueError(f"LearnedConfig: loss must be 'mse' or 'l1', got {self.loss!r}")


class Standardiser:
    """Per-channel ``(x - mean) / std`` of placed observations, unobserved channels set to 0."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        self.mean = mean.float()
        self.std = std.float().clamp(min=1e-6)

    @classmethod
    def fit(cls, placed: list[Placed]) -> "Standardiser":
        s1 = s2 = cnt = None
        for p in placed:
            m = p.mask.double().view(*p.mask.shape, 1, 1)
            v = p.values.double()
            a = (v * m).sum((0, 2, 3))
            b = (v * v * m).sum((0, 2, 3))
            c = (m.sum(0).view(-1) * v.shape[-2] * v.shape[-1])
            s1, s2, cnt = (a, b, c) if s1 is None else (s1 + a, s2 + b, cnt + c)
        cnt = cnt.clamp(min=1)
        mean = s1 / cnt
        std = (s2 / cnt - mean.pow(2)).clamp(min=0).sqrt()
        std = torch.where(std > 0, std, torch.ones_like(std))
        return cls(mean.float().cpu(), std.float().cpu())

    def __call__(self, placed: Placed) -> tuple[Tensor, Tensor]:
        mean = self.mean.to(placed.values.device).view(1, -1, 1, 1)
        std = self.std.to(placed.values.device).view(1, -1, 1, 1)
        m = placed.mask.to(placed.values.dtype)
        x = (placed.values - mean) / std * m.view(*m.shape, 1, 1)
        return x.float(), m.float()

    def state(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "std": self.std}


def _lr_at(step: int, cfg: LearnedConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup) / span)))


class LearnedInverter:
    """A trained decoder bound to the attacker view it was trained through."""

    def __init__(self, model: UNetDecoder, standardiser: Standardiser, view: AttackerView, history: dict[str, Any]) -> None:
        self.model = model
        self.standardiser = standardiser
        self.view = view
        self.history = history

    @torch.no_grad()
    def reconstruct_placed(self, placed: Placed, batch_size: int = 32) -> Tensor:
        self.model.eval()
        dev = next(self.model.parameters()).device
        out = []
        for i in range(0, placed.values.shape[0], batch_size):
            x, side = self.standardiser(placed.select(slice(i, i + batch_size)).to(dev))
            out.append(self.model(x, side if self.model.side is not None else None).clamp(0, 1).cpu())
        return torch.cat(out)

    def reconstruct(self, protected: Tensor, batch_size: int = 32) -> Tensor:
        return self.reconstruct_placed(self.view.place(protected), batch_size)


def _fingerprint(view: AttackerView, images: Tensor, cfg: LearnedConfig) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed (settings, attacker knowledge, data)."""
    import hashlib
    import json

    public = view.frontend.public_config() if hasattr(view.frontend, "public_config") else {}
    public = {k: v for k, v in public.items() if k not in ("train_seed", "inference_seed")}
    if view.knowledge == "secret" and hasattr(view.frontend, "config"):
        # the secret must not be written into the attack's output folder: keep a digest only
        full = {k: v for k, v in view.frontend.config.items() if k not in ("train_seed", "inference_seed")}
        public["secret_digest"] = hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()
    d = asdict(cfg)
    d.pop("checkpoint_every")
    return {
        "frontend": public,
        "knowledge": view.knowledge,
        "aux_images": int(images.shape[0]),
        "aux_shape": list(images.shape[1:]),
        "aux_checksum": int(images[: min(64, images.shape[0])].to(torch.int64).sum()),
        "config": d,
    }


def _sample(images: Tensor, cfg: LearnedConfig, g: torch.Generator, device: torch.device) -> Tensor:
    idx = torch.randint(images.shape[0], (cfg.batch_size,), generator=g)
    x = images[idx].float().div_(255.0)
    if cfg.flip:
        flip = torch.rand(cfg.batch_size, generator=g) < 0.5
        x[flip] = x[flip].flip(-1)
    return x.to(device)


def train_decoder(
    view: AttackerView,
    aux_images: Tensor,
    cfg: LearnedConfig,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> LearnedInverter:
    """Train (or resume, or just load a finished) decoder for ``view`` on uint8 ``aux_images``."""
    if aux_images.dtype != torch.uint8 or aux_images.dim() != 4 or aux_images.shape[1] != 3:
        raise ValueError(f"aux_images must be N x 3 x H x W uint8, got {aux_images.dtype} {tuple(aux_images.shape)}")
    device = torch.device(device)
    fingerprint = _fingerprint(view, aux_images, cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation: a run is reproducible end to end
        torch.manual_seed(cfg.seed)
        model = UNetDecoder(view.channels, view.channels, cfg.width, cfg.depth, cfg.linear_skip).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    losses: list[float] = []
    standardiser: Standardiser | None = None
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt_path is not None and ckpt_path.is_file():
        data = safe_load(ckpt_path, map_location="cpu")
        if data.get("format") != CHECKPOINT_FORMAT or data.get("version") != CHECKPOINT_VERSION:
            raise AttackCheckpointError(f"{ckpt_path}: not a facepriv attack-decoder checkpoint (format {data.get('format')!r})")
        if data.get("fingerprint") != fingerprint:
            raise AttackCheckpointError(
                f"{ckpt_path}: made with different settings (frontend, knowledge, decoder, budget or auxiliary data); "
                "use another --out folder or drop --resume to retrain"
            )
        model.load_state_dict(data["model"])
        opt.load_state_dict(data["optimizer"])
        g.set_state(data["rng"])
        standardiser = Standardiser(data["standardiser"]["mean"], data["standardiser"]["std"])
        start = int(data["step"])
        losses = list(data.get("losses", []))
    if standardiser is None:
        sg = torch.Generator().manual_seed(cfg.seed + 1)
        placed = [view.place(view.simulate(_sample(aux_images, cfg, sg, device), sg)) for _ in range(max(1, cfg.standardise_batches))]
        standardiser = Standardiser.fit(placed)

    def save(step: int) -> None:
        if ckpt_path is None:
            return
        atomic_save({
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "fingerprint": fingerprint,
            "decoder": model.config, "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "rng": g.get_state(), "standardiser": standardiser.state(), "losses": losses,
        }, ckpt_path)

    from tqdm import tqdm

    t0 = time.perf_counter()
    model.train()
    bar = tqdm(range(start, cfg.steps), desc=f"learned[{view.name}/{view.knowledge}]", unit="step",
               disable=not progress or start >= cfg.steps, initial=start, total=cfg.steps, leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        target = _sample(aux_images, cfg, g, device)
        x, side = standardiser(view.place(view.simulate(target, g)))
        pred = model(x, side)
        loss = F.mse_loss(pred, target) if cfg.loss == "mse" else F.l1_loss(pred, target)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"learned attack: non-finite loss at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / 10:.4g}")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save(step + 1)
    if start < cfg.steps or (ckpt_path is not None and not ckpt_path.is_file()):
        save(cfg.steps)
    model.eval()
    tail = losses[-max(1, min(50, len(losses))):] if losses else []
    history = {
        "steps": cfg.steps, "resumed_from": start, "train_seconds": round(time.perf_counter() - t0, 2),
        "final_loss": (sum(tail) / len(tail)) if tail else None, "checkpoint": str(ckpt_path) if ckpt_path else None,
        "decoder": model.config, "parameters": sum(p.numel() for p in model.parameters()),
    }
    return LearnedInverter(model, standardiser, view, history)
