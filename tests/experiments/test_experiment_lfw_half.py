"""The LFW-half experiment end to end on a tiny generated stand-in for the shared data folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facepriv.eval.experiments import ExperimentConfigError, LfwDataError, config_from_dict, load_config, prepare_lfw_half

N_LFW, PER_ID, SIZE = 24, 3, 32


def _fake_data_root(root: Path) -> Path:
    """lfw/aligned112 + pairs.txt (10 identity-disjoint folds) + identity_fold.json + celeba299."""
    from facepriv.data.synthetic import write_folder

    lfw = root / "lfw" / "aligned112"
    write_folder(lfw, N_LFW, PER_ID, seed=1, image_size=SIZE, progress=False)
    names = sorted(p.name for p in lfw.iterdir())
    folds = {n: i // 2 for i, n in enumerate(names[:20])}  # 2 identities per fold; 4 in no fold
    lines = ["10\t2"]
    for f in range(10):
        a, b = [n for n in names[:20] if folds[n] == f]
        lines += [f"{a}\t1\t2", f"{b}\t2\t3", f"{a}\t1\t{b}\t1", f"{a}\t3\t{b}\t2"]
    (root / "lfw" / "pairs.txt").write_text("\n".join(lines) + "\n")
    (root / "lfw" / "identity_fold.json").write_text(json.dumps(folds))
    celeb = root / "celeba299" / "aligned112"
    write_folder(celeb, 3, PER_ID, seed=2, image_size=SIZE, first_identity=500, progress=False)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return _fake_data_root(tmp_path_factory.mktemp("shared_data"))


def _tiny_config(models: list[dict]) -> dict:
    return {
        "name": "tiny", "seed": 0, "device": "cpu", "teacher": "dlib", "judge": "dlib",
        "train": {"data": {"image_size": SIZE, "batch_size": 8, "num_workers": 0},
                  "model": {"name": "iresnet18", "width": 0.125, "embedding_size": 128},
                  "input_norm": {"mode": "auto", "calibration_batches": 1},
                  "head": {"type": "softmax", "margin": "arcface", "s": 32.0, "m": 0.3},
                  "optim": {"name": "sgd", "lr": 0.05},
                  "schedule": {"type": "poly", "max_steps": 4},
                  "checkpoint": {"every_steps": 2, "keep_last": 1}, "logging": {"every_steps": 2, "progress": False}},
        "models": models,
        "federated": {"clients": 2, "rounds": 1, "num_cpus": 2, "cpus_per_client": 1.0},
        "eval": {"repetitions": 2, "batch_size": 16},
        "attacks": {"max_victims": 6, "max_gallery_per_identity": 2, "max_aux": 20,
                    "config": {"knowledge": "public", "fills": ["zeros"], "grid_victims": 2, "progress": False,
                               "analytic": {"iterations": 2}, "learned": {"steps": 3, "batch_size": 4, "width": 4,
                                                                         "depth": 1},
                               "optimisation": {"steps": 2}}},
    }


def test_layout_is_identity_disjoint(data_root, tmp_path):
    layout = prepare_lfw_half(data_root, tmp_path)
    train = {p.name for p in Path(layout.train).iterdir()}
    victims = {p.name for p in Path(layout.victims).iterdir()}
    aux = {p.name for p in Path(layout.aux).iterdir()}
    assert len(victims) == 10 and not (victims & train) and not (victims & aux)
    assert layout.counts["train_identities"] == 10 + 4 + 3 and len(aux) == 14
    assert all(n.startswith("celeba_") for n in train - aux)
    head, *body = Path(layout.pairs).read_text().splitlines()
    assert head.split() == ["5", "2"] and len(body) == 20 == layout.counts["test_pairs"]
    # idempotent, and it refuses a folder holding something else
    assert prepare_lfw_half(data_root, tmp_path).counts == layout.counts
    (Path(layout.victims) / "intruder").mkdir()
    with pytest.raises(LfwDataError, match="not part of this protocol"):
        prepare_lfw_half(data_root, tmp_path)


def test_missing_data_is_named(tmp_path):
    with pytest.raises(LfwDataError, match="identity_fold.json"):
        (tmp_path / "lfw" / "aligned112").mkdir(parents=True)
        (tmp_path / "lfw" / "pairs.txt").write_text("10\t300\n")
        prepare_lfw_half(tmp_path, tmp_path / "out")


def test_config_validation():
    assert len(load_config("cpu").models) == len(load_config("gpu").models)
    assert load_config("cpu", ["eval.repetitions=5"]).eval.repetitions == 5
    with pytest.raises(ExperimentConfigError, match="mode"):
        config_from_dict(_tiny_config([{"name": "x", "frontend": {"name": "rgb"}, "mode": "bogus"}]))
    modes = ["scratch", "distill", "fedavg", "pfm_distill"]
    specs = config_from_dict(_tiny_config([{"name": m, "frontend": {"name": "rgb"}, "mode": m} for m in modes])).models
    assert [(m.strategy, m.distilled) for m in specs] == [(None, False), (None, True), ("fedavg", False), ("pfm", True)]
    with pytest.raises(ExperimentConfigError, match="unique"):
        config_from_dict(_tiny_config([{"name": "x", "frontend": {"name": "rgb"}}] * 2))
    with pytest.raises(ExperimentConfigError, match="unknown key"):
        config_from_dict({**_tiny_config([{"name": "x", "frontend": {"name": "rgb"}}]), "epochz": 3})
    rgb = {"name": "rgb", "frontend": {"name": "rgb"}, "mode": "distill"}
    warm = {"name": "pf", "frontend": {"name": "partialface"}, "mode": "distill", "init_from": "rgb"}
    assert config_from_dict(_tiny_config([rgb, warm])).models[1].init_from == "rgb"
    with pytest.raises(ExperimentConfigError, match="init_from 'rgb' must name a row listed before it"):
        config_from_dict(_tiny_config([warm, rgb]))
    with pytest.raises(ExperimentConfigError, match="init_from is for central rows"):
        config_from_dict(_tiny_config([rgb, {**warm, "mode": "pfm"}]))


def test_frontier_plot_marks_target_and_raw_point(tmp_path):
    from facepriv.eval.experiments.frontier import frontier_points, plot_frontier, target_hits

    def row(frontend, acc, std, pub, sec=None, ci=None):
        leak = {"public": {"tpr@1e-3": pub, "best_attack": "learned", **({"tpr@1e-3_ci": ci} if ci else {})}}
        if sec is not None:
            leak["secret"] = {"tpr@1e-3": sec, "best_attack": "analytic"}
        return {"frontend": {"name": frontend}, "verification": {"accuracy": (acc, std)}, "leakage": leak}

    collected = {"rows": {"rgb": row("rgb", 0.96, 0.0, 0.93),
                          "pf": row("partialface", 0.90, 0.01, 0.04, sec=0.30),  # secret attack is worse
                          "dp": row("dctdp", 0.88, 0.01, 0.03, ci=(0.01, 0.05)),
                          "untrained": {"frontend": {"name": "dct"}, "verification": None, "leakage": None}},
                 "raw_images_leakage": {"tpr_at_fpr_1e-3": 0.934}}
    points = {p["name"]: p for p in frontier_points(collected)}
    assert set(points) == {"rgb", "pf", "dp"}
    assert points["pf"]["leakage"] == 0.30 and points["pf"]["attack"] == "analytic (secret)"  # worst case
    assert points["dp"]["leakage_ci"] == (0.01, 0.05)
    assert target_hits(list(points.values())) == ["dp"]  # 0.88 >= 0.9 * 0.96 and 0.03 <= 0.05
    path = plot_frontier(collected, tmp_path / "f.png")
    assert path is not None and path.stat().st_size > 10_000
    assert plot_frontier({"rows": {}}, tmp_path / "none.png") is None


def test_recipe_levers_name_the_layout_and_start():
    from facepriv.eval.experiments.recipe import levers, recipe_study

    row = {"mode": "distill", "frontend": {"name": "partialface", "upsample": 1, "secret_seed": 7},
           "training": {"steps": 1200, "epochs": 5.91, "warm_start": {"source": "/r/models/rgb/model.pt"},
                        "seconds_this_session": 600.0, "steps_this_session": 1200, "faces_per_second": 128.0},
           "verification": {"accuracy": (0.9, 0.01), "tpr_at_fpr_1e-3": (0.4, 0.02)},
           "leakage": {"public": {"tpr_at_fpr_1e-3": 0.02, "best_attack": "linkage/raw"}}}
    lv = levers(row, {"name": "iresnet18", "width": 0.25, "embedding_size": 128})
    assert lv["layout"] == "compact x1 (14x14 maps)" and lv["start"] == "warm start from /r/models/rgb/model.pt"
    assert lv["frontend_options"] == {"upsample": 1} and lv["epochs"] == 5.91
    # with its config the donor is named by its row, also before the row has trained
    untrained = {**row, "training": None, "init_from": "rgb"}
    assert levers(untrained, {})["start"] == "warm start from rgb"
    rgb = {"mode": "distill", "frontend": {"name": "rgb"}, "training": None,
           "verification": {"accuracy": (0.95, 0.0)}, "leakage": None}
    study = recipe_study({"rows": {"rgb": rgb, "pf_x1": row}}, {}, {"cpu_count": 2})
    by = {r["name"]: r for r in study["rows"]}
    assert by["pf_x1"]["accuracy_vs_rgb"] == round(0.9 / 0.95, 4) and by["pf_x1"]["tpr_at_fpr_1e-3"] == 0.4
    assert by["pf_x1"]["leakage"]["tpr_at_fpr_1e-3"] == 0.02 and by["pf_x1"]["train_seconds_covers_all_steps"]
    assert by["rgb"]["status"] == "done" and by["rgb"]["train_seconds"] is None


class FakeSimulation:
    """Stands in for the Flower simulation (tested with Ray in tests/federated): records the
    settings it was given, writes the global model, and reports every site as accepted
    unless told otherwise. Keeps this test free of Ray's start-up cost."""

    def __init__(self, accept_all: bool = True) -> None:
        self.accept_all = accept_all
        self.calls: list = []

    def __call__(self, settings, *, num_clients, num_cpus, cpus_per_client):
        from facepriv.federated.server_app import build_global_model

        self.calls.append(settings)
        model, _ = build_global_model(settings)
        Path(settings.out).mkdir(parents=True, exist_ok=True)
        model.save(Path(settings.out) / "global.pt")
        sites = list(range(num_clients)) if self.accept_all else list(range(num_clients - 1))
        failed = {} if self.accept_all else {str(num_clients - 1): "RuntimeError: site crashed"}
        return [{"round": 0}] + [{"round": r, "aggregation": {"accepted": sites, "failed": failed, "rejected": {}}}
                                 for r in range(1, settings.rounds + 1)]


