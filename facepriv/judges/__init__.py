"""Identity judges: independent face recognisers that score whether reconstructions leak identity.

``build_judge("dlib" | "model.onnx" | "checkpoint.pt")`` returns a ``Judge`` whose ``embed``
gives L2-normalised embeddings of aligned RGB faces; ``identity_leakage`` turns probe and
gallery embeddings into verification TPR@FPR and rank-1 identification (with bootstrap
confidence intervals over victims), ``fused_leakage`` the best attack per victim. dlib and
onnxruntime are imported only when their judge is constructed, so this package imports with
the core dependencies alone.
"""

from facepriv.judges.base import Judge, JudgeError
from facepriv.judges.checkpoint_judge import CheckpointJudge
from facepriv.judges.dlib_judge import FIXED_POINTS_112, DlibJudge, find_dlib_models
from facepriv.judges.leakage import REPORT_FPRS, LeakageScores, fuse_scores, fused_leakage, identity_leakage, leakage_scores, tpr_key
from facepriv.judges.onnx_judge import OnnxJudge, graph_normalises_input
from facepriv.judges.registry import build_judge

__all__ = [
    "Judge", "JudgeError", "DlibJudge", "OnnxJudge", "CheckpointJudge", "FIXED_POINTS_112",
    "REPORT_FPRS", "LeakageScores", "build_judge", "find_dlib_models", "fuse_scores", "fused_leakage",
    "graph_normalises_input", "identity_leakage", "leakage_scores", "tpr_key",
]
