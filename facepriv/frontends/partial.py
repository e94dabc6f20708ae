"""PartialFace-style frontend: prune the visible low frequencies, send a random subset of the rest.

Why it protects: the low frequencies (u + v <= 3 by default) carry most of what a person
sees in a face, so they never leave the device. The remaining 54 frequencies per colour are
split by a secret table into ``n_subsets`` disjoint subsets; each query sends only one subset
(chosen with a CSPRNG at inference). During training each identity only ever contributes a
fixed few of the subsets, so no single training image exposes all its high frequencies.
This is an empirical protection, not a formal privacy guarantee, and a weak one: after the
x8 up-sampling one subset over-determines most of the image (see ``privacy_report`` and
:func:`subset_rank`), and ``facepriv.eval.attacks`` recovers recognisable faces from it.

Layout: one subset = the same ``s`` frequencies (54 / n_subsets, 9 by default) taken from Y,
Cb and Cr, colour-major -> ``3*s`` channels (27), optionally re-ordered by one of a few fixed
permutations of the ``s`` positions (the same permutation for the three colours).
"""

from __future__ import annotations

import functools
import itertools
import secrets
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from facepriv.frontends.base import Frontend, validate_images
from facepriv.frontends.dct import (
    BLOCK,
    COEFFS_PER_BLOCK,
    N_COLORS,
    axis_operator,
    block_dct_select,
    block_dct_select_graph,
)
from facepriv.frontends.randomness import make_generator, secure_randbelow


#: Side of the proxy image on which :func:`subset_rank` measures what one subset determines.
RANK_PROXY = 16


