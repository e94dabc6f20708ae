"""Tests for facepriv.verification.templates: IJB-style template pooling checked against a plain loop."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facepriv.verification.templates import ijb_verification, pool_templates, score_template_pairs


def _dataset(seed=0, n_images=300, dim=16, n_templates=25):
    rng = np.random.default_rng(seed)
    t = rng.integers(100, 100 + n_templates, n_images)  # non-contiguous ids
    m = rng.integers(0, 40, n_images)  # media ids shared across templates on purpose
    f = rng.standard_normal((n_images, dim))
    ff = rng.standard_normal((n_images, dim))
    w = rng.uniform(0.5, 1.0, n_images)
    return f, ff, t, m, w


def _loop_pool(f, t, m, flip=None, w=None, normalize_images=False):
    """Reference: explicit Python loops over templates, media and images."""
    out = {}
    for tid in sorted(set(t.tolist())):
        media_feats = []
        for mid in sorted(set(m[t == tid].tolist())):
            acc = np.zeros(f.shape[1])
            count = 0
            for i in range(f.shape[0]):
                if t[i] == tid and m[i] == mid:
                    x = f[i] + (flip[i] if flip is not None else 0)
                    if normalize_images:
                        x = x / np.linalg.norm(x)
                    if w is not None:
                        x = x * w[i]
                    acc += x
                    count += 1
            media_feats.append(acc / count)
        v = np.mean(media_feats, axis=0)
        out[tid] = v / np.linalg.norm(v)
    return out


@pytest.mark.parametrize("flip, weights, norm", [(False, False, False), (True, False, False), (True, True, True)])
def test_pooling_matches_loop(flip, weights, norm):
    f, ff, t, m, w = _dataset()
    got = pool_templates(
        f, t, m, flip_features=ff if flip else None, image_weights=w if weights else None, normalize_images=norm
    )
    ref = _loop_pool(f, t, m, ff if flip else None, w if weights else None, norm)
    assert got.template_ids.tolist() == sorted(ref)
    for row, tid in enumerate(got.template_ids):
        np.testing.assert_allclose(got.features[row], ref[int(tid)], rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(got.features, axis=1), 1.0, atol=1e-12)
    assert got.n_images.sum() == f.shape[0]


def test_media_are_averaged_before_templates():
    # template 1: media 0 has three identical images (x), media 1 one image (y).
    # media-first pooling weights x and y equally; plain image averaging would weight x 3:1.
    x, y = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    f = np.stack([x, x, x, y])
    got = pool_templates(f, [1, 1, 1, 1], [0, 0, 0, 1])
    np.testing.assert_allclose(got.features[0], [2**-0.5, 2**-0.5], atol=1e-15)


def test_flip_test_adds_flipped_features_before_normalising():
    f, ff, t, m, _ = _dataset(seed=1)
    with_flip = pool_templates(f, t, m, flip_features=ff)
    summed = pool_templates(f + ff, t, m)
    np.testing.assert_allclose(with_flip.features, summed.features, atol=1e-12)
    plain = pool_templates(f, t, m)
    assert not np.allclose(with_flip.features, plain.features)


def test_pair_scores_match_loop_and_report():
    f, ff, t, m, _ = _dataset(seed=2)
    ref = _loop_pool(f, t, m, ff)
    ids = sorted(ref)
    rng = np.random.default_rng(0)
    t1 = rng.choice(ids, 500)
    t2 = rng.choice(ids, 500)
    temps = pool_templates(f, t, m, flip_features=ff)
    scores = score_template_pairs(temps, t1, t2, chunk_size=64)
    want = np.array([ref[int(a)] @ ref[int(b)] for a, b in zip(t1, t2)])
    np.testing.assert_allclose(scores, want, atol=1e-12)

    labels = (t1 % 3) == (t2 % 3)
    rep = ijb_verification(f, t, m, t1, t2, labels, flip_features=ff, fpr_targets=[1e-3, 0.1])
    json.dumps(rep, allow_nan=False)
    assert rep["n_templates"] == len(ids) and rep["n_pairs"] == 500 and rep["flip_test"] is True
    assert rep["n_genuine"] == int(labels.sum())
    assert [p["measurable"] for p in rep["tpr_at_fpr"]] == [False, True]


def test_float32_stays_float32():
    f, ff, t, m, _ = _dataset(seed=3)
    temps = pool_templates(f.astype(np.float32), t, m, flip_features=ff.astype(np.float32))
    assert temps.features.dtype == np.float32
    ref = pool_templates(f, t, m, flip_features=ff)
    np.testing.assert_allclose(temps.features, ref.features, atol=1e-5)


def test_bad_inputs_are_named():
    f, ff, t, m, _ = _dataset(seed=4, n_images=20)
    temps = pool_templates(f, t, m)
    with pytest.raises(KeyError, match="999"):
        score_template_pairs(temps, [int(t[0]), 999], [int(t[0]), int(t[1])])
    bad = f.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match="image 7"):
        pool_templates(bad, t, m)
    with pytest.raises(ValueError, match="flip_features"):
        pool_templates(f, t, m, flip_features=ff[:5])
    with pytest.raises(ValueError, match="media_ids"):
        pool_templates(f, t, m[:3])
    with pytest.raises(ValueError, match="zero feature"):
        pool_templates(np.zeros((2, 4)), [5, 5], [0, 1])
