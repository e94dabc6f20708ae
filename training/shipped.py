"""The configs that ship inside the package, addressable by name.

Why: ``facepriv train`` must work for a pip user, who has no ``training/configs/`` source
folder to point at. The YAML files are package data (``pyproject.toml``), so they are found
next to this module in a checkout, an editable install and a wheel alike; ``facepriv train
--list-configs`` lists them and ``facepriv train NAME`` resolves a name to its file. A path
that exists always wins over a shipped name, so a user's own ``tiny_cpu.yaml`` is never
shadowed.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CONFIG_DIR", "shipped_configs", "resolve_config"]

#: Folder of the shipped training configs (package data of ``facepriv.training``).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> dict[str, Path]:
    """``{name: path}`` of every shipped config, sorted by name (name = file stem)."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def resolve_config(spec: str | os.PathLike[str]) -> Path:
    """``spec`` as a path when it exists, else the shipped config of that name (``tiny_cpu``
    or ``tiny_cpu.yaml``, also ``training/configs/tiny_cpu.yaml`` from outside a checkout).

    Raises ``FileNotFoundError`` naming ``spec`` and the shipped names when neither exists.
    """
    path = Path(spec)
    if path.exists():
        return path
    configs = shipped_configs()
    stem = path.name[: -len(path.suffix)] if path.suffix in (".yaml", ".yml") else path.name
    if stem in configs and (path.parent == Path(".") or path.parent.as_posix().endswith("training/configs")):
        return configs[stem]
    raise FileNotFoundError(
        f"config {str(spec)!r} is neither a file nor a shipped config name "
        f"(shipped: {', '.join(configs) or 'none'}; `facepriv train --list-configs`)"
    )
