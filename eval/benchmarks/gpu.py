"""`facepriv bench gpu`: one prepared command for a short GPU window — correctness first,
then throughput, then a short real run.

Why one command: GPU time comes in windows of minutes, on a bare machine that carries only
the repository (and a data pack). Everything that needs a GPU to be trusted runs here, in
order of importance, under a hard time budget (``--budget-s``), and every finished section
is written to ``gpu.json`` / ``gpu.md`` at once, so a run killed at its limit still leaves
its results.

Sections (each one skipped, with the reason, when the budget is spent):

1. ``correctness`` — on the device against CPU float32:
   * every registered frontend's output with the same explicit randomness (PartialFace
     subset/permutation ids, DCTDP uniforms) within ``PARITY_RTOL`` relative (max error
     over max magnitude);
   * DCTDP noise on the device: zero mean, per-channel Laplace scale (the difference of two
     draws of one input has variance ``2 * (2 b^2)``, which cancels the signal and clipping),
     independence across samples (|correlation| of the noise of sample pairs), and bitwise
     reproducibility from the checkpointed generator state;
   * AMP: bf16 and fp16 forward/backward of a fixed batch (IResNet + ArcFace and CosFace
     heads) against fp32: loss relative difference and gradient cosine within
     ``AMP_TOLERANCES``, no NaN/inf; then a few real ``Trainer`` steps per dtype with no
     non-finite step (insightface users hit fp16 NaN losses in the margin heads);
   * save on the device, resume, bit-identical continuation (``deterministic: true``);
   * Partial FC (sampled class centres) on one device: finite, decreasing loss;
2. ``ddp`` — ``torchrun`` with 2 ranks (NCCL when 2+ GPUs exist, else gloo sharing one
   device) against one process on the same global batch;
3. ``throughput`` — images/s of one training step (``Trainer.train_step``, the same
   measurement as ``facepriv bench train``: frontend share by paired cached steps, peak
   memory) for each backbone x frontend with AMP, inference (protect + embed) and the learned
   attack's decoder step, with the ratio to insightface arcface_torch's published per-GPU
   figures (V100, fp16) — the GPU model and dtype are named next to each ratio;
4. ``real`` — with ``--pack`` (``facepriv data bundle``): the LFW-half distillation recipe
   for RGB and protected students (warm-started from the RGB student) on the device for the
   remaining minutes, verified on the pack's test pairs.

``--device cpu --tiny`` runs the same code paths at toy sizes in under a minute, so CI
catches a typo before a GPU window does; without CUDA, ``--device cuda`` refuses with a clear
message.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from facepriv.io import atomic_write
from facepriv.verification.keys import fpr_key

#: insightface arcface_torch, published training throughput per V100 with fp16 (img/s)
ARCFACE_TORCH_V100_FP16 = {"iresnet50": 640.0, "iresnet18": 1070.0, "mobilefacenet": 1400.0}
#: float32 device vs CPU: max |a - b| / max |b|
PARITY_RTOL = 1e-4
#: AMP vs fp32 on one fixed batch: loss relative difference, cosine of the flattened gradient
AMP_TOLERANCES = {"bf16": {"loss_rel": 2e-2, "grad_cosine": 0.98},
                  "fp16": {"loss_rel": 5e-3, "grad_cosine": 0.995}}
SECTIONS = ("correctness", "ddp", "throughput", "real")


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="hard time budget in seconds; later sections are skipped when it is spent (default 480)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda (the real check) or cpu (with --tiny: CI smoke of the same code paths)")
    parser.add_argument("--tiny", action="store_true",
                        help="toy sizes (32x32 faces, 1/16-width models, few steps): the whole command in < 1 min on CPU")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--checks", default=None,
                        help="only these correctness checks (comma-separated, e.g. resume,partial_fc; default all)")
    parser.add_argument("--models", default="iresnet50,iresnet18,mobilefacenet", help="backbones for the throughput section")
    parser.add_argument("--frontends", default=None, help="frontends for throughput (default: every registered one)")
    parser.add_argument("--batch-size", type=int, default=256, help="faces per training step in the throughput section")
    parser.add_argument("--amp", choices=("bf16", "fp16"), default="bf16", help="autocast dtype for throughput (default bf16)")
    parser.add_argument("--pack", default=None,
                        help="LFW-half pack (facepriv data bundle) for the real run; without it the section is skipped")
    parser.add_argument("--real-config", default=None,
                        help="YAML overrides of the real run's recipe (keys of real_run_recipe(); default: the built-in one)")
    parser.add_argument("--real-frontends", default="rgb,partialface@2,partialface@1,partialface,dctdp@1,dctdp",
                        help="rows of the real run, in order; rows after rgb are warm-started from it; NAME@U is the "
                             "frontend at the compact layout upsample U (default rgb,partialface@2,partialface@1,partialface,dctdp@1,dctdp)")
    parser.add_argument("--workers", type=int, default=None, help="data-loader workers for the real run (default: CPUs - 2)")
    parser.add_argument("--work-dir", default=None,
                        help="where the real run's checkpoints go (default OUT/real; keep it outside OUT when OUT "
                             "must stay small, e.g. a GPU window's return folder)")


class Budget:
    """Seconds left of ``--budget-s``; sections ask before they start and between parts."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.seconds = float(seconds)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def left(self) -> float:
        return self.seconds - self.elapsed


class Report:
    """``gpu.json`` + ``gpu.md`` under ``out``, rewritten atomically after every section."""

    def __init__(self, out: Path, header: dict[str, Any]) -> None:
        self.out = out
        self.data: dict[str, Any] = {**header, "sections": {}}
        out.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, result: dict[str, Any]) -> None:
        self.data["sections"][name] = result
        self.flush()

    def flush(self) -> None:
        for name, text in (("gpu.json", json.dumps(self.data, indent=2, default=str)), ("gpu.md", render_markdown(self.data))):
            atomic_write(self.out / name, text)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: Any) -> tuple[float, Any]:
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t, out


