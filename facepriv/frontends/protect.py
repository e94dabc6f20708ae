"""`facepriv protect`: the client-side step.

Reads a folder of aligned faces, applies the frontend, and writes one protected tensor per
image (safetensors, no pickle) plus ``manifest.json``. Only the protected tensors and the
manifest leave the device: the manifest carries the frontend's *public* config (secrets
redacted), and raw pixels are never written. Images that cannot be used (unreadable,
wrong size) are listed in the manifest with the reason; nothing is silently skipped.

    facepriv protect --checkpoint model.pt --input aligned/ --out protected/
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from facepriv.data.images import is_image_file, read_image, to_tensor
from facepriv.frontends.base import Frontend
from facepriv.frontends.cli_args import add_frontend_arguments, frontend_from_args

MANIFEST = "manifest.json"


def find_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))


def protect_folder(frontend: Frontend, input_dir: Path, out_dir: Path, *, size: int = 112, batch_size: int = 32,
                   dtype: torch.dtype = torch.float32, progress: bool = True) -> dict[str, Any]:
    """Protect every image under ``input_dir`` into ``out_dir``; returns the manifest."""
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder {input_dir} does not exist")
    images = find_images(input_dir)
    frontend = frontend.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    pending: list[tuple[Path, torch.Tensor]] = []
    start = time.perf_counter()

    def flush() -> None:
        if not pending:
            return
        batch = torch.stack([t for _, t in pending])
        with torch.no_grad():
            protected = frontend(batch).to(dtype)
        for (src, _), tensor in zip(pending, protected):
            rel = src.relative_to(input_dir)
            dst = (out_dir / rel).with_suffix(".safetensors")
            dst.parent.mkdir(parents=True, exist_ok=True)
            save_file({"protected": tensor.contiguous()}, str(dst))
            written.append({"source": rel.as_posix(), "file": dst.relative_to(out_dir).as_posix(),
                            "shape": list(tensor.shape), "sha256": hashlib.sha256(dst.read_bytes()).hexdigest()})
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
    manifest = {
        "frontend": frontend.public_config(),
        "privacy_report": frontend.privacy_report(),
        "out_channels": frontend.out_channels,
        "dtype": str(dtype).replace("torch.", ""),
        "tensor_key": "protected",
        "counts": {"found": len(images), "protected": len(written), "failed": len(failed)},
        "files": written,
        "failed": failed,
        "seconds": round(time.perf_counter() - start, 3),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def main(argv: list[str] | None = None, prog: str = "facepriv protect") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_frontend_arguments(parser)
    parser.add_argument("--input", type=Path, required=True, help="folder of aligned face images (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for .safetensors files and manifest.json")
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
                                  dtype=getattr(torch, args.dtype))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = manifest["counts"]
    print(f"protected {counts['protected']} of {counts['found']} images into {args.out} ({counts['failed']} failed, "
          f"listed in {args.out / MANIFEST})")
    return 0 if counts["failed"] == 0 else 1
