"""Frontend throughput vs the naive DCT path and the memory-write bound, side by side.

Every frontend call must produce a fresh output tensor, so the physical limit for the full
192-channel layout is the time to allocate and write a tensor of that size (9.6 MB per
112x112 face). We time, in one process and one run:

* ``write_bound``: ``torch.empty(B, 192, H, W).fill_(0)`` (fresh allocation + one write);
* ``naive_full``: TFace-style up-sample to 896x896, then per-block DCT (``reference_block_dct``);
* ``fast_full``: ``block_dct`` (banded, never materialises the up-sampled image);
* ``naive_partialface``: naive full DCT, then pick each sample's 27 channels;
* ``partialface``: ``PartialFace`` computing only its 27 channels per sample;
* ``dctdp``, ``dct``, ``rgb``, ``minusface``: the other frontends as deployed (eval mode);
* ``<frontend>@<u>`` for the compact layouts ``u`` = 2, 1 (28x28 / 14x14 maps), with their
  speed-up over the x8 layout and their time over the write bound of their own, 16x / 64x
  smaller, output (``write_bound@<u>``; informative only: a compact output is smaller than
  the input face, so reading the face and the DCT, not the write, bound these layouts, and
  no write-bound goal is set for them);
* ``dctdp_float32_sampler_before``: DCTDP as it was before the exact release (full DCT,
  clamp, float32 ``torch.rand`` inverse-CDF Laplace truncated at ~16 scales), for a same-run
  before/after of DCTDP's time over the write bound;
* ``dctdp_numpy_release``: DCTDP with its compiled release kernels switched off (the NumPy
  path, same bits), for a same-run measure of what the kernels buy (absent without numba);
and check that fast and naive outputs are identical to float tolerance.
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Callable

import torch

from facepriv.frontends import (
    DCTDP,
    DCTFrontend,
    MinusFace,
    PartialFace,
    RGBFrontend,
    block_dct,
    block_idct,
    reference_block_dct,
    release_kernel,
)

def without_release_kernel(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``fn`` run with DCTDP's compiled release kernels switched off (the NumPy path)."""
    def run_numpy_path() -> torch.Tensor:
        saved, release_kernel.AVAILABLE = release_kernel.AVAILABLE, False
        try:
            return fn()
        finally:
            release_kernel.AVAILABLE = saved
    return run_numpy_path


#: the compact layouts timed beside the TFace x8 one
COMPACT = (2, 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=256, help="images per call (default 256)")
    parser.add_argument("--size", type=int, default=112, help="face size (default 112)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per method; the best is kept")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    parser.add_argument("--images", type=str, default=None, metavar="DIR",
                        help="aligned face images to use (searched recursively; e.g. ../shared/data/lfw/aligned112); "
                             "default: uniform random images")