# --------------------------------------------------------------------------- sizes


def sizes(tiny: bool) -> dict[str, Any]:
    """Problem sizes: real ones for a GPU, toy ones for the CPU smoke path."""
    if tiny:
        return {"image": 32, "width": 0.0625, "batch": 8, "classes": 16, "steps": 2, "warmup": 1,
                "amp_batch": 8, "noise_batch": 16, "infer_batch": 8, "decoder_batch": 4, "resume_steps": 4}
    return {"image": 112, "width": 1.0, "batch": 256, "classes": 2000, "steps": 6, "warmup": 2,
            "amp_batch": 64, "noise_batch": 256, "infer_batch": 512, "decoder_batch": 32, "resume_steps": 6}


def frontend_names() -> list[str]:
    from facepriv.frontends import FRONTENDS

    return sorted(FRONTENDS)


def seeded_frontend(name: str, image_size: int) -> Any:
    """A frontend with fixed seeds (a benchmark, not a deployment: nothing here is protected)."""
    from facepriv.eval.benchmarks.train import frontend_options
    from facepriv.frontends import build_frontend

    return build_frontend(frontend_options(name, seed=0, image_size=image_size))


def explicit_randomness(frontend: Any, batch: int, generator: Any) -> dict[str, Any]:
    """Keyword inputs that fix a frontend's randomness (the device-export contract): the same
    draw on CPU and device, so the outputs must agree to float32 round-off."""
    import torch

    params = inspect.signature(frontend.forward).parameters
    kw: dict[str, Any] = {}
    if "subset" in params:
        kw["subset"] = torch.randint(0, int(frontend.n_subsets), (batch,), generator=generator)
        if "permutation" in params:
            kw["permutation"] = torch.randint(0, int(frontend.n_permutations), (batch,), generator=generator)
    return kw


def _rel_err(a: Any, b: Any) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# --------------------------------------------------------------------------- correctness


def check_frontend_parity(device: Any, sz: dict[str, Any]) -> dict[str, Any]:
    """Every frontend, float32, device vs CPU, same input and same explicit randomness."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, sz["image"], sz["image"], generator=g)
    out: dict[str, Any] = {}
    for name in frontend_names():
        fe = seeded_frontend(name, sz["image"]).eval()
        kw = explicit_randomness(fe, x.shape[0], g)
        noise_kw = {}
        if "noise_uniform" in inspect.signature(fe.forward).parameters:
            shape = fe(x).shape  # one CPU call for the output shape
            noise_kw["noise_uniform"] = torch.rand(shape, generator=g, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
        with torch.no_grad():
            ref = fe(x, **kw, **noise_kw)
            fe_dev = copy.deepcopy(fe).to(device)
            got = fe_dev(x.to(device), **{k: v.to(device) for k, v in kw.items()},
                         **{k: v.to(device) for k, v in noise_kw.items()})
        err = _rel_err(got, ref)
        out[name] = {"relative_error": err, "shape": list(ref.shape), "ok": bool(err <= PARITY_RTOL and got.shape == ref.shape),
                     "explicit_randomness": sorted([*kw, *noise_kw])}
    return {"tolerance": PARITY_RTOL, "frontends": out, "ok": all(v["ok"] for v in out.values())}


def check_dctdp_noise(device: Any, sz: dict[str, Any]) -> dict[str, Any]:
    """DCTDP's training noise on the device: mean, scale, independence, reproducibility."""
    import torch

    fe = seeded_frontend("dctdp", sz["image"]).to(device).train()
    x = torch.rand(1, 3, sz["image"], sz["image"], generator=torch.Generator().manual_seed(1)).to(device)
    x = x.expand(sz["noise_batch"], -1, -1, -1).contiguous()  # one face, many draws
    state = fe.get_rng_state()
    with torch.no_grad():
        a = fe(x).double()
        b = fe(x).double()
        fe.set_rng_state(state)
        a_again = fe(x).double()
    d = a - b  # signal and clipping cancel: the difference of two independent Laplace(b) draws
    scales = fe.noise_scales().detach().double().to(d.device)
    scales = scales.reshape(1, *d.shape[1:]) if scales.numel() == d[0].numel() else scales.reshape(1, -1, 1, 1)
    ratio = d.pow(2) / (2.0 * 2.0 * scales.pow(2))  # var(L1 - L2) = 2 * 2 b^2 per element
    per_channel = ratio.mean(dim=(0, 2, 3))
    # every element on its own noise scale: per-element budgets and sensitivities differ by
    # orders of magnitude, and a few large-scale elements would otherwise dominate both the
    # mean and the correlation (whose 1/sqrt(n) spread assumes comparable elements)
    z = d / (2.0 * scales)
    mean_z = z.mean() / z.std().clamp_min(1e-30) * math.sqrt(z.numel())
    flat = z.flatten(1)
    flat = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-30)
    corr = (flat @ flat.T) / flat.shape[1]
    off = corr[~torch.eye(corr.shape[0], dtype=torch.bool, device=corr.device)].abs()
    n = flat.shape[1]
    result = {
        "draws": int(d.shape[0]), "values_per_draw": int(n),
        "mean_z_score": float(mean_z),
        "variance_ratio_to_laplace": {"overall": float(ratio.mean()), "per_channel_median": float(per_channel.median()),
                                      "per_channel_min": float(per_channel.min()),
                                      "per_channel_max": float(per_channel.max())},
        "max_abs_correlation_between_samples": float(off.max()),
        "correlation_bound_5_sigma": 5.0 / math.sqrt(n),
        "bitwise_reproducible_from_checkpointed_state": bool(torch.equal(a, a_again)),
    }
    result["ok"] = bool(abs(result["mean_z_score"]) < 5.0
                        and abs(result["variance_ratio_to_laplace"]["overall"] - 1.0) < 0.05
                        and off.max() < result["correlation_bound_5_sigma"]
                        and result["bitwise_reproducible_from_checkpointed_state"])
    return result


