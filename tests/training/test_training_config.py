"""Config loading: YAML round trip, strict keys, overrides, shipped example configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from facepriv.training.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_to_dict,
    dump_config,
    load_config,
    save_config,
)
from facepriv.training.schedule import LRMultiplier, resolve_schedule

CONFIG_DIR = Path(__file__).resolve().parents[2] / "training" / "configs"


def test_yaml_round_trip(tmp_path: Path, tiny_config) -> None:
    cfg = tiny_config(eval={"sets": [{"name": "lfw", "path": "lfw.bin"}], "every_steps": 5})
    path = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)
    assert again.eval.sets[0].name == "lfw"
    # dumping the reloaded config gives the same text: nothing is lost or reordered
    assert dump_config(again) == dump_config(cfg)


def test_unknown_key_is_rejected_with_its_path(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert "optim.lrr" in msg and "did you mean 'optim.lr'" in msg and str(p) in msg

    p.write_text("sheduel: {}\n")
    with pytest.raises(ConfigError, match="unknown config key 'sheduel'.*schedule"):
        load_config(p)


def test_wrong_types_and_values_are_rejected(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("data: {batch_size: many, format: synthetic}\n")
    with pytest.raises(ConfigError, match="data.batch_size: expected an integer"):
        load_config(p)
    p.write_text("optim: {name: rmsprop}\n")
    with pytest.raises(ConfigError, match="optim.name"):
        load_config(p)
    p.write_text("data: {format: folder}\n")
    with pytest.raises(ConfigError, match="data.path is required"):
        load_config(p)
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)


def test_cli_style_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("data: {format: synthetic}\noptim: {lr: 0.1}\n")
    cfg = load_config(p, ["optim.lr=0.02", "frontend.name=partialface", "frontend.sample_multiplier=1",
                          "schedule.milestones=[1, 2.5]", "optim.clip_grad_norm=null", "data.hflip=false"])
    assert cfg.optim.lr == 0.02
    assert cfg.frontend == {"name": "partialface", "sample_multiplier": 1}
    assert cfg.schedule.milestones == [1.0, 2.5]
    assert cfg.optim.clip_grad_norm is None and cfg.data.hflip is False
    with pytest.raises(ConfigError, match="optim.momentun"):
        load_config(p, ["optim.momentun=0.5"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"optim": {"lr": 1}}, ["optim.lr.x=1"])


def test_defaults_are_valid_and_dp_distill_exclusive() -> None:
    cfg = load_config(None, ["data.format=synthetic"])
    assert isinstance(cfg, TrainConfig)
    with pytest.raises(ConfigError, match="cannot be combined"):
        load_config(None, ["data.format=synthetic", "dp.enabled=true", "distill.enabled=true"])


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert yaml.safe_load(dump_config(cfg))["name"] == cfg.name


def test_shipped_config_set_is_complete() -> None:
    names = {p.name for p in CONFIG_DIR.glob("*.yaml")}
    assert {"rgb_iresnet18.yaml", "partialface_iresnet18.yaml", "dctdp_iresnet18.yaml", "tiny_cpu.yaml"} <= names
    assert any(load_config(CONFIG_DIR / n).data.format == "recordio" and load_config(CONFIG_DIR / n).head.get("type") == "partial_fc"
               for n in names)


def test_schedule_shapes() -> None:
    from facepriv.training.config import ScheduleConfig

    r = resolve_schedule(ScheduleConfig(type="poly", epochs=2, warmup_epochs=0.5), steps_per_epoch=10)
    assert (r.total_steps, r.warmup_steps) == (20, 5)
    f = LRMultiplier("poly", r.total_steps, r.warmup_steps, power=2.0)
    assert f(0) == pytest.approx(1 / 6) and f(4) == pytest.approx(5 / 6) and f(5) == 1.0
    assert f(20) == 0.0 and 0 < f(12) < 1
    s = LRMultiplier("step", 100, 0, milestones=[10, 20], gamma=0.1)
    assert (s(9), s(10), s(25)) == (1.0, pytest.approx(0.1), pytest.approx(0.01))


@pytest.mark.parametrize("frontend, mode, kind", [
    ({"name": "rgb"}, "auto", None),
    ({"name": "dct"}, "auto", "ChannelStandardize"),
    ({"name": "partialface", "secret_seed": 3}, "auto", "PerSampleStandardize"),  # channel meaning varies per query
    ({"name": "partialface", "secret_seed": 3}, "standardize", "ChannelStandardize"),
    ({"name": "dct"}, "none", None),
])
def test_input_norm_auto_choice_survives_a_checkpoint(tmp_path: Path, tiny_config, frontend, mode, kind) -> None:
    from facepriv.models import FaceRecognizer
    from facepriv.training.components import build_recognizer

    cfg = tiny_config(frontend=frontend, input_norm__mode=mode)
    model = build_recognizer(cfg)
    assert (None if model.input_norm is None else type(model.input_norm).__name__) == kind
    loaded = FaceRecognizer.load(model.save(tmp_path / "m.pt"))
    assert type(loaded.input_norm) is type(model.input_norm)


# --------------------------------------------------------------------------- validation at load time


@pytest.mark.parametrize("override, names", [
    ("optim.lr=.nan", "optim.lr: expected a finite number"),
    ("optim.clip_grad_norm=-1", "optim.clip_grad_norm must be > 0"),
    ("optim.momentum=-0.5", "optim.momentum must be in [0, 1)"),
    ("model.width=1.0e+6", "model.width=1000000.0"),
    ("model.width=1e6", "model.width: expected a number, got '1e6'"),  # YAML reads 1e6 as a string
    ("head.s='64'", "head.s: expected a number, got '64'"),
    ("model.width=40", "the limit is"),
    ("data.image_size=120", "input_size 120 is not divisible by 2**strided_stages = 16"),
    ("frontend={name: dctdp, epsilon_mean: '4'}", "frontend.epsilon_mean: expected a number, got '4'"),
    ("frontend={name: dctdp, epsilon_mean: .inf}", "frontend.epsilon_mean: expected a finite number"),
    ("frontend={name: dctdp, epsilon: 4}", "frontend.epsilon: 'dctdp' has no such option"),
    ("head.margin=arcfaec", "unknown margin 'arcfaec'"),
    ("head.s=.inf", "head.s: expected a finite number"),
    ("dp.delta=2", "dp.delta must be in (0, 1)"),
    ("eval.folds=1", "eval.folds must be >= 2"),
    ("optim.nesterov=true", "optim.nesterov needs optim.momentum > 0"),
])
def test_bad_values_fail_at_load_in_one_line_naming_the_key(override: str, names: str, capsys, monkeypatch) -> None:
    from facepriv.training import cli, components

    def no_data(*args, **kwargs):  # the error must come before any dataset is built
        raise AssertionError("the dataset was built before the config was validated")

    monkeypatch.setattr(components, "build_train_dataset", no_data)
    extra = ["optim.momentum=0"] if "nesterov" in override else []
    rc = cli.main([str(CONFIG_DIR / "tiny_cpu.yaml"), "--set", override] + [a for e in extra for a in ("--set", e)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert names in err and "tiny_cpu.yaml" in err and "\n" not in err and "Traceback" not in err


def test_the_one_minute_demo_config_trains_through_the_cli(tmp_path: Path, capsys) -> None:
    """docs/training.md's first command: tiny_cpu.yaml must build and train (2 steps here)."""
    from facepriv.training import checkpoint as ckpt
    from facepriv.training import cli

    rc = cli.main([str(CONFIG_DIR / "tiny_cpu.yaml"), "--out", str(tmp_path / "tiny"), "--max-steps", "2", "-q"])
    assert rc == 0, capsys.readouterr().err
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "tiny")] == ["step_00000002"]


