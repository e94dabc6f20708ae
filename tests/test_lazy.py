"""Lazy package re-exports (facepriv.lazy) and the import-lightness they exist for.

Pinned down: one helper serves every package; unknown names are AttributeErrors, broken
mappings and modules that fail while importing are loud ImportErrors; ``dir()`` lists the
lazy names; ``import facepriv`` / ``facepriv.training`` / ``facepriv.eval`` import none of the optional heavy
dependencies, and eval's attack/judge names resolve to the real objects on first use.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from facepriv.lazy import lazy_exports

HEAVY = ("flwr", "opacus", "insightface", "sklearn", "dlib", "onnxruntime", "ray")


@pytest.fixture
def fake_package(monkeypatch):
    """A throw-away package ``_lazy_pkg`` with submodules registered in sys.modules."""

    def make(mapping: dict[str, str], submodules: dict[str, dict]) -> types.ModuleType:
        pkg = types.ModuleType("_lazy_pkg")
        monkeypatch.setitem(sys.modules, "_lazy_pkg", pkg)
        for name, attrs in submodules.items():
            mod = types.ModuleType(name)
            mod.__dict__.update(attrs)
            monkeypatch.setitem(sys.modules, name, mod)
        pkg.__getattr__, pkg.__dir__ = lazy_exports("_lazy_pkg", mapping)
        pkg.eager = 1
        return pkg

    return make


def test_resolves_on_first_use_and_lists_names(fake_package) -> None:
    marker = object()
    pkg = fake_package({"thing": "_lazy_pkg.impl"}, {"_lazy_pkg.impl": {"thing": marker}})
    assert pkg.thing is marker
    assert getattr(pkg, "thing") is marker  # not cached, still resolves
    assert "thing" in dir(pkg) and "eager" in dir(pkg)


def test_unknown_name_is_attribute_error(fake_package) -> None:
    pkg = fake_package({"thing": "_lazy_pkg.impl"}, {"_lazy_pkg.impl": {"thing": 1}})
    with pytest.raises(AttributeError, match=r"'_lazy_pkg' has no attribute 'nope'"):
        pkg.nope
    assert not hasattr(pkg, "nope")


def test_mapping_to_a_module_without_the_name_is_import_error(fake_package) -> None:
    pkg = fake_package({"thing": "_lazy_pkg.impl"}, {"_lazy_pkg.impl": {"other": 1}})
    with pytest.raises(ImportError, match=r"_lazy_pkg\.thing.*_lazy_pkg\.impl.*'thing'"):
        pkg.thing


def test_attribute_error_while_importing_is_not_swallowed(fake_package, tmp_path, monkeypatch) -> None:
    (tmp_path / "_lazy_broken_mod.py").write_text("raise AttributeError('bug inside the module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pkg = fake_package({"thing": "_lazy_broken_mod"}, {})
    with pytest.raises(ImportError, match="bug inside the module"):
        hasattr(pkg, "thing")  # would be a silent False without the re-raise


def test_bad_mapping_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="bad entry"):
        lazy_exports("x", {"not an identifier": "mod"})
    with pytest.raises(ValueError, match="bad entry"):
        lazy_exports("x", {"name": ""})


def test_package_exports_all_resolve() -> None:
    from facepriv import eval as eval_pkg
    import facepriv
    from facepriv import training
    from facepriv.eval.attacks.runner import AttackConfig, run_attacks

    assert (eval_pkg.run_attacks, eval_pkg.AttackConfig) == (run_attacks, AttackConfig)
    for pkg in (facepriv, training, eval_pkg):
        assert set(pkg.__all__) <= set(dir(pkg)), pkg.__name__
    for name in facepriv.__all__:
        assert getattr(facepriv, name) is not None
    for name in ("TrainConfig", "Trainer", "VerificationRunner", "build_recognizer"):
        assert getattr(training, name).__name__ == name


def test_imports_stay_light() -> None:
    """A fresh interpreter: importing the packages pulls in no optional heavy dependency,
    and ``import facepriv`` / ``facepriv.training`` / ``facepriv.eval`` not even torch."""
    code = (
        "import sys, json\n"
        "import facepriv, facepriv.training, facepriv.eval\n"
        "light = 'torch' not in sys.modules\n"
        "import facepriv.verification, facepriv.judges, facepriv.frontends, facepriv.models\n"
        f"print(json.dumps({{'light': light, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res == {"light": True, "heavy": []}
