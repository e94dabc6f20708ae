"""Tests for facepriv.eval.report (and the result entries it reads): files, table content, spread
over repetitions, "n/m" for unmeasurable FPRs, strict JSON, re-plotting from metrics.json."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from facepriv.verification.metrics import ScoreSet
from facepriv.eval.report import load_results, plot_set_rocs, summary_markdown, summary_rows, write_report
from facepriv.eval.verify import fpr_key, result_from_scores

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _scores(seed: int, n: int = 4000, sep: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2 == 0
    return rng.standard_normal(n) + sep * y, y


def _results() -> dict:
    s, y = _scores(0)
    folds = np.repeat(np.arange(10), len(y) // 10)
    base = result_from_scores([s], y, folds, checkpoint="runs/rgb/model.pt", set_name="synth",
                              frontend={"name": "rgb"}, stochastic=False)
    reps = [_scores(k, sep=1.5)[0] for k in (1, 2, 3)]
    prot = result_from_scores(reps, y, folds, checkpoint="runs/pf/model.pt", set_name="synth",
                              checkpoint_name="partialface-r18", frontend={"name": "partialface"})
    s2, y2 = _scores(4, n=200)
    small = result_from_scores([s2], y2, None, checkpoint="runs/rgb/model.pt", set_name="tiny",
                               frontend={"name": "rgb"}, stochastic=False)
    return {"format": "facepriv.eval.verify/1", "settings": {"repetitions_requested": 3, "flip": False, "seed": 1,
                                                             "device": "cpu", "batch_size": 8},
            "results": [base, prot, small]}


def test_result_entry_summarises_repetitions():
    res = _results()
    prot = res["results"][1]
    reps = [_scores(k, sep=1.5)[0] for k in (1, 2, 3)]
    y = _scores(0)[1]
    aucs = [ScoreSet.from_arrays(s, y).auc() for s in reps]
    assert prot["summary"]["auc"]["per_repetition"] == pytest.approx(aucs)
    assert prot["summary"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert prot["summary"]["auc"]["std"] == pytest.approx(np.std(aucs, ddof=1))
    t = prot["summary"]["tpr_at_fpr"][fpr_key(1e-2)]
    assert t["measurable"] and t["tpr"]["mean"] == pytest.approx(
        np.mean([ScoreSet.from_arrays(s, y).tpr_at_fpr([1e-2])[0].tpr for s in reps]))
    assert prot["summary"]["tpr_at_fpr"][fpr_key(1e-4)]["measurable"] is False  # 2000 impostors
    assert res["results"][0]["summary"]["auc"]["std"] is None  # one repetition: no spread
    # the stored ROC passes through the mean TPR at each measurable target exactly
    roc = prot["roc"]
    i = roc["fpr"].index(1e-2)
    assert roc["tpr"][i] == pytest.approx(t["tpr"]["mean"])


def test_summary_table_rows_spread_and_not_measurable():
    rows = {(r["checkpoint"], r["set"]): r for r in summary_rows(_results())}
    assert set(rows) == {("model", "synth"), ("partialface-r18", "synth"), ("model", "tiny")}
    prot, base, tiny = rows["partialface-r18", "synth"], rows["model", "synth"], rows["model", "tiny"]
    assert "±" in prot["accuracy"] and "±" in prot["tpr_at_fpr_1e-3"] and "±" in prot["eer"] and "±" in prot["auc"]
    assert "±" not in base["accuracy"] and base["R"] == "1 (det.)" and prot["R"] == "3"
    # 2000 impostors: 1e-4 is not measurable; 100 impostors: 1e-3 is not, 1e-2 is (1 false accept)
    assert prot["tpr_at_fpr_1e-4"] == "n/m" and prot["tpr_at_fpr_1e-3"] != "n/m"
    assert tiny["tpr_at_fpr_1e-3"] == "n/m" and tiny["tpr_at_fpr_1e-2"] != "n/m"
    md = summary_markdown(_results())
    assert md.count("\n| ") == 4  # header + 3 rows
    assert "TPR@FPR=1e-3 %" in md and "n/m" in md and "seed 1" in md


def test_summary_rows_read_results_written_with_the_old_key_spelling():
    """metrics.json files written before fpr_key keyed summaries "1e-03"; they still render."""
    res = _results()
    old = copy.deepcopy(res)
    for r in old["results"]:
        r["summary"]["tpr_at_fpr"] = {f"{float(v['fpr_target']):.0e}": v for v in r["summary"]["tpr_at_fpr"].values()}
    assert "1e-03" in old["results"][0]["summary"]["tpr_at_fpr"]
    assert summary_rows(old) == summary_rows(res)


def test_write_report_files_and_strict_json(tmp_path):
    res = _results()
    paths = write_report(res, tmp_path / "rep")
    assert paths["metrics"].name == "metrics.json" and paths["summary"].name == "summary.md"
    assert set(paths["plots"]) == {"synth", "tiny"}
    for p in paths["plots"].values():
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000
    text = paths["metrics"].read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert "![ROC synth](roc_synth.png)" in paths["summary"].read_text()
    assert "plots" not in res  # the caller's dict is not modified
    # the report can be rebuilt from metrics.json alone (results script)
    again = load_results(paths["metrics"])
    assert summary_rows(again) == summary_rows(res)
    pngs = plot_set_rocs(again, tmp_path / "replot")
    assert sorted(p.name for p in pngs.values()) == ["roc_synth.png", "roc_tiny.png"]


def test_load_results_rejects_other_json(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="x.json"):
        load_results(bad)


def test_incomplete_and_resized_results_are_flagged_above_the_table():
    res = _results()
    assert "Incomplete" not in summary_markdown(res) and "Resized" not in summary_markdown(res)
    res["results"][2]["resized"] = {"to": "16x16", "from": {"48x48": 150, "60x40": 50}, "images": 200, "stretched": 50}
    res.update(complete=False, pending=[{"checkpoint_name": "dctdp", "set": "synth"}],
               error="dctdp x synth: EvalInputError: NaN embeddings")
    md = summary_markdown(res)
    warn, table = md.split("| checkpoint |", 1)
    assert "Incomplete: 3 of 4 checkpoint x set results" in warn and "Not evaluated: dctdp x synth" in warn
    assert "Stopped by: dctdp x synth: EvalInputError: NaN embeddings" in warn
    assert "model x tiny: 200 images resized to 16x16 (48x48: 150, 60x40: 50); 50 stretched" in warn
    assert "| model | tiny (resized) |" in table and "| model | synth |" in table