def _tiny_overrides(path: Path, teacher: Path) -> list[str]:
    """Shrink data and width; keep every other choice of the shipped config (frontend, head,
    optimiser, AMP, DP, distillation) so one real step runs through it."""
    cfg = yaml.safe_load(path.read_text())
    out = ["data.format=synthetic", "data.synthetic={n_identities: 4, images_per_identity: 4, cache: true}",
           "data.batch_size=4", "data.num_workers=0", "data.num_classes=null", "model.width=0.0625",
           "eval.sets=[]", "schedule.max_steps=2", "logging.tensorboard=false", "logging.progress=false",
           "checkpoint.every_steps=0", "input_norm.calibration_batches=1", "device=cpu"]
    if (cfg.get("distill") or {}).get("enabled"):
        out.append(f"distill.teacher={teacher}")
    return out


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    """A 512-d RGB FaceRecognizer at 112x112 to stand in for the distillation config's teacher."""
    from facepriv.training.components import build_recognizer

    cfg = load_config(None, ["data.format=synthetic", "model={name: iresnet18, width: 0.0625, embedding_size: 512}"])
    return build_recognizer(cfg).save(tmp_path_factory.mktemp("teacher") / "model.pt")


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_takes_a_training_step(path: Path, tmp_path: Path, tiny_teacher: Path) -> None:
    import math

    import torch

    from facepriv.training.trainer import Trainer

    torch.manual_seed(0)
    cfg = load_config(path, _tiny_overrides(path, tiny_teacher))
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    result = trainer.train_step(trainer.next_batch())
    assert math.isfinite(float(result.loss)) and trainer.step == 1
    trainer.close()
