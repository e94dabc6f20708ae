"""5-point alignment: Umeyama similarity, norm_crop semantics, align_folder with a fake detector."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from facepriv.data import (
    ARCFACE_TEMPLATE,
    AlignmentError,
    Detection,
    apply_affine,
    align_folder,
    estimate_norm,
    norm_crop,
    read_image,
    render_face,
    render_unaligned,
    select_face,
    template_for,
    umeyama_similarity,
    write_image,
)


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def test_umeyama_recovers_exact_similarity():
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = _similarity(rng.uniform(-180, 180), rng.uniform(0.2, 5), *rng.uniform(-100, 100, 2))
        src = rng.uniform(0, 250, (5, 2))
        np.testing.assert_allclose(umeyama_similarity(src, apply_affine(m, src)), m, atol=1e-9)


def test_umeyama_is_least_squares_and_never_reflects():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    dst = apply_affine(_similarity(20, 1.3, 5, -7), src) + rng.normal(0, 2, (5, 2))
    m = umeyama_similarity(src, dst)
    err = ((apply_affine(m, src) - dst) ** 2).sum()
    for _ in range(200):  # no nearby similarity does better
        p = np.array([m[0, 0], m[1, 0], m[0, 2], m[1, 2]]) + rng.normal(0, 0.01, 4)
        alt = np.array([[p[0], -p[1], p[2]], [p[1], p[0], p[3]]])
        assert ((apply_affine(alt, src) - dst) ** 2).sum() >= err - 1e-9
    mirrored = src * [-1, 1]
    r = umeyama_similarity(src, mirrored)[:, :2]
    assert np.linalg.det(r) > 0  # best proper similarity, not a reflection
    with pytest.raises(ValueError, match="same point"):
        umeyama_similarity(np.ones((5, 2)), src)
    with pytest.raises(ValueError, match="NaN"):
        umeyama_similarity(np.full((5, 2), np.nan), src)


def test_matches_skimage_similarity_transform():
    skt = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(2)
    lm = ARCFACE_TEMPLATE * 1.7 + rng.normal(0, 3, (5, 2)) + [40, 25]
    if hasattr(skt.SimilarityTransform, "from_estimate"):
        t = skt.SimilarityTransform.from_estimate(lm, ARCFACE_TEMPLATE)
    else:  # older scikit-image
        t = skt.SimilarityTransform()
        t.estimate(lm, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(estimate_norm(lm), t.params[:2], atol=1e-8)


def test_template_sizes():
    np.testing.assert_allclose(template_for(112), ARCFACE_TEMPLATE)
    np.testing.assert_allclose(template_for(224), ARCFACE_TEMPLATE * 2)
    np.testing.assert_allclose(template_for(128), ARCFACE_TEMPLATE + [8, 0])
    with pytest.raises(ValueError):
        template_for(100)
    np.testing.assert_allclose(estimate_norm(ARCFACE_TEMPLATE), np.eye(2, 3), atol=1e-9)


def test_norm_crop_puts_landmarks_on_template():
    """Draw 5 coloured dots at known positions in a rotated/scaled frame; after norm_crop
    each dot's centroid is on its template point."""
    m = _similarity(30, 1.8, 60, 20)
    lm = apply_affine(m, ARCFACE_TEMPLATE)
    img = np.zeros((300, 300, 3), np.uint8)
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for (x, y), c in zip(lm, colors):
        cv2.circle(img, (int(round(x * 16)), int(round(y * 16))), 5 * 16, c, -1, cv2.LINE_AA, 4)
    crop = norm_crop(img, lm)
    assert crop.shape == (112, 112, 3)
    for (tx, ty), c in zip(ARCFACE_TEMPLATE, colors):
        match = np.all(np.abs(crop.astype(int) - c) < 40, axis=-1)
        ys, xs = np.nonzero(match)
        assert len(xs) > 10
        assert abs(xs.mean() - tx) < 0.8 and abs(ys.mean() - ty) < 0.8
    assert crop[0, 0].tolist() == [0, 0, 0]  # black border outside the source
    with pytest.raises(AlignmentError, match="5 x 2"):
        norm_crop(img, lm[:4])


class FakeDetector:
    """Returns the known landmarks for each file (matched by image content hash)."""

    description = "fake"

    def __init__(self, table: dict[bytes, list[Detection]]) -> None:
        self.table = table
        self.calls = 0

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        self.calls += 1
        return self.table.get(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB).tobytes()[:4096], [])


def _det(lm: np.ndarray, pad: float = 20.0) -> Detection:
    x1, y1 = lm.min(0) - pad
    x2, y2 = lm.max(0) + pad
    return Detection((x1, y1, x2, y2), 0.9, lm)


def test_align_folder_with_fake_detector(tmp_path):
    src = tmp_path / "raw"
    table: dict[bytes, list[Detection]] = {}
    originals = {}
    for i in range(3):
        photo, lm = render_unaligned(seed=1, identity=i, image=0, canvas=200)
        rel = f"person{i}/person{i}_0001.png"
        write_image(src / rel, photo)
        dets = [_det(lm)]
        if i == 2:  # a second, smaller face elsewhere: "largest" must keep the real one
            dets.append(_det(lm * 0.3 + 5, pad=5))
        table[read_image(src / rel).tobytes()[:4096]] = dets
        originals[rel] = (render_face(1, i, 0)[0], lm)
    write_image(src / "person0" / "noface.png", np.full((50, 50, 3), 127, np.uint8))
    (src / "person1" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    det = FakeDetector(table)

    report = align_folder(src, tmp_path / "aligned", det, progress=False)
    assert report.total == 5 and report.aligned == 3 and report.multiple_faces == 1
    reasons = {f["path"]: f["reason"] for f in report.failures}
    assert reasons["person0/noface.png"] == "no face detected"
    assert reasons["person1/broken.jpg"].startswith("unreadable")
    saved = json.loads((tmp_path / "aligned" / "align_report.json").read_text())
    assert saved["failed"] == 2 and len(saved["failures"]) == 2 and len(saved["landmarks"]) == 3

    for rel, (orig, lm) in originals.items():
        out = read_image(tmp_path / "aligned" / rel)
        assert out.shape == (112, 112, 3)
        # the warp maps the detected landmarks onto (close to) the template...
        mapped = apply_affine(estimate_norm(lm), lm)
        assert np.linalg.norm(mapped - ARCFACE_TEMPLATE, axis=1).max() < 6.0
        # ... and undoes the random placement: the crop looks like the original aligned render
        a = out[20:100, 20:92].astype(np.float32).ravel()
        b = orig[20:100, 20:92].astype(np.float32).ravel()
        assert np.corrcoef(a, b)[0, 1] > 0.8


def test_select_face():
    big = Detection((0, 0, 100, 100), 0.5, np.zeros((5, 2)))
    central = Detection((180, 180, 220, 220), 0.9, np.zeros((5, 2)))
    assert select_face([central, big], (400, 400), "largest") is big
    assert select_face([central, big], (400, 400), "center") is central
    with pytest.raises(ValueError):
        select_face([big], (10, 10), "random")