def test_federated_rows_get_the_central_step_budget(data_root, tmp_path, monkeypatch):
    pytest.importorskip("flwr")
    import facepriv.federated.simulate
    from facepriv.eval.experiments.lfw_half import train_federated

    fake = FakeSimulation()
    monkeypatch.setattr(facepriv.federated.simulate, "simulate", fake)
    cfg = _tiny_config([{"name": "pf_pfm", "mode": "pfm", "frontend": {"name": "partialface"}}])
    cfg["train"]["schedule"] = {"type": "poly", "max_steps": 16, "warmup_steps": 4}
    cfg["federated"] = {"clients": 2, "rounds": 2}
    cfg = config_from_dict(cfg)
    layout = prepare_lfw_half(data_root, tmp_path)
    done = train_federated(cfg, cfg.models[0], layout, tmp_path)
    settings = fake.calls[0]
    assert settings.strategy == "pfm" and settings.local_steps == 4 and done["steps"] == 16  # 2 rounds x 4 x 2 sites
    assert settings.train_config["schedule"]["max_steps"] == 8  # each site's schedule spans its own 8 steps
    assert settings.data["num_partitions"] == 2 and settings.data["path"] == layout.train
    assert (tmp_path / "models" / "pf_pfm" / "model.pt").is_file()
    assert not settings.train_config.get("distill", {}).get("enabled")
    # a distilled federated row: same strategy and budget, each site distils from the shared teacher cache
    cfg.models[0] = type(cfg.models[0])("pf_pfm_distill", {"name": "partialface"}, "pfm_distill")
    train_federated(cfg, cfg.models[0], layout, tmp_path)
    settings = fake.calls[1]
    assert settings.strategy == "pfm" and settings.local_steps == 4
    assert settings.train_config["distill"]["enabled"] and settings.train_config["distill"]["teacher"] == "dlib"
    assert settings.train_config["distill"]["cache"].startswith(str(tmp_path / "teacher"))
    # a round in which a site failed would give the row less compute: refused, not reported
    monkeypatch.setattr(facepriv.federated.simulate, "simulate", FakeSimulation(accept_all=False))
    with pytest.raises(RuntimeError, match="accepted 1 of 2 site updates"):
        train_federated(cfg, config_from_dict({**_tiny_config([{"name": "pf_fedavg", "mode": "fedavg",
                                                                 "frontend": {"name": "partialface"}}]),
                                               "federated": {"clients": 2, "rounds": 2}}).models[0], layout, tmp_path)


