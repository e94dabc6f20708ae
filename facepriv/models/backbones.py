"""``build_backbone(config)``: one entry point from a plain config dict to a backbone.

Training configs, checkpoints and the federated server all describe a backbone as a dict;
every backbone exposes the fully resolved dict as ``.config`` so that
``build_backbone(model.config)`` rebuilds the same architecture (weights travel separately).
Unknown keys are refused rather than ignored: a typo such as ``"widht": 0.5`` would otherwise
silently train the wrong model.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from facepriv.models.iresnet import IRESNET_LAYERS, IResNet
from facepriv.models.mobilefacenet import MobileFaceNet

BACKBONE_NAMES = (*IRESNET_LAYERS, "iresnet", "mobilefacenet")

#: Keys every backbone understands, with their defaults.
COMMON_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "embedding_size": 512,
    "width": 1.0,
    "se": False,
    "norm": "batch",
    "dropout": 0.0,
    "input_size": 112,
    "strided_stages": None,  # None: from input_size (112 -> 4; compact 28 -> 2, 14 -> 1)
    "norm_groups": 32,
    "feature_norm": None,  # None: "batch" for norm="batch", "layer" for norm="group"
}
IRESNET_DEFAULTS: dict[str, Any] = {**COMMON_DEFAULTS, "layers": None, "se_reduction": 16}
MOBILEFACENET_DEFAULTS: dict[str, Any] = {**COMMON_DEFAULTS, "blocks": [1, 4, 6, 2], "scale": 2}


def _resolve(config: dict[str, Any], defaults: dict[str, Any], name: str) -> dict[str, Any]:
    unknown = sorted(set(config) - set(defaults) - {"name"})
    if unknown:
        raise ValueError(f"backbone {name!r}: unknown config keys {unknown}; known keys: {sorted(defaults)}")
    return {**defaults, **{k: v for k, v in config.items() if k != "name"}}


def build_backbone(config: dict[str, Any]) -> nn.Module:
    """Build a backbone from ``{"name": ..., "in_channels": ..., ...}``.

    Names: ``iresnet18/34/50/100`` (insightface depths), ``iresnet`` with an explicit
    ``layers`` list, and ``mobilefacenet``. See ``COMMON_DEFAULTS`` for the shared keys.
    """
    if not isinstance(config, dict):
        raise TypeError(f"build_backbone: config must be a dict, got {type(config).__name__}")
    name = config.get("name")
    if name not in BACKBONE_NAMES:
        raise ValueError(f"build_backbone: unknown backbone name {name!r}; choose one of {list(BACKBONE_NAMES)}")
    if name == "mobilefacenet":
        cfg = _resolve(config, MOBILEFACENET_DEFAULTS, name)
        if cfg["se"]:
            raise ValueError("build_backbone: se=True is only implemented for the IResNet backbones")
        return MobileFaceNet(
            in_channels=int(cfg["in_channels"]),
            embedding_size=int(cfg["embedding_size"]),
            width=float(cfg["width"]),
            blocks=cfg["blocks"],
            scale=int(cfg["scale"]),
            norm=cfg["norm"],
            norm_groups=int(cfg["norm_groups"]),
            feature_norm_kind=cfg["feature_norm"],
            dropout=float(cfg["dropout"]),
            input_size=int(cfg["input_size"]),
            strided_stages=cfg["strided_stages"],
        )
    cfg = _resolve(config, IRESNET_DEFAULTS, name)
    layers = cfg["layers"]
    if name == "iresnet":
        if layers is None:
            raise ValueError("build_backbone: name 'iresnet' needs an explicit 'layers' list (4 block counts)")
    else:
        expected = list(IRESNET_LAYERS[name])
        if layers is not None and list(layers) != expected:
            raise ValueError(f"build_backbone: {name} has layers {expected}, but the config says {list(layers)}")
        layers = expected
    return IResNet(
        layers,
        in_channels=int(cfg["in_channels"]),
        embedding_size=int(cfg["embedding_size"]),
        width=float(cfg["width"]),
        se=bool(cfg["se"]),
        se_reduction=int(cfg["se_reduction"]),
        norm=cfg["norm"],
        norm_groups=int(cfg["norm_groups"]),
        feature_norm_kind=cfg["feature_norm"],
        dropout=float(cfg["dropout"]),
        input_size=int(cfg["input_size"]),
        strided_stages=cfg["strided_stages"],
        name=name if name != "iresnet" else None,
    )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
