"""Protected inference exactly as deployed, for verification.

In deployment every face is its own query: the client protects it with the frontend (eval
mode) and the server embeds the protected tensor. For a stochastic frontend this means

* **PartialFace** picks an independent random frequency subset (and channel order) for each
  image, so the two images of a pair are almost always sent in *different* subsets;
* **DCTDP** draws fresh Laplace noise for each image.

Evaluating with one draw shared by both images of a pair, or with a fixed subset, would
measure a model nobody deploys (usually an optimistic one). So here:

1. each image referenced by a pair is protected and embedded **once per repetition** (an
   image in many pairs reuses its embedding, exactly as a gallery image enrolled once would);
   a pair that compares an image with itself gets a second, independent query for its
   second side;
2. embeddings are L2-normalised and a pair's score is their cosine similarity;
3. flip-test (optional): the flipped image is protected too — with its own independent
   randomness, it is another query — and the two raw embeddings are summed before
   normalising (``FaceRecognizer.embed(flip=True)``);
4. the whole set is scored ``R`` times with different frontend randomness, and the metrics'
   spread over those repetitions is reported. A deterministic frontend (RGB, DCT) gives the
   same scores every time, so it is scored once (``R = 1``) and the result says so.

Randomness: with a ``seed``, repetition ``r`` rebuilds the frontend with
``inference_seed = repetition_seeds(seed, R)[r]`` (reproducible for the same seed, batch size
and image order); without one, every repetition rebuilds it with ``inference_seed=None``,
i.e. the frontend's secure source (OS CSPRNG), whatever seed the checkpoint was saved with.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "EvalInputError",
    "ProtectedEmbeddings",
    "PairSlots",
    "check_image_size",
    "embed_protected_set",
    "frontend_for_repetition",
    "is_reseedable",
    "pair_scores",
    "pair_slots",
    "probe_stochastic",
    "repetition_seeds",
    "score_pairs",
]

#: rows of the probe batch used to detect whether a frontend is random at inference
_PROBE_ROWS = 8
#: pairs scored per step (bounds the temporary P x D gather)
_SCORE_CHUNK = 1 << 16


class EvalInputError(ValueError):
    """The evaluation inputs do not fit together (checkpoint vs data); the message names the file."""


# --------------------------------------------------------------------------- randomness


def repetition_seeds(seed: int, repetitions: int) -> list[int]:
    """Per-repetition inference seeds derived from one user seed.

    ``SeedSequence([seed, r])`` gives well-separated 63-bit seeds, so repetition ``r`` draws
    the same randomness whatever the number of repetitions, checkpoints or sets in the run
    (results for one checkpoint x set do not depend on what else was evaluated).
    """
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1, got {repetitions}")
    out = []
    for r in range(repetitions):
        state = np.random.SeedSequence([int(seed), r]).generate_state(2, np.uint32)
        out.append(int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1))
    return out


def is_reseedable(frontend: nn.Module) -> bool:
    """True if the frontend's config has an ``inference_seed`` option (PartialFace, DCTDP):
    its inference randomness can then be made reproducible or forced to the secure source.
    Whether it is random at all is decided by :func:`probe_stochastic`."""
    cfg = getattr(frontend, "config", None)
    return isinstance(cfg, dict) and "inference_seed" in cfg


@torch.no_grad()
def probe_stochastic(frontend: nn.Module, images: Tensor) -> bool:
    """True if two eval-mode calls on the same images differ (the frontend draws randomness).

    The probe tiles ``images`` to ``_PROBE_ROWS`` rows so that even PartialFace with its few
    subsets differs with overwhelming probability (6 subsets x 3 orders, 8 rows: a false
    "deterministic" has probability 18^-8). A frontend whose only randomness is
    degenerate (one subset, one order) is correctly found deterministic.
    """
    was = frontend.training
    frontend.eval()
    try:
        reps = -(-_PROBE_ROWS // max(1, images.shape[0]))
        x = images.repeat(reps, 1, 1, 1)[:_PROBE_ROWS]
        a = frontend(x)
        b = frontend(x)
    finally:
        frontend.train(was)
    return not torch.equal(a, b)


def frontend_for_repetition(frontend: nn.Module, inference_seed: int | None, source: str = "<checkpoint>") -> nn.Module:
    """A copy of ``frontend`` whose inference randomness comes from ``inference_seed``
    (None: the frontend's secure source).

    The copy is rebuilt from the frontend's config (secrets included, so PartialFace's subset
    table is the same) and gets the original's learned state (DCTDP's budget), so only the
    randomness differs. Rebuilding uses the public ``build_frontend`` contract rather than
    poking at private generators.
    """
    from facepriv.frontends import build_frontend

    cfg = dict(frontend.config)
    cfg["inference_seed"] = None if inference_seed is None else int(inference_seed)
    try:
        copy = build_frontend(cfg)
        copy.load_state_dict(frontend.state_dict(), strict=True)
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        raise EvalInputError(
            f"{source}: cannot re-seed frontend {cfg.get('name')!r} for evaluation "
            f"(rebuilding it from its config failed: {type(e).__name__}: {e})"
        ) from e
    if copy.config != cfg:  # the rebuild must be the same frontend with another seed
        raise EvalInputError(f"{source}: frontend {cfg.get('name')!r} did not round-trip through its config")
    ref = next(iter(frontend.buffers()), None)
    if ref is None:
        ref = next(iter(frontend.parameters()), None)
    if ref is not None:
        copy.to(ref.device)
    return copy.eval()


@contextlib.contextmanager
def _using_frontend(model: nn.Module, frontend: nn.Module) -> Iterator[None]:
    """Temporarily swap the model's frontend (one per repetition, each with its own RNG)."""
    original = model.frontend
    model.frontend = frontend
    try:
        yield
    finally:
        model.frontend = original