def test_end_to_end_resume_and_report(data_root, tmp_path, monkeypatch):
    pytest.importorskip("dlib")
    pytest.importorskip("flwr")
    import facepriv.federated.simulate
    from facepriv.eval.experiments.lfw_half import main

    monkeypatch.setattr(facepriv.federated.simulate, "simulate", FakeSimulation())

    models = [{"name": "rgb_distill", "mode": "distill", "frontend": {"name": "rgb"}},
              {"name": "pf_pfm", "mode": "pfm", "frontend": {"name": "partialface"}},
              {"name": "pf_scratch", "mode": "scratch", "frontend": {"name": "partialface"}},
              {"name": "dct_warm", "mode": "distill", "frontend": {"name": "dct"}, "init_from": "rgb_distill",
               "train": {"schedule": {"max_steps": 2}}}]
    import yaml

    cfg = _tiny_config(models)
    cfg["attacks"]["models"] = ["pf_pfm", "pf_scratch"]  # attacks on the RGB baseline are tested in tests/eval/attacks
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    docs = tmp_path / "docs"
    argv = ["--data", str(data_root), "--out", str(out), "--config", str(cfg_path), "--publish", str(docs)]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["reference"]["accuracy"][0] is not None
    for name in ("rgb_distill", "pf_pfm"):
        assert res["rows"][name]["verification"] is not None and (out / "models" / name / "model.pt").is_file()
    assert res["rows"]["rgb_distill"]["verification"]["repetitions"] == 1  # deterministic frontend: once
    assert res["rows"]["pf_pfm"]["verification"]["repetitions"] == 2  # stochastic: repeated
    assert res["rows"]["pf_pfm"]["leakage"]["public"]["best_attack"] and res["rows"]["rgb_distill"]["leakage"] is None
    assert res["rows"]["pf_pfm"]["training"]["steps"] == 4  # 1 round x 2 local steps x 2 sites
    # both PartialFace rows hold one secret (derived from the experiment seed), so the
    # frontend an attacker faces is the same and is attacked once
    from facepriv.models import FaceRecognizer

    secrets_ = {FaceRecognizer.load(out / "models" / n / "model.pt").frontend.secret_seed for n in ("pf_pfm", "pf_scratch")}
    assert len(secrets_) == 1
    shared = json.loads((out / "attacks" / "pf_scratch" / "attack.json").read_text())
    assert shared["shared_from"] == "pf_pfm" and res["rows"]["pf_scratch"]["leakage"] == res["rows"]["pf_pfm"]["leakage"]
    assert not (out / "attacks" / "pf_scratch" / "grid.png").exists() and "pf_scratch" not in res["figures"]["grids"]
    assert list((out / "teacher").glob("teacher_*.safetensors"))
    warm = res["rows"]["dct_warm"]["training"]
    assert warm["steps"] == 2 and warm["warm_start"]["source"].endswith("rgb_distill/model.pt")
    assert warm["warm_start"]["reinitialised"]  # the stem for 192 DCT channels starts fresh
    md = (docs / "results.md").read_text()
    assert "(frontend = pf_pfm)" in md.split("| pf_scratch |")[1].splitlines()[0]
    assert "| pf_pfm | pfm |" in md and "![ROC](results/roc.png)" in md and (docs / "results" / "roc.png").is_file()
    # a handful of victims cannot measure TPR@1e-3: no frontier point (the plot is tested on its own)
    assert res["frontier"] == {"points": [], "target_hits": []} and "![frontier]" not in md
    # the recipe study (accuracy vs wall time per lever) lands beside the benchmarks
    study = json.loads((docs / "benchmarks" / "recipe_study.json").read_text())
    assert study == json.loads((out / "recipe_study.json").read_text())
    by = {r["name"]: r for r in study["rows"]}
    assert set(by) == {"rgb_distill", "pf_pfm", "pf_scratch", "dct_warm"}
    assert by["rgb_distill"]["accuracy_vs_rgb"] == 1.0 and by["rgb_distill"]["levers"]["layout"] == "pixels"
    assert by["dct_warm"]["levers"]["start"] == "warm start from rgb_distill" and by["dct_warm"]["levers"]["steps"] == 2
    # the tiny run's faces are 32 px, so its x8 maps are 32x32
    assert by["pf_scratch"]["levers"]["layout"] == "TFace x8 (32x32 maps)" and by["pf_scratch"]["levers"]["start"] == "scratch"
    assert all(r["status"] == "done" and r["train_seconds"] is not None for r in by.values())
    assert not any("seed" in k for r in by.values() for k in r["levers"]["frontend_options"])  # no secret in docs
    (docs / "results.md").write_text("# Results\n" + md + "Hand-written discussion.\n")
    # re-running does no work again, gives the same table and keeps the text around it
    before = (out / "timings.json").read_text()
    assert main(argv) == 0
    t_before, t_after = json.loads(before), json.loads((out / "timings.json").read_text())
    assert all(t_after[k] - t_before[k] < 5.0 for k in t_before if k.startswith("train/"))
    again = (docs / "results.md").read_text()
    assert again.startswith("# Results\n") and again.endswith("Hand-written discussion.\n")
    assert again.split("## How")[0] == "# Results\n" + md.split("## How")[0]
    # the same folder refuses a different config
    assert main(argv + ["--set", "seed=1"]) == 2


