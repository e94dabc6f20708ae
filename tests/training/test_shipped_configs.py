"""Shipped configs by name: ``facepriv train --list-configs`` and ``facepriv train NAME``."""

from __future__ import annotations

from pathlib import Path

import pytest

from facepriv.training.cli import main
from facepriv.training.shipped import resolve_config, shipped_configs


def test_every_shipped_config_is_listed_and_resolves_by_name(capsys) -> None:
    configs = shipped_configs()
    assert {"tiny_cpu", "partialface_iresnet18", "rgb_iresnet18"} <= set(configs)
    assert main(["--list-configs"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(configs)
    for name, path in configs.items():
        assert resolve_config(name) == path == resolve_config(f"{name}.yaml")
        assert resolve_config(f"training/configs/{name}.yaml").read_bytes() == path.read_bytes()


def test_an_existing_path_wins_over_a_shipped_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny_cpu.yaml").write_text("name: mine\n")
    assert resolve_config("tiny_cpu.yaml") == Path("tiny_cpu.yaml")


def test_unknown_name_is_a_clear_error(capsys) -> None:
    with pytest.raises(FileNotFoundError, match=r"'no_such_cfg'.*tiny_cpu"):
        resolve_config("no_such_cfg")
    with pytest.raises(FileNotFoundError):
        resolve_config("elsewhere/tiny_cpu.yaml")  # a path in another folder is not a name
    assert main(["no_such_cfg", "--print-config"]) == 2
    assert "no_such_cfg" in capsys.readouterr().err


def test_train_by_name_prints_that_config(capsys) -> None:
    assert main(["tiny_cpu", "--print-config", "--set", "optim.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "name: tiny_cpu" in out and "lr: 0.5" in out


def test_help_names_no_source_folder(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--list-configs" in out and "training/configs" not in out
