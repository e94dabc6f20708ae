"""The attacker's view of MinusFace: PartialFace's placement, read against the residue.

MinusFace sends PartialFace channels of the residue ``E(x) - g(x)`` instead of ``E(x)``
(``facepriv.frontends.minusface``). *Where* a channel sits is decided exactly as in
PartialFace (same table, same per-query choice), so this view is ``PartialFaceView`` with the
three things that depend on the channel *values* taken from the residue:

* the per-frequency signatures that place channels (public: Hungarian estimate; secret and
  recovered: hypothesis choice) are learned on residues of the auxiliary faces;
* simulated training data for the learned attacks are residues at the attacker's channels;
* the optimisation attack's forward model is the residue (g is differentiable), both in full
  (``forward_model``) and at the observed channels (``forward_selected``).

Knowledge: the generator's weights are known at every level (they ship inside the client app,
like DCTDP's learned budget; Kerckhoffs). Only the secret seed separates ``public`` from
``secret``: the public view works on a copy built from the public config with the attacker's
own seed and the real generator weights, so no public code path can read the real table.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from facepriv.frontends import MinusFace

from facepriv.eval.attacks.placement import FrequencyProfile
from facepriv.eval.attacks.views import PartialFaceView

__all__ = ["MinusFaceView", "build_minusface_view", "public_minusface"]


class MinusFaceView(PartialFaceView):
    """PartialFace placement of residue channels (see the module docstring)."""

    def __init__(self, frontend: MinusFace, knowledge: str, hypotheses: Tensor | None = None) -> None:
        extra = {} if hypotheses is None else {"hypotheses": hypotheses}  # recovered layouts ('recovered' knowledge)
        super().__init__(frontend, knowledge, **extra)
        frontend.eval()  # the view never trains it (no reconstruction loss stashed by its forward)
        self.profile = FrequencyProfile(frontend.kept, frontend.upsample, coefficients=frontend.residue)

    def simulate(self, images: Tensor, g: torch.Generator) -> Tensor:
        channels = self._random_channels(images.shape[0], g).to(images.device)
        with torch.no_grad():
            return self.frontend.eval().coefficients(images, channels)

    def forward_model(self, images: Tensor) -> Tensor:
        return self.frontend.residue(images)

    def forward_selected(self, images: Tensor, channels: Tensor) -> Tensor:
        return self.frontend.coefficients(images, channels)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["reads"] += ("; the values are residues E(x) - g(x) of a known generator (its weights ship with the client "
                       "app), so placement signatures, simulated data and the forward model are residues too")
        return d


def public_minusface(frontend: MinusFace, attacker_seed: int = 0) -> MinusFace:
    """A MinusFace from the *public* config with the attacker's own seed and the real (public)
    generator weights: what an attacker without the secret can run."""
    cfg = {k: v for k, v in frontend.public_config().items() if k != "name" and k not in frontend.secret_keys}
    cfg["secret_seed"] = int(attacker_seed)
    copy = MinusFace(**cfg)
    copy.generator.load_state_dict(frontend.generator.state_dict())
    return copy.to(frontend.generator.head_weight.device).eval()


def build_minusface_view(frontend: MinusFace, knowledge: str, *, attacker_seed: int = 0,
                         hypotheses: Tensor | None = None) -> MinusFaceView:
    """The view at ``knowledge``: the real frontend only for ``secret``, the public copy otherwise."""
    real = knowledge == "secret"
    return MinusFaceView(frontend if real else public_minusface(frontend, attacker_seed), knowledge, hypotheses)
