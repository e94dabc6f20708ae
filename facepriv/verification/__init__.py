"""Verification metrics, protocols, templates and plots: the leaf library everyone scores with.

Training (periodic verification), evaluation (``facepriv eval verify``), the federated
server (held-out verification) and the attacks' identity judges all compute TPR@FPR, ROC
and accuracy with these functions, so they live in the core package, below every layer
that uses them. The metrics, plots and templates are numpy-only (matplotlib is imported
inside the plotting functions) and imported eagerly; ``protocols`` (protected inference of
a ``FaceRecognizer`` over a verification set) imports torch and is imported on use.
"""

from facepriv.verification.keys import find_fpr, fpr_key, parse_fpr_key
from facepriv.verification.metrics import (
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
from facepriv.verification.plots import plot_metric_curves, plot_roc, roc_plot_points
from facepriv.verification.templates import (
    TemplateEmbeddings,
    ijb_verification,
    pool_templates,
    score_template_pairs,
)

__all__ = [
    "DEFAULT_FPR_TARGETS", "EerResult", "OperatingPoint", "ScoreAccumulator", "ScoreSet", "allowed_false_accepts",
    "eer", "kfold_accuracy", "kfold_val_at_far", "roc_auc", "roc_curve", "tpr_at_fpr", "verification_report",
    "find_fpr", "fpr_key", "parse_fpr_key",
    "plot_metric_curves", "plot_roc", "roc_plot_points",
    "TemplateEmbeddings", "ijb_verification", "pool_templates", "score_template_pairs",
]
