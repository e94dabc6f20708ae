"""Reading and writing recogniser checkpoints without ever executing pickled code.

Two on-disk formats carry the same logical content (see ``FORMAT``):

* ``torch.save`` of a dict of plain types and tensors, read back *only* with
  ``torch.load(weights_only=True)``: the restricted unpickler refuses any global (a class, a
  function such as ``os.system``), so a crafted ``__reduce__`` payload is rejected before it
  can run;
* ``.safetensors``: tensors in the safetensors container, configs and ``extra`` as JSON in its
  string metadata (the format cannot hold code at all).

The weights-only unpickler itself had bypasses: CVE-2025-32434 (torch <= 2.5.1) and
GHSA-63cw-57p8-fm3p / CVE-2026-24747 (torch < 2.10) let a crafted file run code even with
``weights_only=True``. ``safe_torch_load`` therefore refuses to unpickle anything on torch
older than ``MIN_SAFE_TORCH`` (pyproject.toml requires it anyway; this guards environments
that ignore the floor); safetensors files need no unpickler and load on any version. A file
named ``.safetensors`` is read only as safetensors: a pickle renamed to look safe is refused.

Checkpoints contain the frontend's *secrets* (e.g. PartialFace's channel key): store them like
credentials, not next to the protected data they were trained on.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from facepriv.io import atomic_path

FORMAT = "facepriv.FaceRecognizer"
#: Bump when the layout changes incompatibly; readers refuse newer versions with a clear error.
FORMAT_VERSION = 1
STATE_PREFIX = "state/"
EXTRA_PREFIX = "extra/"
_TENSOR_TAG = "__tensor__"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, of the wrong format or version."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asks the unpickler for code or arbitrary objects; it was not loaded."""


#: Oldest torch whose weights-only unpickler has no published bypass (GHSA-63cw-57p8-fm3p).
MIN_SAFE_TORCH = (2, 10)


def _torch_release(version: str) -> tuple[int, int]:
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)  # unparseable: treat as too old rather than guess


def check_torch_unpickler(path: str | os.PathLike[str], version: str | None = None) -> None:
    """Refuse to unpickle ``path`` on a torch with a known ``weights_only`` bypass."""
    version = str(torch.__version__) if version is None else version
    if _torch_release(version) < MIN_SAFE_TORCH:
        need = ".".join(map(str, MIN_SAFE_TORCH))
        raise UnsafeCheckpointError(
            f"{path}: refusing to unpickle a checkpoint with torch {version}: its weights_only loader has known "
            f"code-execution bypasses (CVE-2025-32434, GHSA-63cw-57p8-fm3p); install torch>={need}, or use a "
            ".safetensors checkpoint (FaceRecognizer.save('model.safetensors'))"
        )


