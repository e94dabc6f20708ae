"""FedSettings is the one settings surface: CLI flags and the deployed app's run-config keys
are derived from its fields, None/"" means unset (0 is a value), and every message key lives
in facepriv.federated.protocol."""

from __future__ import annotations

import ast
import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("flwr.app")

from facepriv.federated import protocol  # noqa: E402
from facepriv.federated.cli import build_parser, build_settings, default_train_config  # noqa: E402
from facepriv.federated.settings import (  # noqa: E402
    FedSettings,
    flag_name,
    run_config_defaults,
    settings_fields,
    settings_from_run_config,
)
from facepriv.training.config import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _app_config() -> dict:
    return tomllib.loads((ROOT / "federated" / "app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_app_config_keys_are_derived_from_fedsettings():
    """The committed pyproject lists exactly the derived keys, each unset ("")."""
    assert _app_config() == run_config_defaults()
    names = {f.name for f in dataclasses.fields(FedSettings)}
    assert {"server-momentum", "client-dp-noise", "fraction-train", "seed"} <= set(run_config_defaults())
    assert all(k.replace("-", "_") in names for k in run_config_defaults() if k not in ("settings-file", "train-config-yaml"))


def test_every_cli_field_is_a_flag_with_the_field_default(tmp_path):
    parser = build_parser("t")
    args = parser.parse_args(["settings", "--out", str(tmp_path)])
    for f in settings_fields("cli"):
        expected = f.metadata.get("cli_default", f.default)
        if f.name == "out":
            continue
        assert getattr(args, f.name) == expected, f.name
    sub = parser._subparsers._group_actions[0].choices["settings"]  # noqa: SLF001 - the settings subparser
    flags = {s for a in sub._actions for s in a.option_strings}
    for f in settings_fields("cli"):
        assert ("--" + flag_name(f)) in flags or ("--no-" + flag_name(f)) in flags, f.name


def test_server_momentum_zero_can_be_set_everywhere(tmp_path):
    """Regression: the run-config loop treated 0 as unset, so server-momentum=0 kept 0.9."""
    args = build_parser("t").parse_args(["settings", "--out", str(tmp_path), "--strategy", "fedavgm",
                                         "--server-momentum", "0"])
    settings = build_settings(args)
    assert settings.server_momentum == 0.0
    args = build_parser("t").parse_args(["settings", "--out", str(tmp_path), "--strategy", "fedavgm"])
    (tmp_path / "settings.json").write_text(build_settings(args).to_json())
    conf = {**_app_config(), "settings-file": str(tmp_path / "settings.json")}
    assert settings_from_run_config(conf).server_momentum == 0.9  # "" = as in the file
    deployed = settings_from_run_config({**conf, "server-momentum": 0, "fv-candidates": 0, "max-update-norm": 0.5})
    assert (deployed.server_momentum, deployed.fv_candidates, deployed.max_update_norm) == (0.0, 0, 0.5)
    assert isinstance(deployed.server_momentum, float)


def test_run_config_and_settings_file_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="server-momentun"):
        settings_from_run_config({"settings-file": "x.json", "server-momentun": 0})
    data = {"train_config": default_train_config(32, "rgb", "mobilefacenet", 0.125, 8, 0.05, 0, "cpu"),
            "out": str(tmp_path), "server_momentun": 0.5}
    (tmp_path / "s.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="did you mean 'server_momentum'"):
        settings_from_run_config({"settings-file": str(tmp_path / "s.json")})
    with pytest.raises(ConfigError, match="rounds"):
        settings_from_run_config({"settings-file": str(tmp_path / "s.json"), "rounds": "three"})
    with pytest.raises(ConfigError, match="settings-file or train-config-yaml"):
        settings_from_run_config({"rounds": 3})


def test_settings_file_accepts_yaml_and_overrides(tmp_path):
    from facepriv.federated.settings import load_settings_file

    cfg = default_train_config(32, "rgb", "mobilefacenet", 0.125, 8, 0.05, 0, "cpu")
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"train_config": cfg, "out": str(tmp_path), "rounds": 4}))
    data = load_settings_file(tmp_path / "s.yaml", ["rounds=7", "train_config.optim.lr=0.01"])
    s = FedSettings.from_dict(data)
    assert s.rounds == 7 and s.train_config["optim"]["lr"] == 0.01


def test_frontend_choices_come_from_the_registry(tmp_path):
    """Regression: the CLI kept its own copy of the registry and refused minusface; minusface,
    like partialface, trains one view per image in the tiny federated default."""
    from facepriv.frontends import FRONTENDS

    sub = build_parser("t")._subparsers._group_actions[0].choices["simulate"]  # noqa: SLF001
    (frontend,) = [a for a in sub._actions if "--frontend" in a.option_strings]
    assert sorted(frontend.choices) == sorted(FRONTENDS)
    for name in ("minusface", "partialface"):
        args = build_parser("t").parse_args(["settings", "--out", str(tmp_path), "--frontend", name])
        assert build_settings(args).train_config["frontend"] == {"name": name, "sample_multiplier": 1}
    args = build_parser("t").parse_args(["settings", "--out", str(tmp_path), "--frontend", "dct"])
    assert build_settings(args).train_config["frontend"] == {"name": "dct"}


def _hyphenated_keys() -> set[str]:
    return {v for k, v in vars(protocol).items() if k.isupper() and isinstance(v, str) and "-" in v}


def test_message_keys_are_spelled_only_in_protocol():
    """Every module uses protocol's constants: no other federated module spells a wire key."""
    keys = _hyphenated_keys()
    assert {"train-config", "local-steps", "num-examples", "pfm-momentum", "fv-candidate-", "lr-sum-"} <= keys
    offenders = []
    for path in sorted((ROOT / "federated").glob("*.py")):
        if path.name in ("protocol.py", "settings.py", "cli.py"):  # settings/cli: flag names, not message keys
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in keys:
                offenders.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert not offenders, offenders


def test_a_train_config_typo_fails_in_the_cli_naming_the_key(tmp_path, capsys):
    """Regression: ``facepriv fed settings --set optim.lrr=1`` wrote a settings file that every
    site would later refuse; now the CLI refuses it at once, naming the key."""
    from facepriv.federated.cli import main

    assert main(["settings", "--out", str(tmp_path), "--set", "optim.lrr=1"]) == 2
    assert "optim.lrr" in capsys.readouterr().err and not (tmp_path / "settings.json").exists()
    assert main(["settings", "--out", str(tmp_path), "--set", "optim.lr=0.2"]) == 0
    assert json.loads((tmp_path / "settings.json").read_text())["train_config"]["optim"]["lr"] == 0.2