def test_frontend_fingerprint_and_parallel_timings(tmp_path):
    """Fingerprints tell frontends apart by secret and learned state; wall times from two
    runs on one folder are merged, not overwritten."""
    import torch

    from facepriv.eval.experiments.lfw_half import _add_timing, _with_shared_secrets, frontend_fingerprint
    from facepriv.frontends import build_frontend

    cfg = config_from_dict(_tiny_config([{"name": "x", "frontend": {"name": "rgb"}}]))
    pf = _with_shared_secrets(cfg, {"name": "partialface"})
    assert pf == _with_shared_secrets(cfg, {"name": "partialface"}) and 0 <= pf["secret_seed"] < 2**63
    assert _with_shared_secrets(cfg, {"name": "partialface", "n_subsets": 4})["secret_seed"] != pf["secret_seed"]
    assert _with_shared_secrets(cfg, {"name": "partialface", "secret_seed": 7})["secret_seed"] == 7  # given: kept
    assert frontend_fingerprint(build_frontend(pf)) == frontend_fingerprint(build_frontend(pf))
    assert frontend_fingerprint(build_frontend(pf)) != frontend_fingerprint(build_frontend({**pf, "secret_seed": 7}))
    dp = build_frontend({"name": "dctdp", "epsilon_mean": 4.0})
    before = frontend_fingerprint(dp)
    with torch.no_grad():
        dp.budget_logits.add_(0.1)  # a trained budget is a different protection
    assert frontend_fingerprint(dp) != before

    _add_timing(tmp_path, "train/a", 2.0)
    _add_timing(tmp_path, "train/b", 3.0)  # as if from a second process
    assert _add_timing(tmp_path, "train/a", 1.0) == {"train/a": 3.0, "train/b": 3.0}


