"""Learned inversion: train a decoder on (protected aux face, aux face) pairs, apply it to victims.

The attacker protects its own auxiliary faces exactly as the frontend would — with the
frontend's randomness drawn by the attacker: fresh DCTDP noise per sample, a random
PartialFace query choice per sample (under ``public`` knowledge from a fresh random secret
per sample, under ``secret`` knowledge from the real table, under ``recovered`` knowledge
from the table recovered from intercepted traffic) — reads them through its view
(``facepriv.eval.attacks.views``: the same placement it will use on intercepted tensors, errors
included) and trains ``UNetDecoder`` to output the original face. Inputs are standardised
per channel with statistics of the attacker's simulated tensors.

``train_network`` is the one training loop of the learned attacks (this decoder and the
linkage network of ``facepriv.eval.attacks.linkage``): in-memory uint8 faces with random
horizontal flips, AdamW, a linear-warmup cosine learning rate. It is checkpointed every
``checkpoint_every`` steps (atomic save) with model, optimiser, step and the RNG state, so
``resume=True`` continues a stopped run exactly where it left off; a checkpoint made with
different settings is refused rather than silently mixed.

Convergence (``max_doublings > 0``): after the first budget of ``steps`` the attack is
measured (``evaluate``, the leakage the report will show), then training continues for as
many steps again (a warm restart of the cosine schedule at half the previous peak learning
rate: the budget doubles) and is measured again, until one doubling moves the measurement
by less than ``tolerance`` or ``max_doublings`` doublings were spent. The history records
every budget and measurement and whether the check passed, so the report says which check
ran and whether the attack converged. The check is reproducible and resumable like the
training itself (the measurements are stored in the checkpoint).

Scale: ``device`` puts the network and the auxiliary faces on the accelerator (the faces
are uint8, ~38 kB each at 112 x 112); ``amp`` runs forward passes in bfloat16 autocast on
CUDA. Nothing else changes between a CPU smoke run and a GPU run.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facepriv.eval.attacks.checkpointing import AttackCheckpointError, atomic_save, safe_load
from facepriv.eval.attacks.decoder import UNetDecoder
from facepriv.eval.attacks.views import AttackerView, Placed

__all__ = ["LearnedConfig", "Standardiser", "LearnedInverter", "TrainedNetwork", "train_decoder", "train_network"]

CHECKPOINT_FORMAT = "facepriv.attack_decoder"
CHECKPOINT_VERSION = 1
LOSSES = ("mse", "l1", "cosine")
#: options added after the checkpoint format was fixed: left out of a checkpoint's
#: fingerprint while at their defaults, so decoders trained before them still resume
_LATER_OPTIONS = {"max_doublings": 0, "tolerance": 0.02, "amp": False}


@dataclass
class LearnedConfig:
    """Network size, training budget and convergence check of a learned attack."""

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
    #: budget-doubling convergence check: at most this many doublings of ``steps`` (0: off)
    max_doublings: int = 0
    #: converged when one doubling moves the measured leakage by less than this
    tolerance: float = 0.02
    #: bfloat16 autocast for forward passes on CUDA (ignored on CPU)
    amp: bool = False

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.width < 2 or self.depth < 0:
            raise ValueError(f"LearnedConfig: invalid sizes {asdict(self)}")
        if self.loss not in LOSSES:
            raise ValueError(f"LearnedConfig: loss must be one of {LOSSES}, got {self.loss!r}")
        if self.max_doublings < 0 or self.tolerance <= 0:
            raise ValueError(f"LearnedConfig: max_doublings must be >= 0 and tolerance > 0, got "
                             f"{self.max_doublings}, {self.tolerance}")
        if self.max_doublings and self.steps < 1:
            raise ValueError("LearnedConfig: the convergence check needs steps >= 1")

    @property
    def budgets(self) -> list[int]:
        """Step counts at which the convergence check measures (just ``[steps]`` when off)."""
        return [self.steps * 2**k for k in range(self.max_doublings + 1)]


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
    """Linear warmup + cosine over the first budget; each doubling of the convergence check
    is a warm restart (cosine over the new steps) at half the previous peak."""
    if step < cfg.steps or not cfg.max_doublings:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        span = max(1, cfg.steps - cfg.warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup) / span)))
    start, cycle = cfg.steps, 1
    while step >= 2 * start:
        start, cycle = 2 * start, cycle + 1
    return cfg.lr * 0.5**cycle * 0.5 * (1 + math.cos(math.pi * (step - start) / start))


@dataclass
class TrainedNetwork:
    """A trained attack network bound to the attacker view it was trained through."""

    model: nn.Module
    standardiser: Standardiser
    view: AttackerView
    history: dict[str, Any]

    @torch.no_grad()
    def apply_placed(self, placed: Placed, batch_size: int = 32) -> Tensor:
        """The network's output for placed observations, in batches, on the CPU."""
        self.model.eval()
        dev = next(self.model.parameters()).device
        out = []
        for i in range(0, placed.values.shape[0], batch_size):
            x, side = self.standardiser(placed.select(slice(i, i + batch_size)).to(dev))
            out.append(self.model(x, side).float().cpu())
        return torch.cat(out)


