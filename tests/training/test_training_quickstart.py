"""``facepriv quickstart``: end to end (--fast), and its planning, judge choice, leakage and report logic."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from facepriv.training.quickstart import main
from facepriv.training.quickstart.leakage import choose_judge, leakage_summary
from facepriv.training.quickstart.plan import Clock, default_threads, make_plan
from facepriv.training.quickstart.recipe import Recipe, model_config
from facepriv.training.quickstart.report import collected, grid_columns, table_text, to_html, to_markdown, write_report
from facepriv.verification.keys import find_fpr, fpr_key

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quickstart_fast_end_to_end(tmp_path: Path, capsys) -> None:
    out = tmp_path / "qs"
    assert main(["--out", str(out), "--fast", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    # the command ends with the table and where the report is
    assert f"Report: {(out / 'report.md').resolve()}" in printed.splitlines()[-1]
    assert "| model | training | accuracy | AUC |" in printed and "| dctdp |" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"rgb", "partialface", "dctdp"}
    for name, m in metrics["models"].items():
        assert Path(m["model_file"]).is_file(), name
        assert (out / name / "config.yaml").is_file() and (out / name / "train_log.csv").is_file()
        v = m["verification"]
        assert v["n_pairs"] == metrics["data"]["pairs_count"] and 0.0 <= v["summary"]["auc"]["mean"] <= 1.0
        assert v["roc"]["fpr"], name
    # RGB must clearly learn identity on held-out people (chance: accuracy 0.5, AUC 0.5)
    rgb = metrics["models"]["rgb"]["verification"]["summary"]
    assert rgb["accuracy"]["mean"] > 0.65 and rgb["auc"]["mean"] > 0.7, rgb
    # the protected models used the recipe's levers
    for name in ("partialface", "dctdp"):
        m = metrics["models"][name]
        assert m["warm_start"]["source"].endswith("rgb/model.pt") and m["distilled"], name

    # a leakage number per protected row, in metrics.json and in the report's table
    report = (out / "report.md").read_text()
    judge = metrics["judge"]["chosen"]
    assert judge in ("dlib", "rgb") and f"Identity judge: **{judge}**" in report
    for name in ("partialface", "dctdp"):
        best = metrics["models"][name]["leakage"]["best"]
        assert 0.0 <= best["tpr"] <= 1.0 and best["attack"], name
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} |"))
        assert f"| {best['tpr']:.3f}" in row, row
    raw = metrics["raw_images_leakage"][fpr_key(metrics["models"]["dctdp"]["leakage"]["fpr"])]
    assert 0.0 <= raw <= 1.0
    assert (out / "attacks" / "attack.md").is_file() and (out / "attacks" / "attack.json").is_file()

    # the three pictures exist, are PNGs, and the Markdown and HTML reports show them
    for fig in ("roc", "grid", "frontier"):
        path = out / "figures" / f"{fig}.png"
        assert path.read_bytes()[:8] == PNG, fig
        assert f"](figures/{fig}.png)" in report
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page

    # the saved deployment model reproduces protected inference on its own
    from facepriv.models import FaceRecognizer

    model = FaceRecognizer.load(metrics["models"]["partialface"]["model_file"])
    emb = model.embed(torch.rand(3, 3, 64, 64))
    assert emb.shape == (3, 128) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)


# --------------------------------------------------------------------------- planning and recipe


def test_clock_shrinks_budgets_only_when_behind(monkeypatch) -> None:
    plan = make_plan(fast=False)
    clock = Clock(plan)
    assert clock.scale(plan.total_s / 2) == 1.0
    clock.start -= plan.total_s - 100.0  # 100 s left
    assert clock.scale(200.0) == pytest.approx(0.5, abs=0.01)
    assert clock.scale(10_000.0) == 0.3  # never below the floor: a model must still train


def test_default_threads_follows_cpu_affinity(monkeypatch) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0), raising=False)
    assert default_threads() == 1  # one allowed core, however many the machine has
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert default_threads() == 2


def test_recipe_levers_and_configs(tmp_path: Path) -> None:
    plan = make_plan(fast=True)
    data = {"train_root": tmp_path / "t", "test_root": tmp_path / "h", "pairs": tmp_path / "p.txt"}
    rgb = tmp_path / "rgb" / "model.pt"
    full = Recipe()
    pf = model_config("partialface", plan, data, 0, 10, recipe=full, rgb_model=rgb, teacher_cache=tmp_path / "teacher")
    assert pf["init_from"] == str(rgb) and pf["distill"]["enabled"] and pf["distill"]["teacher"] == str(rgb)
    assert pf["distill"]["cache"].endswith("teacher/")  # a folder: the protected models share one teacher pass
    dp = model_config("dctdp", plan, data, 0, 10, recipe=full, rgb_model=rgb)
    assert dp["frontend"]["clip"] == "exact" and dp["frontend"]["epsilon_mean"] == full.dctdp_epsilon_mean
    assert "init_from" not in model_config("rgb", plan, data, 0, 10, recipe=full, rgb_model=rgb)

    bare = Recipe.without(["warm-start", "distill", "exact-sensitivity"])
    dp = model_config("dctdp", plan, data, 0, 10, recipe=bare, rgb_model=rgb)
    assert "init_from" not in dp and "distill" not in dp and dp["frontend"]["clip"] == "calibrated"
    with pytest.raises(ValueError, match="unknown lever"):
        Recipe.without(["warm_start"])
    # every config the quickstart writes is a valid TrainConfig
    from facepriv.training.config import config_from_dict

    for name in ("rgb", "partialface", "dctdp"):
        config_from_dict(model_config(name, plan, data, 0, 10, recipe=full, rgb_model=rgb))


# --------------------------------------------------------------------------- judge and leakage


class _FakeJudge:
    """Embeds an image by its identity code (the red value of pixel 0,0) plus noise of ``noise``."""

    def __init__(self, kind: str, noise: float) -> None:
        self.kind, self.noise = kind, noise
        self.g = torch.Generator().manual_seed(7)

    def describe(self) -> dict[str, str]:
        return {"kind": self.kind}

    def embed(self, images: torch.Tensor, **_: object) -> torch.Tensor:
        ident = (images[:, 0, 0, 0] * 255).round().long() % 16
        x = torch.nn.functional.one_hot(ident, 16).float() + self.noise * torch.randn(len(images), 16, generator=self.g)
        return torch.nn.functional.normalize(x, dim=1)


def _victims():
    from facepriv.eval.attacks.data import FaceSet, split_victims

    ids = torch.arange(12).repeat_interleave(4)
    imgs = torch.randint(0, 255, (len(ids), 3, 8, 8), dtype=torch.uint8)
    imgs[:, 0, 0, 0] = ids.to(torch.uint8)
    faces = FaceSet(imgs, ids, [f"id{i}" for i in range(12)], [f"id{i}/{j}.jpg" for i, j in enumerate(range(len(ids)))],
                    "mem", [])
    return split_victims(faces)


@pytest.mark.parametrize("dlib_noise,rgb_noise,expected", [(5.0, 0.0, "rgb"), (0.0, 5.0, "dlib"), (0.0, 0.0, "dlib")])
def test_auto_judge_is_the_one_that_recognises_raw_faces_best(monkeypatch, tmp_path, dlib_noise, rgb_noise,
                                                              expected) -> None:
    """A weak judge would under-report leakage: auto keeps the stronger one on the raw faces; a tie keeps dlib."""
    import facepriv.judges as judges

    monkeypatch.setattr(judges, "build_judge", lambda spec, **kw: _FakeJudge("dlib", dlib_noise))
    monkeypatch.setattr(judges, "CheckpointJudge", lambda path, **kw: _FakeJudge("checkpoint", rgb_noise))
    cache, info = choose_judge("auto", tmp_path / "rgb.pt", _victims())
    assert info["chosen"] == expected and cache.judge.describe()["kind"] == ("dlib" if expected == "dlib" else "checkpoint")
    assert set(info["candidates"]) == {"dlib", "rgb"} and "raw held-out faces best" in info["why"]


def test_judge_falls_back_to_rgb_without_dlib_and_says_why(monkeypatch, tmp_path) -> None:
    import facepriv.judges as judges

    def no_dlib(spec, **kw):
        raise judges.JudgeError("dlib judge: dlib is not installed (pip install dlib-bin)")

    monkeypatch.setattr(judges, "build_judge", no_dlib)
    monkeypatch.setattr(judges, "CheckpointJudge", lambda path, **kw: _FakeJudge("checkpoint", 0.0))
    _, info = choose_judge("auto", tmp_path / "rgb.pt", _victims())
    assert info["chosen"] == "rgb" and "dlib is not installed" in info["why"]
    _, info = choose_judge("auto", tmp_path / "rgb.pt", _victims(), auto_candidates=("rgb",))
    assert info["chosen"] == "rgb" and "skips dlib" in info["why"] and "dlib_unavailable" not in info
    with pytest.raises(judges.JudgeError):
        choose_judge("dlib", tmp_path / "rgb.pt", _victims())  # asked for explicitly: no silent substitute


def _row(attack: str, tpr3, tpr2, *, image: bool = True, task: str = "probe vs raw gallery") -> dict:
    return {"attack": attack, "knowledge": "public", "task": task,
            "image": {"psnr_db": {"mean": 14.0}, "ssim_luma": {"mean": 0.4}} if image else None,
            "identity": {"tpr_at_fpr_1e-3": tpr3, "tpr_at_fpr_1e-2": tpr2, "rank1": 0.5,
                         "ci": {"tpr_at_fpr_1e-3": [0.0, 0.2] if tpr3 is not None else None}}}


def test_leakage_counts_linkage_but_not_protected_to_protected_links() -> None:
    """Linkage rows carry no image (the experiment's leakage_row used to crash on them); the
    protected-vs-protected link answers another question and is not the leakage figure."""
    attack = {"results": [_row("analytic/lstsq", 0.1, 0.3), _row("linkage", 0.4, 0.6, image=False),
                          _row("linkage/protected", 0.9, 0.95, image=False,
                               task="protected probe vs protected gallery (no raw face on either side)")]}
    s = leakage_summary(attack, {fpr_key(1e-3): 0.8})
    assert s["fpr"] == 1e-3 and s["best"]["tpr"] == 0.4 and s["best"]["attack"] == "linkage [public]"
    assert find_fpr(s["public"], 1e-3) == 0.4 and s["public"]["psnr"] == 14.0  # frontier input
    assert s["public"][fpr_key(1e-3) + "_ci"] == [0.0, 0.2]  # written in the one spelling
    assert s["best_reconstruction"] == "analytic/lstsq [public]"  # what the grid can show


def test_leakage_falls_back_to_fpr_1e2_when_1e3_is_not_measurable() -> None:
    attack = {"results": [_row("analytic/zeros", None, 0.25), _row("learned", None, 0.35)]}
    s = leakage_summary(attack, {fpr_key(1e-3): None, fpr_key(1e-2): 0.7})
    assert s["fpr"] == 1e-2 and s["best"]["tpr"] == 0.35 and s["best"]["attack"] == "learned [public]"


def test_leakage_reads_attack_files_written_with_older_key_spellings() -> None:
    """attack.json files written before fpr_key was the one spelling (``tpr_at_fpr_0.001``,
    ``tpr@1e-3``) give the same summary."""
    def old(row: dict, spelling: str) -> dict:
        ident = row["identity"]
        renamed = {(spelling.format(1e-3) if k == fpr_key(1e-3) else spelling.format(1e-2) if k == fpr_key(1e-2)
                    else k): v for k, v in ident.items() if k != "ci"}
        return {**row, "identity": {**renamed, "ci": {spelling.format(1e-3): ident["ci"][fpr_key(1e-3)]}}}

    rows = [_row("analytic/lstsq", 0.1, 0.3), _row("learned", 0.3, 0.5)]
    new = leakage_summary({"results": rows}, {fpr_key(1e-3): 0.8})
    for spelling in ("tpr_at_fpr_{:g}", "tpr@{:.0e}"):
        s = leakage_summary({"results": [old(r, spelling) for r in rows]}, {spelling.format(1e-3): 0.8})
        assert s == new, spelling


def test_grid_columns_find_the_runner_sample_names() -> None:
    naive, a, b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    one_level = grid_columns("dctdp", {"naive": naive, "learned": a}, "learned [public]", levels=1)
    assert list(one_level) == ["dctdp: protected, naive", "dctdp: learned [public]"]
    two = grid_columns("partialface", {"naive": naive, "learned [secret]": b}, "learned [secret]", levels=2)
    assert two["partialface: learned [secret]"] is b
    assert list(grid_columns("dctdp", {"naive": naive}, None, levels=1)) == ["dctdp: protected, naive"]


# --------------------------------------------------------------------------- report


def _entry(name: str, auc_shift: float, reps: int) -> dict:
    from facepriv.eval.verify import result_from_scores

    rng = np.random.default_rng(0)
    issame = np.arange(200) % 2 == 0
    scores = [rng.normal(0, 1, 200) + auc_shift * issame for _ in range(reps)]
    return result_from_scores(scores, issame, 10, checkpoint=f"{name}.pt", set_name="heldout", checkpoint_name=name,
                              stochastic=reps > 1)


def _results(tmp_path: Path) -> dict:
    plan = make_plan(fast=True)
    leak = leakage_summary({"results": [_row("learned", 0.2, 0.4)]}, {fpr_key(1e-3): 0.7})
    models = {
        "rgb": {"verification": _entry("rgb", 3.0, 1), "steps": 100, "train_seconds": 20.0, "model_file": "rgb/model.pt"},
        "partialface": {"verification": _entry("pf", 1.5, 2), "steps": 20, "train_seconds": 9.0, "warm_start": {"x": 1},
                        "distilled": True, "leakage": leak, "model_file": "partialface/model.pt",
                        "privacy_report": {"mechanism": "subsets", "formal_guarantee": None}},
    }
    return {"plan": {**plan.__dict__}, "data": {"pairs_count": 200}, "threads": 2, "models": models,
            "pixel_baseline": _entry("pixels", 0.3, 1), "raw_images_leakage": {fpr_key(1e-3): 0.7},
            "judge": {"chosen": "rgb", "why": "a test"}, "recipe": Recipe().describe(),
            "attack_steps": {"partialface": {"steps": 30, "budget_s": 8.0}},
            "attacks_run": ["analytic", "learned"], "total_seconds": 99.0, "stage_seconds": {"train rgb": 20.0}}


def test_report_markdown_and_html_say_the_same(tmp_path: Path) -> None:
    results = _results(tmp_path)
    grid = {"originals": torch.rand(2, 3, 16, 16), "columns": {"partialface: protected, naive": torch.rand(2, 3, 16, 16)}}
    paths = write_report(tmp_path, results, grid)
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    for fig in ("roc", "grid", "frontier"):
        assert (tmp_path / "figures" / f"{fig}.png").read_bytes()[:8] == PNG
    # every table cell of the Markdown report is in the HTML report
    table = [line for line in md.splitlines() if line.startswith("| partialface |")][0]
    for cell in (c.strip() for c in table.strip("|").split("|")):
        assert cell.replace("&", "&amp;") in page, cell
    assert "0.200" in table and "learned [public]" in table
    assert table_text(results).splitlines()[0].startswith("| model |")
    # the reading of the pictures uses the run's numbers and says when an aim is missed
    para = next(line for line in md.splitlines() if line.startswith("The RGB baseline"))
    assert re.search(r"partialface \d\.\d{3}", para) and "70% of the victims" in para
    # the frontier's RGB row writes the one key spelling, and reads an older metrics.json's raw leakage
    assert collected(results)["rows"]["rgb"]["leakage"]["public"] == {fpr_key(1e-3): 0.7, "best_attack": "the image itself"}
    older = {**results, "raw_images_leakage": {"tpr_at_fpr_0.001": 0.7}}
    assert collected(older)["rows"]["rgb"]["leakage"] == collected(results)["rows"]["rgb"]["leakage"]
    assert table_text(older) == table_text(results)


def test_html_escapes_and_formats_inline_markdown(tmp_path: Path) -> None:
    page = to_html([("p", "a <b> & `code` **bold**")], tmp_path)
    assert "a &lt;b&gt; &amp; <code>code</code> <strong>bold</strong>" in page
    assert to_markdown([("table", ["a", "b"], [[1, 2]])]).splitlines()[:3] == ["| a | b |", "|---|---|", "| 1 | 2 |"]


def test_attack_steps_follow_the_measured_cost_of_each_frontend() -> None:
    """DCTDP's simulated protection costs far more per step than PartialFace's, so the same
    budget buys it fewer learned-attack steps; the count stays within the plan's bounds."""
    from facepriv.frontends import DCTDP, PartialFace
    from facepriv.training.quickstart.leakage import plan_attack_steps

    plan = make_plan(fast=False)
    aux = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8)
    pf_steps, pf_sim = plan_attack_steps(PartialFace(), aux, 20.0, plan, seed=0, rgb_step_s=0.01)
    dp_steps, dp_sim = plan_attack_steps(DCTDP(input_size=64), aux, 20.0, plan, seed=0, rgb_step_s=0.01)
    assert dp_sim > pf_sim and dp_steps <= pf_steps
    assert plan.min_attack_steps <= dp_steps <= pf_steps <= plan.max_attack_steps
    assert plan_attack_steps(DCTDP(input_size=64), aux, 0.0, plan, seed=0, rgb_step_s=0.01)[0] == plan.min_attack_steps
    # a slower machine (slower RGB step) buys fewer steps for the same budget
    slow, _ = plan_attack_steps(PartialFace(), aux, 20.0, plan, seed=0, rgb_step_s=1.0)
    assert slow < pf_steps
