"""`facepriv protect`: the client-side step.

Reads a folder of aligned faces, applies the frontend, and writes one protected tensor per
image (safetensors, no pickle) plus ``manifest.json``. Only the protected tensors and the
manifest leave the device, so nothing in them may identify a person: every output gets an
opaque random name (128 bits from the OS CSPRNG) in one flat folder, images are processed
in a random order (so file times do not group a person's images), and the manifest carries
the frontend's *public* config (secrets redacted), shapes and hashes, never a source name.
The mapping from source image to output name, and the list of images that could not be used
(with the reason), go to a separate file that **stays on the device** (``--mapping``; by
default ``<out>.local-mapping.json`` beside the output folder, never inside it). Raw pixels
are never written. A frontend with a fixed ``inference_seed`` is refused (see ``--help``).

    facepriv protect --checkpoint model.pt --input aligned/ --out protected/
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from facepriv.data.images import is_image_file, read_image, to_tensor
from facepriv.frontends.base import Frontend
from facepriv.frontends.cli_args import add_frontend_arguments, fixed_inference_seed_error, frontend_from_args

MANIFEST = "manifest.json"


def find_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))


def default_mapping_path(out_dir: Path) -> Path:
    """``<out>.local-mapping.json`` beside the output folder: outside what is sent."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.local-mapping.json"


def _opaque_name(taken: set[str]) -> str:
    while True:
        name = secrets.token_hex(16)
        if name not in taken:
            taken.add(name)
            return name


def protect_folder(frontend: Frontend, input_dir: Path, out_dir: Path, *, size: int = 112, batch_size: int = 32,
                   dtype: torch.dtype = torch.float32, progress: bool = True, mapping_path: Path | None = None,
                   allow_fixed_inference_seed: bool = False) -> dict[str, Any]:
    """Protect every image under ``input_dir`` into ``out_dir``; returns the manifest (what leaves).

    The source-to-output mapping and the failures are written to ``mapping_path`` (default
    :func:`default_mapping_path`), which must lie outside ``out_dir``.
    """
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder {input_dir} does not exist")
    error = None if allow_fixed_inference_seed else fixed_inference_seed_error(frontend, "protect images")
    if error:
        raise ValueError(error)
    mapping_path = Path(mapping_path) if mapping_path is not None else default_mapping_path(out_dir)
    if mapping_path.resolve().is_relative_to(out_dir.resolve()):
        raise ValueError(f"mapping file {mapping_path} is inside the output folder {out_dir}, which leaves the device; "
                         "put it elsewhere")
    images = find_images(input_dir)
    random.SystemRandom().shuffle(images)  # processing order (and file times) must not group a person's images
    frontend = frontend.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, Any]] = []
    mapping: dict[str, str] = {}
    failed: list[dict[str, str]] = []
    pending: list[tuple[Path, torch.Tensor]] = []
    taken = {p.stem for p in out_dir.glob("*.safetensors")}
    start = time.perf_counter()

    def flush() -> None:
        if not pending:
            return
        batch = torch.stack([t for _, t in pending])
        with torch.no_grad():
            protected = frontend(batch).to(dtype)
        for (src, _), tensor in zip(pending, protected):
            dst = out_dir / f"{_opaque_name(taken)}.safetensors"
            save_file({"protected": tensor.contiguous()}, str(dst))
            written.append({"file": dst.name, "shape": list(tensor.shape),
                            "sha256": hashlib.sha256(dst.read_bytes()).hexdigest()})
            mapping[src.relative_to(input_dir).as_posix()] = dst.name
        pending.clear()

    for path in tqdm(images, desc="protect", unit="img", disable=not progress, file=sys.stderr):
        try:
            rgb = read_image(path)
        except ValueError as exc:  # ImageDecodeError is a ValueError
            failed.append({"source": path.relative_to(input_dir).as_posix(), "reason": str(exc)})
            continue
        if rgb.shape[:2] != (size, size):
            failed.append({"source": path.relative_to(input_dir).as_posix(),
                           "reason": f"size {rgb.shape[1]}x{rgb.shape[0]}, expected an aligned {size}x{size} face "
                                     "(run `facepriv data align` first)"})
            continue
        pending.append((path, to_tensor(rgb)))
        if len(pending) == batch_size:
            flush()
    flush()
    written.sort(key=lambda entry: entry["file"])  # an order that says nothing about the sources
    manifest = {
        "frontend": frontend.public_config(),
        "privacy_report": frontend.privacy_report(),
        "out_channels": frontend.out_channels,
        "dtype": str(dtype).replace("torch.", ""),
        "tensor_key": "protected",
        "counts": {"found": len(images), "protected": len(written), "failed": len(failed)},
        "files": written,
        "failures": "listed in the local mapping file (they name source images)" if failed else "none",
        "seconds": round(time.perf_counter() - start, 3),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    mapping_path.parent.mkdir(parents=True, exist_ok=True)
    mapping_path.write_text(json.dumps({
        "warning": "LOCAL ONLY: maps source images (identities) to protected file names; never send this file",
        "output_folder": str(out_dir), "outputs": dict(sorted(mapping.items())), "failed": failed,
    }, indent=2))
    return manifest


def main(argv: list[str] | None = None, prog: str = "facepriv protect") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_frontend_arguments(parser, releases=True)
    parser.add_argument("--input", type=Path, required=True, help="folder of aligned face images (searched recursively)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder for the opaque-named .safetensors files and manifest.json (what is sent)")
    parser.add_argument("--mapping", type=Path, default=None, metavar="JSON",
                        help="where the source-name -> output-name mapping and failures go; stays on the device "
                             "(default: <out>.local-mapping.json beside the output folder)")
    parser.add_argument("--size", type=int, default=112, help="expected aligned face size (default 112)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                        help="storage type of the protected tensors (float16 halves the size)")
    parser.add_argument("--save-config", type=Path, metavar="YAML",
                        help="also write the frontend's full config INCLUDING its secret (keep it on the model owner's side)")
    args = parser.parse_args(argv)
    frontend, secret_is_new = frontend_from_args(args)
    if secret_is_new:
        print("warning: a new secret was generated for this frontend; only a model trained with the same secret "
              "can use these tensors. Pass --save-config to keep it, or use --checkpoint.", file=sys.stderr)
    if args.save_config:
        import yaml

        args.save_config.write_text(yaml.safe_dump({"frontend": frontend.config}, sort_keys=False))
    try:
        manifest = protect_folder(frontend, args.input, args.out, size=args.size, batch_size=args.batch_size,
                                  dtype=getattr(torch, args.dtype), mapping_path=args.mapping,
                                  allow_fixed_inference_seed=args.allow_fixed_inference_seed)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = manifest["counts"]
    mapping = args.mapping or default_mapping_path(args.out)
    print(f"protected {counts['protected']} of {counts['found']} images into {args.out} ({counts['failed']} failed); "
          f"send {args.out} only. The source-name mapping and failures are in {mapping}: keep it on this device.")
    return 0 if counts["failed"] == 0 else 1
