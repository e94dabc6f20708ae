"""Every ``facepriv ...`` command the README and ``docs/*.md`` show exists, and takes the options it shows.

The README is the first thing a new user runs. Each command in the ``bash`` code blocks of
the README and of every ``docs/*.md`` page is cut at its first option, run with ``--help`` (a
fresh interpreter, as from a shell), and must exit 0 with a usage text that names every
option the page passes to it. A renamed or removed option (or command) then fails here
instead of in front of a newcomer. Commands that finish in seconds and need no user files
(listing and showing frontends, listing or printing shipped configs) are executed exactly as
written, not only asked for ``--help``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))

#: ``python -m MODULE`` / ``torchrun -m MODULE`` spellings of a ``facepriv`` command.
MODULE_COMMANDS = {"facepriv.cli": [], "facepriv.training.cli": ["train"]}


def _lines(block: str) -> list[str]:
    """The block's shell lines, comments dropped and ``\\``-continued lines joined."""
    out, pending = [], ""
    for raw in block.splitlines():
        line = raw.split(" #", 1)[0].rstrip()
        if line.lstrip().startswith("#"):
            line = ""
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            out.append(line)
    return out


def readme_commands(text: str) -> list[list[str]]:
    """The ``facepriv`` commands in the ``bash`` blocks of ``text``, as argument lists
    (comments dropped; ``a && b`` and ``a; b`` split into their commands; ``\\`` continuations
    joined; ``torchrun ... -m facepriv.training.cli CFG`` read as ``facepriv train CFG``)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in _lines(block):
            for part in re.split(r"&&|;", line):
                tokens = shlex.split(part.strip())
                if tokens and tokens[0] == "facepriv":
                    commands.append(tokens[1:])
                elif "-m" in tokens:
                    module = tokens[tokens.index("-m") + 1 :]
                    if module and module[0] in MODULE_COMMANDS:
                        rest = module[1:]
                        prefix = MODULE_COMMANDS[module[0]]
                        commands.append(prefix + (rest[1:] if prefix and rest[:1] == prefix else rest))
    return commands


def runs_for_real(args: list[str]) -> bool:
    """Commands cheap enough to execute as written: they read no user file and finish in seconds."""
    if args[:1] == ["frontends"] and args[1:2] != ["noise"]:
        return "--checkpoint" not in args and not any(a.endswith((".yaml", ".yml")) for a in args)
    if args[:1] == ["train"] and "--list-configs" in args:
        return True
    if args[:1] == ["train"] and "--print-config" in args and len(args) > 1 and not args[1].startswith("-"):
        from facepriv.training.shipped import resolve_config

        try:
            resolve_config(args[1])
        except FileNotFoundError:
            return False
        return not any(a.startswith("--") and a not in ("--print-config", "--set") for a in args)
    return False


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
DOC_COMMANDS = [(page.name, args) for page in DOCS for args in readme_commands(page.read_text(encoding="utf-8"))]
ALL_COMMANDS = [("README.md", c) for c in COMMANDS] + DOC_COMMANDS


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


def _facepriv(argv: list[str]) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "facepriv.cli", *argv], capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize(("page", "args"), ALL_COMMANDS, ids=[f"{p}: {' '.join(c[:3])}" for p, c in ALL_COMMANDS])
def test_documented_command_help(page: str, args: list[str]) -> None:
    argv = help_argv(args)
    code, out = _facepriv(argv)
    assert code == 0, f"{page}: facepriv {' '.join(argv)} exited {code}:\n{out[-2000:]}"
    assert "usage:" in out, out[-2000:]
    missing = [opt for opt in options(args) if opt not in out]
    assert not missing, f"{page} passes {missing} to `facepriv {' '.join(argv[:-1])}`, which does not offer them"


FAST = [(p, c) for p, c in ALL_COMMANDS if runs_for_real(c)]


@pytest.mark.parametrize(("page", "args"), FAST, ids=[f"{p}: {' '.join(c)}" for p, c in FAST])
def test_documented_fast_command_runs(page: str, args: list[str]) -> None:
    """Executed exactly as the page writes it (e.g. the README's `facepriv frontends show partialface`)."""
    code, out = _facepriv(args)
    assert code == 0, f"{page}: facepriv {' '.join(args)} exited {code}:\n{out[-2000:]}"


def test_fast_commands_include_the_readme_examples() -> None:
    fast = [c for p, c in FAST if p == "README.md"]
    assert ["frontends", "show", "partialface"] in fast and ["frontends"] in fast
    assert ["train", "--list-configs"] in fast
    assert any(p == "training.md" and c[:2] == ["train", "tiny_cpu"] for p, c in ALL_COMMANDS)


def test_docs_parser_joins_continuations_and_reads_module_commands() -> None:
    text = ("```bash\nfacepriv eval verify \\\n    --pairs a=b \\\n    --out x\n"
            "torchrun --standalone -m facepriv.training.cli tiny_cpu --out r  # ddp\n```\n")
    assert readme_commands(text) == [["eval", "verify", "--pairs", "a=b", "--out", "x"], ["train", "tiny_cpu", "--out", "r"]]
    assert runs_for_real(["frontends", "show", "partialface"]) and not runs_for_real(["train", "cfg.yaml", "--print-config"])
    assert runs_for_real(["train", "tiny_cpu", "--print-config"])
