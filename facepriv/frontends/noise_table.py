"""`facepriv frontends noise`: DCTDP noise for equal epsilon under each clipping mode.

The same allocated budget gives noise proportional to the sensitivity bound, so the three
modes differ only in ``B``: ``analytic`` (worst case of independent pixels, per channel),
``calibrated`` (a data quantile per channel: clips, and releases a statistic of the
calibration images) and ``exact`` (the true range of each coefficient, per channel and block
position). This prints the realised noise standard deviation of the release (grid step times
the discrete Laplace std) as a Markdown table, the numbers docs/frontends.md quotes.

``--budgets 4,64,256 --layouts 1,8`` instead sweeps budgets and layouts under the exact
bounds: the formal epsilon per image, and how much of the face survives the noise, as the
PSNR of the least-squares reconstruction from the release (the block DCT's exact inverse, with
the unreleased DC given, so the figure isolates the AC noise). Equal per-image epsilon is not
equal protection across layouts: x8 spreads the budget over 64 times more coefficients.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch

from facepriv.frontends.dct import BLOCK, COEFFS_PER_BLOCK, block_dct, block_idct
from facepriv.frontends.dp import AC_INDEX, DCTDP
from facepriv.frontends.laplace import LEVEL

#: Standard deviation of DLap(2^(-1/LEVEL)) in grid steps.
GRID_STD = math.sqrt(2 * 2.0 ** (-1.0 / LEVEL)) / (1 - 2.0 ** (-1.0 / LEVEL))


def calibration_images(folder: Path | None, n: int, size: int) -> tuple[torch.Tensor, str]:
    """``n`` faces from ``folder`` (aligned images) or rendered synthetic faces (generated data)."""
    from facepriv.data.images import is_image_file, read_image, resize_to, to_tensor

    if folder is not None:
        paths = sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image_file(p))[:n]
        if not paths:
            raise SystemExit(f"no images found under {folder}")
        return torch.stack([to_tensor(resize_to(read_image(p), (size, size))) for p in paths]), f"{len(paths)} images from {folder}"
    from facepriv.data.synthetic import render_face

    faces = [to_tensor(render_face(0, i % 16, i // 16, image_size=size)[0]) for i in range(n)]
    return torch.stack(faces), f"{n} synthetic faces (facepriv.data.synthetic, seed 0)"


def noise_std(frontend: DCTDP) -> torch.Tensor:
    """Realised noise std of every released element (189, S, S), float64."""
    params = frontend.release_parameters()
    return params["grid"] * GRID_STD


def compare(epsilon_mean: float, size: int, upsample: int, images: torch.Tensor, quantile: float) -> dict[str, Any]:
    modes: dict[str, DCTDP] = {mode: DCTDP(upsample=upsample, input_size=size, epsilon_mean=epsilon_mean, clip=mode,
                                           clip_quantile=quantile)
                               for mode in ("analytic", "calibrated", "exact")}
    modes["calibrated"].calibrate([images])
    exact_std = noise_std(modes["exact"])
    coeffs = block_dct(images, upsample)[:, AC_INDEX]
    s = size * upsample // BLOCK
    picks = {"Y k=1 (u=0,v=1)": 0, "Y k=9 (u=1,v=1)": 8, "Y k=63 (u=7,v=7)": 62, "Cr k=63": 2 * (COEFFS_PER_BLOCK - 1) + 62}
    rows = []
    for mode, fe in modes.items():
        std = noise_std(fe)
        bounds = fe.element_bounds().expand_as(coeffs[0])
        clipped = float((coeffs.abs() > bounds.unsqueeze(0)).double().mean())
        rows.append({
            "mode": mode,
            "mean_noise_std": float(std.mean()),
            "median_noise_std": float(std.median()),
            "mean_std_over_exact": float(std.mean() / exact_std.mean()),
            "noise_std_centre_block": {name: float(std[c, s // 2, s // 2]) for name, c in picks.items()},
            "fraction_of_coefficients_clipped": clipped,
            "releases_data_statistics": mode == "calibrated",
        })
    return {"epsilon_mean": epsilon_mean, "input_size": size, "upsample": upsample, "rows": rows}


def markdown(result: dict[str, Any], source: str) -> str:
    names = list(result["rows"][0]["noise_std_centre_block"])
    head = ("| mode | mean noise std | median | mean std vs exact | " + " | ".join(names)
            + " | coefficients clipped | releases data statistics |")
    lines = [head, "|" + "---|" * (6 + len(names))]
    for r in result["rows"]:
        cells = [r["mode"], f"{r['mean_noise_std']:.4g}", f"{r['median_noise_std']:.4g}", f"{r['mean_std_over_exact']:.3g}x",
                 *(f"{r['noise_std_centre_block'][n]:.4g}" for n in names),
                 f"{r['fraction_of_coefficients_clipped']:.2%}", "yes" if r["releases_data_statistics"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nepsilon_mean {result['epsilon_mean']} per element, {result['input_size']}x{result['input_size']} input, "
                 f"upsample {result['upsample']}; calibration and clipping measured on {source}.")
    return "\n".join(lines)


def budget_sweep(budgets: list[float], layouts: list[int], size: int, images: torch.Tensor) -> list[dict[str, Any]]:
    """Per layout and ``epsilon_mean`` (exact bounds, uniform allocation): the formal epsilon per
    image and the PSNR (dB, [0, 1] pixels) of the least-squares reconstruction of ``images`` from
    one release, the DC coefficients (not released) given exactly."""
    rows = []
    for u in layouts:
        clean = block_dct(images, u)
        for eps in budgets:
            dp = DCTDP(upsample=u, input_size=size, epsilon_mean=float(eps)).eval()
            with torch.no_grad():
                coeffs = clean.clone()
                coeffs[:, AC_INDEX] = dp(images)
                rebuilt = block_idct(coeffs, u).clamp(0, 1)
            mse = float(((rebuilt - images) ** 2).mean())
            rows.append({"upsample": u, "epsilon_mean": float(eps),
                         "epsilon_per_image": float(dp.privacy_report()["epsilon_per_image"]),
                         "mean_noise_std": float(noise_std(dp).mean()),
                         "reconstruction_psnr_db": 10 * math.log10(1.0 / max(mse, 1e-12))})
    return rows


def sweep_markdown(rows: list[dict[str, Any]], source: str) -> str:
    lines = ["| layout | epsilon_mean | epsilon per image | mean noise std | least-squares reconstruction PSNR |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| x{r['upsample']} | {r['epsilon_mean']:g} | {r['epsilon_per_image']:.3g} | "
                     f"{r['mean_noise_std']:.4g} | {r['reconstruction_psnr_db']:.1f} dB |")
    lines.append(f"\nExact bounds, uniform allocation; reconstruction from one release of {source}, DC given.")
    return "\n".join(lines)


def _numbers(text: str, kind: type, what: str) -> list[Any]:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{what} must be a comma-separated list of numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise SystemExit(f"{what} must be positive numbers, got {text!r}")
    return values


def main(argv: list[str] | None = None, prog: str = "facepriv frontends noise") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilon-mean", type=float, default=4.0, help="budget per released element (default 4)")
    parser.add_argument("--size", type=int, default=112, help="face size (default 112)")
    parser.add_argument("--upsample", type=int, default=8, choices=[1, 2, 4, 8])
    parser.add_argument("--images", type=Path, default=None, metavar="DIR",
                        help="aligned faces for the calibrated mode (default: rendered synthetic faces)")
    parser.add_argument("--calibration-images", type=int, default=64, help="how many faces calibrate (default 64)")
    parser.add_argument("--quantile", type=float, default=0.99, help="calibration quantile (default 0.99)")
    parser.add_argument("--budgets", default=None, metavar="EPS,...",
                        help="sweep these epsilon_mean values (exact bounds) instead: epsilon per image and the "
                             "least-squares reconstruction PSNR per budget and layout")
    parser.add_argument("--layouts", default="1,8", metavar="U,...", help="layouts (upsample) of --budgets (default 1,8)")
    args = parser.parse_args(argv)
    if args.epsilon_mean <= 0 or args.calibration_images <= 0:
        raise SystemExit("--epsilon-mean and --calibration-images must be positive")
    images, source = calibration_images(args.images, args.calibration_images, args.size)
    if args.budgets is not None:
        layouts = _numbers(args.layouts, int, "--layouts")
        if any(u not in (1, 2, 4, 8) for u in layouts):
            raise SystemExit(f"--layouts must be among 1, 2, 4, 8, got {args.layouts!r}")
        print(sweep_markdown(budget_sweep(_numbers(args.budgets, float, "--budgets"), layouts, args.size, images), source))
        return 0
    result = compare(args.epsilon_mean, args.size, args.upsample, images, args.quantile)
    print(markdown(result, source))
    return 0