def test_continuing_may_change_execution_settings_only(tmp_path):
    """A run folder keeps its first config; cores and threads may change on resume, numbers may not."""
    from facepriv.eval.experiments.lfw_half import _check_same_config

    cfg = config_from_dict(_tiny_config([{"name": "x", "frontend": {"name": "rgb"}}]))
    _check_same_config(cfg, tmp_path)
    first = (tmp_path / "experiment_config.json").read_text()
    more_cores = config_from_dict({**_tiny_config([{"name": "x", "frontend": {"name": "rgb"}}]), "threads": 8,
                                   "federated": {"clients": 2, "rounds": 1, "num_cpus": 16,
                                                                 "cpus_per_client": 4.0}})
    _check_same_config(more_cores, tmp_path)
    assert (tmp_path / "experiment_config.json").read_text() == first
    other_rounds = config_from_dict({**_tiny_config([{"name": "x", "frontend": {"name": "rgb"}}]),
                                     "federated": {"clients": 2, "rounds": 3}})
    with pytest.raises(ExperimentConfigError, match=r"differs in \['federated'\]"):
        _check_same_config(other_rounds, tmp_path)
    # a new row may join a folder; a row with files in it may not change or disappear
    rows = [{"name": "x", "frontend": {"name": "rgb"}}, {"name": "y", "mode": "pfm_distill", "frontend": {"name": "dct"}}]
    _check_same_config(config_from_dict(_tiny_config(rows)), tmp_path)
    assert [m["name"] for m in json.loads((tmp_path / "experiment_config.json").read_text())["models"]] == ["x", "y"]
    (tmp_path / "models" / "x").mkdir(parents=True)  # x has started
    # ... while a row that never started may change or go (its numbers do not exist yet)
    changed_y = [rows[0], {**rows[1], "frontend": {"name": "dct", "upsample": 1}}]
    _check_same_config(config_from_dict(_tiny_config(changed_y)), tmp_path)
    stored = json.loads((tmp_path / "experiment_config.json").read_text())["models"]
    assert stored[1]["frontend"] == {"name": "dct", "upsample": 1}
    _check_same_config(config_from_dict(_tiny_config(rows[:1])), tmp_path)
    assert [m["name"] for m in json.loads((tmp_path / "experiment_config.json").read_text())["models"]] == ["x"]
    with pytest.raises(ExperimentConfigError, match=r"models/x"):
        _check_same_config(config_from_dict(_tiny_config([{**rows[0], "mode": "distill"}, rows[1]])), tmp_path)
    with pytest.raises(ExperimentConfigError, match=r"models/x"):
        _check_same_config(config_from_dict(_tiny_config(rows[1:])), tmp_path)
    (tmp_path / "attacks" / "y").mkdir(parents=True)  # an attack's files count as started too
    _check_same_config(config_from_dict(_tiny_config(rows)), tmp_path)
    with pytest.raises(ExperimentConfigError, match=r"models/y"):
        _check_same_config(config_from_dict(_tiny_config(changed_y)), tmp_path)


