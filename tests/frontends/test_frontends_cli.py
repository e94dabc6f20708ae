"""``facepriv frontends show NAME``: the README's spelling works, and is the same as ``--frontend NAME``."""

from __future__ import annotations

import json

import pytest

from facepriv.frontends.cli import main


def test_show_by_positional_name_equals_show_by_flag(capsys) -> None:
    assert main(["show", "dctdp", "--option", "epsilon_mean=0.5"]) == 0
    positional = json.loads(capsys.readouterr().out)
    assert main(["show", "--frontend", "dctdp", "--option", "epsilon_mean=0.5"]) == 0
    assert json.loads(capsys.readouterr().out) == positional
    assert positional["config"]["name"] == "dctdp"


def test_show_partialface_by_name_hides_the_secret(capsys) -> None:
    assert main(["show", "partialface"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config"]["name"] == "partialface" and "privacy_report" in shown
    assert shown["config"]["secret_seed"] == "<secret>"


def test_show_with_two_sources_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["show", "partialface", "--frontend", "rgb"])
    assert "not both" in capsys.readouterr().err
