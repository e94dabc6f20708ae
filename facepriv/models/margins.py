"""Additive-margin softmax losses on cosine logits (ArcFace, CosFace, combined margin).

Design: the classifier only produces cosine logits ``cos(theta_ij)``; the margin lives in
the *loss*. That keeps the classifier a plain "activations in, logits out" layer whose
per-sample gradient has a closed form (Opacus DP-SGD needs that), and lets the same margin code
serve the full-softmax head and the sharded Partial FC head.

Every loss takes ``(cos, labels)`` with labels ``-1`` meaning "no target in this row" (an
ignored sample, or — in Partial FC — a sample whose class lives on another rank). Rows with a
label get the margin on their target logit; all logits are then scaled by ``s``.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Floor for ``1 - cos^2`` before the square root (and the cos clamp before arccos). The
#: derivative of sqrt / arccos is unbounded at |cos| = 1; with this floor the worst-case
#: amplification is ~1e3 and an embedding that equals its class centre gives no NaN.
SIN2_EPS = 1e-6


def check_labels(labels: Tensor, batch: int, num_classes: int, where: str) -> Tensor:
    """Labels must be a length-``batch`` integer vector in ``[-1, num_classes)``."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{where}: labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(f"{where}: expected labels of shape ({batch},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"{where}: labels must be an integer tensor, got {labels.dtype}")
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < -1 or hi >= num_classes:
            raise ValueError(
                f"{where}: labels must be in [-1, {num_classes - 1}] (-1 = ignore), found range [{lo}, {hi}]"
            )
    return labels.long()


def as_float(cos: Tensor) -> Tensor:
    # Margins and the softmax run in float32 even under AMP: s * cos reaches 64 and the
    # margin arithmetic near cos = +-1 is hopeless in half precision.
    return cos.float() if cos.dtype in (torch.float16, torch.bfloat16) else cos


def _sin_from_cos(c: Tensor) -> Tensor:
    return torch.sqrt(torch.clamp(1.0 - c * c, min=SIN2_EPS))