def _model_and_heads(sz: dict[str, Any], device: Any) -> tuple[Any, dict[str, Any]]:
    import torch

    from facepriv.models import build_backbone
    from facepriv.models.heads import build_head

    torch.manual_seed(0)
    model = build_backbone({"name": "iresnet18", "width": sz["width"], "embedding_size": 128,
                            "input_size": sz["image"]}).to(device)
    heads = {m: build_head({"type": "softmax", "margin": m, "s": 64.0, "m": 0.5 if m == "arcface" else 0.35},
                           128, sz["classes"]).to(device)
             for m in ("arcface", "cosface")}
    return model, heads


def _loss_and_grads(model: Any, head: Any, x: Any, y: Any, dtype: Any, scale: float = 1.0) -> tuple[float, Any, bool]:
    import torch

    model.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    ctx = torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with ctx:
        loss = head(model(x), y)
    (loss.float() * scale).backward()
    grads = [p.grad.float().flatten() / scale for p in [*model.parameters(), *head.parameters()] if p.grad is not None]
    g = torch.cat(grads)
    value = float(loss.detach())
    return value, g, bool(torch.isfinite(g).all() and math.isfinite(value))


def check_amp(device: Any, sz: dict[str, Any]) -> dict[str, Any]:
    """bf16 / fp16 forward + backward vs fp32 on one fixed batch, per margin head."""
    import torch

    model, heads = _model_and_heads(sz, device)
    model.train()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(sz["amp_batch"], 3, sz["image"], sz["image"], generator=g).to(device)
    y = torch.randint(0, sz["classes"], (sz["amp_batch"],), generator=g).to(device)
    # BatchNorm running stats move on every forward: snapshot and restore between runs
    snapshot = copy.deepcopy(model.state_dict())
    out: dict[str, Any] = {"tolerances": AMP_TOLERANCES, "dtypes": {}}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if device.type != "cuda" and name == "fp16":
            out["dtypes"][name] = {"skipped": "fp16 autocast needs CUDA"}
            continue
        per_head = {}
        for margin, head in heads.items():
            model.load_state_dict(snapshot)
            ref_loss, ref_g, _ = _loss_and_grads(model, head, x, y, None)
            model.load_state_dict(snapshot)
            loss, grad, finite = _loss_and_grads(model, head, x, y, dtype, scale=1024.0 if name == "fp16" else 1.0)
            cos = float(torch.nn.functional.cosine_similarity(grad, ref_g, dim=0))
            rel = abs(loss - ref_loss) / max(abs(ref_loss), 1e-12)
            tol = AMP_TOLERANCES[name]
            per_head[margin] = {"loss_fp32": ref_loss, "loss_amp": loss, "loss_rel_diff": rel, "grad_cosine": cos,
                                "finite": finite, "ok": bool(finite and rel <= tol["loss_rel"] and cos >= tol["grad_cosine"])}
        out["dtypes"][name] = per_head
    model.load_state_dict(snapshot)
    out["ok"] = all(h.get("ok", True) for d in out["dtypes"].values() for h in (d.values() if "skipped" not in d else []))
    return out


def tiny_train_config(device: str, sz: dict[str, Any], **over: Any) -> dict[str, Any]:
    """A small synthetic-data TrainConfig dict (GroupNorm: per-sample statistics, so 1-vs-2
    process and resume comparisons test the machinery, not batch composition)."""
    cfg: dict[str, Any] = {
        "name": "bench-gpu", "seed": 3, "device": device,
        "data": {"format": "synthetic", "synthetic": {"n_identities": 16, "images_per_identity": 8, "cache": True},
                 "image_size": sz["image"], "batch_size": 8, "num_workers": 0, "pin_memory": False},
        "frontend": {"name": "rgb"},
        "model": {"name": "iresnet18", "width": 0.0625 if sz["image"] <= 32 else 0.25, "embedding_size": 32,
                  "norm": "group", "norm_groups": 2},
        "head": {"type": "softmax", "margin": "arcface", "s": 16.0, "m": 0.2},
        "optim": {"lr": 0.05, "amp": "none"},
        "schedule": {"max_steps": sz["resume_steps"], "warmup_steps": 1},
        "checkpoint": {"every_steps": 0},
        "logging": {"every_steps": 1, "progress": False, "csv": True},
    }
    for key, value in over.items():
        node = cfg
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return cfg


def _trainer(cfg_dict: dict[str, Any], **kw: Any) -> Any:
    from facepriv.training.config import config_from_dict
    from facepriv.training.trainer import Trainer

    return Trainer(config_from_dict(cfg_dict), **kw)


def _full_state(trainer: Any) -> dict[str, Any]:
    out = {f"model.{k}": v.detach().clone() for k, v in trainer.recognizer.state_dict().items()}
    if trainer.head is not None:
        out.update({f"head.{k}": v.detach().clone() for k, v in trainer.head.state_dict().items()})
    return out


def check_amp_training(device: Any, sz: dict[str, Any]) -> dict[str, Any]:
    """A few real Trainer steps per AMP dtype and margin: no non-finite step, loss finite."""
    out: dict[str, Any] = {}
    dtypes = ("bf16", "fp16") if device.type == "cuda" else ("bf16",)
    for amp in dtypes:
        for margin in ("arcface", "cosface"):
            t = _trainer(tiny_train_config(device.type, sz, optim__amp=amp, optim__lr=0.1,
                                           head={"type": "softmax", "margin": margin, "s": 64.0,
                                                 "m": 0.5 if margin == "arcface" else 0.35},
                                           model__norm="batch"))
            losses = [float(r.loss) for r in t.run_steps(sz["resume_steps"] * 2)]
            out[f"{amp}/{margin}"] = {"losses": losses, "nonfinite_steps": int(t.nonfinite_steps),
                                      "ok": bool(t.nonfinite_steps == 0 and all(map(math.isfinite, losses)))}
            t.close()
    return {"runs": out, "ok": all(v["ok"] for v in out.values())}


