"""Classification heads for training: cosine classifier + margin loss, or Partial FC.

Every head has ``forward(embeddings, labels) -> loss`` and a ``config`` dict, so a trainer
treats them alike; ``build_head(config, embedding_size, num_classes)`` builds one from a
plain config::

    {"type": "softmax" | "partial_fc",
     "margin": "arcface" | "cosface" | "combined",
     "s": 64.0, "m": 0.5,            # or "m1", "m2", "m3" for "combined"
     "sample_rate": 1.0, "seed": 0}  # partial_fc only

The margin is applied in the loss, never inside the classifier, so the classifier is a plain
layer with a closed-form per-sample gradient (``cosine_classifier_grad_sample``) that DP-SGD
(Opacus) can use; the training code registers it with
``opacus.grad_sample.register_grad_sampler(CosineClassifier)(cosine_classifier_grad_sample)``
(opacus is not imported here: it is an optional extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facepriv.models.margins import (
    MARGINS,
    ArcFaceLoss,
    CombinedMarginLoss,
    CosFaceLoss,
    MarginLoss,
    build_margin,
)
from facepriv.models.partial_fc import PartialFC

__all__ = [
    "ArcFaceLoss",
    "CombinedMarginLoss",
    "CosFaceLoss",
    "CosineClassifier",
    "MarginLoss",
    "PartialFC",
    "SoftmaxHead",
    "build_head",
    "build_margin",
    "cosine_classifier_grad_sample",
]

#: Same epsilon as ``F.normalize``'s default.
NORMALIZE_EPS = 1e-12


class CosineClassifier(nn.Module):
    """``logits = normalize(x) @ normalize(W)^T``: cosines between embeddings and centres."""

    def __init__(self, embedding_size: int, num_classes: int) -> None:
        super().__init__()
        if embedding_size < 1 or num_classes < 1:
            raise ValueError(f"CosineClassifier: sizes must be >= 1, got {embedding_size}, {num_classes}")
        self.embedding_size = int(embedding_size)
        self.num_classes = int(num_classes)
        self.eps = NORMALIZE_EPS
        # insightface initialises the centres from N(0, 0.01); only their direction matters.
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (num_classes, embedding_size)))

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}"

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.embedding_size:
            raise ValueError(
                f"CosineClassifier: expected embeddings with last dim {self.embedding_size}, got shape {tuple(x.shape)}"
            )
        return F.linear(F.normalize(x, dim=-1, eps=self.eps), F.normalize(self.weight, dim=-1, eps=self.eps))


def cosine_classifier_grad_sample(
    layer: CosineClassifier, activations: Sequence[Tensor] | Tensor, backprops: Tensor
) -> dict[nn.Parameter, Tensor]:
    """Per-sample gradient of ``layer.weight`` (Opacus grad-sampler signature).

    ``activations``: the layer's input ``x`` (``B x D``, or ``B x ... x D``; Opacus passes a
    list); ``backprops``: ``dL_b/dlogits`` per sample, ``B x K`` (or ``B x ... x K``).

    With ``x^ = x / |x|``, ``w^_k = W_k / |W_k|`` and ``c_bk = x^_b . w^_k``, the logit is
    linear in ``w^_k``, so ``dL_b/dw^_k = g_bk x^_b``; the row normalisation contributes its
    Jacobian ``(I - w^_k w^_k^T) / |W_k|``. Hence

        grad_b[k] = g_bk / |W_k| * (x^_b - c_bk w^_k)

    (summed over any middle dims). A row with ``|W_k| <= eps`` is divided by ``eps``, not
    normalised, and its Jacobian is ``I / eps``, exactly as ``F.normalize`` behaves.
    """
    x = activations[0] if isinstance(activations, (list, tuple)) else activations
    weight = layer.weight
    if not weight.requires_grad:
        return {}
    eps = getattr(layer, "eps", NORMALIZE_EPS)
    batch = x.shape[0]
    x_hat = F.normalize(x.detach(), dim=-1, eps=eps).reshape(batch, -1, x.shape[-1])  # B x N x D
    g = backprops.detach().reshape(batch, -1, backprops.shape[-1]).to(x_hat.dtype)  # B x N x K
    w = weight.detach().to(x_hat.dtype)
    norm = w.norm(dim=1, keepdim=True)  # K x 1
    w_hat = w / norm.clamp_min(eps)
    grad_w_hat = torch.einsum("bnk,bnd->bkd", g, x_hat)  # dL_b / dw^
    radial = torch.einsum("bkd,kd->bk", grad_w_hat, w_hat)[..., None]  # component along w^_k
    projected = (grad_w_hat - radial * w_hat) / norm.clamp_min(eps)
    grad = torch.where((norm > eps)[None], projected, grad_w_hat / eps)
    return {weight: grad.to(weight.dtype)}


class SoftmaxHead(nn.Module):
    """Full-softmax head: ``CosineClassifier`` + a margin loss, for up to ~1e5 classes on one
    device (and for DP-SGD, where every centre needs a per-sample gradient anyway)."""

    def __init__(self, margin_loss: MarginLoss, embedding_size: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = CosineClassifier(embedding_size, num_classes)
        self.margin_loss = margin_loss

    @property
    def config(self) -> dict[str, Any]:
        return {
            "type": "softmax",
            **self.margin_loss.config,
            "embedding_size": self.classifier.embedding_size,
            "num_classes": self.classifier.num_classes,
        }

    def logits(self, embeddings: Tensor) -> Tensor:
        """Cosine logits (no margin, no scale) — e.g. for closed-set accuracy."""
        return self.classifier(embeddings)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return self.margin_loss(self.classifier(embeddings), labels)


HEAD_TYPES = ("softmax", "partial_fc")
_MARGIN_KEYS = {"margin", "s", "m", "m1", "m2", "m3"}
_PFC_KEYS = {"sample_rate", "seed"}


def build_head(config: dict[str, Any], embedding_size: int, num_classes: int, **partial_fc_kwargs: Any) -> nn.Module:
    """Build a training head; see the module docstring for the config keys.

    ``embedding_size`` / ``num_classes`` come from the model and dataset; if the config also
    carries them (as ``head.config`` does) they must agree. ``partial_fc_kwargs`` (e.g.
    ``process_group``, ``distributed``) go to ``PartialFC``.
    """
    if not isinstance(config, dict):
        raise TypeError(f"build_head: config must be a dict, got {type(config).__name__}")
    cfg = dict(config)
    kind = cfg.pop("type", "softmax")
    if kind == "full":
        kind = "softmax"
    if kind not in HEAD_TYPES:
        raise ValueError(f"build_head: unknown head type {kind!r}; choose one of {list(HEAD_TYPES)}")
    for key, value in (("embedding_size", embedding_size), ("num_classes", num_classes)):
        given = cfg.pop(key, None)
        if given is not None and int(given) != int(value):
            raise ValueError(f"build_head: config says {key}={given}, but the model/dataset has {value}")
    allowed = _MARGIN_KEYS | (_PFC_KEYS if kind == "partial_fc" else set())
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"build_head: unknown keys {unknown} for head type {kind!r}; allowed: {sorted(allowed)}")
    margin_cfg = {k: v for k, v in cfg.items() if k in _MARGIN_KEYS}
    margin_cfg.setdefault("margin", "arcface")
    if margin_cfg["margin"] not in MARGINS:
        raise ValueError(f"build_head: unknown margin {margin_cfg['margin']!r}; choose one of {sorted(MARGINS)}")
    margin = build_margin(margin_cfg)
    if kind == "softmax":
        if partial_fc_kwargs:
            raise ValueError(f"build_head: {sorted(partial_fc_kwargs)} only apply to type 'partial_fc'")
        return SoftmaxHead(margin, embedding_size, num_classes)
    return PartialFC(
        margin,
        embedding_size,
        num_classes,
        sample_rate=float(cfg.get("sample_rate", 1.0)),
        seed=int(cfg.get("seed", 0)),
        **partial_fc_kwargs,
    )