# --------------------------------------------------------------------------- pairs -> queries


@dataclass(frozen=True)
class PairSlots:
    """Which image each embedding slot holds and which slots each pair compares.

    ``images[s]`` is the set's image index embedded in slot ``s``; ``pairs[p] = (sa, sb)``.
    Every image referenced by a pair has exactly one slot, plus one extra slot for images
    that some pair compares with themselves (the second side is its own query).
    """

    images: np.ndarray
    pairs: np.ndarray

    @property
    def n_slots(self) -> int:
        return int(self.images.size)


def pair_slots(pairs: np.ndarray) -> PairSlots:
    """Slots for ``pairs`` (P x 2 image indices): each unique image once, self-pairs twice."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    needed = np.unique(pairs)
    slot_of = {int(i): s for s, i in enumerate(needed)}
    first = np.array([[slot_of[int(a)], slot_of[int(b)]] for a, b in pairs], dtype=np.int64).reshape(-1, 2)
    selfish = np.flatnonzero(pairs[:, 0] == pairs[:, 1])
    extra_imgs = np.unique(pairs[selfish, 0]) if selfish.size else np.zeros(0, dtype=np.int64)
    extra_slot = {int(i): needed.size + k for k, i in enumerate(extra_imgs)}
    for p in selfish:
        first[p, 1] = extra_slot[int(pairs[p, 0])]
    return PairSlots(np.concatenate([needed, extra_imgs]).astype(np.int64), first)


# --------------------------------------------------------------------------- embedding


def check_image_size(image: np.ndarray, expected: int, where: str, checkpoint: str, frontend_name: str) -> None:
    """Refuse an image the checkpoint's frontend was not built for (instead of resizing
    silently: a 250x250 unaligned LFW image squeezed to 112x112 is not an aligned face)."""
    h, w = image.shape[:2]
    if (h, w) != (expected, expected):
        raise EvalInputError(
            f"{where}: image is {h}x{w}, but checkpoint {checkpoint} (frontend {frontend_name!r}) expects "
            f"{expected}x{expected} aligned faces. Align the images first (`facepriv data align`), or use a set "
            f"made for this model's input size"
        )


@dataclass
class ProtectedEmbeddings:
    """Embeddings of every slot for every repetition: ``embeddings[r, s]`` (float32, CPU)."""

    embeddings: Tensor
    slots: PairSlots
    stochastic: bool
    repetitions: int
    inference_seeds: list[int] | None
    randomness: str
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def _load_batch(vset: Any, indices: np.ndarray, image_size: int, checkpoint: str, frontend_name: str) -> Tensor:
    from facepriv.data.images import to_tensor

    arrays = []
    for i in indices:
        img = vset.load_image(int(i))  # VerificationDataError naming the file on a bad image
        check_image_size(img, image_size, vset.images.name(int(i)), checkpoint, frontend_name)
        arrays.append(to_tensor(img))
    return torch.stack(arrays)


@torch.no_grad()
def embed_protected_set(
    model: nn.Module,
    vset: Any,
    *,
    repetitions: int = 5,
    flip: bool = False,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    checkpoint: str = "<model>",
    progress: bool = True,
) -> ProtectedEmbeddings:
    """Protect and embed every image a ``VerificationSet``'s pairs use, ``R`` times.

    ``model`` is a ``FaceRecognizer`` already on ``device``. Each image batch is decoded
    once and embedded by every repetition's frontend (each repetition's frontend owns its
    random stream, so interleaving does not couple them). Deterministic frontends are
    detected with :func:`probe_stochastic` and embedded once.
    """
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1, got {repetitions}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    slots = pair_slots(vset.pairs)
    if slots.n_slots == 0:
        raise EvalInputError(f"{vset.meta.get('source', vset.name)}: the set has no pairs")
    frontend = model.frontend
    fname = str(getattr(frontend, "name", type(frontend).__name__))
    image_size = int(getattr(model, "image_size", 112))

    t0 = time.perf_counter()
    probe = _load_batch(vset, slots.images[: min(_PROBE_ROWS, slots.n_slots)], image_size, checkpoint, fname).to(device)
    reseedable = is_reseedable(frontend)
    if reseedable:
        stochastic = probe_stochastic(frontend_for_repetition(frontend, None, checkpoint), probe)
    else:
        stochastic = probe_stochastic(frontend, probe)
    reps = repetitions if stochastic else 1
    seeds: list[int] | None = None
    if not stochastic:
        fronts = [frontend]
        randomness = "none: deterministic frontend, scored once (R = 1)"
    elif reseedable:
        seeds = repetition_seeds(seed, reps) if seed is not None else None
        fronts = [frontend_for_repetition(frontend, None if seeds is None else seeds[r], checkpoint) for r in range(reps)]
        randomness = (
            f"seeded: repetition r uses inference_seed = repetition_seeds({seed}, {reps})[r]"
            if seeds is not None
            else "secure: OS CSPRNG, independent per image and per repetition"
        )
    else:  # random, but offers no inference_seed knob: its own source, not reproducible
        fronts = [frontend] * reps
        randomness = "frontend's own random source (no inference_seed option: not reproducible)"

    dim = None
    out: Tensor | None = None
    from tqdm import tqdm

    bar = tqdm(
        total=slots.n_slots * reps, desc=f"{Path(checkpoint).name} | {vset.name}", unit="img", disable=not progress,
    )
    was_training = model.training
    model.eval()
    try:
        for start in range(0, slots.n_slots, batch_size):
            idx = slots.images[start : start + batch_size]
            x = _load_batch(vset, idx, image_size, checkpoint, fname).to(device, non_blocking=True)
            for r, f in enumerate(fronts):
                with _using_frontend(model, f):
                    e = model.embed(x, flip=flip).float().cpu()
                if out is None:
                    dim = int(e.shape[1])
                    out = torch.empty(reps, slots.n_slots, dim, dtype=torch.float32)
                out[r, start : start + len(idx)] = e
                bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    assert out is not None
    if not torch.isfinite(out).all():
        raise EvalInputError(f"{checkpoint}: the model produced NaN/inf embeddings on {vset.name} (diverged weights?)")
    secs = time.perf_counter() - t0
    return ProtectedEmbeddings(
        embeddings=out,
        slots=slots,
        stochastic=stochastic,
        repetitions=reps,
        inference_seeds=seeds,
        randomness=randomness,
        seconds=secs,
        info={"frontend": fname, "embedding_dim": dim, "images_embedded": slots.n_slots * reps * (2 if flip else 1)},
    )


def pair_scores(embeddings: Tensor, pairs: np.ndarray | Tensor) -> np.ndarray:
    """Cosine scores (float64) of ``pairs`` (P x 2 row indices) over unit-norm ``embeddings``.

    The one scoring routine of the code base: ``facepriv eval verify`` and the trainer's
    periodic verification both call it, so the same embeddings give bit-identical scores
    (and metrics) on both paths. The dot products are taken in float64 (a float32 sum of
    512 products carries ~1e-7 error, enough to reorder near-tied pairs at a threshold), in
    chunks that bound the temporary ``P x D`` gather.
    """
    p = torch.as_tensor(np.asarray(pairs, dtype=np.int64)).reshape(-1, 2)
    out = np.empty(p.shape[0], dtype=np.float64)
    if p.shape[0] and (int(p.min()) < 0 or int(p.max()) >= embeddings.shape[0]):
        raise IndexError(f"pair indices must be in [0, {embeddings.shape[0]}), got range [{int(p.min())}, {int(p.max())}]")
    e = embeddings.detach().cpu()
    for s in range(0, p.shape[0], _SCORE_CHUNK):
        q = p[s : s + _SCORE_CHUNK]
        out[s : s + q.shape[0]] = (e[q[:, 0]].double() * e[q[:, 1]].double()).sum(dim=1).numpy()
    return out


def score_pairs(emb: ProtectedEmbeddings, repetition: int) -> np.ndarray:
    """Cosine scores (float64) of every pair for one repetition (embeddings are unit norm)."""
    return pair_scores(emb.embeddings[repetition], emb.slots.pairs)