class LearnedInverter(TrainedNetwork):
    """A trained decoder: placed observations -> RGB faces in [0, 1]."""

    def __init__(self, model: UNetDecoder, standardiser: Standardiser, view: AttackerView, history: dict[str, Any]) -> None:
        super().__init__(model, standardiser, view, history)

    def reconstruct_placed(self, placed: Placed, batch_size: int = 32) -> Tensor:
        return self.apply_placed(placed, batch_size).clamp(0, 1)

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
    hyp = getattr(view, "hypotheses", None)
    if view.knowledge == "recovered" and hyp is not None:
        public["recovered_table_digest"] = hashlib.sha256(json.dumps(hyp.tolist()).encode()).hexdigest()
    d = asdict(cfg)
    d.pop("checkpoint_every")
    for key, default in _LATER_OPTIONS.items():
        if d.get(key) == default:
            d.pop(key)
    return {
        "frontend": public,
        "knowledge": view.knowledge,
        "aux_images": int(images.shape[0]),
        "aux_shape": list(images.shape[1:]),
        "aux_checksum": int(images[: min(64, images.shape[0])].to(torch.int64).sum()),
        "config": d,
    }


def _sample(images: Tensor, cfg: LearnedConfig, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """A random batch: indices, flip flags and the (flipped) images as floats on the images' device.

    Every random draw comes from the CPU generator ``g``, so the stream is the same on any device.
    """
    idx = torch.randint(images.shape[0], (cfg.batch_size,), generator=g)
    x = images[idx.to(images.device)].float().div_(255.0)
    flip = torch.zeros(cfg.batch_size, dtype=torch.bool)
    if cfg.flip:
        flip = torch.rand(cfg.batch_size, generator=g) < 0.5
        x[flip.to(x.device)] = x[flip.to(x.device)].flip(-1)
    return idx, flip, x


#: ``loss(model, inputs, side, indices, flips, target_images) -> scalar``
LossFn = Callable[[nn.Module, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
#: ``evaluate(network) -> (metric name, value or None)``, the leakage the convergence check watches
EvalFn = Callable[[TrainedNetwork], tuple[str, float | None]]


def train_network(
    view: AttackerView,
    aux_images: Tensor,
    cfg: LearnedConfig,
    *,
    build: Callable[[], nn.Module],
    loss: LossFn,
    kind: str,
    checkpoint_format: str,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    evaluate: EvalFn | None = None,
    fingerprint_extra: dict[str, Any] | None = None,
    wrap: Callable[..., TrainedNetwork] = TrainedNetwork,
) -> TrainedNetwork:
    """Train (or resume, or just load a finished) attack network for ``view`` on uint8 ``aux_images``.

    ``build`` makes the network (seeded here; it must expose ``config``), ``loss`` scores a
    batch; ``kind`` names the attack in progress bars and errors; ``checkpoint_format``
    tags its checkpoint files. ``evaluate`` enables the budget-doubling convergence check
    when ``cfg.max_doublings > 0`` (module docstring).
    """
    if aux_images.dtype != torch.uint8 or aux_images.dim() != 4 or aux_images.shape[1] != 3:
        raise ValueError(f"aux_images must be N x 3 x H x W uint8, got {aux_images.dtype} {tuple(aux_images.shape)}")
    device = torch.device(device)
    fingerprint = _fingerprint(view, aux_images, cfg)
    if fingerprint_extra:
        fingerprint.update(fingerprint_extra)
    images = aux_images if device.type == "cpu" else aux_images.to(device)
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation: a run is reproducible end to end
        torch.manual_seed(cfg.seed)
        model = build().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    losses: list[float] = []
    checks: list[dict[str, Any]] = []
    finished = False
    standardiser: Standardiser | None = None
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt_path is not None and ckpt_path.is_file():
        data = safe_load(ckpt_path, map_location="cpu")
        if data.get("format") != checkpoint_format or data.get("version") != CHECKPOINT_VERSION:
            raise AttackCheckpointError(f"{ckpt_path}: not a facepriv {checkpoint_format.split('.')[-1].replace('_', '-')} "
                                        f"checkpoint (format {data.get('format')!r})")
        if data.get("fingerprint") != fingerprint:
            raise AttackCheckpointError(
                f"{ckpt_path}: made with different settings (frontend, knowledge, network, budget or auxiliary data); "
                "use another --out folder or drop --resume to retrain"
            )
        model.load_state_dict(data["model"])
        opt.load_state_dict(data["optimizer"])
        g.set_state(data["rng"])
        standardiser = Standardiser(data["standardiser"]["mean"], data["standardiser"]["std"])
        start = int(data["step"])
        losses = list(data.get("losses", []))
        checks = list(data.get("checks", []))
        # checkpoints written before the convergence check: finished once the budget is spent
        finished = bool(data.get("finished", start >= cfg.steps))
    if standardiser is None:
        sg = torch.Generator().manual_seed(cfg.seed + 1)
        placed = [view.place(view.simulate(_sample(images, cfg, sg)[2], sg)) for _ in range(max(1, cfg.standardise_batches))]
        standardiser = Standardiser.fit(placed)

    def save(step: int, done: bool) -> None:
        if ckpt_path is None:
            return
        atomic_save({
            "format": checkpoint_format, "version": CHECKPOINT_VERSION, "fingerprint": fingerprint,
            "decoder": model.config, "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "rng": g.get_state(), "standardiser": standardiser.state(), "losses": losses, "checks": checks,
            "finished": done,
        }, ckpt_path)

    checking = evaluate is not None and cfg.max_doublings > 0
    if not checking and start >= cfg.steps:
        finished = True  # e.g. a checked run resumed without its measurement: keep what was trained
    net = wrap(model, standardiser, view, {})
    autocast = cfg.amp and device.type == "cuda"
    from tqdm import tqdm

    t0 = time.perf_counter()
    step = start
    trained = False
    while not finished:
        target = cfg.budgets[len(checks)] if checking else cfg.steps
        model.train()
        bar = tqdm(range(step, target), desc=f"{kind}[{view.name}/{view.knowledge}]", unit="step",
                   disable=not progress or step >= target, initial=step, total=target, leave=False)
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            idx, flip, target_images = _sample(images, cfg, g)
            x, side = standardiser(view.place(view.simulate(target_images, g)))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                value = loss(model, x, side, idx, flip, target_images)
            if not torch.isfinite(value):
                raise FloatingPointError(f"{kind} attack: non-finite loss at step {step}; lower --lr")
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            losses.append(float(value.detach()))
            trained = True
            if (step + 1) % 10 == 0:
                bar.set_postfix(loss=f"{sum(losses[-10:]) / 10:.4g}")
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < target:
                save(step + 1, False)
        step = target
        if checking:
            model.eval()
            name, value = evaluate(net)
            checks.append({"steps": target, "metric": name, "value": value})
            finished = _converged(checks, cfg.tolerance) or len(checks) == len(cfg.budgets)
        else:
            finished = True
        save(target, finished)
    if not trained and ckpt_path is not None and not ckpt_path.is_file():
        save(step, True)
    model.eval()
    tail = losses[-max(1, min(50, len(losses))):] if losses else []
    net.history.update({
        "steps": step if start < step else max(start, cfg.steps), "resumed_from": start,
        "train_seconds": round(time.perf_counter() - t0, 2),
        "final_loss": (sum(tail) / len(tail)) if tail else None, "checkpoint": str(ckpt_path) if ckpt_path else None,
        "decoder": model.config, "parameters": sum(p.numel() for p in model.parameters()),
        "convergence": _convergence_record(cfg, checks, checking, evaluate is not None),
    })
    return net


def _converged(checks: list[dict[str, Any]], tolerance: float) -> bool:
    if len(checks) < 2 or checks[-1]["value"] is None or checks[-2]["value"] is None:
        return False
    return abs(checks[-1]["value"] - checks[-2]["value"]) < tolerance


def _convergence_record(cfg: LearnedConfig, checks: list[dict[str, Any]], checking: bool, measurable: bool) -> dict[str, Any]:
    """What the report says about the training budget: which check ran and its outcome."""
    if not checking:
        why = ("fixed budget (max_doublings = 0)" if measurable or not cfg.max_doublings
               else "fixed budget: the convergence check needs a measurement (an identity judge) and none was available")
        return {"check": "none", "note": why, "budgets": [cfg.steps]}
    return {
        "check": f"budget doubling: up to {cfg.max_doublings} doubling(s) of {cfg.steps} steps, converged when one "
                 f"doubling moves {checks[0]['metric'] if checks else 'the leakage'} by < {cfg.tolerance:g}",
        "tolerance": cfg.tolerance,
        "budgets": [c["steps"] for c in checks],
        "values": [c["value"] for c in checks],
        "metric": checks[0]["metric"] if checks else None,
        "converged": _converged(checks, cfg.tolerance),
        "final_change": (abs(checks[-1]["value"] - checks[-2]["value"])
                         if len(checks) >= 2 and None not in (checks[-1]["value"], checks[-2]["value"]) else None),
    }


def _image_loss(cfg: LearnedConfig) -> LossFn:
    def loss(model: nn.Module, x: Tensor, side: Tensor, idx: Tensor, flip: Tensor, target: Tensor) -> Tensor:
        pred = model(x, side).float()
        return F.mse_loss(pred, target) if cfg.loss == "mse" else F.l1_loss(pred, target)

    return loss


def train_decoder(
    view: AttackerView,
    aux_images: Tensor,
    cfg: LearnedConfig,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    evaluate: EvalFn | None = None,
) -> LearnedInverter:
    """Train (or resume, or just load a finished) decoder for ``view`` on uint8 ``aux_images``."""
    if cfg.loss not in ("mse", "l1"):
        raise ValueError(f"learned decoder: loss must be 'mse' or 'l1', got {cfg.loss!r}")
    net = train_network(
        view, aux_images, cfg,
        build=lambda: UNetDecoder(view.channels, view.channels, cfg.width, cfg.depth, cfg.linear_skip,
                                  out_scale=view.pixels_per_cell),
        loss=_image_loss(cfg), kind="learned", checkpoint_format=CHECKPOINT_FORMAT, checkpoint=checkpoint,
        resume=resume, device=device, progress=progress, evaluate=evaluate, wrap=LearnedInverter,
    )
    assert isinstance(net, LearnedInverter)
    return net
