"""pyproject's explicit package list covers every package folder.

Why: ``[tool.setuptools] packages`` is a hand-written list (the namespace maps top-level
folders into ``facepriv.*``), so a new sub-package that is not listed works in an editable
checkout and is silently missing from a wheel.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = set()
    for name, folder in tool["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([name, *rel.parts]))
    missing = sorted(p for p in found if p not in listed)
    assert not missing, f"package folders missing from pyproject.toml [tool.setuptools] packages: {missing}"
