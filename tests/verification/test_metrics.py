"""Tests for facepriv.verification.metrics: hand-computed answers, sklearn agreement, k-fold protocols."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from facepriv.verification.metrics import (
    ScoreAccumulator,
    ScoreSet,
    allowed_false_accepts,
    eer,
    kfold_accuracy,
    kfold_val_at_far,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
    verification_report,
)

# --------------------------------------------------------------------------- helpers

# Six genuine and ten impostor scores with ties inside and across the two sets.
GEN = [0.9, 0.8, 0.8, 0.7, 0.5, 0.3]
IMP = [0.8, 0.6, 0.5, 0.5, 0.4, 0.3, 0.2, 0.2, 0.1, 0.0]


def _mixed(gen, imp, seed=0):
    """Interleave genuine and impostor scores in a random order (order must not matter)."""
    s = np.array(list(gen) + list(imp), dtype=np.float64)
    y = np.array([True] * len(gen) + [False] * len(imp))
    p = np.random.default_rng(seed).permutation(s.size)
    return s[p], y[p]


def _random_tied(rng, n, dtype=np.float64):
    """Scores on a coarse grid (many ties) with an informative label."""
    y = rng.random(n) < rng.uniform(0.1, 0.9)
    levels = int(rng.integers(3, 80))
    s = np.round((rng.standard_normal(n) + 1.5 * y) * levels / 4) / levels
    return s.astype(dtype), y


def _sklearn_tpr_at_fpr(y, s, target):
    """Read the operating point off sklearn's full ROC: the last point with
    false accepts <= floor(target * N) (fpr is non-decreasing, tpr too)."""
    from sklearn.metrics import roc_curve as sk_roc

    fpr, tpr, thr = sk_roc(y, s, drop_intermediate=False)
    n_imp = int((~y).sum())
    k = allowed_false_accepts(target, n_imp)
    fps = np.rint(fpr * n_imp)
    i = int(np.flatnonzero(fps <= k)[-1])
    return tpr[i], thr[i], fpr[i]


# --------------------------------------------------------------------------- TPR @ FPR


@pytest.mark.parametrize(
    "target, tpr, fpr, threshold, k",
    [
        # k = 1: 2nd largest impostor is 0.6 -> accept > 0.6: genuines .9 .8 .8 .7, impostor .8
        (0.1, 4 / 6, 0.1, 0.7, 1),
        (0.15, 4 / 6, 0.1, 0.7, 1),
        # k = 2: 3rd largest impostor 0.5 -> accept > 0.5 (the two 0.5 impostors move together)
        (0.2, 4 / 6, 0.2, 0.6, 2),
        # k = 3: 4th largest impostor is the tied 0.5 again -> same point, FPR 0.2 not 0.3
        (0.3, 4 / 6, 0.2, 0.6, 3),
        # k = 4: 5th largest is 0.4 -> accept >= 0.5: genuine 0.5 joins, both 0.5 impostors too
        (0.4, 5 / 6, 0.4, 0.5, 4),
        # k = 10: every impostor allowed -> accept all
        (1.0, 1.0, 1.0, 0.0, 10),
    ],
)
def test_tpr_at_fpr_hand_computed(target, tpr, fpr, threshold, k):
    s, y = _mixed(GEN, IMP)
    (p,) = tpr_at_fpr(s, y, [target])
    assert p.measurable
    assert p.n_false_accepts_allowed == k
    assert p.tpr == pytest.approx(tpr, abs=1e-15)
    assert p.fpr == pytest.approx(fpr, abs=1e-15)
    assert p.fpr <= target
    assert p.threshold == threshold
    assert p.n_true_accepts == round(tpr * 6) and p.n_false_accepts == round(fpr * 10)
    # the threshold really produces the reported counts under "accept iff score >= threshold"
    assert np.count_nonzero(s[y] >= p.threshold) == p.n_true_accepts
    assert np.count_nonzero(s[~y] >= p.threshold) == p.n_false_accepts


def test_tpr_at_fpr_below_one_over_n_is_not_measurable():
    s, y = _mixed(GEN, IMP)
    pts = tpr_at_fpr(s, y, [0.05, 1e-6])
    for p in pts:
        assert not p.measurable
        assert p.tpr is None and p.threshold is None and p.fpr is None
        assert "1/N_impostor" in p.reason
        d = p.to_dict()
        assert d["tpr"] is None and d["measurable"] is False and "reason" in d


def test_tpr_at_fpr_reject_all_point_when_top_impostors_beat_every_genuine():
    s, y = _mixed([0.5, 0.4], [0.9, 0.9, 0.1, 0.0])
    (p,) = tpr_at_fpr(s, y, [0.25])  # k = 1, but the two top impostors tie at 0.9
    assert p.measurable and p.tpr == 0.0 and p.fpr == 0.0 and math.isinf(p.threshold)
    d = p.to_dict()
    assert d["threshold"] is None and "rejects every pair" in d["note"]


def test_allowed_false_accepts_is_exact_for_decimal_targets():
    assert allowed_false_accepts(0.29, 100) == 29  # 0.29 * 100 == 28.999999999999996 in floats
    assert allowed_false_accepts(1e-3, 999) == 0
    assert allowed_false_accepts(1e-3, 1000) == 1
    assert allowed_false_accepts(1e-6, 15_638_932) == 15


def test_tpr_at_fpr_matches_sklearn_reading_on_random_ties():
    rng = np.random.default_rng(3)
    for trial in range(12):
        dtype = np.float32 if trial % 2 else np.float64
        s, y = _random_tied(rng, int(rng.integers(200, 4000)), dtype)
        targets = [1e-3, 1e-2, 0.05, 0.1, 0.37, 1.0]
        for t, p in zip(targets, tpr_at_fpr(s, y, targets)):
            if not p.measurable:
                assert allowed_false_accepts(t, int((~y).sum())) == 0
                continue
            sk_tpr, sk_thr, sk_fpr = _sklearn_tpr_at_fpr(y, s, t)
            assert p.tpr == pytest.approx(sk_tpr, abs=1e-12)
            assert p.fpr == pytest.approx(sk_fpr, abs=1e-12)
            assert p.threshold == pytest.approx(sk_thr, abs=1e-9)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        tpr_at_fpr([0.1, np.nan, 0.3], [1, 0, 0])
    with pytest.raises(ValueError, match="inf"):
        tpr_at_fpr([0.1, np.inf, 0.3], [1, 0, 0])
    with pytest.raises(ValueError, match="entries"):
        tpr_at_fpr([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(ValueError, match="0/1"):
        tpr_at_fpr([0.1, 0.2, 0.3], [1, 0, 2])
    with pytest.raises(ValueError, match="no genuine"):
        tpr_at_fpr([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        tpr_at_fpr([0.1, 0.2], [0, 1], [0.0])
    with pytest.raises(ValueError, match="1-D"):
        tpr_at_fpr(np.zeros((2, 2)), [0, 1])


# --------------------------------------------------------------------------- ROC / AUC


def test_roc_and_auc_agree_with_sklearn_on_random_ties():
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc

    rng = np.random.default_rng(7)
    for trial in range(15):
        dtype = np.float32 if trial % 3 == 0 else np.float64
        s, y = _random_tied(rng, int(rng.integers(10, 5000)), dtype)
        if y.all() or not y.any():
            continue
        f0, t0, th0 = sk_roc(y, s, drop_intermediate=False)
        f1, t1, th1 = roc_curve(s, y)
        assert f1.shape == f0.shape
        np.testing.assert_allclose(f1, f0, rtol=0, atol=1e-9)
        np.testing.assert_allclose(t1, t0, rtol=0, atol=1e-9)
        assert th1[0] == np.inf and th0[0] == np.inf
        np.testing.assert_allclose(th1[1:], th0[1:], rtol=0, atol=1e-9)
        assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-9)


def test_auc_hand_computed_with_ties():
    # pairs (g, i): g > i counts 1, g == i counts 1/2
    gen, imp = [0.5, 0.3], [0.3, 0.1]
    # 0.5 beats both (2); 0.3 ties 0.3 (0.5) and beats 0.1 (1) -> 3.5 / 4
    s, y = _mixed(gen, imp)
    assert roc_auc(s, y) == 3.5 / 4


# --------------------------------------------------------------------------- EER


def test_eer_hand_computed_interpolated():
    # ROC from the top: thr .9 -> (FPR 0, FNR 2/3); thr .5 (a genuine and an impostor tie)
    # -> (FPR 1/2, FNR 1/3). d = FNR - FPR: 2/3 then -1/6 -> a = (2/3)/(5/6) = 4/5
    # -> EER = 0 + 4/5 * 1/2 = 2/5 (and 2/3 + 4/5 * (1/3 - 2/3) = 2/5 along FNR)
    s, y = _mixed([0.9, 0.5, 0.2], [0.5, 0.1])
    r = eer(s, y)
    assert r.eer == pytest.approx(2 / 5, abs=1e-15)
    assert r.threshold == 0.5 and r.upper_threshold == 0.9
    assert (r.fpr_at_threshold, r.fnr_at_threshold) == (0.5, pytest.approx(1 / 3))
    assert (r.fpr_at_upper, r.fnr_at_upper) == (0.0, pytest.approx(2 / 3))


def test_eer_vertical_segment():
    # thr .8 -> (FPR 1/2, FNR 2/3), thr .7 -> (FPR 1/2, FNR 1/3): the crossing is at FPR 1/2
    s, y = _mixed([0.9, 0.7, 0.6], [0.8, 0.5])
    r = eer(s, y)
    assert r.eer == 0.5 and r.threshold == 0.7 and r.upper_threshold == 0.8


def test_eer_exact_crossing():
    # at thr 0.7: FPR = FNR = 1/4 exactly
    s, y = _mixed([0.9, 0.8, 0.7, 0.6], [0.75, 0.5, 0.4, 0.3])
    r = eer(s, y)
    assert r.eer == 0.25 and r.threshold == 0.7 and r.upper_threshold == 0.75


def _eer_reference(s, y):
    """Plain loop over the full ROC: first point with FPR >= FNR, interpolate with the one before."""
    fpr, tpr, thr = roc_curve(s, y)
    fnr = 1 - tpr
    for j in range(len(fpr)):
        if fpr[j] >= fnr[j]:
            break
    dh, dl = fnr[j - 1] - fpr[j - 1], fnr[j] - fpr[j]
    a = dh / (dh - dl)
    return fpr[j - 1] + a * (fpr[j] - fpr[j - 1]), thr[j]


def test_eer_matches_reference_loop_on_random_ties():
    rng = np.random.default_rng(11)
    for _ in range(15):
        s, y = _random_tied(rng, int(rng.integers(5, 3000)))
        if y.all() or not y.any():
            continue
        ref, ref_thr = _eer_reference(s, y)
        r = eer(s, y)
        assert r.eer == pytest.approx(ref, abs=1e-12)
        assert r.threshold == ref_thr


def test_eer_perfectly_separated_is_zero():
    s, y = _mixed([0.9, 0.8], [0.1, 0.2])
    r = eer(s, y)
    assert r.eer == 0.0 and r.threshold == 0.8


# --------------------------------------------------------------------------- accumulator


def test_accumulator_equals_one_shot():
    rng = np.random.default_rng(5)
    s, y = _random_tied(rng, 5000, np.float32)
    acc = ScoreAccumulator()
    cuts = np.sort(rng.choice(np.arange(1, s.size), 7, replace=False))
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, s.size]):
        acc.add(s[a:b], y[a:b])
    assert len(acc) == s.size
    got = acc.result()
    want = ScoreSet.from_arrays(s, y)
    np.testing.assert_array_equal(got.genuine, want.genuine)
    np.testing.assert_array_equal(got.impostor, want.impostor)
    assert got.report() == want.report()
    # result() can be called again and more chunks added afterwards
    acc.add(s[:10], y[:10])
    assert acc.result().n_genuine + acc.result().n_impostor == s.size + 10


def test_accumulator_rejects_nan_chunk():
    acc = ScoreAccumulator()
    with pytest.raises(ValueError, match="NaN"):
        acc.add(np.array([0.1, np.nan], dtype=np.float32), [True, False])


def test_roc_at_grid_matches_operating_points():
    rng = np.random.default_rng(2)
    s, y = _random_tied(rng, 3000)
    ss = ScoreSet.from_arrays(s, y)
    grid, tpr = ss.roc_at([1e-5, 1e-2, 0.1, 0.5])
    assert math.isnan(tpr[0])
    for g, t in zip(grid[1:], tpr[1:]):
        assert t == _sklearn_tpr_at_fpr(y, s, g)[0]


# --------------------------------------------------------------------------- k-fold


def _lfw_like(rng, n_folds=10, per_fold=20, gap=(0.4, 0.6)):
    """Folds of ``per_fold`` pairs, half genuine in [gap[1], 1], half impostor in [0, gap[0]]."""
    s, y = [], []
    for _ in range(n_folds):
        g = rng.uniform(gap[1], 1.0, per_fold // 2)
        i = rng.uniform(0.0, gap[0], per_fold // 2)
        fs = np.r_[g, i]
        fy = np.r_[np.ones(g.size, bool), np.zeros(i.size, bool)]
        p = rng.permutation(fs.size)
        s.append(fs[p])
        y.append(fy[p])
    return np.concatenate(s), np.concatenate(y)


def test_kfold_accuracy_separable_is_one_and_threshold_mid_gap():
    rng = np.random.default_rng(0)
    s, y = _lfw_like(rng)
    r = kfold_accuracy(s, y, 10)
    assert r.mean == 1.0 and r.std == 0.0 and r.n_folds == 10
    # fold 0: threshold = midpoint between the highest training impostor and lowest training genuine
    train = np.arange(s.size) >= 20
    mid = (s[train & ~y].max() + s[train & y].min()) / 2
    assert r.fold_thresholds[0] == pytest.approx(mid, abs=1e-12)


def test_kfold_accuracy_with_known_errors():
    rng = np.random.default_rng(1)
    s, y = _lfw_like(rng)
    first_genuine = int(np.flatnonzero(y[:20])[0])
    s[first_genuine] = 0.1  # a genuine pair scored among the impostors, in fold 0 only
    r = kfold_accuracy(s, y, 10)
    expected = [0.95] + [1.0] * 9
    assert r.fold_accuracies == pytest.approx(expected)
    assert r.mean == pytest.approx(0.995)
    assert r.std == pytest.approx(np.std(expected))  # population std
    assert r.std == pytest.approx(0.015)


def test_kfold_accuracy_threshold_is_best_on_training_folds():
    """The exact search must find the training optimum a brute-force loop finds."""
    rng = np.random.default_rng(4)
    s, y = _random_tied(rng, 300)
    folds = np.repeat(np.arange(3), 100)
    r = kfold_accuracy(s, y, folds)
    for f in range(3):
        tr = folds != f
        best = max(np.mean((s[tr] >= t) == y[tr]) for t in np.r_[np.unique(s[tr]), np.inf])
        got = np.mean((s[tr] >= r.fold_thresholds[f]) == y[tr])
        assert got == best


def test_kfold_val_at_far_hand_computed():
    a_gen, a_imp = [0.9, 0.8, 0.3], [0.7, 0.6, 0.52, 0.4, 0.2, 0.1, 0.0, -0.1, -0.2, -0.3]
    b_gen, b_imp = [0.95, 0.66, 0.55], [0.85, 0.45, 0.35, 0.25, 0.15, 0.05, -0.05, -0.15, -0.25, -0.35]
    s = np.array(a_gen + a_imp + b_gen + b_imp)
    y = np.array([1] * 3 + [0] * 10 + [1] * 3 + [0] * 10, dtype=bool)
    folds = np.repeat([0, 1], 13)
    r = kfold_val_at_far(s, y, far=0.1, folds=folds)
    # test fold A, train on B: k = 1, accept > 0.45 (2nd largest B impostor), mid-gap to 0.55 -> 0.5
    #   A: genuines .9 .8 accepted (2/3); impostors .7 .6 .52 accepted (3/10)
    # test fold B, train on A: accept > 0.6, mid-gap to 0.7 -> 0.65
    #   B: genuines .95 .66 (2/3); impostor .85 (1/10)
    assert r.fold_thresholds == pytest.approx([0.5, 0.65])
    assert r.fold_vals == pytest.approx([2 / 3, 2 / 3])
    assert r.fold_fars == pytest.approx([0.3, 0.1])
    assert r.val_mean == pytest.approx(2 / 3) and r.val_std == 0.0
    assert r.far_mean == pytest.approx(0.2)


def test_kfold_val_not_measurable_when_training_has_too_few_impostors():
    rng = np.random.default_rng(0)
    s, y = _lfw_like(rng)  # 90 training impostors per fold: 1e-3 * 90 < 1
    r = kfold_val_at_far(s, y, far=1e-3, folds=10)
    assert r.val_mean is None and "1/N_impostor" in r.reason
    assert kfold_val_at_far(s, y, far=0.05, folds=10).val_mean == 1.0


def test_fold_ids_validation():
    with pytest.raises(ValueError, match="folds"):
        kfold_accuracy([0.1, 0.2, 0.3], [1, 0, 1], 5)
    with pytest.raises(ValueError, match="shape"):
        kfold_accuracy([0.1, 0.2, 0.3], [1, 0, 1], np.array([0, 1]))


# --------------------------------------------------------------------------- report


def test_verification_report_is_plain_json():
    rng = np.random.default_rng(9)
    y = rng.random(4000) < 0.5
    s = (rng.standard_normal(4000) + 3 * y).astype(np.float32)
    rep = verification_report(s, y)
    text = json.dumps(rep, allow_nan=False)  # no numpy types, no NaN/inf
    back = json.loads(text)
    assert back["n_pairs"] == 4000
    assert [p["fpr_target"] for p in back["tpr_at_fpr"]] == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert [p["measurable"] for p in back["tpr_at_fpr"]] == [False, False, False, True, True, True]
    assert 0.95 < back["auc"] <= 1.0
    assert back["accuracy"]["n_folds"] == 10 and back["accuracy"]["accuracy_mean"] > 0.9
    assert "val_mean" in back["val_at_far"]
    assert "accuracy" not in verification_report(s, y, folds=0)
    assert "skipped" in verification_report(s[:8], np.r_[y[:4] | True, y[4:8] & False])["accuracy"]


def test_kfold_threshold_between_adjacent_float32_scores():
    """Training gap of one float32 ulp: the learned threshold must still separate the two
    values when NumPy compares float32 scores with it (a float64 midpoint would round onto
    the impostor score)."""
    lo = np.float32(1.0)
    hi = np.nextafter(lo, np.float32(2.0))
    s = np.array([hi, lo, hi, lo], dtype=np.float32)
    y = np.array([True, False, True, False])
    r = kfold_accuracy(s, y, 2)
    assert r.fold_accuracies == [1.0, 1.0]
    assert r.fold_thresholds == [float(hi), float(hi)]


def test_scoreset_from_split_mixed_dtypes_and_no_mutation():
    gen = np.array([0.9, 0.5, 0.7], dtype=np.float32)
    imp = np.array([0.6, 0.1], dtype=np.float64)
    ss = ScoreSet.from_split(gen, imp)
    assert ss.genuine.dtype == ss.impostor.dtype == np.float64
    assert gen.tolist() == pytest.approx([0.9, 0.5, 0.7])  # caller's array not sorted in place
    (p,) = ss.tpr_at_fpr([0.5])  # k = 1: accept > 0.1 -> every genuine, impostor 0.6
    assert (p.tpr, p.fpr, p.threshold) == (1.0, 0.5, float(np.float32(0.5)))
