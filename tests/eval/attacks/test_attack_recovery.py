"""PartialFace table recovery from intercepted traffic: exact with enough queries on a
frontend whose secret the test knows, partial with few, and a recovered table makes the
public attacker read queries like an insider — without the real table ever being read."""

from __future__ import annotations

import pytest
import torch

from facepriv.frontends import PartialFace

from facepriv.eval.attacks import (
    RecoveryConfig,
    build_view,
    observe,
    recover_table,
    recovery_curve,
    score_recovery,
)
from facepriv.eval.attacks.placement import FrequencyProfile
from facepriv.eval.attacks.recovery import intercept, true_layouts


@pytest.fixture(scope="module")
def profile(aux_u8):
    fe = PartialFace(secret_seed=0)  # any seed: the profile needs only the public kept frequencies
    return FrequencyProfile(fe.kept, fe.upsample).fit([aux_u8.float() / 255.0])


@pytest.mark.parametrize("seed", [7, 123])
def test_recovery_is_exact_with_enough_traffic(seed, aux_u8, profile):
    fe = PartialFace(secret_seed=seed).eval()
    rows, fed = recovery_curve(fe, profile, aux_u8, RecoveryConfig(queries=[10, 300], seed=1))
    few, many = rows
    assert many["n_queries"] == 300 and many["layouts_exact"] == 1.0 and many["false_layouts"] == 0
    assert many["subsets_exact"] == 1.0 and many["consistent_structure"]
    assert few["layouts_exact"] < 1.0  # 10 queries cannot show all 18 layouts
    # the recovered hypotheses are exactly the real (subset x permutation) channel layouts
    real = {tuple(r) for r in build_view(fe, "secret").hypotheses.tolist()}
    assert {tuple(r) for r in fed.hypotheses.tolist()} == real
    assert fed.layouts.shape == (18, 9) and int(fed.support.sum()) == 300


def test_recovered_view_reads_queries_like_an_insider(aux_u8, victims_f, profile):
    fe = PartialFace(secret_seed=7).eval()
    _, fed = recovery_curve(fe, profile, aux_u8, RecoveryConfig(queries=[300], seed=1))
    view = build_view(fe, "recovered", hypotheses=fed.hypotheses).fit(aux_u8)
    # built on the public copy: no code path of this view can read the real table
    assert view.frontend is not fe and not torch.equal(view.frontend.subset_table, fe.subset_table)
    prot, truth = observe(fe, victims_f, torch.Generator().manual_seed(3))
    d = view.diagnostics(prot, truth)
    secret = build_view(fe, "secret").fit(aux_u8).diagnostics(prot, truth)
    assert d["query_exactly_placed"] == secret["query_exactly_placed"] >= 0.9
    assert "recovered" in view.describe()["reads"]


def test_recover_table_scores_and_errors(aux_u8, profile):
    fe = PartialFace(secret_seed=5).eval()
    ll, truth = intercept(fe, aux_u8, 40, profile, torch.Generator().manual_seed(0))
    assert ll.shape == (40, 9, 54) and truth.shape == (40, 9)
    table = recover_table(ll, fe.kept, fe.n_subsets, fe.n_permutations)
    score = score_recovery(table, fe)
    assert 0 <= score["layouts_exact"] <= 1 and score["layouts_true"] == 18
    assert true_layouts(fe).shape == (18, 9)
    with pytest.raises(ValueError, match="do not fit"):
        recover_table(ll, fe.kept, 5, fe.n_permutations)
    with pytest.raises(ValueError, match="positive"):
        RecoveryConfig(queries=[0])
    with pytest.raises(ValueError, match="recovered layouts"):
        build_view(fe, "recovered")
    with pytest.raises(ValueError, match="PartialFace only"):
        from facepriv.frontends import DCTFrontend

        build_view(DCTFrontend(), "recovered", hypotheses=table.hypotheses)


def test_recovery_scores_traffic_with_the_frontends_own_view(aux_u8, monkeypatch):
    """MinusFace sends a residue, not the raw DCT: the run scores its traffic with the public
    view's residue-aware signatures (not raw-DCT ones), and recovers the table exactly too."""
    from facepriv.frontends import MinusFace

    import facepriv.eval.attacks.recovery as recovery
    from facepriv.eval.attacks import AttackConfig, FaceSet, run_attacks, split_victims

    seen = []
    real = recovery.recovery_curve

    def spy(frontend, profile, *args, **kwargs):
        seen.append(profile)
        return real(frontend, profile, *args, **kwargs)

    monkeypatch.setattr(recovery, "recovery_curve", spy)

    aux = FaceSet(aux_u8[:120], torch.arange(40).repeat_interleave(3), [f"a{i}" for i in range(40)],
                  [f"a{i // 3}/{i % 3}.png" for i in range(120)], "aux")
    vic = FaceSet(aux_u8[120:], torch.arange(20).repeat_interleave(3), [f"v{i}" for i in range(20)],
                  [f"v{i // 3}/{i % 3}.png" for i in range(60)], "victims")
    cfg = AttackConfig(attacks=["analytic"], fills=["zeros"], knowledge="recovered", grid_victims=0, progress=False,
                       recovery={"queries": [300], "seed": 1})
    res = run_attacks(MinusFace(secret_seed=3), aux, split_victims(vic), config=cfg)
    assert res["table_recovery"]["curve"][0]["layouts_exact"] == 1.0
    assert res["views"]["recovered"]["diagnostics"]["query_exactly_placed"] == 1.0
    assert len(seen) == 1 and seen[0].coefficients is not None  # the residue's signatures
