"""Identity judges: independent face recognisers that score whether reconstructions leak identity.

``build_judge("dlib" | "model.onnx" | "checkpoint.pt")`` returns a ``Judge`` whose ``embed``
gives L2-normalised embeddings of aligned RGB faces; ``identity_leakage`` turns probe and
gallery embeddings into verification TPR@FPR and rank-1 identification. dlib and
onnxruntime are imported only when their judge is constructed, so this package imports with
the core dependencies alone.
"""

from facepriv.judges.base import Judge, JudgeError
from facepriv.judges.checkpoint_judge import CheckpointJudge
from facepriv.judges.dlib_judge import FIXED_POINTS_112, DlibJudge, find_dlib_models
from facepriv.judges.leakage import REPORT_FPRS, identity_leakage
from facepriv.judges.onnx_judge import OnnxJudge, graph_normalises_input
from facepriv.judges.registry import build_judge

__all__ = [
    "Judge", "JudgeError", "DlibJudge", "OnnxJudge", "CheckpointJudge", "FIXED_POINTS_112",
    "REPORT_FPRS", "build_judge", "find_dlib_models", "graph_normalises_input", "identity_leakage",
]
