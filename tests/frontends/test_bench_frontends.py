"""`facepriv bench frontends` records DCTDP's time over the write bound, before and after the exact release."""

from __future__ import annotations

import argparse

import torch

from facepriv.eval.benchmarks import frontends as bench
from facepriv.frontends import DCTDP


def test_bench_reports_dctdp_before_and_after() -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    result = bench.run(parser.parse_args(["--batch", "2", "--size", "16", "--repeats", "1", "--threads", "1"]))
    for key in ("dctdp_time_over_write_bound", "dctdp_before_time_over_write_bound"):
        assert result["ratios"][key] > 0
    assert "dctdp within 3x of write_bound" in result["goals_met"]
    assert {"dctdp", "dctdp_float32_sampler_before"} <= set(result["images_per_second"])
    # one thread: the CPU-time ratios and goals come beside the wall-time ones, same keys
    assert set(result["ratios_cpu_time"]) == set(result["ratios"])
    assert set(result["goals_met_cpu_time"]) | {"identical outputs (float32, rel < 1e-5)"} == set(result["goals_met"])
    assert all(v > 0 for v in result["cpu_seconds_per_batch"].values())
    if result["release_kernel"] == "numba":  # the kernels' same-run speed-up over the NumPy path
        assert result["ratios"]["dctdp_release_kernel_speedup"] > 0


def test_the_before_path_is_the_old_truncated_sampler() -> None:
    dp = DCTDP(input_size=16, epsilon_mean=1.0)
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        y = bench.dctdp_float32_sampler_before(dp, x, torch.Generator().manual_seed(0))
    z = (y - torch.clamp(bench.block_dct(x)[:, :192].view(4, 3, 64, 16, 16)[:, :, 1:].reshape(4, 189, 16, 16),
                         -dp.element_bounds().view(189, 16, 16), dp.element_bounds().view(189, 16, 16))) / dp.noise_scales()
    assert float(z.detach().abs().max()) < 16.7  # truncated, as the issue reported


def test_bench_times_minusface_and_the_compact_layouts_against_their_own_write_bound() -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    result = bench.run(parser.parse_args(["--batch", "2", "--size", "16", "--repeats", "1", "--threads", "1"]))
    assert "minusface" in result["images_per_second"] and result["ratios"]["minusface_vs_partialface_time"] > 0
    for u in (2, 1):
        assert {f"write_bound@{u}", f"partialface@{u}", f"dctdp@{u}", f"dct@{u}"} <= set(result["images_per_second"])
        for name in ("partialface", "dctdp", "dct"):
            assert result["ratios"][f"{name}@{u}_speedup_vs_x8"] > 0
            assert result["ratios"][f"{name}@{u}_time_over_its_write_bound"] > 0
    assert not any("@" in goal for goal in result["goals_met"])  # input-bound layouts: no write-bound goal
