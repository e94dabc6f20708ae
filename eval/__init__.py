"""Evaluation: verification metrics and protocols, reconstruction attacks, benchmarks."""

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

__all__ = [
    "DEFAULT_FPR_TARGETS", "EerResult", "OperatingPoint", "ScoreAccumulator", "ScoreSet", "allowed_false_accepts",
    "eer", "kfold_accuracy", "kfold_val_at_far", "roc_auc", "roc_curve", "tpr_at_fpr", "verification_report",
    "plot_metric_curves", "plot_roc", "roc_plot_points",
    "TemplateEmbeddings", "ijb_verification", "pool_templates", "score_template_pairs",
]
