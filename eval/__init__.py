"""Evaluation: verification metrics and protocols, reconstruction attacks, benchmarks.

The metrics, plots and templates below are numpy-only and imported eagerly. The attack
suite's entry points (``run_attacks``, ``AttackConfig``) and the identity judges
(``build_judge``, ``Judge``, ``identity_leakage``) are re-exported lazily: they import torch
and the frontends, and a judge may need dlib or onnxruntime, none of which ``import eval``
(done by the ``facepriv`` CLI to dispatch) should pay for.
"""

from facepriv.lazy import lazy_exports

from eval.metrics import (
    DEFAULT_FPR_TARGETS,
    EerResult,
    OperatingPoint,
    ScoreAccumulator,
    ScoreSet,
    allowed_false_accepts,
    eer,
    kfold_accuracy,
    kfold_val_at_far,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
    verification_report,
)
from eval.plots import plot_metric_curves, plot_roc, roc_plot_points
from eval.templates import TemplateEmbeddings, ijb_verification, pool_templates, score_template_pairs

#: public name -> defining module, imported on first use (see the module docstring)
_LAZY = {
    "run_attacks": "eval.attacks.runner",
    "AttackConfig": "eval.attacks.runner",
    "build_judge": "eval.judges",
    "Judge": "eval.judges",
    "identity_leakage": "eval.judges",
}

__all__ = [
    "DEFAULT_FPR_TARGETS", "EerResult", "OperatingPoint", "ScoreAccumulator", "ScoreSet", "allowed_false_accepts",
    "eer", "kfold_accuracy", "kfold_val_at_far", "roc_auc", "roc_curve", "tpr_at_fpr", "verification_report",
    "plot_metric_curves", "plot_roc", "roc_plot_points",
    "TemplateEmbeddings", "ijb_verification", "pool_templates", "score_template_pairs",
    *_LAZY,
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
