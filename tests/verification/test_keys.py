"""facepriv.verification.keys: one spelling of a TPR@FPR key, every old spelling still read."""

from __future__ import annotations

import pytest

from facepriv.verification import find_fpr, fpr_key, parse_fpr_key


def test_canonical_spelling() -> None:
    assert fpr_key(1e-3) == "tpr_at_fpr_1e-3"
    assert fpr_key(0.0001) == "tpr_at_fpr_1e-4"
    assert fpr_key(1e-2) == "tpr_at_fpr_1e-2"
    assert fpr_key(0.1) == "tpr_at_fpr_1e-1"
    assert fpr_key(1.0) == "tpr_at_fpr_1e0"
    assert fpr_key(1e-6) == "tpr_at_fpr_1e-6"


def test_targets_are_never_rounded_together() -> None:
    # the old f"{t:.0e}" spelling mapped 2.5e-4 and 2e-4 (and 3e-4) onto the same key
    assert fpr_key(2.5e-4) == "tpr_at_fpr_2.5e-4"
    assert len({fpr_key(t) for t in (2e-4, 2.5e-4, 3e-4)}) == 3


@pytest.mark.parametrize("bad", [0.0, -1e-3, 1.5, float("nan"), float("inf"), "x"])
def test_bad_target_named(bad: object) -> None:
    with pytest.raises(ValueError, match="FPR target"):
        fpr_key(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["tpr_at_fpr_1e-3", "tpr_at_fpr_0.001", "tpr@fpr=0.001", "1e-03", "tpr@1e-3",
                                 "0.001", "tpr_at_fpr_1E-03"])
def test_every_spelling_parses(key: str) -> None:
    assert parse_fpr_key(key) == pytest.approx(1e-3, rel=1e-12)


@pytest.mark.parametrize("key", ["auc", "tpr@1e-3_ci", "tpr_at_fpr", "eer", "2", "tpr_at_fpr_1e-3x", ""])
def test_other_keys_name_no_target(key: str) -> None:
    assert parse_fpr_key(key) is None


def test_round_trip() -> None:
    for t in (1e-6, 1e-5, 1e-4, 2.5e-4, 1e-3, 5e-3, 1e-2, 0.1, 1.0):
        assert parse_fpr_key(fpr_key(t)) == pytest.approx(t, rel=1e-12)


def test_find_reads_old_and_new_files() -> None:
    federated_history = {"auc": 0.9, "tpr@fpr=0.001": 0.25, "tpr@fpr=0.01": 0.5}
    verify_summary_old = {"1e-03": {"tpr": 0.3}, "1e-04": {"tpr": 0.1}}
    leakage_old = {"tpr_at_fpr_0.001": {"tpr": 0.4}}
    assert find_fpr(federated_history, 1e-3) == 0.25
    assert find_fpr(federated_history, 0.01) == 0.5
    assert find_fpr(verify_summary_old, 1e-4) == {"tpr": 0.1}
    assert find_fpr(leakage_old, 1e-3) == {"tpr": 0.4}
    assert find_fpr({fpr_key(1e-3): 7, "tpr@fpr=0.001": 8}, 1e-3) == 7  # canonical first
    assert find_fpr({"tpr@fpr=0.001": 1}, 1e-4) is None
    assert find_fpr(None, 1e-3, default="–") == "–"


def test_find_companion_by_suffix() -> None:
    old = {"tpr@1e-3": 0.4, "tpr@1e-3_ci": [0.1, 0.6]}
    new = {fpr_key(1e-3): 0.4, fpr_key(1e-3) + "_ci": [0.2, 0.5]}
    assert find_fpr(old, 1e-3, suffix="_ci") == [0.1, 0.6]
    assert find_fpr(new, 1e-3, suffix="_ci") == [0.2, 0.5]
    assert find_fpr(old, 1e-3) == 0.4  # the plain lookup never returns the CI
    assert find_fpr({"tpr@1e-3": 0.4}, 1e-3, suffix="_ci") is None
