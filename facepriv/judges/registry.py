"""``build_judge(spec)``: one string on the command line picks the identity judge."""

from __future__ import annotations

from pathlib import Path

from facepriv.judges.base import Judge, JudgeError

__all__ = ["build_judge"]


def build_judge(spec: str, *, device: str = "cpu", batch_size: int = 32) -> Judge:
    """``"dlib"`` (or ``"dlib:landmarks"`` / ``"dlib:resize"``), a ``*.onnx`` ArcFace file
    (``path.onnx`` or ``path.onnx:bgr``), or a facepriv checkpoint path."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"judge spec must be a non-empty string, got {spec!r}")
    if spec == "dlib" or spec.startswith("dlib:"):
        from facepriv.judges.dlib_judge import DlibJudge

        mode = spec.split(":", 1)[1] if ":" in spec else "fixed"
        return DlibJudge(mode=mode, batch_size=batch_size)
    path, _, option = spec.partition(":") if spec.lower().endswith((".onnx:bgr", ".onnx:rgb")) else (spec, "", "")
    if path.lower().endswith(".onnx"):
        from facepriv.judges.onnx_judge import OnnxJudge

        return OnnxJudge(path, channel_order=option or "rgb", batch_size=batch_size)
    if Path(spec).is_file():
        from facepriv.judges.checkpoint_judge import CheckpointJudge

        return CheckpointJudge(spec, device=device, batch_size=batch_size)
    raise JudgeError(f"judge {spec!r}: not 'dlib', not an existing .onnx file and not an existing checkpoint file")
