"""`facepriv bench train`: training throughput with RGB vs PartialFace vs DCTDP (vs DCT), and
the share of a training step that the privacy frontend costs.

Every frontend is trained with the real trainer (``facepriv.training.trainer.Trainer.train_step``:
uint8 -> float, flips, frontend, input standardisation, backbone, margin head, backward,
clipping, optimiser, schedule), never a second training loop. Data loading is left out on
purpose: one fixed, pre-made uint8 batch on the host is passed to ``train_step`` every step,
so the numbers are the training compute a data pipeline has to keep fed.

How the frontend's share is measured (recorded in the JSON under ``method``):

* **paired subtraction (the headline number).** Full steps alternate with *cached* steps, in
  which the model's frontend is swapped for a module that returns that frontend's output
  for the same batch, computed once beforehand (no graph: what a pre-protected dataset would
  give). Everything else in the step is identical, so ``full - cached`` is everything the
  frontend adds: its forward, its backward (DCTDP's budget logits are learnable, so the
  step also back-propagates into the stem's input and through the noise), its auxiliary
  loss and its optimiser update. The share is the median of the per-pair differences over
  the median full step; alternating the two kinds cancels slow drift in machine load. The
  same ratio from the best full and best cached step is reported next to it (on a shared,
  loaded machine contention only ever adds time, so the best times are the steadier pair).
* **frontend alone (a cross-check).** The frontend's forward on the same float batch, in
  train mode, with autograd on (never ``torch.no_grad``) — plus, for frontends with
  parameters, forward + backward into those parameters.

Timers read ``time.perf_counter`` after ``torch.cuda.synchronize()`` on CUDA; every time
is reported as median and best over the repeats, with throughputs from the median.

PartialFace turns each face into ``r`` protected views in training (``sample_multiplier``),
so one step puts ``r x batch`` samples through the backbone: both faces/s (what a dataset
epoch costs) and backbone-samples/s are reported.

Peak memory: CUDA ``torch.cuda.max_memory_allocated`` over the warm-up full steps; CPU the growth of
the process's resident-set high-water mark (``resource.getrusage(...).ru_maxrss``) from
before the trainer was built to the end of the warm-up full steps (before the cached output
exists). ``ru_maxrss`` never decreases, so without ``--isolate`` (a fresh process per
frontend, the default) a frontend that needs less than an earlier one shows a delta near 0.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_FRONTENDS = ("rgb", "partialface", "dctdp", "dct")
#: The budget a privacy frontend may take of a training step (issue #3).
SHARE_GOAL = 0.05


@dataclass(frozen=True)
class TrainBenchSettings:
    """Everything one frontend's measurement needs; plain data so it crosses process boundaries."""

    model: str = "iresnet18"
    width: float = 1.0
    image_size: int = 112
    batch_size: int = 64
    steps: int = 10
    warmup: int = 2
    device: str = "cpu"
    amp: str = "none"
    num_classes: int = 1000
    threads: int = 0
    seed: int = 0


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frontends", default=",".join(DEFAULT_FRONTENDS),
                        help=f"comma-separated frontends to compare; NAME@U trains NAME at the compact layout "
                             f"upsample U (e.g. partialface@1) with a matching backbone (default {','.join(DEFAULT_FRONTENDS)})")
    parser.add_argument("--model", default="iresnet18", help="backbone (facepriv.models.build_backbone name; default iresnet18)")
    parser.add_argument("--width", type=float, default=1.0, help="backbone width multiplier (default 1.0)")
    parser.add_argument("--image-size", type=int, default=112, help="face size in pixels, a multiple of 8 (default 112)")
    parser.add_argument("--batch-size", type=int, default=64, help="faces per step (default 64)")
    parser.add_argument("--steps", type=int, default=10,
                        help="timed steps per frontend, each for the full and the cached-frontend variant (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before timing (default 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train (default cpu)")
    parser.add_argument("--amp", nargs="?", const="auto", default="none", choices=("none", "auto", "bf16", "fp16"),
                        help="mixed precision as in optim.amp; bare --amp means auto (default none)")
    parser.add_argument("--num-classes", type=int, default=1000,
                        help="identities of the softmax margin head (sets the head's cost; default 1000)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0 = leave as is; on a CPU shared with other jobs 1 gives far steadier "
                             "times than one thread per core, which stalls on the slowest thread)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic batch and the model")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                        help="measure each frontend in a fresh process, so peak memory is its own (default on)")


