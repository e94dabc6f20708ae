"""Flower simulation (Ray) end to end through the CLI: 3 sites, PFM with federated validation
(K=3 candidates scored by the sites in ``query.fv`` messages), 2 rounds, then a resume."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

ARGS = ["--clients", "3", "--strategy", "pfm", "--local-steps", "2", "--image-size", "32", "--ids-per-client", "4",
        "--images-per-identity", "3", "--fv-candidates", "3", "--fv-val-identities", "2", "--eval-identities", "8", "--batch-size", "6", "--width", "0.0625",
        "--num-cpus", "2", "--cpus-per-client", "0.5"]


def test_simulation_runs_checkpoints_and_resumes(tmp_path):
    pytest.importorskip("ray")
    from facepriv.models import FaceRecognizer
    from facepriv.federated.cli import main

    out = tmp_path / "fed"
    assert main(["simulate", "--out", str(out), "--rounds", "2", *ARGS]) == 0
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds[1:]:
        assert len(r["aggregation"]["accepted"]) == 3 and not r["aggregation"]["rejected"]
        assert "auc" in r["verification"] and r["train"]["train-loss"] > 0
        fv = r["aggregation"]["fv"]  # every site scored all 3 candidates on its 2 held-out identities
        assert len(fv["candidates"]) == 3 and not fv["fallback"] and not fv["ignored"]
        assert sorted(fv["scores"]) == sorted(str(n) for n in r["aggregation"]["accepted"])
        assert all(len(v) == 3 for v in fv["scores"].values()) and set(fv["val_examples"].values()) == {2 * 3}
        assert fv["chosen"] == max(range(3), key=lambda j: fv["aggregate"][j])
        assert r["train"]["fv-score"] == fv["aggregate"][fv["chosen"]]
    assert (out / "verification.png").stat().st_size > 0
    model = FaceRecognizer.load(out / "global.pt")
    assert model.extra["federated_round"] == 2
    # a restarted server continues after the last committed round with the same history
    assert main(["simulate", "--out", str(out), "--rounds", "3", *ARGS]) == 0
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert FaceRecognizer.load(out / "global.pt").extra["federated_round"] == 3
