"""`facepriv quickstart --fast` end to end: data, two trainings, held-out verification, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facepriv.training.quickstart import main


@pytest.mark.slow
def test_quickstart_fast_end_to_end(tmp_path: Path, capsys) -> None:
    out = tmp_path / "qs"
    assert main(["--out", str(out), "--fast", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"Report: {(out / 'report.md').resolve()}" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"rgb", "partialface"}
    for name, m in metrics["models"].items():
        assert Path(m["model_file"]).is_file(), name
        assert (out / name / "config.yaml").is_file() and (out / name / "train_log.csv").is_file()
        v = m["verification"]
        assert v["pairs"] == metrics["data"]["pairs_count"] and 0.0 <= v["auc"] <= 1.0
    # RGB must clearly learn identity on held-out people (chance: accuracy 0.5, AUC 0.5)
    rgb = metrics["models"]["rgb"]["verification"]
    assert rgb["accuracy"] > 0.65 and rgb["auc"] > 0.7, rgb
    report = (out / "report.md").read_text()
    assert "| rgb |" in report and "| partialface |" in report and "held-out" in report

    # the saved deployment model reproduces protected inference on its own
    import torch

    from facepriv.models import FaceRecognizer

    model = FaceRecognizer.load(metrics["models"]["partialface"]["model_file"])
    emb = model.embed(torch.rand(3, 3, 64, 64))
    assert emb.shape == (3, 128) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
