"""Every ``facepriv ...`` command the README shows exists, and takes the options it shows.

The README is the first thing a new user runs. Each command in its ``bash`` code blocks is
cut at its first option, run with ``--help`` (a fresh interpreter, as from a shell), and must
exit 0 with a usage text that names every option the README passes to it. A renamed or
removed option (or command) then fails here instead of in front of a newcomer.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands(text: str) -> list[list[str]]:
    """The ``facepriv`` commands in the ``bash`` blocks of ``text``, as argument lists
    (comments dropped; ``a && b`` and ``a; b`` split into their commands)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            for part in re.split(r"&&|;", line):
                tokens = shlex.split(part.strip())
                if tokens and tokens[0] == "facepriv":
                    commands.append(tokens[1:])
    return commands


def help_argv(args: list[str]) -> list[str]:
    """The command's words up to its first option, then ``--help``."""
    head = []
    for tok in args:
        if tok.startswith("-"):
            break
        head.append(tok)
    return [*head, "--help"]


def options(args: list[str]) -> list[str]:
    return [tok.split("=", 1)[0] for tok in args if tok.startswith("--")]


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def test_readme_commands_are_found() -> None:
    """The parser must see the README's commands (an empty list would make the test below vacuous)."""
    assert COMMANDS[0] == ["quickstart"], "the README's first command is `facepriv quickstart`"
    names = {c[0] for c in COMMANDS}
    assert {"quickstart", "train", "eval", "fed", "attack", "experiment", "frontends", "protect", "bench"} <= names
    assert ["eval", "verify"] == COMMANDS[[c[:2] for c in COMMANDS].index(["eval", "verify"])][:2]


def test_readme_parser_splits_chains_and_drops_comments() -> None:
    text = "```bash\npip install x && facepriv quickstart   # demo\nfacepriv eval verify -c a.pt --pairs x=y; ls\n```\n"
    assert readme_commands(text) == [["quickstart"], ["eval", "verify", "-c", "a.pt", "--pairs", "x=y"]]
    assert help_argv(["train", "cfg.yaml", "--out", "r"]) == ["train", "cfg.yaml", "--help"]
    assert options(["eval", "verify", "--pairs", "a=b", "--resize", "--out=x"]) == ["--pairs", "--resize", "--out"]


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c[:3]) for c in COMMANDS])
def test_readme_command_help(args: list[str]) -> None:
    argv = help_argv(args)
    proc = subprocess.run([sys.executable, "-m", "facepriv.cli", *argv], capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"facepriv {' '.join(argv)} exited {proc.returncode}:\n{out[-2000:]}"
    assert "usage:" in out, out[-2000:]
    missing = [opt for opt in options(args) if opt not in out]
    assert not missing, f"the README passes {missing} to `facepriv {' '.join(argv[:-1])}`, which does not offer them"