def settings_from_args(args: argparse.Namespace) -> TrainBenchSettings:
    """Validate the CLI values and freeze them into a settings object."""
    s = TrainBenchSettings(model=args.model, width=float(args.width), image_size=int(args.image_size),
                           batch_size=int(args.batch_size), steps=int(args.steps), warmup=int(args.warmup),
                           device=args.device, amp=args.amp, num_classes=int(args.num_classes),
                           threads=int(args.threads), seed=int(args.seed))
    if s.image_size <= 0 or s.image_size % 8:
        raise ValueError(f"--image-size must be a positive multiple of 8 (block DCT), got {s.image_size}")
    if s.batch_size < 1 or s.steps < 1 or s.warmup < 0 or s.num_classes < 1:
        raise ValueError("--batch-size, --steps and --num-classes must be >= 1 and --warmup >= 0")
    if not s.width > 0:
        raise ValueError(f"--width must be > 0, got {s.width}")
    if s.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available to this torch build")
    return s


def parse_frontends(text: str) -> list[str]:
    """``name`` or ``name@U`` (a frontend at ``upsample: U``, e.g. ``partialface@2`` for the
    compact 28x28 layout), comma-separated, duplicates dropped."""
    from facepriv.frontends import FRONTENDS

    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if split_layout(n)[0] not in FRONTENDS]
    if not names or unknown:
        raise ValueError(f"--frontends: unknown or empty {unknown or text!r}; choose from {sorted(FRONTENDS)}, "
                         f"optionally with a layout as NAME@UPSAMPLE ({', '.join(UPSAMPLES)})")
    return list(dict.fromkeys(names))


#: the ``@U`` layouts a spec may name (the frontends' own ``upsample`` values)
UPSAMPLES = ("1", "2", "4", "8")


def split_layout(spec: str) -> tuple[str, int | None]:
    """``"partialface@2"`` -> ``("partialface", 2)``; ``"rgb"`` -> ``("rgb", None)``."""
    name, at, upsample = spec.partition("@")
    if not at:
        return name, None
    if upsample not in UPSAMPLES:
        raise ValueError(f"--frontends: {spec!r}: write a layout as NAME@UPSAMPLE with UPSAMPLE one of "
                         f"{', '.join(UPSAMPLES)}")
    return name, int(upsample)


# --------------------------------------------------------------------------- building blocks


def frontend_options(name: str, seed: int, image_size: int = 112) -> dict[str, Any]:
    """The frontend as the shipped iresnet18 configs train it, with fixed seeds (no OS entropy);
    ``name@U`` selects the ``upsample: U`` layout (the backbone follows the map size).

    Frontends whose learned or per-position state depends on the face size (DCTDP's
    per-element budget) are built for ``image_size``.
    """
    import inspect

    from facepriv.frontends import FRONTENDS

    name, upsample = split_layout(name)
    opts: dict[str, Any] = {"name": name}
    if upsample is not None:
        opts["upsample"] = upsample
    if name == "partialface":
        opts.update({"secret_seed": seed + 1, "train_seed": seed, "inference_seed": seed + 2})
    elif name == "dctdp":
        opts.update({"epsilon_mean": 4.0, "allocation": "element", "train_seed": seed, "inference_seed": seed + 3})
    cls = FRONTENDS.get(name)
    if cls is not None and "input_size" in inspect.signature(cls.__init__).parameters:
        opts["input_size"] = int(image_size)
    return opts


def train_config(name: str, s: TrainBenchSettings) -> Any:
    """A TrainConfig mirroring training/configs/<frontend>_iresnet18.yaml at benchmark sizes."""
    from facepriv.training.config import config_from_dict

    frontend = frontend_options(name, s.seed, s.image_size)
    return config_from_dict({
        "name": f"bench-train-{name}", "seed": s.seed, "device": s.device,
        "data": {"format": "synthetic", "batch_size": s.batch_size, "num_workers": 0, "image_size": s.image_size,
                 "hflip": True, "pin_memory": False, "dtype": "uint8", "num_classes": s.num_classes},
        "frontend": frontend,
        "model": {"name": s.model, "embedding_size": 512, "width": s.width},
        "input_norm": {"mode": "auto", "calibration_batches": 1},
        "head": {"type": "softmax", "margin": "arcface", "s": 64.0, "m": 0.5},
        "optim": {"name": "sgd", "lr": 0.1, "weight_decay": 5e-4, "clip_grad_norm": 5.0, "amp": s.amp,
                  "frontend_lr": 0.01 if frontend["name"] == "dctdp" else None},
        "schedule": {"type": "constant", "max_steps": 1_000_000},
        "checkpoint": {"every_steps": 0, "save_model": False},
        "eval": {"every_steps": 0, "sets": []},
        "logging": {"csv": False, "tensorboard": False, "progress": False},
    })


