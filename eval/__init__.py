"""Evaluation: ``facepriv eval verify``, reconstruction and linkage attacks, experiments, benchmarks.

The verification metrics, protocols, plots and identity judges these build on are core
(``facepriv.verification``, ``facepriv.judges``): training and the federated server score
with them too, and a lower layer must not import this one. The attack suite's entry points
(``run_attacks``, ``AttackConfig``) are re-exported lazily: they import torch and the
frontends, which ``import facepriv.eval`` (done by the CLI to dispatch) should not pay for.
"""

from facepriv.lazy import lazy_exports

#: public name -> defining module, imported on first use (see the module docstring)
_LAZY = {
    "run_attacks": "facepriv.eval.attacks.runner",
    "AttackConfig": "facepriv.eval.attacks.runner",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