def test_cpu_recipe_config_loads_with_a_pack():
    """The RGB recipe config (trained from a pack) passes the training config checks."""
    from facepriv.training.config import load_config as load_train_config

    path = Path(__file__).resolve().parents[2] / "eval" / "experiments" / "configs" / "recipe_rgb_cpu.yaml"
    cfg = load_train_config(path, ["data.path=/x/train.rec", "distill.teacher=pack:/x"])
    assert cfg.data.format == "recordio" and cfg.distill.enabled and cfg.model["width"] == 0.25


@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_every_shipped_row_builds_its_training_config(scale, tmp_path):
    """The config path without data or a GPU: every row of the shipped CPU and GPU configs turns
    into a TrainConfig that passes the load-time checks (frontend, backbone and head built on the
    meta device), warm-started rows point at their donor's model, and the GPU scale differs from
    the CPU one only in its YAML."""
    from facepriv.eval.experiments.lfw_data import LfwHalf
    from facepriv.eval.experiments.lfw_half import train_config
    from facepriv.training.config import config_from_dict as train_config_from_dict

    cfg = load_config(scale)
    layout = LfwHalf(root=str(tmp_path), lfw_images=str(tmp_path), train=str(tmp_path / "train"), aux="", victims="",
                     pairs="", counts={})
    for spec in cfg.models:
        tc = train_config(cfg, spec, layout, tmp_path)
        tc["device"] = "cpu"  # the CUDA-less dry run of the config path
        checked = train_config_from_dict(tc)
        assert checked.frontend["name"] == spec.frontend["name"]
        if spec.init_from:
            assert checked.init_from == str(tmp_path / "models" / spec.init_from / "model.pt")
            assert checked.schedule.max_steps < cfg.train["schedule"]["max_steps"]
    names = [m.name for m in cfg.models]
    assert sum(n.startswith("dctdp_") for n in names) >= 4 and "minusface_distill" in names
    assert cfg.attacks.max_victims >= 300 and "linkage" in cfg.attacks.config["attacks"]


