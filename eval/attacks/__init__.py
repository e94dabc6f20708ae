"""Attacks on protected face tensors and federated updates, and how much identity they recover.

Threat model, attacks and how to read the report: docs/attacks.md. Entry points:
``run_attacks`` (one frontend -> results dict; the results script calls it per frontend) and
``facepriv attack`` (``facepriv.eval.attacks.cli``).
"""

from facepriv.eval.attacks.analytic import FILLS, AnalyticConfig, analytic_invert, fill_and_invert, lstsq_invert
from facepriv.eval.attacks.checkpointing import AttackCheckpointError, atomic_save, safe_load
from facepriv.eval.attacks.data import FaceSet, VictimSplit, check_disjoint, load_faces, load_victims, split_victims
from facepriv.eval.attacks.decoder import UNetDecoder
from facepriv.eval.attacks.gradient import DPSpec, GradientConfig, SiteSpec, invert_update, run_gradient_inversion, site_update
from facepriv.eval.attacks.learned import LearnedConfig, LearnedInverter, Standardiser, TrainedNetwork, train_decoder
from facepriv.eval.attacks.linkage import EmbeddingRegressor, LinkageConfig, LinkageModel, train_linkage
from facepriv.eval.attacks.metrics import PSNR_CAP_DB, image_metrics, json_safe, psnr, ssim
from facepriv.eval.attacks.optimisation import OptimConfig, optimise_inversion, total_variation
from facepriv.eval.attacks.placement import FrequencyProfile
from facepriv.eval.attacks.recovery import RecoveredTable, RecoveryConfig, recover_table, recovery_curve, score_recovery
from facepriv.eval.attacks.report import render_markdown, save_grid, worst_case, write_report
from facepriv.eval.attacks.runner import ATTACKS, DEFAULT_ATTACKS, AttackConfig, run_attacks
from facepriv.eval.attacks.scoring import JudgeCache, Scorer
from facepriv.eval.attacks.views import KNOWLEDGE_LEVELS, AttackerView, AuxStats, Placed, build_view, has_secret, observe, public_copy

__all__ = [
    "ATTACKS", "DEFAULT_ATTACKS", "FILLS", "KNOWLEDGE_LEVELS", "PSNR_CAP_DB",
    "AnalyticConfig", "AttackCheckpointError", "AttackConfig", "AttackerView", "AuxStats", "DPSpec", "EmbeddingRegressor",
    "FaceSet", "FrequencyProfile", "GradientConfig", "JudgeCache", "LearnedConfig", "LearnedInverter", "LinkageConfig",
    "LinkageModel", "OptimConfig", "Placed", "RecoveredTable", "RecoveryConfig", "Scorer", "SiteSpec", "Standardiser",
    "TrainedNetwork", "UNetDecoder", "VictimSplit",
    "analytic_invert", "atomic_save", "build_view", "check_disjoint", "fill_and_invert", "has_secret", "image_metrics",
    "invert_update", "json_safe", "load_faces", "load_victims", "lstsq_invert", "observe", "optimise_inversion", "psnr",
    "public_copy", "recover_table", "recovery_curve", "render_markdown", "run_attacks", "run_gradient_inversion",
    "safe_load", "save_grid", "score_recovery", "site_update", "split_victims", "ssim", "total_variation",
    "train_decoder", "train_linkage", "worst_case", "write_report",
]
