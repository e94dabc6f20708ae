"""Export a frontend for devices (TorchScript or ONNX), with its randomness as explicit inputs.

A device runs the frontend and nothing else. Exported graphs contain no random number
generator: the app passes the random choices in (PartialFace subset/permutation ids, DCTDP's
integer discrete Laplace draws) from the platform's cryptographically secure source, so the privacy of the
deployment does not depend on the RNG of an inference runtime. The exported file contains
the model secret (PartialFace's subset table): ship it only inside the trusted client app.

    facepriv export --checkpoint model.pt --format onnx --out export/
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from facepriv.frontends.base import Frontend
from facepriv.frontends.baselines import DCTFrontend, RGBFrontend
from facepriv.frontends.cli_args import add_frontend_arguments, fixed_inference_seed_error, frontend_from_args
from facepriv.frontends.dct import block_dct_graph
from facepriv.frontends.dp import AC_INDEX, DCTDP
from facepriv.frontends.laplace import LEVEL, discrete_laplace
from facepriv.frontends.partial import PartialFace
from facepriv.frontends.randomness import KeystreamWords, key_from_generator


class _RGBDevice(nn.Module):
    def __init__(self, f: RGBFrontend) -> None:
        super().__init__()
        self.normalize = f.normalize

    def forward(self, images: Tensor) -> Tensor:
        return images * 2.0 - 1.0 if self.normalize else images


class _DCTDevice(nn.Module):
    def __init__(self, f: DCTFrontend) -> None:
        super().__init__()
        self.upsample = f.upsample

    def forward(self, images: Tensor) -> Tensor:
        return block_dct_graph(images, self.upsample)


class _DCTDPDevice(nn.Module):
    """DCTDP's exact grid mechanism; the integer noise ``noise_grid`` is the app's input."""

    def __init__(self, f: DCTDP) -> None:
        super().__init__()
        self.upsample = f.upsample
        params = f.release_parameters()
        self.register_buffer("ac_index", torch.tensor(AC_INDEX))
        self.register_buffer("inv_grid", params["inv_grid"].float().unsqueeze(0))
        self.register_buffer("half_range", params["half_range"].float().unsqueeze(0))
        self.register_buffer("grid", params["grid"].float().unsqueeze(0))

    def forward(self, images: Tensor, noise_grid: Tensor) -> Tensor:
        coeffs = torch.index_select(block_dct_graph(images, self.upsample), 1, self.ac_index)
        k = torch.round(coeffs * self.inv_grid)
        k = torch.maximum(torch.minimum(k, self.half_range), -self.half_range)
        return (k + noise_grid) * self.grid


def device_module(frontend: Frontend) -> tuple[nn.Module, list[str], str]:
    """The traceable device graph, its input names, and the randomness contract in words."""
    own = getattr(frontend, "device_module", None)
    if callable(own):  # frontends that build their own graph (PartialFace, and MinusFace through it)
        return own()
    if isinstance(frontend, DCTDP):
        return (_DCTDPDevice(frontend), ["images", "noise_grid"],
                f"noise_grid: float32 (B, 189, H, W) integers, i.i.d. discrete Laplace P(z) ~ 2^(-|z|/{LEVEL}), drawn exactly "
                "from the platform CSPRNG, fresh for every image (reference sampler: "
                "facepriv.frontends.laplace.discrete_laplace; its module doc gives the exact construction)")
    if isinstance(frontend, DCTFrontend):
        return _DCTDevice(frontend), ["images"], "none"
    if isinstance(frontend, RGBFrontend):
        return _RGBDevice(frontend), ["images"], "none"
    raise ValueError(f"no device export for frontend {frontend.name!r}")


def example_inputs(frontend: Frontend, batch: int, size: int) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=g)
    if isinstance(frontend, PartialFace):
        return images, torch.randint(frontend.n_subsets, (batch,), generator=g), torch.randint(frontend.n_permutations, (batch,), generator=g)
    if isinstance(frontend, DCTDP):
        h, w = frontend.output_size(size, size)
        noise = discrete_laplace(KeystreamWords(key_from_generator(g)), batch * frontend.out_channels * h * w)
        return images, noise.float().view(batch, frontend.out_channels, h, w)
    return (images,)


def export_frontend(frontend: Frontend, out_dir: Path, fmt: str = "onnx", size: int = 112, *,
                    allow_fixed_inference_seed: bool = False) -> dict[str, Any]:
    """Write the device graph and a JSON description; check the export against PyTorch.

    A frontend with a fixed ``inference_seed`` is refused (a ``ValueError`` naming the fix) unless
    ``allow_fixed_inference_seed``: a device build must not come from an evaluation-seeded model.
    """
    error = None if allow_fixed_inference_seed else fixed_inference_seed_error(frontend, "export")
    if error:
        raise ValueError(error)
    frontend = frontend.eval()
    module, names, randomness = device_module(frontend)
    module.eval()
    inputs = example_inputs(frontend, 2, size)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        expected = module(*inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-derived Python ints are expected
        if fmt == "torchscript":
            path = out_dir / f"{frontend.name}_frontend.pt"
            traced = torch.jit.trace(module, inputs, check_trace=False)
            traced.save(str(path))
            got = torch.jit.load(str(path))(*example_inputs(frontend, 2, size))
        elif fmt == "onnx":
            path = out_dir / f"{frontend.name}_frontend.onnx"
            torch.onnx.export(module, inputs, str(path), input_names=names, output_names=["protected"],
                              dynamic_axes={n: {0: "batch"} for n in [*names, "protected"]}, opset_version=17, dynamo=False)
            got = _run_onnx(path, names, inputs)
        else:
            raise ValueError(f"format must be 'onnx' or 'torchscript', got {fmt!r}")
    diff = None if got is None else (torch.as_tensor(got) - expected).abs()
    flips = None
    if diff is not None and isinstance(frontend, DCTDP):
        # A coefficient within float rounding of a grid-cell edge may round to the neighbouring
        # integer in another runtime: exactly one grid step, as rare as such ties. Count them and
        # compare the rest to float precision.
        steps = (diff / module.grid).round()
        flips = int((steps > 0).sum())
        diff = diff[steps == 0]
    info = {
        "file": path.name, "format": fmt, "frontend": frontend.public_config(),
        "inputs": {n: list(t.shape[1:]) for n, t in zip(names, inputs)}, "input_convention": "images: float32 (B, 3, H, W) RGB in [0, 1], aligned",
        "randomness": randomness, "output_channels": frontend.out_channels,
        "max_abs_difference_vs_pytorch": None if diff is None else float(diff.max()),
        "output_max_abs": float(expected.abs().max()),
        **({"grid_step_flips": flips} if flips is not None else {}),
        "warning": "contains the model secret (if any): distribute only inside the trusted client app",
    }
    (out_dir / f"{frontend.name}_frontend.json").write_text(json.dumps(info, indent=2))
    return info


def _run_onnx(path: Path, names: list[str], inputs: tuple[Tensor, ...]) -> Tensor | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0])


def main(argv: list[str] | None = None, prog: str = "facepriv export") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_frontend_arguments(parser, releases=True)
    parser.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    parser.add_argument("--size", type=int, default=112, help="face size in pixels (default 112)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    args = parser.parse_args(argv)
    frontend, secret_is_new = frontend_from_args(args)
    if secret_is_new:
        print("warning: a new secret was generated; no trained model matches this export. Use --checkpoint or a saved config.")
    info = export_frontend(frontend, args.out, args.format, args.size, allow_fixed_inference_seed=args.allow_fixed_inference_seed)
    print(json.dumps(info, indent=2))
    return 0