def test_recovered_table_attacker_counts_as_no_secret_leakage():
    """Regression: the table and the frontier read only the public and secret levels, so an
    attacker that recovered PartialFace's table from traffic (no secret) was left out."""
    from facepriv.eval.experiments.frontier import worst_case_leakage
    from facepriv.eval.experiments.results import leakage_row

    def res(level, tpr):
        return {"attack": "learned", "knowledge": level, "identity": {"tpr_at_fpr_1e-3": tpr, "rank1": tpr},
                "image": {"psnr_db": {"mean": 13.0}, "ssim_luma": {"mean": 0.4}}}

    lk = leakage_row({"results": [res("public", 0.003), res("recovered", 0.013), res("secret", 0.004)]})
    assert lk["recovered"]["tpr_at_fpr_1e-3"] == 0.013
    assert worst_case_leakage(lk)[0] == 0.013 and "recovered" in worst_case_leakage(lk)[2]


def test_unprotected_rows_without_an_attack_sit_at_the_raw_image_leakage():
    from facepriv.eval.experiments.frontier import frontier_points

    row = {"verification": {"accuracy": (0.9, 0.0)}, "leakage": None}
    collected = {"rows": {"rgb": {**row, "frontend": {"name": "rgb"}},
                          "dct_x1": {**row, "frontend": {"name": "dct", "upsample": 1}},
                          "pf": {**row, "frontend": {"name": "partialface"}}},  # protected: needs its own attack
                 "raw_images_leakage": {"tpr_at_fpr_1e-3": 0.921}}
    points = {p["name"]: p for p in frontier_points(collected)}
    assert set(points) == {"rgb", "dct_x1"} and points["rgb"]["leakage"] == 0.921
    assert points["rgb"]["attack"] == "the image itself" and "exact inverse" in points["dct_x1"]["attack"]
    # and the DCT's exact inverse really does rebuild the face (what puts the row there)
    import torch

    from facepriv.frontends import block_dct, block_idct

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for u in (1, 8):
        assert torch.allclose(block_idct(block_dct(x, u), u), x, atol=1e-4)


def test_table_puts_unprotected_rows_at_the_raw_image_leakage():
    from facepriv.eval.experiments.results import render_markdown

    verification = {"accuracy": (0.86, None), "eer": (0.14, None), "tpr_at_fpr_1e-3": (0.34, None)}
    results = {"data": {"counts": {"train_images": 1, "train_identities": 1, "test_pairs": 1, "test_identities": 1}},
               "environment": {}, "raw_images_leakage": {"tpr_at_fpr_1e-3": 0.921},
               "rows": {"dct_x1": {"mode": "distill", "frontend": {"name": "dct", "upsample": 1},
                                   "verification": verification, "leakage": None},
                        "pf": {"mode": "distill", "frontend": {"name": "partialface"},
                               "verification": verification, "leakage": None}}}
    lines = {line.split(" | ")[0]: line for line in render_markdown(results).splitlines() if line.startswith("| ")}
    assert "| 0.921 | the image itself (exact inverse DCT) |" in lines["| dct_x1"]
    assert "| – | – |" in lines["| pf"]  # a protected row without an attack has no leakage figure
