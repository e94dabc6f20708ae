"""The package layers point down only, and nothing installs a generic top-level package.

Layers, lowest first (a module may import its own layer and those below it):

0. core         ``facepriv.*`` (frontends, models, data, verification, judges, cli dispatch)
1. training     ``facepriv.training.*`` (config, trainer, DP-SGD, distillation)
1. eval         ``facepriv.eval.*`` (verify CLI, attacks); may use training's machinery
2. federated    ``facepriv.federated.*``
3. applications quickstart, experiments, benchmarks: they orchestrate everything below

Training must not import eval (they are siblings, but only eval builds on training: the
learned attacks train with its machinery). The check reads every import statement,
including those inside functions, with ``ast``; string tables such as the CLI's command
map are not imports.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"facepriv": "facepriv", "training": "facepriv.training",
           "federated": "facepriv.federated", "eval": "facepriv.eval"}

APPLICATIONS = ("facepriv.training.quickstart", "facepriv.eval.experiments",
                "facepriv.eval.benchmarks", "facepriv.eval.bench")


def layer_of(module: str) -> tuple[int, str]:
    if module.startswith(APPLICATIONS):
        return 3, "applications"
    if module.startswith("facepriv.federated"):
        return 2, "federated"
    if module.startswith("facepriv.eval"):
        return 1, "eval"
    if module.startswith("facepriv.training"):
        return 1, "training"
    return 0, "core"


def _modules() -> list[tuple[str, Path]]:
    out = []
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *rel))
            out.append((name.removesuffix(".__init__"), path))
    return out


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the module's package
                base = module.split(".")
                is_pkg = path.name == "__init__.py"
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from facepriv import training` imports the subpackage
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def upward_imports() -> list[str]:
    bad = []
    for module, path in _modules():
        level, name = layer_of(module)
        for line, target in _imports(module, path):
            if not target.startswith("facepriv"):
                continue
            t_level, t_name = layer_of(target)
            sideways = name == "training" and t_name == "eval"
            if t_level > level or sideways:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {name} imports {t_name} ({target})")
    return bad


def test_layers_point_down() -> None:
    assert upward_imports() == []


def test_layer_check_catches_an_upward_import(tmp_path) -> None:
    """The checker itself must be able to fail: an upward import planted in a copy is found."""
    fake = tmp_path / "training"
    fake.mkdir()
    (fake / "bad.py").write_text("def f():\n    from facepriv.eval.attacks import runner\n")
    (tmp_path / "facepriv").mkdir()
    (tmp_path / "facepriv" / "ok.py").write_text("from facepriv.federated import arrays\n")
    for folder in ("federated", "eval"):
        (tmp_path / folder).mkdir()
    global ROOT
    old, ROOT = ROOT, tmp_path
    try:
        bad = upward_imports()
    finally:
        ROOT = old
    assert any("training/bad.py:2: training imports eval" in b for b in bad), bad
    assert any("facepriv/ok.py:1: core imports federated" in b for b in bad), bad


def test_no_generic_top_level_package(tmp_path) -> None:
    """Only ``facepriv`` is installed: ``training``/``federated``/``eval`` are its subpackages.

    Run from an unrelated folder (the checkout's root is on ``sys.path`` under pytest, where
    the bare folders are visible as plain directories; what matters is what the install gives).
    """
    code = (
        "import importlib.util, json\n"
        "print(json.dumps({n: [importlib.util.find_spec(n) is not None,"
        " importlib.util.find_spec('facepriv.' + n) is not None] for n in ('training', 'federated', 'eval')}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found == {n: [False, True] for n in ("training", "federated", "eval")}
