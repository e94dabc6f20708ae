"""Create frontends from plain dicts / YAML, so configs and checkpoints carry them as data."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Mapping

import yaml

from facepriv.frontends.base import Frontend
from facepriv.frontends.baselines import DCTFrontend, RGBFrontend
from facepriv.frontends.dp import DCTDP
from facepriv.frontends.minusface import MinusFace
from facepriv.frontends.partial import PartialFace

FRONTENDS: dict[str, type[Frontend]] = {cls.name: cls for cls in (RGBFrontend, DCTFrontend, PartialFace, DCTDP, MinusFace)}


def build_frontend(config: Mapping[str, Any] | str | Path) -> Frontend:
    """Build a frontend from ``{"name": ..., **options}``, a bare name, or a YAML file path.

    Unknown names and options are errors (a typo must not silently fall back to a default
    that changes the privacy properties).
    """
    if isinstance(config, Path) or (isinstance(config, str) and config.endswith((".yaml", ".yml"))):
        path = Path(config)
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read frontend config {path}: {exc}") from exc
        if not isinstance(loaded, Mapping):
            raise ValueError(f"frontend config {path} must be a mapping with a 'name' key")
        config = loaded.get("frontend", loaded)
    if isinstance(config, str):
        config = {"name": config}
    if not isinstance(config, Mapping) or "name" not in config:
        raise ValueError(f"frontend config must be a mapping with a 'name' key, got {config!r}")
    options = dict(config)
    name = str(options.pop("name")).lower()
    cls = FRONTENDS.get(name)
    if cls is None:
        raise ValueError(f"unknown frontend {name!r}; choose from {sorted(FRONTENDS)}")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"frontend {name!r} has no option(s) {unknown}; valid options: {sorted(accepted)}")
    if any(v == "<secret>" for v in options.values()):
        raise ValueError(f"frontend {name!r}: config has redacted secrets (a public config); use the model owner's checkpoint")
    return cls(**options)