def load_batch(folder: str | None, batch: int, size: int) -> tuple[torch.Tensor, str]:
    """``batch`` images from ``folder`` (cycled if fewer), or seeded uniform noise."""
    if folder is None:
        return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)), "uniform random"
    from pathlib import Path

    from facepriv.data.images import is_image_file, read_image, resize_to, to_tensor

    paths = sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image_file(p))[:batch]
    if not paths:
        raise SystemExit(f"no images found under {folder}")
    tensors = [to_tensor(resize_to(read_image(p), (size, size))) for p in paths]
    tensors = (tensors * (batch // len(tensors) + 1))[:batch]
    return torch.stack(tensors), f"{len(paths)} images from {folder}"


def dctdp_float32_sampler_before(dp: DCTDP, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The pre-exact DCTDP path, kept only as the benchmark's "before": clamp to the bounds, then
    ``b * Laplace`` from float32 uniforms clamped to [2^-25, 1) (truncated support, float noise)."""
    full = block_dct(images, dp.upsample, validate=False)
    b, _, h, w = full.shape
    ac = full.view(b, 3, 64, h, w)[:, :, 1:]
    bound = dp.element_bounds().view(1, 3, 63, *dp.element_bounds().shape[-2:])
    clipped = torch.maximum(torch.minimum(ac, bound), -bound).reshape(b, 189, h, w)
    u = torch.rand(clipped.shape, generator=generator).clamp_(min=2.0**-25).sub_(0.5)
    sign = torch.sign(u)
    xi = u.abs_().mul_(-2.0).log1p_().mul_(sign).neg_()
    return clipped.addcmul_(dp.noise_scales(), xi)


def _best_time(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, float]:
    """Best wall time and best CPU time of this thread (user + system, page faults included) over
    ``repeats`` calls. With one thread doing all the work, the CPU time is what the code costs
    whatever else the machine runs; the wall time also counts waiting for a shared core."""
    fn()  # warm-up: caches, allocator, lazy tables, compiled kernels
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        gc.collect()
        start, start_cpu = time.perf_counter(), time.thread_time()
        out = fn()
        best_cpu = min(best_cpu, time.thread_time() - start_cpu)
        best = min(best, time.perf_counter() - start)
        del out
    return best, best_cpu


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    b, s = args.batch, args.size
    images, source = load_batch(args.images, b, s)
    pf = PartialFace(secret_seed=1, inference_seed=2).eval()
    dp = DCTDP(input_size=s).eval()  # as deployed: keystream keyed by the OS CSPRNG
    # PartialFace's choices for this batch, so the naive path selects exactly the same channels
    subset, perm = PartialFace(secret_seed=1, inference_seed=2)._inference_choices(b)
    channels = pf.subset_channels(subset, perm)
    rows = torch.arange(b).unsqueeze(1)
    old_generator = torch.Generator().manual_seed(4)

    def fresh_write() -> torch.Tensor:
        return torch.empty(b, 192, s, s).fill_(0.0)

    prealloc = torch.empty(b, 192, s, s)
    mf = MinusFace(secret_seed=1).eval()
    methods: dict[str, Callable[[], torch.Tensor]] = {
        "write_bound": fresh_write,
        "write_preallocated": lambda: prealloc.fill_(1.0),
        "fast_full": lambda: block_dct(images),
        "naive_full": lambda: reference_block_dct(images),
        "partialface": lambda: pf(images, subset=subset, permutation=perm),
        "naive_partialface": lambda: reference_block_dct(images)[rows, channels],
        "dctdp": lambda: dp(images),
        "dctdp_float32_sampler_before": lambda: dctdp_float32_sampler_before(dp, images, old_generator),
        **({"dctdp_numpy_release": without_release_kernel(lambda: dp(images))} if release_kernel.AVAILABLE else {}),
        "dct": lambda: DCTFrontend()(images),
        "rgb": lambda: RGBFrontend()(images),
        "minusface": lambda: mf(images),
    }
    for u in COMPACT:
        m = s * u // 8
        pf_u, dp_u = PartialFace(upsample=u, secret_seed=1).eval(), DCTDP(upsample=u, input_size=s).eval()
        methods.update({
            f"write_bound@{u}": (lambda m=m: torch.empty(b, 192, m, m).fill_(0.0)),
            f"partialface@{u}": (lambda f=pf_u: f(images)),
            f"dctdp@{u}": (lambda f=dp_u: f(images)),
            f"dct@{u}": (lambda u=u: block_dct(images, u)),
        })
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    with torch.no_grad():
        for name, fn in methods.items():
            repeats = max(1, args.repeats - 1) if name.startswith("naive") else args.repeats
            seconds[name], cpu_seconds[name] = _best_time(fn, repeats)
        fast, naive = block_dct(images), reference_block_dct(images)
        full_diff = float((fast - naive).abs().max())
        full_rel = float((fast - naive).abs().max() / naive.abs().max())
        del fast
        part_diff = float((pf(images, subset=subset, permutation=perm) - naive[rows, channels]).abs().max())
        del naive
        round_trip = {}
        for up in (1, 8):
            for method in ("exact", "bilinear"):
                err = (block_idct(block_dct(images, up), up, method=method) - images).abs()
                round_trip[f"upsample{up}_{method}"] = {"max": float(err.max()), "mean": float(err.mean())}
    ips = {k: b / v for k, v in seconds.items()}
    ratios, goals = _ratios_and_goals(seconds)
    result = {
        "batch": b, "size": s, "images": source, "threads": torch.get_num_threads(),
        "release_kernel": "numba" if release_kernel.AVAILABLE else "numpy",
        "images_per_second": {k: round(v, 1) for k, v in ips.items()},
        "seconds_per_batch": {k: round(v, 4) for k, v in seconds.items()},
        "ratios": {k: round(v, 2) for k, v in ratios.items()},
        "max_abs_difference": {"fast_vs_naive_full": full_diff, "fast_vs_naive_full_relative": full_rel,
                               "partialface_vs_naive_select": part_diff},
        "goals_met": {**goals, "identical outputs (float32, rel < 1e-5)": full_rel < 1e-5 and part_diff / 1000.0 < 1e-5},
        "idct_round_trip_error_0_1_scale": round_trip,
    }
    if torch.get_num_threads() == 1:
        # one thread does all the work (the release kernels too: workers = torch threads), so its
        # CPU time is the code's own cost, steadier than wall time on a shared machine
        cpu_ratios, cpu_goals = _ratios_and_goals(cpu_seconds)
        result["cpu_seconds_per_batch"] = {k: round(v, 4) for k, v in cpu_seconds.items()}
        result["ratios_cpu_time"] = {k: round(v, 2) for k, v in cpu_ratios.items()}
        result["goals_met_cpu_time"] = cpu_goals
    return result


def _ratios_and_goals(seconds: dict[str, float]) -> tuple[dict[str, float], dict[str, bool]]:
    """The same-run ratios and the speed goals from one set of per-method times."""
    ratios = {
        "fast_full_vs_naive_full": seconds["naive_full"] / seconds["fast_full"],
        "fast_full_time_over_write_bound": seconds["fast_full"] / seconds["write_bound"],
        "partialface_vs_naive_partialface": seconds["naive_partialface"] / seconds["partialface"],
        "naive_full_time_over_write_bound": seconds["naive_full"] / seconds["write_bound"],
        "dctdp_time_over_write_bound": seconds["dctdp"] / seconds["write_bound"],
        "dctdp_before_time_over_write_bound": seconds["dctdp_float32_sampler_before"] / seconds["write_bound"],
        "minusface_vs_partialface_time": seconds["minusface"] / seconds["partialface"],
    }
    if "dctdp_numpy_release" in seconds:
        ratios["dctdp_release_kernel_speedup"] = seconds["dctdp_numpy_release"] / seconds["dctdp"]
    for u in COMPACT:
        for name in ("partialface", "dctdp", "dct"):
            x8 = seconds["fast_full" if name == "dct" else name]
            ratios[f"{name}@{u}_speedup_vs_x8"] = x8 / seconds[f"{name}@{u}"]
            ratios[f"{name}@{u}_time_over_its_write_bound"] = seconds[f"{name}@{u}"] / seconds[f"write_bound@{u}"]
    goals = {
        "fast_full >= 3x naive_full": ratios["fast_full_vs_naive_full"] >= 3.0,
        "fast_full within 2x of write_bound": ratios["fast_full_time_over_write_bound"] <= 2.0,
        "partialface >= 20x naive_partialface": ratios["partialface_vs_naive_partialface"] >= 20.0,
        "dctdp within 3x of write_bound": ratios["dctdp_time_over_write_bound"] <= 3.0,
    }
    return ratios, goals