@functools.lru_cache(maxsize=64)
def subset_rank(frequencies: tuple[int, ...], upsample: int, size: int = RANK_PROXY) -> tuple[int, int]:
    """(numerical rank, unknowns) of the linear map from one colour plane (size x size) to the
    coefficients of ``frequencies`` at every block, after ``upsample``.

    Why: it says how much of an image one query pins down, which the fraction of the spectrum
    does not. Separable structure: the Gram matrix is ``sum_k (A_uk^T A_uk) kron (A_vk^T A_vk)`` with
    ``A_f`` the rows of frequency f of the axis operator (YCbCr is invertible, so colours add up).
    """
    m = axis_operator(size, upsample)
    rows = m.view(-1, BLOCK, size)
    gram = torch.zeros(size * size, size * size, dtype=torch.float64)
    for k in frequencies:
        a, b = rows[:, k // BLOCK, :], rows[:, k % BLOCK, :]
        gram += torch.kron(a.T @ a, b.T @ b)
    singular = torch.linalg.eigvalsh(gram).clamp(min=0).sqrt()
    return int((singular > 1e-6 * singular.max()).sum()), size * size


def default_pruned(max_order: int = 3) -> list[int]:
    """Frequencies k = 8u + v with u + v <= max_order (10 of them for 3): the visible ones."""
    return [BLOCK * u + v for u in range(BLOCK) for v in range(BLOCK) if u + v <= max_order]


class PartialFace(Frontend):
    """Random frequency-subset frontend (training: identity-restricted subsets; inference: secure RNG).

    Args:
        upsample: bilinear up-sampling before the block DCT (TFace: 8 -> 112x112 output).
        pruned: frequencies k (0..63) removed from every colour; default u + v <= 3.
        n_subsets: how many disjoint subsets the kept frequencies are split into.
        subsets_per_identity: in training, each identity's images use only this many subsets
            (which ones is derived from the label through the secret table).
        n_permutations: fixed channel orders a subset may be sent in (1 = no permutation).
        sample_multiplier: ``r``, protected views per training image (distinct subsets among
            the identity's allowed ones); the batch grows r-fold, see ``expand_labels``.
        secret_seed: the model secret. Determines the subset table, the identity-to-subsets
            map and the permutations. Drawn from the OS CSPRNG when omitted; saved in
            checkpoints, never next to protected tensors (``public_config``).
        train_seed: seeds the generator for training-time choices (reproducible, resumable).
        inference_seed: if set, inference choices come from a generator with this seed
            (reproducible evaluation) instead of the OS CSPRNG.
    """

    name = "partialface"
    secret_keys = ("secret_seed",)
    channels_vary_per_query = True

    def __init__(
        self,
        upsample: int = 8,
        pruned: Sequence[int] | None = None,
        n_subsets: int = 6,
        subsets_per_identity: int = 3,
        n_permutations: int = 3,
        sample_multiplier: int = 3,
        secret_seed: int | None = None,
        train_seed: int = 0,
        inference_seed: int | None = None,
    ) -> None:
        super().__init__()
        pruned = sorted(set(default_pruned() if pruned is None else (int(k) for k in pruned)))
        if any(not 0 <= k < COEFFS_PER_BLOCK for k in pruned):
            raise ValueError(f"pruned frequencies must be in [0, 63], got {pruned}")
        kept = [k for k in range(COEFFS_PER_BLOCK) if k not in pruned]
        if n_subsets < 1 or len(kept) % n_subsets:
            raise ValueError(f"{len(kept)} kept frequencies cannot be split into {n_subsets} equal subsets")
        if not 1 <= subsets_per_identity <= n_subsets:
            raise ValueError(f"subsets_per_identity must be in [1, {n_subsets}], got {subsets_per_identity}")
        if not 1 <= sample_multiplier <= subsets_per_identity:
            raise ValueError(
                f"sample_multiplier ({sample_multiplier}) must be in [1, subsets_per_identity={subsets_per_identity}]: "
                "each view of an image uses a distinct allowed subset"
            )
        if n_permutations < 1:
            raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
        if upsample not in (1, 2, 4, 8):
            raise ValueError(f"upsample must be one of 1, 2, 4, 8 (8: TFace layout; 1, 2: compact), got {upsample!r}")
        self.upsample = int(upsample)
        self.pruned = pruned
        self.kept = kept
        self.n_subsets = int(n_subsets)
        self.subset_size = len(kept) // n_subsets
        self.subsets_per_identity = int(subsets_per_identity)
        self.n_permutations = int(n_permutations)
        self.sample_multiplier = int(sample_multiplier)
        self.secret_seed = int(secrets.randbits(63) if secret_seed is None else secret_seed)
        self.train_seed = int(train_seed)
        self.inference_seed = None if inference_seed is None else int(inference_seed)

        rng = np.random.default_rng(self.secret_seed)
        table = np.asarray(kept)[rng.permutation(len(kept))].reshape(self.n_subsets, self.subset_size)
        combos = list(itertools.combinations(range(self.n_subsets), self.subsets_per_identity))
        combos = [combos[i] for i in rng.permutation(len(combos))]
        perms = [np.arange(self.subset_size)] + [rng.permutation(self.subset_size) for _ in range(self.n_permutations - 1)]
        # Buffers, so they move with .to(device) and are visible in the state dict for audits;
        # they are re-derived from secret_seed on load, never trusted from a file.
        self.register_buffer("subset_table", torch.as_tensor(table, dtype=torch.long), persistent=False)
        self.register_buffer("identity_combos", torch.as_tensor(np.asarray(combos), dtype=torch.long), persistent=False)
        self.register_buffer("permutations", torch.as_tensor(np.stack(perms), dtype=torch.long), persistent=False)
        self._train_generator = make_generator(self.train_seed)
        self._inference_generator = None if self.inference_seed is None else make_generator(self.inference_seed)

    # ------------------------------------------------------------------ contract
    @property
    def out_channels(self) -> int:
        return N_COLORS * self.subset_size

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height * self.upsample // BLOCK, width * self.upsample // BLOCK

    @property
    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "upsample": self.upsample,
            "pruned": list(self.pruned),
            "n_subsets": self.n_subsets,
            "subsets_per_identity": self.subsets_per_identity,
            "n_permutations": self.n_permutations,
            "sample_multiplier": self.sample_multiplier,
            "secret_seed": self.secret_seed,
            "train_seed": self.train_seed,
            "inference_seed": self.inference_seed,
        }

    def expand_labels(self, labels: Tensor) -> Tensor:
        return labels.repeat_interleave(self.sample_multiplier) if self.training else labels

    def device_module(self) -> tuple[nn.Module, list[str], str]:
        """The traceable device graph, its input names and the randomness contract (``facepriv export``)."""
        return (self._device_graph(), ["images", "subset_ids", "permutation_ids"],
                f"subset_ids: int64 (B,) uniform in [0, {self.n_subsets}); permutation_ids: int64 (B,) uniform in "
                f"[0, {self.n_permutations}); both from the platform CSPRNG, fresh for every image")

    def _device_graph(self) -> nn.Module:
        return PartialFaceDevice(self)

    def privacy_report(self) -> dict[str, Any]:
        """What one query reveals, stated against what attacks measured (not the spectrum fraction alone)."""
        kept = len(self.kept)
        ranks = [subset_rank(tuple(int(k) for k in row), self.upsample) for row in self.subset_table.tolist()]
        worst = min(r / n for r, n in ranks)
        return {
            "frontend": self.name,
            "mechanism": "frequency pruning + secret random subset selection",
            "formal_guarantee": None,
            "pruned_frequencies_per_colour": len(self.pruned),
            "kept_frequencies_per_colour": kept,
            "frequencies_sent_per_query": self.subset_size,
            "fraction_of_upsampled_block_spectrum_sent_per_query": self.subset_size / COEFFS_PER_BLOCK,
            "measurements_per_unknown_pixel_value": self.subset_size * self.upsample**2 / COEFFS_PER_BLOCK,
            "one_subset_determines": (
                f"at least {worst:.0%} of an image's degrees of freedom (numerical rank of one subset's linear map, "
                f"min over the {self.n_subsets} subsets, per colour on a {RANK_PROXY}x{RANK_PROXY} proxy image)"),
            "what_attacks_found": self._attack_findings(),
            "training_subsets_per_identity": f"{self.subsets_per_identity} of {self.n_subsets}",
            "inference_randomness": "seeded generator" if self.inference_seed is not None else "OS CSPRNG (secrets)",
            "note": ("Empirical protection only, and weak against an analytic attacker: measure it with `facepriv attack`. "
                     "The secret seed must stay with the model owner, but it buys little." if self.upsample == 8 else
                     "Empirical protection only: no formal guarantee; measure this layout with `facepriv attack`. "
                     "The secret seed must stay with the model owner."),
        }

    def _attack_findings(self) -> str:
        """What the attack suite found *for this layout*: the TFace x8 numbers do not carry
        over to the compact layouts, whose single queries under-determine the face."""
        m = self.subset_size * self.upsample**2 / COEFFS_PER_BLOCK
        if self.upsample == 8:
            return ("The spectrum fraction is not an information fraction: after x8 bilinear up-sampling each 8x8 "
                    "block is nearly a linear ramp, so one query gives %.3g linear measurements per unknown pixel "
                    "value and least squares recovers the face except for its smoothest components. In the reference "
                    "run of docs/attacks.md the best reconstruction from single queries (least squares refined by "
                    "optimisation) was verified as the right person at FPR 1e-3 for 86%% of victims without the secret "
                    "and 93%% with it (raw images 99%%); on LFW-half (docs/results.md) identity leakage TPR@1e-3 was "
                    "0.51-0.56 without and 0.54-0.60 with it." % m)
        return ("Compact layout (x%d): one query gives %.3g linear measurements per unknown pixel value, fewer than "
                "one, so it under-determines the face and least squares alone cannot rebuild it; learned decoders "
                "and identity linkage may still recover identity from the statistics of faces. The attack numbers "
                "measured at the TFace x8 layout do not apply here; this layout's leakage is what `facepriv attack` "
                "(or the frontier rows in docs/results.md) measure for it." % (self.upsample, m))

    # ------------------------------------------------------------------ choices
    def subset_channels(self, subset: Tensor, permutation: Tensor) -> Tensor:
        """Full-layout channel indices (N, 3*s) for subset ids and permutation ids (N,)."""
        freqs = torch.gather(self.subset_table[subset], 1, self.permutations[permutation])  # (N, s)
        colors = torch.arange(N_COLORS, device=freqs.device).view(1, N_COLORS, 1) * COEFFS_PER_BLOCK
        return (colors + freqs.unsqueeze(1)).reshape(freqs.shape[0], -1)

    def allowed_subsets(self, labels: Tensor) -> Tensor:
        """The subsets (N, subsets_per_identity) an identity may train on, derived from its label."""
        return self.identity_combos[labels.remainder(self.identity_combos.shape[0])]

    def _training_choices(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        b, r = labels.shape[0], self.sample_multiplier
        g = self._train_generator
        # r distinct allowed subsets per image: a random ordering of the allowed list, first r.
        order = torch.rand(b, self.subsets_per_identity, generator=g).argsort(dim=1)[:, :r]
        # the draws live on the CPU with their generator; the table may sit on a GPU
        allowed = self.allowed_subsets(labels.cpu()).cpu()
        subset = torch.gather(allowed, 1, order).reshape(-1)
        perm = torch.randint(self.n_permutations, (b * r,), generator=g)
        return subset, perm

    def _inference_choices(self, b: int) -> tuple[Tensor, Tensor]:
        if self._inference_generator is not None:
            self._warn_if_fixed_inference_seed()
            g = self._inference_generator
            return (torch.randint(self.n_subsets, (b,), generator=g), torch.randint(self.n_permutations, (b,), generator=g))
        return (torch.tensor(secure_randbelow(self.n_subsets, b), dtype=torch.long),
                torch.tensor(secure_randbelow(self.n_permutations, b), dtype=torch.long))

    def _explicit_choices(self, b: int, subset: Tensor | int, permutation: Tensor | int | None) -> tuple[Tensor, Tensor]:
        def ids(value: Tensor | int, limit: int, what: str) -> Tensor:
            t = torch.as_tensor(value, dtype=torch.long).reshape(-1)
            t = t.expand(b) if t.numel() == 1 else t
            if t.shape != (b,) or int(t.min()) < 0 or int(t.max()) >= limit:
                raise ValueError(f"{what} ids must be one id or ({b},) ids in [0, {limit}), got {t.tolist()}")
            return t
        perm = ids(0 if permutation is None else permutation, self.n_permutations, "permutation")
        return ids(subset, self.n_subsets, "subset"), perm

    def coefficients(self, images: Tensor, channels: Tensor) -> Tensor:
        """The values sent for per-sample full-layout channels ``(B, J)``: the face's block DCT.

        The one place the sent values are computed, so a subclass that sends something else in
        the same layout (MinusFace: a learned residue) reuses all of the selection above.
        """
        return block_dct_select(images, channels, self.upsample, validate=False)

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, labels: Tensor | None = None, *, subset: Tensor | None = None,
                permutation: Tensor | None = None) -> Tensor:
        """Protect a batch.

        Training mode: ``labels`` required; returns ``B*r`` views (views of one image are
        adjacent, matching ``expand_labels``). Eval mode: one view per image with a random
        subset, unless ``subset`` (and optionally ``permutation``) ids are given explicitly
        (used by attacks that model a known choice, and by device export).
        """
        validate_images(images)
        b = images.shape[0]
        if subset is not None:
            subset, permutation = self._explicit_choices(b, subset, permutation)
            views = 1
        elif self.training:
            if labels is None:
                raise ValueError("PartialFace in training mode needs identity labels (they select the allowed subsets)")
            labels = torch.as_tensor(labels)
            if labels.shape != (b,) or labels.is_floating_point() or (labels.numel() and int(labels.min()) < 0):
                raise ValueError(f"labels must be non-negative integers of shape ({b},), got {labels.dtype} {tuple(labels.shape)}")
            subset, permutation = self._training_choices(labels)
            views = self.sample_multiplier
        else:
            subset, permutation = self._inference_choices(b)
            views = 1
        channels = self.subset_channels(subset.to(self.subset_table.device), permutation.to(self.subset_table.device))
        out = self.coefficients(images, channels.view(b, -1).to(images.device))
        return out.view(b * views, self.out_channels, *out.shape[-2:])


class PartialFaceDevice(nn.Module):
    """PartialFace as a traceable device graph (``facepriv export``): the per-image subset and
    permutation ids are inputs, so the app draws them from the platform CSPRNG."""

    def __init__(self, f: PartialFace) -> None:
        super().__init__()
        self.upsample = f.upsample
        self.register_buffer("subset_table", f.subset_table.clone())
        self.register_buffer("permutations", f.permutations.clone())
        self.register_buffer("colour_offset", (torch.arange(N_COLORS) * COEFFS_PER_BLOCK).view(1, N_COLORS, 1))

    def channels(self, subset_ids: Tensor, permutation_ids: Tensor) -> Tensor:
        """Full-layout channel indices (B, 3*s) of each image's subset and permutation."""
        freqs = torch.gather(self.subset_table[subset_ids], 1, self.permutations[permutation_ids])
        return (self.colour_offset + freqs.unsqueeze(1)).flatten(1)

    def forward(self, images: Tensor, subset_ids: Tensor, permutation_ids: Tensor) -> Tensor:
        return block_dct_select_graph(images, self.channels(subset_ids, permutation_ids), self.upsample)

