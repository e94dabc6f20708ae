"""Tests for facepriv.verification.plots: PNG files are produced and the plotted points follow the metric rule."""

from __future__ import annotations

import numpy as np
import pytest

from facepriv.verification.metrics import ScoreSet, roc_curve
from facepriv.verification.plots import plot_metric_curves, plot_roc, roc_plot_points

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _scores(seed, n=20000, sep=3.0):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.2
    s = (rng.standard_normal(n) + sep * y).astype(np.float32)
    return s, y


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_MAGIC


def test_plot_roc_several_curves(tmp_path):
    s1, y1 = _scores(0)
    s2, y2 = _scores(1, sep=2.0)
    fpr, tpr, _ = roc_curve(s2, y2)
    out = plot_roc(
        {"iresnet18 / partialface": ScoreSet.from_arrays(s1, y1), "rgb (full ROC arrays)": (fpr, tpr)},
        tmp_path / "sub" / "roc.png",
        title="test",
    )
    assert out == tmp_path / "sub" / "roc.png" and _is_png(out)


def test_roc_plot_points_scoreset_and_arrays_agree():
    s, y = _scores(2)
    ss = ScoreSet.from_arrays(s, y)
    f_exact, t_exact = roc_plot_points(ss, n_points=50)
    fpr, tpr, _ = ss.roc()
    f_arr, t_arr = roc_plot_points((fpr, tpr), n_points=50)
    # never below 1/N_impostor: lower FPRs are not measurable
    assert f_exact.min() >= 1 / ss.n_impostor and f_arr.min() >= 1 / ss.n_impostor
    np.testing.assert_array_equal(f_exact, f_arr)
    np.testing.assert_allclose(t_exact, t_arr, atol=1e-12)
    assert np.all(np.diff(t_exact) >= 0)


def test_plot_metric_curves_formats(tmp_path):
    out = plot_metric_curves(
        {
            "central": {1: 0.71, 2: 0.80, 3: 0.86},
            "fedavg": ([1, 2, 3, 4], [0.6, 0.7, float("nan"), 0.8]),
            "pfm": [(1, 0.65), (2, 0.78)],
        },
        tmp_path / "acc.png",
        xlabel="round",
        ylabel="LFW accuracy",
        title="federated",
    )
    assert _is_png(out)
    assert _is_png(plot_metric_curves({"loss": ([0, 1, 2], [3.0, 1.0, 0.5])}, tmp_path / "loss.png", logy=True))


def test_plot_input_errors(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        plot_roc({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="differ in length"):
        plot_metric_curves({"a": ([1, 2, 3], [1.0, 2.0])}, tmp_path / "y.png")
    with pytest.raises(ValueError, match="fpr_range"):
        roc_plot_points(([0, 1], [0, 1]), fpr_range=(1.0, 0.1))
