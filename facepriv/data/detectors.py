"""Offline face detectors that return 5 landmarks, behind one small interface.

``detect(bgr_image) -> list[Detection]`` is all alignment needs, so tests use a fake
detector and users plug in what they have:

* ``YuNetDetector``: OpenCV's ``cv2.FaceDetectorYN`` with a YuNet ONNX file the user
  supplies (no PyPI package ships the weights; nothing is downloaded).
* ``InsightFaceDetector``: an insightface SCRFD/RetinaFace ONNX file through the
  ``insightface`` package (optional extra, imported lazily).

Landmark order everywhere: subject's right eye, left eye, nose tip, right mouth corner,
left mouth corner (the right eye appears on the image's left), matching the ArcFace template.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from .errors import AlignmentError


@dataclass(frozen=True)
class Detection:
    """One face: ``bbox`` (x1, y1, x2, y2), ``score`` and 5 x 2 ``landmarks`` in pixels."""

    bbox: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.bbox
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.bbox
        return (x1 + x2) / 2.0, (y1 + y2) / 2.0


class FaceDetector(Protocol):
    """Anything with ``detect(bgr uint8 H x W x 3) -> list[Detection]``."""

    def detect(self, image_bgr: np.ndarray) -> list[Detection]: ...


def select_face(dets: Sequence[Detection], image_hw: tuple[int, int], how: str = "largest") -> Detection:
    """Pick one face: ``"largest"`` box area, or ``"center"`` (box centre nearest the image
    centre, as used for LFW where the labelled person is centred)."""
    if not dets:
        raise AlignmentError("no face to select")
    if how == "largest":
        return max(dets, key=lambda d: (d.area, d.score))
    if how == "center":
        cy, cx = image_hw[0] / 2.0, image_hw[1] / 2.0
        return min(dets, key=lambda d: ((d.center[0] - cx) ** 2 + (d.center[1] - cy) ** 2, -d.score))
    raise ValueError(f"select must be 'largest' or 'center', got {how!r}")


class YuNetDetector:
    """``cv2.FaceDetectorYN`` (YuNet) from a local ONNX file.

    ``max_side`` downsizes large photos before detection (YuNet is trained on modest
    resolutions and runs faster); boxes and landmarks are scaled back to the original.
    Small images are padded up to ``min_side`` so faces filling the frame are still found.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 50,
        max_side: int = 640,
        min_side: int = 0,
    ) -> None:
        path = str(model_path)
        if not os.path.isfile(path):
            raise AlignmentError(f"{path}: YuNet model file not found")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise AlignmentError("this OpenCV build has no cv2.FaceDetectorYN (need opencv-python >= 4.5.4)")
        try:
            self._det = cv2.FaceDetectorYN.create(path, "", (320, 320), score_threshold, nms_threshold, top_k)
        except cv2.error as exc:
            raise AlignmentError(f"{path}: OpenCV could not load the YuNet model ({exc})") from exc
        self.model_path = path
        self.max_side = int(max_side)
        self.min_side = int(min_side)
        self.description = f"yunet:{os.path.basename(path)}"

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        h, w = image_bgr.shape[:2]
        scale = 1.0
        img = image_bgr
        if self.max_side and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        if self.min_side and min(img.shape[:2]) < self.min_side:
            ph = max(0, self.min_side - img.shape[0])
            pw = max(0, self.min_side - img.shape[1])
            img = cv2.copyMakeBorder(img, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=0)
        self._det.setInputSize((img.shape[1], img.shape[0]))
        _, faces = self._det.detect(np.ascontiguousarray(img))
        out: list[Detection] = []
        if faces is None:
            return out
        for f in np.asarray(faces, dtype=np.float64):
            x, y, bw, bh = f[:4] / scale
            lm = f[4:14].reshape(5, 2) / scale
            out.append(Detection((x, y, x + bw, y + bh), float(f[14]), lm))
        return out


class InsightFaceDetector:
    """SCRFD / RetinaFace ONNX through ``insightface`` (lazy import; CPU by default)."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        det_size: tuple[int, int] = (640, 640),
        score_threshold: float = 0.5,
        ctx_id: int = -1,
    ) -> None:
        path = str(model_path)
        if not os.path.isfile(path):
            raise AlignmentError(f"{path}: detector model file not found")
        try:
            from insightface.model_zoo import get_model
        except ImportError as exc:  # pragma: no cover - optional extra
            raise AlignmentError(
                "insightface is not installed; `pip install facepriv[align]` or use a YuNet model"
            ) from exc
        model = get_model(path)
        if model is None or not hasattr(model, "detect"):
            raise AlignmentError(f"{path}: insightface did not recognise this file as a face detector")
        model.prepare(ctx_id=ctx_id, input_size=tuple(det_size), det_thresh=score_threshold)
        self._model = model
        self.det_size = tuple(det_size)
        self.model_path = path
        self.description = f"insightface:{os.path.basename(path)}"

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        det, kpss = self._model.detect(image_bgr, input_size=self.det_size)
        out: list[Detection] = []
        if det is None or len(det) == 0:
            return out
        if kpss is None:
            raise AlignmentError(f"{self.model_path}: detector returns no landmarks; alignment needs 5 points")
        for box, kps in zip(det, kpss):
            out.append(Detection(tuple(float(v) for v in box[:4]), float(box[4]), np.asarray(kps, dtype=np.float64)))
        return out


def load_detector(model_path: str | os.PathLike[str], kind: str = "auto", **kwargs: object) -> FaceDetector:
    """Build a detector from a model file. ``kind``: ``"yunet"``, ``"insightface"`` or
    ``"auto"`` (YuNet if the file name mentions yunet, insightface otherwise)."""
    path = str(model_path)
    if kind == "auto":
        kind = "yunet" if "yunet" in os.path.basename(path).lower() else "insightface"
    if kind == "yunet":
        return YuNetDetector(path, **kwargs)  # type: ignore[arg-type]
    if kind == "insightface":
        return InsightFaceDetector(path, **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown detector kind {kind!r} (yunet, insightface, auto)")
