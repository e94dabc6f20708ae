"""Training-time verification and ``facepriv eval verify`` share one flip-test and one scorer.

Both paths must give bit-identical scores for the same model and pairs, with and without
the flip-test, and the flip-test must be the insightface convention (sum the raw embeddings
of the face and its mirror, then normalise), not the sum of normalised embeddings.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facepriv.verification.protocols import embed_protected_set, score_pairs
from facepriv.data.verification import ArrayImageSource, VerificationSet
from facepriv.models import FaceRecognizer
from facepriv.training.verification import embed_images, materialise
from facepriv.training.verification import score_pairs as train_score_pairs

SIZE = 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(frontend: str) -> FaceRecognizer:
    torch.manual_seed(0)
    backbone = {"name": "iresnet", "layers": [1, 1, 1, 1], "width": 0.125, "embedding_size": 16, "input_size": SIZE}
    return FaceRecognizer.from_config({"frontend": {"name": frontend}, "backbone": backbone, "image_size": SIZE})


def _set(n_images: int = 12, seed: int = 0) -> VerificationSet:
    """Random-texture images; every image in two pairs (no self-pairs: both paths then embed
    the same images in the same order and batches)."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n_images, SIZE, SIZE, 3), dtype=np.uint8)
    a = np.arange(n_images)
    pairs = np.concatenate([np.stack([a, np.roll(a, 1)], 1), np.stack([a, np.roll(a, 5)], 1)])
    issame = np.arange(len(pairs)) % 2 == 0
    return VerificationSet("arr", ArrayImageSource(imgs), pairs, issame, np.arange(len(pairs)) % 2, image_size=None)


@pytest.mark.parametrize("frontend", ["rgb", "dct"])
@pytest.mark.parametrize("flip", [False, True])
def test_training_and_eval_paths_give_identical_scores(frontend: str, flip: bool) -> None:
    model, vset = _model(frontend), _set()
    cpu = torch.device("cpu")
    loaded = materialise(vset, batch_size=5)
    train_scores = train_score_pairs(embed_images(model, loaded.images, cpu, batch_size=5, flip=flip), loaded.pairs)
    emb = embed_protected_set(model, vset, repetitions=1, flip=flip, batch_size=5, progress=False)
    eval_scores = score_pairs(emb, 0)
    assert train_scores.dtype == eval_scores.dtype == np.float64
    assert np.array_equal(train_scores, eval_scores)
    assert model.training  # both paths restore the mode they found


def test_flip_is_sum_of_raw_embeddings_then_normalise() -> None:
    model = _model("rgb").eval()
    x = torch.rand(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        raw, raw_flip = model(x), model(x.flip(-1))
    insightface = F.normalize(raw + raw_flip, dim=1)
    of_normalised = F.normalize(F.normalize(raw, dim=1) + F.normalize(raw_flip, dim=1), dim=1)
    # the two conventions differ on this model, so the assertions below can tell them apart
    assert not torch.allclose(insightface, of_normalised, atol=1e-4)
    got = embed_images(model, (x * 255).round().to(torch.uint8), torch.device("cpu"), batch_size=4, flip=True)
    with torch.no_grad():
        xq = (x * 255).round().to(torch.uint8).float() / 255
        expected = F.normalize(model(xq) + model(xq.flip(-1)), dim=1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert torch.allclose(got.norm(dim=1), torch.ones(6), atol=1e-6)
