"""An insightface-style ArcFace ONNX model as an identity judge (onnxruntime, CPU).

For users who have an ArcFace recogniser (e.g. insightface's ``w600k_r50.onnx`` from a
model pack they downloaded themselves) and want a stronger judge than dlib. facepriv never
downloads one: pass the file path.

Preprocessing follows insightface's convention for its recognition models: the aligned
112 x 112 crop, RGB channel order (insightface decodes BGR with OpenCV and swaps to RGB when
building the blob), NCHW float ``(x - 127.5) / 127.5``. Some exported graphs normalise
inside (their first nodes are a ``Sub`` and a ``Mul``); ``normalisation="auto"`` detects that
by inspecting the graph with the ``onnx`` package when it is installed and then feeds raw
0-255 values, as insightface does. Faces are resized to the model's input size when it
differs from the images'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from facepriv.judges.base import Judge, JudgeError

__all__ = ["OnnxJudge", "graph_normalises_input"]

NORMALISATIONS = ("auto", "arcface", "none")


def graph_normalises_input(path: str | Path) -> bool | None:
    """True if the graph's first nodes subtract and multiply (normalisation built in),
    False if not, None if the ``onnx`` package is unavailable to inspect it."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises its own DecodeError types
        raise JudgeError(f"ONNX judge: cannot parse {path}: {exc}") from exc
    first = model.graph.node[:8]
    has_sub = any(n.op_type == "Sub" or (n.name or "").startswith(("Sub", "_minus")) for n in first)
    has_mul = any(n.op_type == "Mul" or (n.name or "").startswith(("Mul", "_mul")) for n in first)
    return bool(has_sub and has_mul)


class OnnxJudge(Judge):
    """Embeddings from an ONNX recogniser with one NCHW image input and one ``B x D`` output."""

    kind = "onnx"

    def __init__(
        self,
        path: str | Path,
        *,
        channel_order: str = "rgb",
        normalisation: str = "auto",
        batch_size: int = 32,
        providers: list[str] | None = None,
    ) -> None:
        super().__init__(batch_size)
        if channel_order not in {"rgb", "bgr"}:
            raise ValueError(f"ONNX judge: channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"ONNX judge: normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
        self.path = Path(path)
        if not self.path.is_file():
            raise JudgeError(f"ONNX judge: model file {self.path} not found")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise JudgeError("ONNX judge: onnxruntime is not installed (pip install onnxruntime)") from exc
        try:
            self._session = ort.InferenceSession(str(self.path), providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise JudgeError(f"ONNX judge: onnxruntime cannot load {self.path}: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise JudgeError(f"ONNX judge: {self.path} has {len(inputs)} inputs; expected one image input")
        self._input = inputs[0].name
        shape = inputs[0].shape
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise JudgeError(f"ONNX judge: {self.path} input shape {shape} is not N x 3 x H x W")
        self.input_size = tuple(s if isinstance(s, int) and s > 0 else None for s in shape[2:])
        self.channel_order = channel_order
        if normalisation == "auto":
            inside = graph_normalises_input(self.path)
            normalisation = "none" if inside else "arcface"
        self.normalisation = normalisation

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": str(self.path),
            "channel_order": self.channel_order,
            "normalisation": self.normalisation,
            "input_size": list(self.input_size),
        }

    def _embed_batch(self, images: Tensor) -> Tensor:
        h, w = self.input_size
        if (h is not None and h != images.shape[-2]) or (w is not None and w != images.shape[-1]):
            images = F.interpolate(images, size=(h or images.shape[-2], w or images.shape[-1]),
                                   mode="bilinear", align_corners=False).clamp(0, 1)
        x = images * 255.0
        if self.channel_order == "bgr":
            x = x.flip(1)
        if self.normalisation == "arcface":
            x = (x - 127.5) / 127.5
        out = self._session.run(None, {self._input: np.ascontiguousarray(x.numpy(), dtype=np.float32)})[0]
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 2:
            out = out.reshape(out.shape[0], -1)
        return torch.from_numpy(out)
