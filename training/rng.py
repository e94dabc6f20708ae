"""Random-number state: derivation of independent seeds, and capture/restore for resume.

Exact resume needs every source of randomness that influences training to be either
*stateless* (derived from ``(seed, epoch, step, rank)``, e.g. the data order and the flips)
or *captured* in the checkpoint (python, numpy, torch CPU/CUDA global generators, and every
``torch.Generator`` a frontend owns, e.g. PartialFace's channel draws or DCTDP's Laplace
noise). States are stored as plain lists/tensors so that ``torch.load(weights_only=True)``
can read them back without unpickling arbitrary objects.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch
from torch import nn


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of ints/strings; stable across processes and runs.

    Python's ``hash`` is salted per process for strings, so we hash the repr with SHA-256.
    """
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))


def _python_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_python_state(state: list[Any]) -> None:
    version, internal, gauss = state
    random.setstate((version, tuple(internal), gauss))


def module_generators(module: nn.Module | None, prefix: str = "") -> dict[str, torch.Generator]:
    """Every ``torch.Generator`` stored as an attribute of ``module`` or its submodules.

    Found by inspection so the trainer needs no knowledge of a frontend's or head's
    internals: a module that keeps its randomness in a generator attribute (PartialFace's
    subset draws, DCTDP's noise, Partial FC's negative sampling) is resumable for free.
    Names are ``"<prefix>:<submodule path>.<attribute>"``.
    """
    found: dict[str, torch.Generator] = {}
    if module is None:
        return found
    for path, sub in module.named_modules():
        for attr, value in vars(sub).items():
            if isinstance(value, torch.Generator):
                found[f"{prefix}:{path}.{attr}" if path else f"{prefix}:{attr}"] = value
    return found


def capture_rng_state(roots: dict[str, nn.Module | None] | None = None) -> dict[str, Any]:
    """Global RNG states plus every generator found in ``roots`` (name -> module)."""
    gens: dict[str, torch.Generator] = {}
    for prefix, module in (roots or {}).items():
        gens.update(module_generators(module, prefix))
    return {
        "python": _python_state(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "generators": {name: {"state": g.get_state(), "device": str(g.device)} for name, g in gens.items()},
    }


def _locate(roots: dict[str, nn.Module | None], name: str) -> tuple[nn.Module, str]:
    prefix, _, rest = name.partition(":")
    module = roots.get(prefix)
    if module is None:
        raise RuntimeError(f"checkpoint has RNG state for {name!r} but there is no module {prefix!r} now")
    path, _, attr = rest.rpartition(".")
    try:
        sub = module.get_submodule(path) if path else module
    except AttributeError:
        raise RuntimeError(f"checkpoint has RNG state for {name!r} but {prefix!r} has no submodule {path!r}") from None
    return sub, attr


def restore_rng_state(state: dict[str, Any], roots: dict[str, nn.Module | None] | None = None) -> None:
    """Inverse of ``capture_rng_state``. Generators created lazily (after the first forward)
    are re-created on their recorded device so the next draw continues the saved stream."""
    _set_python_state(state["python"])
    _set_numpy_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    roots = roots or {}
    saved = state.get("generators", {})
    current: dict[str, torch.Generator] = {}
    for prefix, module in roots.items():
        current.update(module_generators(module, prefix))
    missing = sorted(set(current) - set(saved))
    if missing:
        raise RuntimeError(f"checkpoint has no RNG state for generator(s) {missing}; was it written with another frontend/head?")
    for name, entry in saved.items():
        g = current.get(name)
        if g is None:
            sub, attr = _locate(roots, name)
            if getattr(sub, attr, None) is not None:
                raise RuntimeError(f"cannot restore RNG {name!r}: attribute exists but is not a torch.Generator")
            g = torch.Generator(device=entry["device"])
            setattr(sub, attr, g)
        g.set_state(entry["state"])