def safe_torch_load(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` on a torch without known bypasses, errors naming the file.

    The one place facepriv unpickles a file: training checkpoints and recogniser files use it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        raise CheckpointError(
            f"{path}: named .safetensors but is not a safetensors file; refusing to unpickle a file that "
            "claims to be safetensors (if you wrote it yourself with torch.save, rename it to .pt)"
        )
    check_torch_unpickler(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        raise UnsafeCheckpointError(
            f"{path}: refusing to load: the file's pickle asks for code, arbitrary Python objects or "
            f"unsupported pickle operations, which a facepriv checkpoint never contains ({'; '.join(detail) or 'rejected by the weights-only unpickler'}). "
            "Do not load it with weights_only=False unless you wrote it yourself."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot read checkpoint (corrupt or truncated?): {type(e).__name__}: {e}") from e


def _versions() -> dict[str, str]:
    import facepriv

    return {"facepriv_version": str(facepriv.__version__), "torch_version": str(torch.__version__)}


def to_plain(value: Any, where: str, *, allow_tensors: bool = True) -> Any:
    """A copy of ``value`` made of exact builtin types (and CPU tensors), or a TypeError.

    Allowed: None, bool, int, float, str, list, tuple, dict with str keys, torch.Tensor.
    Subclasses of the scalar builtins (``torch.__version__``'s TorchVersion, numpy.float64,
    IntEnum) are converted to the builtin: the weights-only unpickler would refuse the
    subclass. Checked at *save* time so that a checkpoint that could not be read back safely
    (a numpy int, a dataclass, a Path in ``extra``) is never written in the first place.
    """
    if value is None or type(value) in (bool, int, float, str):
        return value
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return base(value)
    if isinstance(value, Tensor):
        if not allow_tensors:
            raise TypeError(f"{where}: tensors are not allowed here")
        return value.detach().to("cpu")
    if isinstance(value, (list, tuple)):
        items = [to_plain(v, f"{where}[{i}]", allow_tensors=allow_tensors) for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: dict keys must be str, got {type(key).__name__} ({key!r})")
            out[str(key)] = to_plain(item, f"{where}[{key!r}]", allow_tensors=allow_tensors)
        return out
    raise TypeError(
        f"{where}: {type(value).__name__} is not a plain type (allowed: None, bool, int, float, str, "
        "list, tuple, dict with str keys, torch.Tensor); convert it first (e.g. int(x), str(path))"
    )


def _atomic_write(path: Path, write: Any) -> None:
    # A crash mid-save must not destroy the previous checkpoint of a long run; the file
    # carries frontend secrets, so it is created owner-only (as mkstemp did before).
    with atomic_path(path, mode=0o600) as tmp:
        write(str(tmp))


def write_checkpoint(
    path: str | os.PathLike[str], config: dict[str, Any], state_dict: Mapping[str, Tensor], extra: dict[str, Any] | None
) -> Path:
    """Write a checkpoint; ``.safetensors`` suffix selects that format, anything else torch."""
    path = Path(path)
    extra = {} if extra is None else extra
    if not isinstance(extra, Mapping):
        raise TypeError(f"{path}: extra must be a dict, got {type(extra).__name__}")
    config = to_plain(config, "config", allow_tensors=False)
    extra = to_plain(extra, "extra")
    state = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        _write_safetensors(path, config, state, extra)
    else:
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **_versions(),
            "config": config,
            "state_dict": state,
            "extra": extra,
        }
        _atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def _split_tensors(value: Any, tensors: dict[str, Tensor]) -> Any:
    """Replace tensors by JSON placeholders, collecting them for the safetensors body."""
    if isinstance(value, Tensor):
        key = f"{EXTRA_PREFIX}{len(tensors)}"
        tensors[key] = value.detach().to("cpu").contiguous()
        return {_TENSOR_TAG: key}
    if isinstance(value, Mapping):
        return {k: _split_tensors(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split_tensors(v, tensors) for v in value]
    return value


def _join_tensors(value: Any, tensors: Mapping[str, Tensor], where: str) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR_TAG}:
            key = value[_TENSOR_TAG]
            if key not in tensors:
                raise CheckpointError(f"{where}: extra refers to a missing tensor {key!r}")
            return tensors[key]
        return {k: _join_tensors(v, tensors, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_join_tensors(v, tensors, where) for v in value]
    return value


def _write_safetensors(path: Path, config: dict[str, Any], state: dict[str, Tensor], extra: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    extra_json = _split_tensors(extra, tensors)
    # safetensors refuses tensors that share memory (tied weights); a copy breaks the tie,
    # and load_state_dict restores whatever tying the module defines.
    tensors.update({STATE_PREFIX + k: v.clone() for k, v in state.items()})
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        **_versions(),
        "config": json.dumps(config),
        "extra": json.dumps(extra_json),
    }
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"  # zip container (torch >= 1.6) or legacy/raw pickle stream
    if len(head) == 9 and head[8:9] == b"{":
        size = int.from_bytes(head[:8], "little")
        if 0 < size <= path.stat().st_size - 8:
            return "safetensors"
    return "unknown"


def read_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint: ``{"format", "format_version", "facepriv_version",
    "torch_version", "config", "state_dict", "extra"}``. Never executes pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    kind = _sniff(path)
    if kind == "safetensors":
        data = _read_safetensors(path, map_location)
    elif kind == "torch":
        data = safe_torch_load(path, map_location)
    elif path.suffix == ".safetensors":
        raise CheckpointError(f"{path}: named .safetensors but is not a safetensors file (corrupt, or another format)")
    else:
        raise CheckpointError(f"{path}: not a facepriv checkpoint (neither a torch.save zip/pickle nor safetensors)")
    _validate(data, path)
    return data


def _read_safetensors(path: Path, map_location: Any) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    device = "cpu" if map_location is None else map_location
    if not isinstance(device, (str, torch.device)):
        raise CheckpointError(f"{path}: safetensors checkpoints take map_location as a device or device string")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors checkpoint (corrupt or truncated?): {e}") from e
    tensors = {k: v.to(device) for k, v in tensors.items()}
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a facepriv recogniser checkpoint (metadata format={metadata.get('format')!r})")
    try:
        version = int(metadata.get("format_version", ""))
        config = json.loads(metadata["config"])
        extra_json = json.loads(metadata.get("extra", "{}"))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: malformed safetensors metadata: {type(e).__name__}: {e}") from e
    state = {k[len(STATE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(STATE_PREFIX)}
    return {
        "format": FORMAT,
        "format_version": version,
        "facepriv_version": metadata.get("facepriv_version"),
        "torch_version": metadata.get("torch_version"),
        "config": config,
        "state_dict": state,
        "extra": _join_tensors(extra_json, tensors, str(path)),
    }


def _validate(data: Any, path: Path) -> None:
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a facepriv checkpoint (top level is {type(data).__name__}, expected dict)")
    if data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a facepriv recogniser checkpoint (format={data.get('format')!r}, expected {FORMAT!r}); "
            "a bare state_dict must be loaded with model.load_state_dict"
        )
    version = data.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: invalid checkpoint format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} was written by a newer facepriv "
            f"({data.get('facepriv_version')}); this facepriv reads up to version {FORMAT_VERSION} — upgrade facepriv"
        )
    config = data.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("backbone"), dict) or not isinstance(config.get("frontend"), dict):
        raise CheckpointError(f"{path}: checkpoint config must contain 'frontend' and 'backbone' dicts")
    state = data.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: checkpoint state_dict must map names to tensors")
    if not isinstance(data.get("extra", {}), dict):
        raise CheckpointError(f"{path}: checkpoint 'extra' must be a dict")
    data.setdefault("extra", {})
