"""The attacker's view of a frontend: how it simulates protected tensors and how it reads them.

Threat model (Kerckhoffs): the attacker knows the frontend's algorithm, its public
configuration and its learned, non-secret parameters (DCTDP's budget allocation and
clipping bounds travel with the server-side model), and has auxiliary faces of other
people. What it does not know, unless ``knowledge="secret"``:

* PartialFace's ``secret_seed`` (the subset table and permutations);
* per-query random choices (PartialFace's subset/permutation, drawn by the client's CSPRNG);
* DCTDP's noise draws (fresh per query; there is no secret to know, so DCTDP's "secret"
  view is the public one).

Every view turns an intercepted tensor into a ``Placed`` observation in a common layout —
the 192-channel block-DCT layout (or the image itself for the RGB baseline), with a
per-channel mask of what was observed and, for DCTDP, the Laplace scale of each element —
so the analytic, learned and optimisation attacks are written once for all frontends.

How PartialFace is read (see ``facepriv.eval.attacks.placement``):

* ``public``: the attacker simulates training data with a *fresh random secret per sample*
  (any ``s`` distinct kept frequencies in any order: the marginal over secrets, since its own
  single random seed would be as wrong as any other) and places intercepted channels by its
  estimate of which frequency each holds;
* ``secret``: the seed is known, so the table and permutations are; the per-query choice is
  identified among the ``n_subsets x n_permutations`` hypotheses and the channels placed
  exactly where that hypothesis says.
* ``recovered``: no secret, but the layouts were recovered from intercepted traffic
  (``facepriv.eval.attacks.recovery``); the attacker then reads tensors exactly as under
  ``secret``, with its recovered hypotheses in place of the real table. The view is built
  on the public copy of the frontend (the real table is never read).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import Tensor

from facepriv.frontends import AC_INDEX, DCTDP, FULL_CHANNELS, DCTFrontend, PartialFace, RGBFrontend, block_dct
from facepriv.frontends.dct import BLOCK, COEFFS_PER_BLOCK, N_COLORS

from facepriv.eval.attacks.placement import FrequencyProfile

__all__ = ["AuxStats", "Placed", "AttackerView", "build_view", "observe", "has_secret", "KNOWLEDGE_LEVELS", "public_copy"]

KNOWLEDGE_LEVELS = ("public", "secret", "recovered")


@dataclass
class Placed:
    """An intercepted tensor as the attacker reads it.

    ``domain="dct"``: ``values`` ``B x 192 x h x w`` block-DCT coefficients (zeros where not
    observed), ``mask`` ``B x 192`` (1 = channel observed). ``domain="image"``: ``values`` the
    RGB image in [0, 1] (RGB baseline), ``mask`` all ones. ``inv_scale``: 1 / Laplace scale of
    each observed element (DCTDP), broadcastable to ``values``, ``None`` for exact
    observations. ``clip``: per-channel clipping bound of the mechanism, or ``None``.
    """

    domain: str
    values: Tensor
    mask: Tensor
    inv_scale: Tensor | None = None
    clip: Tensor | None = None

    def to(self, device: torch.device | str) -> "Placed":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Placed(self.domain, self.values.to(device), self.mask.to(device), mv(self.inv_scale), mv(self.clip))

    def select(self, index: slice) -> "Placed":
        def pick(t: Tensor | None) -> Tensor | None:
            if t is None or t.dim() == 0 or t.shape[0] == 1 or t.dim() == 1:
                return t
            return t[index]
        return Placed(self.domain, self.values[index], self.mask[index], pick(self.inv_scale), self.clip)


class AuxStats:
    """Statistics of the attacker's auxiliary faces: mean image, mean and spread of every
    block-DCT channel. Used for 'mean' filling, priors and input standardisation."""

    def __init__(self, mean_image: Tensor, coeff_mean: Tensor, coeff_std: Tensor, ycc_var: Tensor,
                 n_images: int, upsample: int) -> None:
        self.mean_image = mean_image      # (3, H, W) RGB in [0, 1]
        self.coeff_mean = coeff_mean      # (192, h, w)
        self.coeff_std = coeff_std        # (192,) spread of each channel over images and positions
        self.ycc_var = ycc_var            # (3,) pixel variance around the mean face, level-shifted YCbCr (0-255)
        self.n_images = int(n_images)
        self.upsample = int(upsample)

    @classmethod
    @torch.no_grad()
    def fit(cls, batches: Iterable[Tensor], upsample: int = 8) -> "AuxStats":
        from facepriv.frontends.dct import rgb_to_ycbcr_shifted

        s_img = s_c = s_c2 = s_y = s_y2 = None
        n = 0
        for images in batches:
            images = images.float()
            full = block_dct(images, upsample).double()
            ycc = rgb_to_ycbcr_shifted(images.double())
            s_img = images.double().sum(0) if s_img is None else s_img + images.double().sum(0)
            s_y = ycc.sum(0) if s_y is None else s_y + ycc.sum(0)
            s_y2 = ycc.pow(2).sum(0) if s_y2 is None else s_y2 + ycc.pow(2).sum(0)
            s_c = full.sum(0) if s_c is None else s_c + full.sum(0)
            sq = full.pow(2).sum((0, 2, 3))
            s_c2 = sq if s_c2 is None else s_c2 + sq
            n += images.shape[0]
        if n < 2:
            raise ValueError("AuxStats.fit: need at least two auxiliary images")
        mean = s_c / n
        positions = mean.shape[1] * mean.shape[2]
        var = s_c2 / (n * positions) - mean.pow(2).mean((1, 2))
        ycc_var = (s_y2 / n - (s_y / n).pow(2)).mean((1, 2)).clamp(min=1e-6)
        return cls((s_img / n).float(), mean.float(), var.clamp(min=1e-8).sqrt().float(), ycc_var.float(), n, upsample)

    def to(self, device: str | torch.device) -> "AuxStats":
        for name in ("mean_image", "coeff_mean", "coeff_std", "ycc_var"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"n_images": self.n_images, "image_size": list(self.mean_image.shape[-2:])}


def _batches(images: Tensor, batch_size: int, device: str | torch.device) -> Iterable[Tensor]:
    """Float [0, 1] batches on ``device`` from uint8 or float images."""
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        yield x.to(device)


def has_secret(frontend: torch.nn.Module) -> bool:
    """True when the frontend has secret configuration (knowledge levels then differ)."""
    return bool(getattr(frontend, "secret_keys", ()))


def _unit_uniform(shape: tuple[int, ...], g: torch.Generator, device: torch.device) -> Tensor:
    """Uniforms strictly inside (0, 1) (the Laplace inverse CDF is infinite at the ends).

    A DCTDP tensor needs millions of uniforms per image: they are drawn on ``device`` by a
    generator seeded from ``g``, so the stream stays reproducible (and resumable: only
    ``g``'s state matters) without generating them on the CPU for a GPU run.
    """
    device = torch.device(device)
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    local = torch.Generator(device=device).manual_seed(seed)
    return torch.rand(shape, generator=local, device=device).clamp_(1e-7, 1 - 1e-7)


@torch.no_grad()
def observe(frontend: torch.nn.Module, images: Tensor, g: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    """Protect victims' images with the *real* frontend, as the client would, recording the
    per-query random choices (never shown to the attacker; used for naive renderings and to
    score the attacker's placement). Randomness comes from ``g`` instead of the OS CSPRNG so
    an evaluation is reproducible; the distribution is the same."""
    frontend.eval()
    if isinstance(frontend, PartialFace):
        b = images.shape[0]
        subset = torch.randint(frontend.n_subsets, (b,), generator=g)
        perm = torch.randint(frontend.n_permutations, (b,), generator=g)
        out = frontend(images, subset=subset, permutation=perm)
        return out, {"channels": frontend.subset_channels(subset.to(frontend.subset_table.device),
                                                          perm.to(frontend.subset_table.device)).cpu(),
                     "subset": subset, "permutation": perm}
    if isinstance(frontend, DCTDP):
        b = images.shape[0]
        h, w = frontend.output_size(images.shape[-2], images.shape[-1])
        u = _unit_uniform((b, frontend.out_channels, h, w), g, images.device)
        return frontend(images, noise_uniform=u), {}
    return frontend(images), {}


class AttackerView:
    """Base: an unprotected frontend whose output the attacker reads directly."""

    domain = "dct"

    def __init__(self, frontend: torch.nn.Module, knowledge: str) -> None:
        if knowledge not in KNOWLEDGE_LEVELS:
            raise ValueError(f"knowledge must be one of {KNOWLEDGE_LEVELS}, got {knowledge!r}")
        self.frontend = frontend
        self.knowledge = knowledge
        self.name = str(getattr(frontend, "name", type(frontend).__name__))
        self.upsample = int(getattr(frontend, "upsample", 1))
        self.stats: AuxStats | None = None

    # -- preparation ------------------------------------------------------------------
    def fit(self, aux_images: Tensor, batch_size: int = 64, device: str | torch.device = "cpu") -> "AttackerView":
        """Learn what the attacker needs from its auxiliary faces (``N x 3 x H x W``, uint8 or [0, 1] float)."""
        self.stats = AuxStats.fit(_batches(aux_images, batch_size, device), self.upsample if self.domain == "dct" else 8)
        self.stats.to("cpu")
        return self

    @property
    def channels(self) -> int:
        return 3 if self.domain == "image" else FULL_CHANNELS

    @property
    def pixels_per_cell(self) -> int:
        """Face pixels per side of one cell of the placed map: 1 for images and the TFace x8
        layout, 8 // upsample for the compact layouts (a 14x14 map of a 112 face: 8)."""
        return 1 if self.domain == "image" else BLOCK // self.upsample

    # -- simulation (attacker's own randomness) ----------------------------------------
    def simulate(self, images: Tensor, g: torch.Generator) -> Tensor:
        """What the frontend would emit for ``images`` (the attacker's training data)."""
        with torch.no_grad():
            return self.frontend.eval()(images)

    # -- reading ---------------------------------------------------------------------------
    def place(self, protected: Tensor) -> Placed:
        return Placed("dct", protected, torch.ones(protected.shape[0], FULL_CHANNELS, device=protected.device))

    def place_true(self, protected: Tensor, truth: dict[str, Tensor]) -> Placed:
        """Placement with the real per-query choices (defender's view; naive renderings)."""
        return self.place(protected)

    def forward_model(self, images: Tensor) -> Tensor:
        """Differentiable prediction of ``Placed.values`` for candidate images."""
        return block_dct(images, self.upsample, validate=False)

    def forward_selected(self, images: Tensor, channels: Tensor) -> Tensor:
        """``forward_model`` at per-sample channels ``(B, J)`` only (the optimisation attack's fast path)."""
        from facepriv.frontends import block_dct_select

        return block_dct_select(images, channels, self.upsample, validate=False)

    def describe(self) -> dict[str, Any]:
        return {"frontend": self.name, "knowledge": self.knowledge, "domain": self.domain,
                "reads": "the protected tensor directly (no secret)"}

    def diagnostics(self, protected: Tensor, truth: dict[str, Tensor]) -> dict[str, Any]:
        """How well the attacker read the tensor (PartialFace placement accuracy)."""
        return {}


class RGBView(AttackerView):
    domain = "image"

    def place(self, protected: Tensor) -> Placed:
        img = (protected + 1.0) / 2.0 if getattr(self.frontend, "normalize", True) else protected
        return Placed("image", img, torch.ones(img.shape[0], 3, device=img.device))

    def forward_model(self, images: Tensor) -> Tensor:
        return images


class DCTView(AttackerView):
    pass


class DCTDPView(AttackerView):
    """Noisy AC coefficients at known positions; DC missing; Laplace scales known."""

    def simulate(self, images: Tensor, g: torch.Generator) -> Tensor:
        f = self.frontend.eval()
        h, w = f.output_size(images.shape[-2], images.shape[-1])
        with torch.no_grad():
            return f(images, noise_uniform=_unit_uniform((images.shape[0], f.out_channels, h, w), g, images.device))

    def _layout(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad():
            scales = self.frontend.noise_scales().detach().to(device)
        h = w = self.frontend.spatial
        inv = torch.zeros(FULL_CHANNELS, h, w, device=device)
        inv[AC_INDEX] = (1.0 / scales).expand(len(AC_INDEX), h, w).float()
        clip = torch.full((FULL_CHANNELS,), float("inf"), device=device)
        clip[AC_INDEX] = self.frontend.clip_bound.detach().float().to(device)
        mask = torch.zeros(FULL_CHANNELS, device=device)
        mask[AC_INDEX] = 1.0
        return inv.unsqueeze(0), clip, mask

    def place(self, protected: Tensor) -> Placed:
        b, _, h, w = protected.shape
        inv, clip, mask = self._layout(protected.device)
        values = protected.new_zeros(b, FULL_CHANNELS, h, w)
        values[:, AC_INDEX] = protected
        return Placed("dct", values, mask.expand(b, -1).clone(), inv, clip)

    def forward_model(self, images: Tensor) -> Tensor:
        full = block_dct(images, self.upsample, validate=False)
        clip = self.frontend.clip_bound.detach().to(full.dtype)
        ac = full.view(full.shape[0], N_COLORS, COEFFS_PER_BLOCK, *full.shape[-2:])[:, :, 1:]
        bound = clip.view(1, N_COLORS, COEFFS_PER_BLOCK - 1, 1, 1)
        clipped = torch.maximum(torch.minimum(ac, bound), -bound)
        dc = full.view(full.shape[0], N_COLORS, COEFFS_PER_BLOCK, *full.shape[-2:])[:, :, :1]
        return torch.cat([dc, clipped], 2).view_as(full)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["reads"] = ("AC coefficients at their known positions, DC unobserved; noise scales and clipping "
                      "bounds known from the model (not secret); noise draws unknown")
        if self.knowledge == "secret":
            d["note"] = "DCTDP has no secret configuration: the 'secret' view equals the public one"
        return d


class PartialFaceView(AttackerView):
    """Channels of unknown (public) or inferred-from-the-table (secret) frequency."""

    def __init__(self, frontend: PartialFace, knowledge: str, hypotheses: Tensor | None = None) -> None:
        super().__init__(frontend, knowledge)
        self.profile = FrequencyProfile(frontend.kept, frontend.upsample)
        self.s = frontend.subset_size
        self._kept = torch.tensor(frontend.kept)
        if knowledge == "recovered":
            if hypotheses is None or hypotheses.dim() != 2 or hypotheses.shape[1] != N_COLORS * self.s \
                    or hypotheses.shape[0] < 1:
                raise ValueError(f"recovered knowledge needs recovered layouts of shape (H, {N_COLORS * self.s}), "
                                 f"got {None if hypotheses is None else tuple(hypotheses.shape)}")
            self.hypotheses = hypotheses.long().cpu()
        elif knowledge == "secret":
            combos = torch.cartesian_prod(torch.arange(frontend.n_subsets), torch.arange(frontend.n_permutations))
            self.hypotheses = frontend.subset_channels(combos[:, 0].to(frontend.subset_table.device),
                                                       combos[:, 1].to(frontend.subset_table.device)).cpu()
        else:
            self.hypotheses = None  # the attacker never touches the table

    def fit(self, aux_images: Tensor, batch_size: int = 64, device: str | torch.device = "cpu") -> "PartialFaceView":
        super().fit(aux_images, batch_size, device)
        self.profile.fit(_batches(aux_images, batch_size, device))
        self.profile.to("cpu")
        return self

    def _random_channels(self, b: int, g: torch.Generator) -> Tensor:
        if self.hypotheses is not None:
            idx = torch.randint(self.hypotheses.shape[0], (b,), generator=g)
            return self.hypotheses[idx]
        k = len(self.frontend.kept)
        order = torch.rand(b, k, generator=g).argsort(1)[:, : self.s]  # s distinct kept freqs, random order
        freqs = self._kept[order]
        colors = torch.arange(N_COLORS).view(1, N_COLORS, 1) * COEFFS_PER_BLOCK
        return (colors + freqs.unsqueeze(1)).reshape(b, -1)

    def simulate(self, images: Tensor, g: torch.Generator) -> Tensor:
        from facepriv.frontends import block_dct_select

        ch = self._random_channels(images.shape[0], g).to(images.device)
        with torch.no_grad():
            return block_dct_select(images, ch, self.frontend.upsample)

    def channels_for(self, protected: Tensor) -> Tensor:
        """The attacker's channel assignment ``(B, 3*s)`` for intercepted tensors."""
        if self.profile.mean is None:
            raise RuntimeError("PartialFaceView: call fit() on auxiliary images first")
        if self.hypotheses is not None:
            return self.profile.best_hypothesis(protected.cpu(), self.hypotheses)[0]
        return self.profile.estimate(protected.cpu(), self.s)

    @staticmethod
    def _placed(protected: Tensor, channels: Tensor) -> Placed:
        b, _, h, w = protected.shape
        channels = channels.to(protected.device)
        values = protected.new_zeros(b, FULL_CHANNELS, h, w)
        values.scatter_(1, channels.view(b, -1, 1, 1).expand(-1, -1, h, w), protected)
        mask = protected.new_zeros(b, FULL_CHANNELS)
        mask.scatter_(1, channels, 1.0)
        return Placed("dct", values, mask)

    def place(self, protected: Tensor) -> Placed:
        return self._placed(protected, self.channels_for(protected))

    def place_true(self, protected: Tensor, truth: dict[str, Tensor]) -> Placed:
        return self._placed(protected, truth["channels"])

    def diagnostics(self, protected: Tensor, truth: dict[str, Tensor]) -> dict[str, Any]:
        est = self.channels_for(protected)
        true = truth["channels"].to(est.device)
        return {
            "placement": {"secret": "hypothesis over (subset, permutation) with the known table",
                          "recovered": "hypothesis over the layouts recovered from intercepted traffic"}.get(
                self.knowledge, "estimated frequency per channel (Hungarian on learned per-frequency signatures)"),
            "position_accuracy": float((est == true).float().mean()),
            "query_exactly_placed": float((est == true).all(1).float().mean()),
            "frequency_set_recall": float(sum(len(set(a) & set(b)) for a, b in zip(est.tolist(), true.tolist())) / true.numel()),
        }

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self.knowledge == "secret":
            d["reads"] = ("secret seed known (subset table, permutations); the per-query subset/permutation is "
                          f"identified among {self.hypotheses.shape[0]} hypotheses from channel statistics")
        elif self.knowledge == "recovered":
            d["reads"] = ("no secret; the layouts were recovered from intercepted traffic and each query is "
                          f"identified among the {self.hypotheses.shape[0]} recovered hypotheses from channel statistics")
        else:
            d["reads"] = ("no secret: each channel's frequency is estimated from learned per-frequency statistics; "
                          "training data use a fresh random subset/order per sample (marginal over secrets)")
        return d


def public_copy(frontend: PartialFace, attacker_seed: int = 0) -> PartialFace:
    """A PartialFace built from the *public* configuration only, with the attacker's own seed.

    The public view works on this copy, so no code path of a public-knowledge attack can
    read the real table, even by accident.
    """
    cfg = {k: v for k, v in frontend.public_config().items() if k != "name" and k not in frontend.secret_keys}
    cfg["secret_seed"] = int(attacker_seed)
    return PartialFace(**cfg).eval()


def build_view(frontend: torch.nn.Module, knowledge: str, *, attacker_seed: int = 0,
               hypotheses: Tensor | None = None) -> AttackerView:
    """The attacker's view of ``frontend`` at ``knowledge`` ("public", "secret" or "recovered").

    ``hypotheses``: the layouts recovered from traffic (``recovered`` knowledge, PartialFace only).
    """
    if knowledge == "recovered" and not isinstance(frontend, PartialFace):
        raise ValueError(f"'recovered' knowledge applies to PartialFace only, not {type(frontend).__name__}")
    from facepriv.frontends import MinusFace

    if isinstance(frontend, MinusFace):  # a PartialFace subclass that sends a learned residue: its own view
        from facepriv.eval.attacks.minusface_view import build_minusface_view

        return build_minusface_view(frontend, knowledge, attacker_seed=attacker_seed, hypotheses=hypotheses)
    if isinstance(frontend, PartialFace):
        real = knowledge == "secret"
        return PartialFaceView(frontend if real else public_copy(frontend, attacker_seed), knowledge, hypotheses)
    if isinstance(frontend, DCTDP):
        return DCTDPView(frontend, knowledge)
    if isinstance(frontend, DCTFrontend):
        return DCTView(frontend, knowledge)
    if isinstance(frontend, RGBFrontend):
        return RGBView(frontend, knowledge)
    raise ValueError(f"no attacker view for frontend {type(frontend).__name__}; supported: rgb, dct, partialface, dctdp")