class MarginLoss(nn.Module, abc.ABC):
    """Base class: margin on the target cosine, scale by ``s``, cross-entropy."""

    name: str = ""

    def __init__(self, s: float) -> None:
        super().__init__()
        if not s > 0:
            raise ValueError(f"{type(self).__name__}: scale s must be > 0, got {s}")
        self.s = float(s)

    @abc.abstractmethod
    def target_logit(self, cos_target: Tensor) -> Tensor:
        """Margin-penalised cosine for the target class (unscaled)."""

    @property
    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Plain dict; ``build_margin(config)`` rebuilds this loss."""

    def margin_logits(self, cos: Tensor, labels: Tensor) -> Tensor:
        """``s * cos`` with each labelled row's target logit replaced by ``s * target_logit``."""
        if cos.dim() != 2:
            raise ValueError(f"{type(self).__name__}: expected cosine logits of shape (B, K), got {tuple(cos.shape)}")
        labels = check_labels(labels, cos.shape[0], cos.shape[1], type(self).__name__)
        cos = as_float(cos).clamp(-1.0, 1.0)
        rows = torch.nonzero(labels >= 0, as_tuple=True)[0]
        cols = labels[rows]
        target = self.target_logit(cos[rows, cols])
        return torch.index_put(cos, (rows, cols), target) * self.s

    def forward(self, cos: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy over rows with a label (0 if there are none)."""
        logits = self.margin_logits(cos, labels)
        labels = labels.long()
        n_valid = (labels >= 0).sum().clamp_min(1)
        return F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum") / n_valid

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items() if k != "margin")


class ArcFaceLoss(MarginLoss):
    """ArcFace: ``cos(theta + m)`` on the target (additive angular margin).

    ``cos(theta + m)`` stops decreasing once ``theta + m > pi``, which would reward pushing a
    sample *away* from its class. As insightface does, beyond ``theta > pi - m`` we switch to
    ``cos(theta) - m * sin(m)`` (that is ``cos - sin(pi - m) * m``), a monotone penalty.
    """

    name = "arcface"

    def __init__(self, s: float = 64.0, m: float = 0.5) -> None:
        super().__init__(s)
        if not 0.0 <= m < math.pi:
            raise ValueError(f"ArcFaceLoss: margin m must be in [0, pi), got {m}")
        self.m = float(m)
        self._cos_m, self._sin_m = math.cos(m), math.sin(m)
        self._th = math.cos(math.pi - m)
        self._mm = math.sin(math.pi - m) * m

    @property
    def config(self) -> dict[str, Any]:
        return {"margin": self.name, "s": self.s, "m": self.m}

    def target_logit(self, cos_target: Tensor) -> Tensor:
        phi = cos_target * self._cos_m - _sin_from_cos(cos_target) * self._sin_m
        return torch.where(cos_target > self._th, phi, cos_target - self._mm)


class CosFaceLoss(MarginLoss):
    """CosFace: ``cos(theta) - m`` on the target (additive cosine margin)."""

    name = "cosface"

    def __init__(self, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__(s)
        if not m >= 0.0:
            raise ValueError(f"CosFaceLoss: margin m must be >= 0, got {m}")
        self.m = float(m)

    @property
    def config(self) -> dict[str, Any]:
        return {"margin": self.name, "s": self.s, "m": self.m}

    def target_logit(self, cos_target: Tensor) -> Tensor:
        return cos_target - self.m


class CombinedMarginLoss(MarginLoss):
    """insightface's combined margin ``cos(m1 * theta + m2) - m3``.

    ``(1, m, 0)`` is exactly ArcFace (same fallback), ``(1, 0, m)`` exactly CosFace. For other
    combinations, past ``m1 * theta + m2 > pi`` we continue linearly in ``cos(theta)`` from the
    value ``-1 - m3`` reached there, so the penalty stays continuous and monotone.
    """

    name = "combined"

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0) -> None:
        super().__init__(s)
        if not m1 >= 1.0 or not 0.0 <= m2 < math.pi or not m3 >= 0.0:
            raise ValueError(f"CombinedMarginLoss: need m1 >= 1, 0 <= m2 < pi, m3 >= 0; got ({m1}, {m2}, {m3})")
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)
        self._arc = ArcFaceLoss(s, m2) if m1 == 1.0 else None
        self._theta_star = (math.pi - m2) / m1  # where m1 * theta + m2 reaches pi
        self._cos_star = math.cos(self._theta_star)

    @property
    def config(self) -> dict[str, Any]:
        return {"margin": self.name, "s": self.s, "m1": self.m1, "m2": self.m2, "m3": self.m3}

    def target_logit(self, cos_target: Tensor) -> Tensor:
        if self._arc is not None:
            base = cos_target if self.m2 == 0.0 else self._arc.target_logit(cos_target)
            return base - self.m3
        c = cos_target.clamp(-1.0 + SIN2_EPS, 1.0 - SIN2_EPS)
        theta = torch.acos(c)
        phi = torch.cos(self.m1 * theta + self.m2) - self.m3
        fallback = cos_target - (1.0 + self._cos_star) - self.m3
        return torch.where(theta <= self._theta_star, phi, fallback)


MARGINS = {"arcface": ArcFaceLoss, "cosface": CosFaceLoss, "combined": CombinedMarginLoss}


def build_margin(config: dict[str, Any]) -> MarginLoss:
    """``{"margin": "arcface"|"cosface"|"combined", "s": ..., "m": ... | "m1", "m2", "m3"}``."""
    cfg = dict(config)
    kind = cfg.pop("margin", "arcface")
    cls = MARGINS.get(kind)
    if cls is None:
        raise ValueError(f"unknown margin {kind!r}; choose one of {sorted(MARGINS)}")
    allowed = {"s", "m1", "m2", "m3"} if cls is CombinedMarginLoss else {"s", "m"}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"margin {kind!r}: unknown keys {unknown}; allowed: {sorted(allowed)}")
    return cls(**{k: float(v) for k, v in cfg.items() if v is not None})
