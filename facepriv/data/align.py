"""5-point face alignment to the ArcFace 112x112 template (insightface ``norm_crop`` semantics).

Recognition models are trained and evaluated on faces warped so that the eyes, nose tip
and mouth corners land on fixed template points; a model sees a different distribution
if alignment differs even slightly, so this follows insightface exactly: a least-squares
*similarity* transform (rotation + uniform scale + translation, no shear) from the 5
detected landmarks to the template scaled to the output size, then ``cv2.warpAffine``
with a black border. The similarity fit is Umeyama's closed form, implemented here.

Detection runs offline with a user-supplied model file (see ``detectors``); nothing is
downloaded. ``align_folder`` never drops an image silently: every failure (unreadable
file, no face) is listed in the JSON report.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import AlignmentError, ImageDecodeError
from .images import IMAGE_EXTENSIONS, read_image, write_image

#: ArcFace template for 112x112 output: right eye, left eye (subject's; image left first),
#: nose tip, right mouth corner, left mouth corner.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def template_for(image_size: int = 112) -> np.ndarray:
    """Template landmarks for a square output of ``image_size`` (insightface's rule:
    multiples of 112 scale the template; multiples of 128 scale it and shift x by 8*ratio)."""
    if image_size % 112 == 0:
        ratio, dx = image_size / 112.0, 0.0
    elif image_size % 128 == 0:
        ratio = image_size / 128.0
        dx = 8.0 * ratio
    else:
        raise ValueError(f"image_size must be a multiple of 112 or 128, got {image_size}")
    dst = ARCFACE_TEMPLATE * ratio
    dst[:, 0] += dx
    return dst


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping ``src`` points onto ``dst`` (Umeyama 1991).

    Returns the 2x3 matrix ``M`` with ``dst ~= M @ [x, y, 1]``. Minimises the summed
    squared error over rotation R, uniform scale c and translation t:
    with centred point sets, covariance ``S = dst_c^T src_c / n`` and its SVD ``U D V^T``,
    ``R = U diag(1, det(U V^T)) V^T`` (the sign fix forbids reflections),
    ``c = trace(D diag(1, d)) / var(src)``, ``t = mean(dst) - c R mean(src)``.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need matching point sets of at least 2 points, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks contain NaN or infinite values")
    n = len(src)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc**2).sum() / n
    if var_s < 1e-12:
        raise ValueError("source landmarks are all at the same point")
    cov = dc.T @ sc / n
    u, d, vt = np.linalg.svd(cov)
    s = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        s[-1] = -1.0
    rot = u @ np.diag(s) @ vt
    scale = float((d * s).sum() / var_s)
    t = mu_d - scale * rot @ mu_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = t
    return m


def apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to ``N x 2`` points."""
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    return pts @ m[:, :2].T + m[:, 2]


def estimate_norm(landmarks: np.ndarray, image_size: int = 112) -> np.ndarray:
    """2x3 similarity taking 5 image landmarks to the template for ``image_size``."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (5, 2):
        raise AlignmentError(f"expected 5 x 2 landmarks, got shape {lm.shape}")
    return umeyama_similarity(lm, template_for(image_size))


def norm_crop(image: np.ndarray, landmarks: np.ndarray, image_size: int = 112) -> np.ndarray:
    """Warp ``image`` so its 5 landmarks land on the ArcFace template (black border).

    Works on any channel order (the warp does not look at colours).
    """
    m = estimate_norm(landmarks, image_size)
    return cv2.warpAffine(image, m, (image_size, image_size), borderValue=0.0)


# -- folders --------------------------------------------------------------------------------
@dataclass
class AlignReport:
    """Outcome of ``align_folder``: counts, every failure with its reason, landmarks used."""

    in_dir: str
    out_dir: str
    detector: str
    total: int = 0
    aligned: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    multiple_faces: int = 0
    landmarks: dict[str, list[list[float]]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "in_dir": self.in_dir,
            "out_dir": self.out_dir,
            "detector": self.detector,
            "total": self.total,
            "aligned": self.aligned,
            "failed": len(self.failures),
            "multiple_faces": self.multiple_faces,
            "seconds": round(self.seconds, 3),
            "failures": self.failures,
            "landmarks": self.landmarks,
        }


def _walk_images(root: str) -> list[str]:
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                out.append(os.path.relpath(os.path.join(dirpath, f), root))
    return out


def align_folder(
    in_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    detector: Any,
    *,
    image_size: int = 112,
    select: str = "largest",
    report_path: str | os.PathLike[str] | None = None,
    quality: int = 95,
    overwrite: bool = True,
    progress: bool = True,
) -> AlignReport:
    """Detect, align and write every image under ``in_dir`` to the same relative path in
    ``out_dir`` (same extension). ``detector`` has ``detect(bgr) -> list[Detection]``
    (see ``facepriv.data.detectors``). ``select`` picks among several faces: ``"largest"``
    or ``"center"``. Writes a JSON report (default ``out_dir/align_report.json``) listing
    every image that could not be aligned and why, plus the landmarks used.
    """
    from tqdm import tqdm

    from .detectors import select_face

    in_dir, out_dir = str(in_dir), str(out_dir)
    if not os.path.isdir(in_dir):
        raise AlignmentError(f"{in_dir}: input folder not found")
    files = _walk_images(in_dir)
    report = AlignReport(in_dir, out_dir, detector=getattr(detector, "description", type(detector).__name__))
    report.total = len(files)
    t0 = time.perf_counter()
    for rel in tqdm(files, desc="align", unit="img", disable=not progress):
        src = os.path.join(in_dir, rel)
        dst = os.path.join(out_dir, rel)
        if not overwrite and os.path.exists(dst):
            report.aligned += 1
            continue
        try:
            rgb = read_image(src)
        except ImageDecodeError as exc:
            report.failures.append({"path": rel, "reason": f"unreadable: {exc.reason}"})
            continue
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        try:
            dets = detector.detect(bgr)
        except Exception as exc:  # a detector crash on one image must not end the run
            report.failures.append({"path": rel, "reason": f"detector error: {type(exc).__name__}: {exc}"})
            continue
        if not dets:
            report.failures.append({"path": rel, "reason": "no face detected"})
            continue
        if len(dets) > 1:
            report.multiple_faces += 1
        det = select_face(dets, bgr.shape[:2], select)
        try:
            crop = norm_crop(rgb, det.landmarks, image_size)
        except (ValueError, AlignmentError) as exc:
            report.failures.append({"path": rel, "reason": f"bad landmarks: {exc}"})
            continue
        write_image(dst, crop, quality)
        report.aligned += 1
        report.landmarks[rel.replace(os.sep, "/")] = np.asarray(det.landmarks, dtype=float).round(2).tolist()
    report.seconds = time.perf_counter() - t0
    rp = Path(report_path) if report_path is not None else Path(out_dir) / "align_report.json"
    rp.parent.mkdir(parents=True, exist_ok=True)
    rp.write_text(json.dumps(report.to_dict(), indent=1))
    return report