def synthetic_batch(s: TrainBenchSettings) -> tuple[Any, Any]:
    """Seeded uniform uint8 faces (B x 3 x H x W) and labels: the frontends' cost does not
    depend on image content, and uint8 is what the trainer's data path delivers."""
    import torch

    g = torch.Generator().manual_seed(s.seed)
    images = torch.randint(0, 256, (s.batch_size, 3, s.image_size, s.image_size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, s.num_classes, (s.batch_size,), generator=g)
    return images, labels


class FixedImages:
    """Map-style dataset over one in-memory batch (the Trainer's calibration reads it)."""

    def __init__(self, images: Any, labels: Any, num_classes: int) -> None:
        self.images, self.labels, self.num_classes = images, labels, int(num_classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.images[index], int(self.labels[index])


def _cached_frontend_class() -> type:
    from torch import Tensor, nn

    class CachedFrontend(nn.Module):
        """Stands in for a frontend: returns its precomputed output, aligns labels like it.

        No ``auxiliary_loss`` and no parameters: the cached step is the training step
        without anything the frontend contributes.
        """

        def __init__(self, real: nn.Module, output: Tensor) -> None:
            super().__init__()
            self.output = output
            self._expand = real.expand_labels  # a bound method: the real frontend is not a child
            self.out_channels = int(real.out_channels)

        def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
            return self.output

        def expand_labels(self, labels: Tensor) -> Tensor:
            return self._expand(labels)

    return CachedFrontend


@contextlib.contextmanager
def frontend_replaced(trainer: Any, stand_in: Any) -> Iterator[None]:
    """Swap the trainer's frontend (in the model and the trainer's own reference) for a stand-in."""
    real = trainer.recognizer.frontend
    trainer.recognizer.frontend = stand_in
    trainer.frontend = stand_in
    try:
        yield
    finally:
        trainer.recognizer.frontend = real
        trainer.frontend = real


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: Any) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def _stats(values: list[float]) -> dict[str, float | int]:
    return {"median": statistics.median(values), "best": min(values), "mean": statistics.fmean(values),
            "repeats": len(values)}


def _maxrss_bytes() -> int:
    """The process's resident-set high-water mark (ru_maxrss is KiB on Linux, bytes on macOS)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _autocast(trainer: Any) -> contextlib.AbstractContextManager:
    import torch

    if trainer.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(trainer.device.type, dtype=trainer.amp_dtype)


# --------------------------------------------------------------------------- one frontend


def measure_frontend(name: str, s: TrainBenchSettings, progress: bool = True) -> dict[str, Any]:
    """Train ``name`` for ``warmup + steps`` full and cached steps each and time everything."""
    import torch
    from tqdm import tqdm

    from facepriv.training.batches import images_to_float
    from facepriv.training.distributed import DistEnv
    from facepriv.training.trainer import Trainer

    if s.threads:
        torch.set_num_threads(s.threads)
    device = torch.device("cuda", torch.cuda.current_device()) if s.device == "cuda" else torch.device("cpu")
    images, labels = synthetic_batch(s)
    gc.collect()
    rss0 = _maxrss_bytes()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    trainer = Trainer(train_config(name, s), dataset=FixedImages(images, labels, s.num_classes),
                      dist_env=DistEnv(device=device))
    fe = trainer.recognizer.frontend
    batch = (images, labels)
    losses: list[float] = []
    skipped = 0
    bar = tqdm(total=2 * (s.warmup + s.steps), desc=f"train {name}", unit="step", disable=not progress,
               dynamic_ncols=True, leave=False)

    def step() -> Any:
        return trainer.train_step(batch)

    def record(result: Any) -> None:
        nonlocal skipped
        losses.append(float(result.loss))
        skipped += int(result.skipped)
        bar.update(1)

    # ---- warm-up full steps; peak memory of the full step is read before the cache exists
    step_peak_cuda = 0
    for _ in range(s.warmup):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        record(_timed(step, device)[1])
        if device.type == "cuda":
            step_peak_cuda = max(step_peak_cuda, torch.cuda.max_memory_allocated(device))
    rss_after_warmup = _maxrss_bytes()

    # ---- the frontend's output for this batch, computed once (train mode, as the step sees it)
    fe.train()
    with torch.no_grad(), _autocast(trainer):
        x = images_to_float(images.to(device))
        cached_out = fe(x, labels.to(device)).detach()
    views = int(cached_out.shape[0]) // s.batch_size  # PartialFace: r views per face in training
    cached = _cached_frontend_class()(fe, cached_out)
    for _ in range(s.warmup):
        with frontend_replaced(trainer, cached):
            record(_timed(step, device)[1])

    # ---- timed: full and cached steps alternate, so drift in machine load hits both alike
    full_s: list[float] = []
    cached_s: list[float] = []
    track_peak = device.type == "cuda" and s.warmup == 0  # otherwise read during warm-up, cache-free
    for _ in range(s.steps):
        if track_peak:
            torch.cuda.reset_peak_memory_stats(device)
        t, result = _timed(step, device)
        if track_peak:
            step_peak_cuda = max(step_peak_cuda, torch.cuda.max_memory_allocated(device))
        full_s.append(t)
        record(result)
        with frontend_replaced(trainer, cached):
            t, result = _timed(step, device)
        cached_s.append(t)
        record(result)
    bar.close()

    # ---- the frontend alone on the same float batch, train mode, autograd on
    params = [p for p in fe.parameters() if p.requires_grad]
    dev_labels = labels.to(device)

    def forward() -> Any:
        with _autocast(trainer):
            return fe(x, dev_labels)

    def forward_backward() -> None:
        out = forward()
        out.backward(torch.ones_like(out))
        fe.zero_grad(set_to_none=True)

    forward()  # warm-up
    fwd_s = [_timed(forward, device)[0] for _ in range(s.steps)]
    fwd_bwd_s = None
    if params:
        forward_backward()
        fwd_bwd_s = [_timed(forward_backward, device)[0] for _ in range(s.steps)]

    if device.type == "cuda":
        memory = {"kind": "torch.cuda.max_memory_allocated over the warm-up full training steps (model, head, "
                          "optimiser state and one step's activations)",
                  "bytes": int(step_peak_cuda), "mib": round(step_peak_cuda / 2**20, 1)}
        if s.warmup == 0:
            memory["note"] = "--warmup 0: read over the timed full steps, which includes the cached frontend output"
    else:
        growth = rss_after_warmup - rss0
        memory = {"kind": "ru_maxrss growth (resident-set high-water mark of the process) from before building "
                          "the trainer to after the warm-up full steps; includes model, head and optimiser state",
                  "bytes": int(growth), "mib": round(growth / 2**20, 1),
                  "process_maxrss_mib": round(rss_after_warmup / 2**20, 1)}
        if s.warmup == 0:
            memory["note"] = "--warmup 0: no full step had run when memory was read"

    full, cache = _stats(full_s), _stats(cached_s)
    diffs = [f - c for f, c in zip(full_s, cached_s)]
    paired = statistics.median(diffs)
    raw_share = paired / full["median"]
    forward_stats = _stats(fwd_s)
    samples = s.batch_size * views
    trainer.close()
    return {
        "frontend_config": {k: v for k, v in fe.config.items() if k != "secret_seed"},
        "out_channels": int(fe.out_channels),
        "views_per_face": views,
        "faces_per_step": s.batch_size,
        "backbone_samples_per_step": samples,
        "step_seconds": full,
        "cached_frontend_step_seconds": cache,
        "faces_per_second": s.batch_size / full["median"],
        "faces_per_second_best": s.batch_size / full["best"],
        "backbone_samples_per_second": samples / full["median"],
        "frontend_seconds_per_step": {
            "paired_full_minus_cached_median": paired,
            "forward_alone": forward_stats,
            "forward_backward_alone": None if fwd_bwd_s is None else _stats(fwd_bwd_s),
        },
        "frontend_share_of_step": min(1.0, max(0.0, raw_share)),
        "frontend_share_of_step_raw": raw_share,
        "frontend_share_of_step_from_best": min(1.0, max(0.0, (full["best"] - cache["best"]) / full["best"])),
        "frontend_forward_share_of_step": forward_stats["median"] / full["median"],
        "trainable_frontend_parameters": int(sum(p.numel() for p in params)),
        "peak_memory": memory,
        "loss": {"first": losses[0], "last": losses[-1], "all_finite": all(math.isfinite(v) for v in losses)},
        "skipped_steps": skipped,
    }


def _vs_tface(spec: str, results: dict[str, dict[str, Any]]) -> float | None:
    name, upsample = split_layout(spec)
    tface = results.get(name) or results.get(f"{name}@8")
    if upsample in (None, 8) or tface is None:
        return None
    return round(results[spec]["faces_per_second"] / tface["faces_per_second"], 3)


def _measure_isolated(name: str, s: TrainBenchSettings) -> dict[str, Any]:
    """``measure_frontend`` in a fresh spawned process (own memory high-water mark, own CUDA context)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure_frontend, (name, s))


