"""Lazy re-exports for package ``__init__`` modules (PEP 562 ``__getattr__`` / ``__dir__``).

Why: ``import facepriv`` and its ``training`` / ``federated`` / ``eval`` subpackages must stay
cheap. The ``facepriv`` CLI imports them to dispatch and to print ``--help``, and none of them
may pull in torch-heavy or optional dependencies (flwr, opacus, insightface, dlib,
onnxruntime, sklearn) before a name that needs them is actually used. Each package declares
``{public name: defining module}`` once and gets its module-level hooks from
:func:`lazy_exports`, instead of every package carrying its own copy of the same
``__getattr__``.

This module must itself stay import-light: standard library only.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    module_name: str, mapping: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``(__getattr__, __dir__)`` that import ``mapping[name]`` on first use.

    Usage in a package ``__init__``::

        _EXPORTS = {"Trainer": "facepriv.training.trainer", ...}
        __all__ = sorted(_EXPORTS)
        __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

    Nothing is cached in the package namespace: a resolved name costs a dict lookup and a
    ``sys.modules`` hit per access, and the import system keeps sole ownership of submodule
    attributes (an export named like a submodule, e.g. ``facepriv.federated.simulate``, must not
    replace the module object that ``import pkg.sub as m`` reads). Failures are loud and
    name the culprit: an ``AttributeError`` raised *while importing* the defining module is
    re-raised as ``ImportError`` (otherwise ``hasattr(pkg, name)`` would quietly answer
    False for a bug in that module), and a mapping entry whose module lacks the name is an
    ``ImportError`` too (a packaging mistake, not a missing attribute).
    """
    exports = dict(mapping)
    for name, target in exports.items():
        if not (isinstance(name, str) and name.isidentifier() and isinstance(target, str) and target):
            raise ValueError(f"lazy_exports({module_name!r}): bad entry {name!r} -> {target!r}")

    def __getattr__(name: str) -> Any:
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        try:
            module = importlib.import_module(target)
        except AttributeError as exc:
            raise ImportError(f"{module_name}.{name}: importing {target} failed: {exc}") from exc
        try:
            value = getattr(module, name)
        except AttributeError:
            raise ImportError(
                f"{module_name}.{name}: lazy export points at {target}, which defines no {name!r}"
            ) from None
        return value

    def __dir__() -> list[str]:
        package = sys.modules.get(module_name)
        names = set(vars(package)) if package is not None else set()
        return sorted(names | set(exports))

    return __getattr__, __dir__