def check_resume(device: Any, sz: dict[str, Any], work: Path) -> dict[str, Any]:
    """Save on the device, resume in a new Trainer, continue: bit-identical to an uninterrupted run.

    ``deterministic: true`` switches torch to deterministic kernels process-wide; they are
    switched back afterwards so the throughput section measures the normal fast kernels.
    """
    import torch

    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    try:
        return _check_resume(device, sz, work)
    finally:
        torch.use_deterministic_algorithms(flags[0])
        torch.backends.cudnn.benchmark = flags[1]


def _check_resume(device: Any, sz: dict[str, Any], work: Path) -> dict[str, Any]:
    import torch

    n = sz["resume_steps"]
    cfg = tiny_train_config(device.type, sz, deterministic=True,
                            frontend={"name": "partialface", "sample_multiplier": 2, "secret_seed": 4, "train_seed": 5},
                            input_norm={"calibration_batches": 1},
                            checkpoint={"every_steps": n // 2, "keep_last": 2})
    full = _trainer(cfg, run_dir=work / "full")
    full.fit()
    reference = _full_state(full)
    full.close()
    part = _trainer(cfg, run_dir=work / "part")
    part.fit(max_steps=n // 2)
    part.close()
    resumed = _trainer(cfg, run_dir=work / "part", resume="auto")
    start = int(resumed.step)
    resumed.fit()
    final = _full_state(resumed)
    resumed.close()
    diffs = {k: float((reference[k].double() - final[k].double()).abs().max()) for k in reference
             if reference[k].is_floating_point()}
    identical = all(torch.equal(reference[k], final[k]) for k in reference)
    worst = max(diffs.items(), key=lambda kv: kv[1]) if diffs else ("-", 0.0)
    return {"steps": n, "resumed_at": start, "bitwise_identical": bool(identical),
            "max_abs_diff": worst[1], "worst_tensor": worst[0], "deterministic": True,
            "ok": bool(identical and start == n // 2)}


def check_partial_fc(device: Any, sz: dict[str, Any]) -> dict[str, Any]:
    """Partial FC (sampled class centres) on one device: finite, and it fits a fixed batch
    (repeated steps on one batch must lower the loss: gradients reach the sampled centres)."""
    t = _trainer(tiny_train_config(device.type, sz, head={"type": "partial_fc", "margin": "cosface", "s": 32.0,
                                                            "m": 0.3, "sample_rate": 0.5},
                                   model__norm="batch", optim__lr=0.05, schedule__type="constant",
                                   data__synthetic={"n_identities": 32, "images_per_identity": 4, "cache": True}))
    batch = t.next_batch()
    losses = [float(t.train_step(batch).loss) for _ in range(10)]
    t.close()
    return {"losses": losses, "sample_rate": 0.5, "fixed_batch": True,
            "ok": bool(all(map(math.isfinite, losses)) and losses[-1] < 0.8 * losses[0])}


def section_correctness(device: Any, sz: dict[str, Any], budget: Budget, checks: str | None = None) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    wanted = None if not checks else {c.strip() for c in checks.split(",") if c.strip()}
    with tempfile.TemporaryDirectory(prefix="facepriv-gpu-") as tmp:
        for name, fn in (("frontend_parity", lambda: check_frontend_parity(device, sz)),
                         ("dctdp_noise", lambda: check_dctdp_noise(device, sz)),
                         ("amp_fixed_batch", lambda: check_amp(device, sz)),
                         ("amp_training_steps", lambda: check_amp_training(device, sz)),
                         ("resume", lambda: check_resume(device, sz, Path(tmp))),
                         ("partial_fc", lambda: check_partial_fc(device, sz))):
            if wanted is not None and name not in wanted:
                continue
            if budget.left <= 0:
                parts[name] = {"skipped": "time budget spent"}
                continue
            t = time.perf_counter()
            try:
                parts[name] = fn()
            except Exception as exc:  # noqa: BLE001 - one failed check must not hide the others
                parts[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            parts[name]["seconds"] = round(time.perf_counter() - t, 2)
            print(f"[bench gpu] correctness/{name}: {'ok' if parts[name].get('ok') else parts[name]}", file=sys.stderr)
    parts["ok"] = all(p.get("ok", False) for p in parts.values() if isinstance(p, dict) and "skipped" not in p)
    return parts


# --------------------------------------------------------------------------- DDP


def section_ddp(device: Any, sz: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """2 ranks under torchrun vs one process on the same global batch (weights after N steps)."""
    import torch

    from facepriv.models import FaceRecognizer
    from facepriv.training.config import config_from_dict, save_config

    n_gpu = torch.cuda.device_count() if device.type == "cuda" else 0
    backend = "nccl" if n_gpu >= 2 else "gloo"
    common = {"schedule": {"max_steps": 4, "warmup_steps": 1}, "checkpoint": {"every_steps": 0},
              "distributed": {"backend": backend}}
    with tempfile.TemporaryDirectory(prefix="facepriv-ddp-") as tmp:
        work = Path(tmp)
        ddp_cfg = tiny_train_config(device.type, sz, data__batch_size=8, **common)
        save_config(config_from_dict(ddp_cfg), work / "ddp.yaml")
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        # TF32 (on by default for cuDNN convolutions) rounds to ~1e-3: the two layouts pick
        # different kernels for half and full batches, so compare in full float32 on both sides
        env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", NVIDIA_TF32_OVERRIDE="0")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "facepriv.training.cli", str(work / "ddp.yaml"), "--out", str(work / "ddp"), "-q"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(30.0, min(300.0, budget.left)))
        ddp_s = time.perf_counter() - t
        if proc.returncode != 0:
            return {"ok": False, "backend": backend, "error": (proc.stdout[-1500:] + proc.stderr[-2500:])}
        flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            single = _trainer(tiny_train_config(device.type, sz, data__batch_size=16, **common), run_dir=work / "single")
            init = {k: v.clone() for k, v in single.recognizer.state_dict().items()}
            single.fit()
            single.close()
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
        ddp = FaceRecognizer.load(work / "ddp" / "model.pt").state_dict()
        ref = FaceRecognizer.load(work / "single" / "model.pt").state_dict()
        moved = max(float((ref[k].float() - init[k].float().cpu()).abs().max()) for k in ref)
        worst = max(float((ddp[k].float() - ref[k].float()).abs().max()) for k in ref)
    tol = 1e-4
    return {"backend": backend, "ranks": 2, "gpus": n_gpu, "steps": 4, "global_batch": 16, "tf32": False,
            "max_abs_weight_diff": worst, "tolerance": tol, "weights_moved": moved, "torchrun_seconds": round(ddp_s, 1),
            "ok": bool(moved > 1e-3 and worst < tol)}


# --------------------------------------------------------------------------- throughput


def section_throughput(device: Any, sz: dict[str, Any], budget: Budget, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from facepriv.eval.benchmarks.train import TrainBenchSettings, measure_frontend

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    names = [n.strip() for n in (args.frontends or ",".join(frontend_names())).split(",") if n.strip()]
    batch = sz["batch"] if args.tiny else int(args.batch_size)
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows: dict[str, Any] = {}
    for model in models:
        for name in names:
            key = f"{model}/{name}"
            if budget.left <= 30:
                rows[key] = {"skipped": "time budget spent"}
                continue
            s = TrainBenchSettings(model=model, width=sz["width"], image_size=sz["image"], batch_size=batch,
                                   steps=sz["steps"], warmup=sz["warmup"], device=device.type,
                                   amp=args.amp if device.type == "cuda" else "bf16", num_classes=sz["classes"])
            try:
                r = measure_frontend(name, s, progress=False)
            except Exception as exc:  # noqa: BLE001 - an OOM or a bad combination is a result, not a crash
                rows[key] = {"error": f"{type(exc).__name__}: {exc}"}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            ref = ARCFACE_TORCH_V100_FP16.get(model)
            rows[key] = {
                "faces_per_second": round(r["faces_per_second"], 1),
                "backbone_samples_per_second": round(r["backbone_samples_per_second"], 1),
                "step_ms_median": round(1000 * r["step_seconds"]["median"], 2),
                "frontend_share_of_step": round(r["frontend_share_of_step"], 4),
                "peak_memory_mib": r["peak_memory"]["mib"],
                "loss_finite": r["loss"]["all_finite"],
                "vs_arcface_torch_v100_fp16": None if ref is None or name != "rgb" else round(r["faces_per_second"] / ref, 2),
            }
            print(f"[bench gpu] throughput {key}: {rows[key]['faces_per_second']} faces/s, "
                  f"frontend {100 * rows[key]['frontend_share_of_step']:.1f}%", file=sys.stderr)
    inference = measure_inference(device, sz, names, budget) if budget.left > 20 else {"skipped": "time budget spent"}
    decoder = measure_decoder(device, sz) if budget.left > 10 else {"skipped": "time budget spent"}
    return {"gpu": gpu_name, "dtype": args.amp if device.type == "cuda" else "bf16", "batch_size": batch,
            "image_size": sz["image"], "width": sz["width"], "num_classes": sz["classes"],
            "arcface_torch_reference": {"figures": ARCFACE_TORCH_V100_FP16, "hardware": "1x V100, fp16",
                                        "note": "ratios compare different GPUs and dtypes; they place facepriv's "
                                                "training step against a known-good implementation, not a like-for-like race"},
            "training_step": rows, "inference": inference, "attack_decoder": decoder}


def measure_inference(device: Any, sz: dict[str, Any], names: list[str], budget: Budget) -> dict[str, Any]:
    """Client protect + server embed of one batch (eval mode, autocast on CUDA), per frontend."""
    import torch

    from facepriv.models import FaceRecognizer

    out: dict[str, Any] = {}
    x = torch.rand(sz["infer_batch"], 3, sz["image"], sz["image"]).to(device)
    for name in names:
        if budget.left <= 15:
            out[name] = {"skipped": "time budget spent"}
            continue
        fe = seeded_frontend(name, sz["image"])
        h, w = fe.output_size(sz["image"], sz["image"])
        model = FaceRecognizer.from_config({
            "frontend": fe.config, "image_size": sz["image"],
            "backbone": {"name": "iresnet50" if sz["image"] >= 112 else "iresnet18", "width": sz["width"],
                         "embedding_size": 512, "input_size": h}}).to(device).eval()
        ctx = torch.autocast(device.type, dtype=torch.bfloat16)

        def step() -> Any:
            with torch.no_grad(), ctx:
                return model.embed_protected(model.protect(x))

        def protect_only() -> Any:
            with torch.no_grad():
                return model.protect(x)

        step()
        times = [_timed(step, device)[0] for _ in range(sz["steps"])]
        prot = [_timed(protect_only, device)[0] for _ in range(sz["steps"])]
        med, pmed = sorted(times)[len(times) // 2], sorted(prot)[len(prot) // 2]
        out[name] = {"backbone": "iresnet50", "images_per_second": round(x.shape[0] / med, 1),
                     "protect_share": round(pmed / med, 4)}
    return out


def measure_decoder(device: Any, sz: dict[str, Any]) -> dict[str, Any]:
    """One training step of the learned attack's U-Net decoder on PartialFace-shaped input."""
    import torch

    from facepriv.eval.attacks.decoder import UNetDecoder

    fe = seeded_frontend("partialface", sz["image"]).eval()
    x = fe(torch.rand(sz["decoder_batch"], 3, sz["image"], sz["image"])).to(device)
    target = torch.rand(x.shape[0], 3, sz["image"], sz["image"], device=device)
    dec = UNetDecoder(in_channels=x.shape[1], width=32, depth=3).to(device)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-3)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.l1_loss(dec(x).float(), target)
        loss.backward()
        opt.step()
        return float(loss)

    step()
    times = [_timed(step, device)[0] for _ in range(sz["steps"])]
    med = sorted(times)[len(times) // 2]
    return {"input": list(x.shape), "width": 32, "depth": 3, "images_per_second": round(x.shape[0] / med, 1)}


# --------------------------------------------------------------------------- real run


def real_run_recipe(tiny: bool) -> dict[str, Any]:
    """The LFW-half distillation recipe on a GPU (overridable with --real-config)."""
    if tiny:
        return {"model": {"name": "iresnet18", "width": 0.0625, "embedding_size": 128}, "batch_size": 8,
                "image_size": 32, "epochs": 0.05, "lr": 0.1, "row_seconds": 20, "warm_start_epochs_ratio": 1.0}
    return {"model": {"name": "iresnet18", "width": 1.0, "embedding_size": 128}, "batch_size": 256,
            "image_size": 112, "epochs": 20.0, "lr": 0.2, "row_seconds": 90, "warm_start_epochs_ratio": 0.5}


def _real_train_config(recipe: dict[str, Any], frontend: str, steps: int, device: str, workers: int,
                       init_from: str | None, path: str) -> dict[str, Any]:
    from facepriv.eval.benchmarks.train import split_layout

    name, upsample = split_layout(frontend)  # "partialface@1": the compact x1 layout
    fe: dict[str, Any] = {"name": name, **({"upsample": upsample} if upsample is not None else {})}
    if name == "dctdp":
        fe.update({"epsilon_mean": 4.0, "input_size": recipe["image_size"]})
    return {
        "name": f"gpu-real-{frontend}", "seed": 0, "device": device,
        "data": {"format": "recordio", "path": path, "batch_size": recipe["batch_size"], "num_workers": workers,
                 "image_size": recipe["image_size"], "hflip": True, "pin_memory": device == "cuda"},
        "frontend": fe,
        "model": dict(recipe["model"]),
        "input_norm": {"mode": "auto", "calibration_batches": 4},
        "head": {"type": "softmax", "margin": "arcface", "s": 32.0, "m": 0.3},
        "optim": {"name": "sgd", "lr": recipe["lr"], "momentum": 0.9, "weight_decay": 5e-4, "clip_grad_norm": 5.0,
                  "frontend_lr": 0.01, "amp": "bf16" if device == "cuda" else "none"},
        "schedule": {"type": "poly", "max_steps": steps, "warmup_steps": max(1, steps // 20), "power": 2.0},
        "checkpoint": {"every_steps": 0},
        "distill": {"enabled": True, "teacher": f"pack:{Path(path).parent}", "cosine_weight": 1.0, "head_weight": 0.1,
                    "center": True},
        "logging": {"every_steps": 50, "progress": False, "csv": True},
        **({"init_from": init_from} if init_from else {}),
    }


def evaluate_on_pack(model: Any, test_set: Any, device: Any, repetitions: int) -> dict[str, Any]:
    from facepriv.verification.metrics import verification_report
    from facepriv.verification.protocols import embed_protected_set, score_pairs

    emb = embed_protected_set(model, test_set, repetitions=repetitions, batch_size=256, device=device, progress=False)
    reports = [verification_report(score_pairs(emb, r), test_set.issame, test_set.folds) for r in range(emb.repetitions)]
    acc = [r["accuracy"]["accuracy_mean"] for r in reports]
    tpr3 = [next((p["tpr"] for p in r["tpr_at_fpr"] if abs(p["fpr_target"] - 1e-3) < 1e-12), None) for r in reports]
    measurable = all(v is not None for v in tpr3)
    return {"accuracy": sum(acc) / len(acc), "accuracy_per_repetition": acc,
            fpr_key(1e-3): sum(tpr3) / len(tpr3) if measurable else None,
            "auc": sum(r["auc"] for r in reports) / len(reports), "repetitions": emb.repetitions,
            "pairs": int(len(test_set.issame))}


def planned_steps(recipe: dict[str, Any], frontend: str, n_images: int, seconds: float, warm: bool,
                  measured: dict[str, Any] | None) -> tuple[int, str]:
    """Steps for one row: the recipe's epochs, cut to what fits ``seconds`` at the training
    speed the throughput section measured for this backbone and frontend (a poly schedule
    that is stopped half-way by the clock would never reach its low learning rates)."""
    epochs = float(recipe["epochs"]) * (float(recipe["warm_start_epochs_ratio"]) if warm else 1.0)
    steps = max(2, int(epochs * n_images / recipe["batch_size"]))
    key = f"{recipe['model']['name']}/{frontend}"
    row = (measured or {}).get(key) or {}
    if "faces_per_second" in row and float(recipe["model"].get("width", 1.0)) == float(measured.get("_width", -1)):
        fit = int(0.8 * seconds * row["faces_per_second"] / recipe["batch_size"])
        if fit < steps:
            return max(2, fit), f"cut to fit {seconds:.0f} s at the measured {row['faces_per_second']:.0f} faces/s"
    return steps, f"{epochs:g} epochs"


def save_frontends(path: Path, frontends: dict[str, Any]) -> None:
    """The trained rows' frontends (config with secrets + state) for attacks run elsewhere.

    This file holds secrets (PartialFace's table, DCTDP's learned allocation): it is the
    model owner's, like a checkpoint, and must not be published.
    """
    import torch

    payload = {name: {"config": json.dumps(fe.config), "state": {k: v.detach().cpu() for k, v in fe.state_dict().items()}}
               for name, fe in frontends.items()}
    torch.save(payload, path)


def section_real(device: Any, budget: Budget, args: argparse.Namespace,
                 measured: dict[str, Any] | None = None) -> dict[str, Any]:
    import torch
    import yaml

    from facepriv.data.pack import Pack

    if not args.pack:
        return {"skipped": "no --pack given (facepriv data bundle writes one)"}
    recipe = real_run_recipe(args.tiny)
    if args.real_config:
        recipe.update(yaml.safe_load(Path(args.real_config).read_text()) or {})
    pack = Pack(args.pack)
    test_set = pack.test_set()
    if tuple(pack.manifest["image_size"]) != (recipe["image_size"],) * 2:
        return {"skipped": f"the pack holds {pack.manifest['image_size']} faces, the recipe trains on "
                           f"{recipe['image_size']}x{recipe['image_size']}"}
    workers = args.workers if args.workers is not None else max(0, min(12, (os.cpu_count() or 2) - 2))
    rows: dict[str, Any] = {}
    trained: dict[str, Any] = {}
    from facepriv.eval.benchmarks.train import parse_frontends

    frontends = parse_frontends(args.real_frontends)  # checked in run() before any section starts
    rgb_model: str | None = None
    out_dir = Path(args.work_dir) if args.work_dir else Path(args.out) / "real"
    eval_reserve = 10.0 if args.tiny else 20.0  # embedding the test images, per row
    for i, frontend in enumerate(frontends):
        rows_left = len(frontends) - i
        seconds = min(float(recipe["row_seconds"]), (budget.left - 5.0) / rows_left - eval_reserve)
        if seconds < 5:
            rows[frontend] = {"skipped": f"time budget spent ({budget.left:.0f} s left)"}
            continue
        run_dir = out_dir / frontend
        run_dir.mkdir(parents=True, exist_ok=True)
        dataset = pack.train_dataset(dtype="uint8", image_size=recipe["image_size"])
        init_from = rgb_model if frontend != "rgb" else None
        steps, why = planned_steps(recipe, frontend, len(dataset), seconds, bool(init_from), measured)
        cfg = _real_train_config(recipe, frontend, steps, device.type, workers, init_from, str(pack.root / "train.rec"))
        t0 = time.perf_counter()
        try:
            trainer = _trainer(cfg, run_dir=run_dir, dataset=dataset)
            summary = trainer.fit(stop_after_s=seconds * 1.15)
            train_s = time.perf_counter() - t0
            model = trainer.recognizer.eval()
            result = evaluate_on_pack(model, test_set, device,
                                      repetitions=1 if frontend.split("@")[0] in ("rgb", "dct") else 2)
            if frontend == "rgb":
                rgb_model = str(trainer.export_model(run_dir / "model.pt"))
            trained[frontend] = model.frontend
            rows[frontend] = {"steps": int(trainer.step), "planned_steps": steps, "plan": why,
                              "epochs": round(trainer.step * recipe["batch_size"] / len(dataset), 2),
                              "train_seconds": round(train_s, 1), "warm_start_from": "rgb" if init_from else None,
                              "stopped_by_time": bool(trainer.step < steps), **result,
                              "nonfinite_steps": summary.get("nonfinite_steps")}
            trainer.close()
        except Exception as exc:  # noqa: BLE001 - one failed row must not lose the others
            rows[frontend] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"[bench gpu] real {frontend}: {rows[frontend]}", file=sys.stderr)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if trained:
        save_frontends(Path(args.out) / "real_frontends.pt", trained)
    return {"recipe": recipe, "pack": pack.manifest["train"] | {"test_pairs": pack.manifest["test"]["pairs"]},
            "teacher": pack.manifest["teacher"], "rows": rows,
            "frontends_file": "real_frontends.pt (secrets: keep private)" if trained else None}


# --------------------------------------------------------------------------- the command


def measured_speeds(data: dict[str, Any]) -> dict[str, Any]:
    """The throughput section's training speeds (and the width they were measured at)."""
    tp = data.get("sections", {}).get("throughput") or {}
    return {**(tp.get("training_step") or {}), "_width": tp.get("width")}


def resolve_device(name: str) -> Any:
    import torch

    if name == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("facepriv bench gpu: no CUDA device is available to this torch build; the GPU sections "
                             "cannot run here (use --device cpu --tiny for the CPU smoke run of the same code paths)")
        return torch.device("cuda", 0)
    return torch.device("cpu")


def run(args: argparse.Namespace) -> dict[str, Any]:
    # deterministic cuBLAS for the resume check: must be set before CUDA initialises
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    budget = Budget(args.budget_s)
    device = resolve_device(args.device)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"facepriv bench gpu: unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    if "real" in wanted:  # a typo in --real-frontends must not surface after minutes of GPU checks
        from facepriv.eval.benchmarks.train import parse_frontends

        try:
            parse_frontends(args.real_frontends)
        except ValueError as exc:
            raise SystemExit(f"facepriv bench gpu: --real-frontends: {exc}") from None
    sz = sizes(args.tiny)
    header = {"benchmark": "gpu", "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "torch": torch.__version__, "cuda": torch.version.cuda, "tiny": bool(args.tiny),
              "budget_s": args.budget_s, "sizes": sz}
    report = Report(Path(args.out), header)
    runners = {
        "correctness": lambda: section_correctness(device, sz, budget, args.checks),
        "ddp": lambda: section_ddp(device, sz, budget),
        "throughput": lambda: section_throughput(device, sz, budget, args),
        "real": lambda: section_real(device, budget, args, measured_speeds(report.data)),
    }
    for name in SECTIONS:
        if name not in wanted:
            continue
        if budget.left <= 5:
            report.add(name, {"skipped": f"time budget spent ({budget.elapsed:.0f} of {budget.seconds:.0f} s)"})
            continue
        t = time.perf_counter()
        try:
            result = runners[name]()
        except Exception as exc:  # noqa: BLE001 - record and go on: the next section may still work
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = round(time.perf_counter() - t, 1)
        report.add(name, result)
        print(f"[bench gpu] section {name} done in {result['seconds']} s ({budget.left:.0f} s left)", file=sys.stderr)
    report.data["elapsed_s"] = round(budget.elapsed, 1)
    report.flush()
    return report.data


# --------------------------------------------------------------------------- markdown


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_markdown(data: dict[str, Any]) -> str:
    """The human-readable twin of gpu.json (written after every section)."""
    lines = [f"# facepriv bench gpu — {data.get('gpu') or data.get('device')}", "",
             f"torch {data.get('torch')}, CUDA {data.get('cuda')}, budget {data.get('budget_s')} s"
             + (", **tiny sizes (smoke run)**" if data.get("tiny") else ""), ""]
    sec = data.get("sections", {})
    c = sec.get("correctness")
    if c:
        lines += ["## Correctness", "", "| check | ok | detail |", "|---|---|---|"]
        for name, r in c.items():
            if not isinstance(r, dict):
                continue
            detail = r.get("error") or r.get("skipped") or ""
            if name == "frontend_parity" and "frontends" in r:
                detail = ", ".join(f"{k} {v['relative_error']:.1e}" for k, v in r["frontends"].items())
            elif name == "dctdp_noise" and "mean_z_score" in r:
                detail = (f"mean z {r['mean_z_score']:.2f}, var ratio {r['variance_ratio_to_laplace']['overall']:.3f}, "
                          f"max |corr| {r['max_abs_correlation_between_samples']:.4f}, reproducible "
                          f"{r['bitwise_reproducible_from_checkpointed_state']}")
            elif name == "amp_fixed_batch" and "dtypes" in r:
                detail = "; ".join(f"{d}/{h}: loss rel {v['loss_rel_diff']:.1e}, grad cos {v['grad_cosine']:.4f}"
                                   for d, hs in r["dtypes"].items() if "skipped" not in hs for h, v in hs.items())
            elif name == "resume" and "bitwise_identical" in r:
                detail = f"resumed at {r['resumed_at']}/{r['steps']}, bitwise identical {r['bitwise_identical']}"
            elif name == "partial_fc" and "losses" in r:
                detail = f"loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}"
            elif name == "amp_training_steps" and "runs" in r:
                detail = ", ".join(f"{k}: {v['nonfinite_steps']} non-finite" for k, v in r["runs"].items())
            lines.append(f"| {name} | {r.get('ok', '-')} | {detail} |")
        lines.append("")
    d = sec.get("ddp")
    if d:
        lines += ["## DDP (torchrun, 2 ranks vs 1 process)", "",
                  f"backend {d.get('backend')}, max weight difference {_fmt(d.get('max_abs_weight_diff'))} "
                  f"(tolerance {d.get('tolerance')}), ok {d.get('ok')} {d.get('error', '')}", ""]
    tp = sec.get("throughput")
    if tp and "training_step" in tp:
        lines += ["## Training throughput", "",
                  f"{tp['gpu']}, {tp['dtype']}, batch {tp['batch_size']}, {tp['image_size']}px, "
                  f"{tp['num_classes']}-class ArcFace head", "",
                  "| backbone / frontend | faces/s | backbone samples/s | step ms | frontend share | peak MiB | vs arcface_torch (V100 fp16) |",
                  "|---|---|---|---|---|---|---|"]
        for k, r in tp["training_step"].items():
            if "faces_per_second" not in r:
                lines.append(f"| {k} | {r.get('skipped') or r.get('error')} | | | | | |")
                continue
            lines.append(f"| {k} | {r['faces_per_second']} | {r['backbone_samples_per_second']} | {r['step_ms_median']} | "
                         f"{100 * r['frontend_share_of_step']:.1f}% | {r['peak_memory_mib']} | "
                         f"{_fmt(r['vs_arcface_torch_v100_fp16']) if r['vs_arcface_torch_v100_fp16'] else ''} |")
        inf = tp.get("inference", {})
        if isinstance(inf, dict) and inf and "skipped" not in inf:
            lines += ["", "| inference (protect + embed) | images/s | protect share |", "|---|---|---|"]
            lines += [f"| {k} | {v.get('images_per_second', v.get('skipped'))} | {v.get('protect_share', '')} |"
                      for k, v in inf.items()]
        dec = tp.get("attack_decoder", {})
        if "images_per_second" in dec:
            lines += ["", f"Learned-attack decoder step: {dec['images_per_second']} images/s (input {dec['input']})."]
        lines.append("")
    rr = sec.get("real")
    if rr:
        lines += ["## Short real run (LFW-half pack)", ""]
        if "rows" in rr:
            lines += ["| row | accuracy | TPR@FPR=1e-3 | AUC | steps | epochs | train s | warm start |",
                      "|---|---|---|---|---|---|---|---|"]
            for k, r in rr["rows"].items():
                if "accuracy" not in r:
                    lines.append(f"| {k} | {r.get('skipped') or r.get('error')} | | | | | | |")
                    continue
                tpr3 = r.get(fpr_key(1e-3))
                tpr = "n/a" if tpr3 is None else f"{tpr3:.4f}"
                lines.append(f"| {k} | {r['accuracy']:.4f} | {tpr} | {r['auc']:.4f} | {r['steps']} | "
                             f"{r['epochs']} | {r['train_seconds']} | {r['warm_start_from'] or ''} |")
        else:
            lines.append(str(rr.get("skipped") or rr.get("error")))
        lines.append("")
    return "\n".join(lines) + "\n"