# --------------------------------------------------------------------------- the benchmark


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    s = settings_from_args(args)
    names = parse_frontends(args.frontends)
    if s.threads:  # here too, so the environment block bench.py records shows the setting
        torch.set_num_threads(s.threads)
    isolate = bool(getattr(args, "isolate", False))
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        results[name] = _measure_isolated(name, s) if isolate else measure_frontend(name, s)
        r = results[name]
        print(f"{name:12s} {r['faces_per_second']:9.1f} faces/s  {r['backbone_samples_per_second']:9.1f} samples/s  "
              f"step {1000 * r['step_seconds']['median']:8.1f} ms  frontend share {100 * r['frontend_share_of_step']:5.1f}%",
              file=sys.stderr)

    base = results.get("rgb")
    summary = {
        name: {
            "faces_per_second": round(r["faces_per_second"], 2),
            "backbone_samples_per_second": round(r["backbone_samples_per_second"], 2),
            "step_ms_median": round(1000 * r["step_seconds"]["median"], 2),
            "frontend_share_of_step": round(r["frontend_share_of_step"], 4),
            "frontend_share_of_step_from_best": round(r["frontend_share_of_step_from_best"], 4),
            "frontend_forward_share_of_step": round(r["frontend_forward_share_of_step"], 4),
            "faces_per_second_vs_rgb": None if base is None else round(r["faces_per_second"] / base["faces_per_second"], 3),
            # a compact layout against the same frontend in the TFace layout, measured in this run
            "faces_per_second_vs_tface_layout": _vs_tface(name, results),
            "peak_memory_mib": r["peak_memory"]["mib"],
        }
        for name, r in results.items()
    }
    goals = {f"{name} frontend < {SHARE_GOAL:.0%} of a training step": r["frontend_share_of_step"] < SHARE_GOAL
             for name, r in results.items() if name != "rgb"}
    return {
        "config": {**asdict(s), "frontends": names, "isolate": isolate,
                   "torch_threads": s.threads or torch.get_num_threads(),
                   "head": "softmax ArcFace (s=64, m=0.5)", "optimizer": "SGD lr 0.1, momentum 0.9, clip 5"},
        "method": {
            "trainer": "facepriv.training.trainer.Trainer.train_step on one fixed pre-made uint8 batch (data loading excluded; "
                       "host->device copy, uint8->float, flips, input norm, head, backward, clipping, optimiser included)",
            "frontend_share": "median over pairs of (full step - cached step) / median full step; in a cached step the "
                              "frontend is replaced by its precomputed train-mode output for the same batch, so the "
                              "difference is the frontend's forward + backward (incl. the stem's input gradient for "
                              "learnable frontends) + auxiliary loss + optimiser update; clamped to [0, 1] "
                              "(frontend_share_of_step_raw is unclamped); frontend_share_of_step_from_best uses "
                              "(best full - best cached) / best full instead, the steadier estimate on a loaded machine "
                              "(contention only ever adds time); goals_met uses the median estimate",
            "frontend_forward_share": "frontend forward alone (train mode, autograd on) / median full step",
            "timing": "time.perf_counter, torch.cuda.synchronize before and after on CUDA; full and cached steps "
                      "alternate; median and best of --steps repeats reported, throughput from the median",
            "throughput": "faces/s = batch / median step; backbone samples/s counts PartialFace's r views per face",
            "memory": "CUDA: torch.cuda.max_memory_allocated over the warm-up full steps; CPU: ru_maxrss growth "
                      "(process high-water mark; per frontend only with --isolate)",
        },
        "frontends": results,
        "summary": summary,
        "goals_met": goals,
    }
