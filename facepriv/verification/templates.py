"""IJB-style 1:1 verification between *templates* (sets of images and video frames).

IJB-B/C compare templates, not images. A template holds several media (a still photo, or
the frames of one video); pooling per media first stops a 100-frame video from outvoting a
single photo. The pipeline, as in the reference IJB evaluation:

1. image features (optionally + the features of the horizontally flipped image:
   "flip test"; optionally multiplied by a per-image weight such as a detector score;
   optionally L2-normalised per image, which throws away the feature norm as a quality cue),
2. averaged per (template, media),
3. the media features averaged per template,
4. L2-normalised, and every template pair scored by cosine similarity.

Everything is vectorised: grouping uses ``np.unique`` + ``np.add.reduceat`` over a stable
sort, and pair scores are computed in chunks so 15M IJB-C pairs do not materialise two
15M x 512 matrices at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .metrics import DEFAULT_FPR_TARGETS, ScoreSet, _check_labels

__all__ = ["TemplateEmbeddings", "ijb_verification", "pool_templates", "score_template_pairs"]


def _check_features(x: object, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (images x dim) array, got shape {a.shape}")
    if a.dtype not in (np.float32, np.float64):
        if a.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be real numbers, got dtype {a.dtype}")
        a = a.astype(np.float32 if a.dtype == np.float16 else np.float64)
    if a.size and not np.isfinite(a).all():
        row = int(np.flatnonzero(~np.isfinite(a).all(axis=1))[0])
        raise ValueError(f"{name} contains NaN or inf (first bad row: image {row})")
    return a


def _check_ids(x: object, n: int, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} entries, expected {n} (one per image)")
    return a


def _group_sum(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Row sums of ``values`` per group index (0..n_groups-1, every group non-empty)."""
    order = np.argsort(group, kind="stable")
    counts = np.bincount(group, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.add.reduceat(values[order], starts, axis=0)


@dataclass(frozen=True)
class TemplateEmbeddings:
    """One L2-normalised feature row per template; ``template_ids`` sorted ascending."""

    template_ids: np.ndarray
    features: np.ndarray
    n_media: np.ndarray
    n_images: np.ndarray

    def rows(self, ids: object) -> np.ndarray:
        """Row index of each template id; raises naming the ids that were never pooled."""
        q = np.asarray(ids)
        r = np.searchsorted(self.template_ids, q)
        r_clip = np.minimum(r, self.template_ids.size - 1)
        missing = self.template_ids[r_clip] != q
        if missing.any():
            bad = np.unique(q[missing])
            shown = ", ".join(str(b) for b in bad[:5]) + (" ..." if bad.size > 5 else "")
            raise KeyError(f"{bad.size} template id(s) in the pair list have no images: {shown}")
        return r_clip


def pool_templates(
    features: object,
    template_ids: object,
    media_ids: object,
    *,
    flip_features: object | None = None,
    image_weights: object | None = None,
    normalize_images: bool = False,
) -> TemplateEmbeddings:
    """Pool image features into one normalised feature per template (module docstring).

    ``features`` and ``flip_features`` are (images x dim); ``template_ids`` and
    ``media_ids`` give each image's template and media (any sortable ids; a media id is
    only grouped within its template). ``image_weights`` (e.g. detector scores) scale each
    image's feature before averaging. Computation stays in the features' float dtype.
    """
    f = _check_features(features, "features")
    n = f.shape[0]
    if n == 0:
        raise ValueError("features is empty: no images to pool")
    t_ids = _check_ids(template_ids, n, "template_ids")
    m_ids = _check_ids(media_ids, n, "media_ids")
    if flip_features is not None:
        ff = _check_features(flip_features, "flip_features")
        if ff.shape != f.shape:
            raise ValueError(f"flip_features has shape {ff.shape}, features has {f.shape}")
        f = f + ff.astype(f.dtype, copy=False)
    if normalize_images:
        norms = np.linalg.norm(f, axis=1, keepdims=True)
        zero = np.flatnonzero(norms[:, 0] == 0)
        if zero.size:
            raise ValueError(f"{zero.size} image feature(s) have zero norm (first: image {int(zero[0])})")
        f = f / norms
    if image_weights is not None:
        w = np.asarray(image_weights, dtype=f.dtype)
        if w.shape != (n,):
            raise ValueError(f"image_weights must have shape ({n},), got {w.shape}")
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError("image_weights must be finite and non-negative")
        f = f * w[:, None]

    # (template, media) groups: factorise both ids, combine into one integer key.
    t_uniq, t_inv = np.unique(t_ids, return_inverse=True)
    m_uniq, m_inv = np.unique(m_ids, return_inverse=True)
    key = t_inv.astype(np.int64) * np.int64(m_uniq.size) + m_inv
    g_key, g_inv = np.unique(key, return_inverse=True)
    g_count = np.bincount(g_inv)
    media_mean = _group_sum(f, g_inv, g_key.size) / g_count[:, None].astype(f.dtype)
    g_template = (g_key // m_uniq.size).astype(np.int64)  # template row of each media group

    n_media = np.bincount(g_template, minlength=t_uniq.size)
    pooled = _group_sum(media_mean, g_template, t_uniq.size) / n_media[:, None].astype(f.dtype)
    norms = np.linalg.norm(pooled, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        shown = ", ".join(str(t) for t in t_uniq[zero[:5]])
        raise ValueError(f"{zero.size} template(s) pool to a zero feature and cannot be normalised: {shown}")
    pooled /= norms[:, None]
    return TemplateEmbeddings(
        template_ids=t_uniq,
        features=pooled,
        n_media=n_media,
        n_images=np.bincount(t_inv, minlength=t_uniq.size),
    )


def score_template_pairs(
    templates: TemplateEmbeddings, template1: object, template2: object, *, chunk_size: int = 100_000
) -> np.ndarray:
    """Cosine similarity of each (template1[i], template2[i]) pair, in chunks."""
    a = np.asarray(template1)
    b = np.asarray(template2)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"template1 and template2 must be 1-D of equal length, got {a.shape} and {b.shape}")
    r1 = templates.rows(a)
    r2 = templates.rows(b)
    F = templates.features
    out = np.empty(a.shape[0], dtype=F.dtype)
    for s in range(0, a.shape[0], chunk_size):
        e = s + chunk_size
        out[s:e] = np.einsum("ij,ij->i", F[r1[s:e]], F[r2[s:e]])
    return out


def ijb_verification(
    features: object,
    template_ids: object,
    media_ids: object,
    template1: object,
    template2: object,
    labels: object,
    *,
    flip_features: object | None = None,
    image_weights: object | None = None,
    normalize_images: bool = False,
    fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
) -> dict:
    """Full IJB-style 1:1 evaluation: pool templates, score pairs, report TPR@FPR/AUC/EER.

    Returns the :meth:`facepriv.verification.metrics.ScoreSet.report` dict plus template counts and the
    pooling options, all plain JSON-able values. Callers that also want the pair scores
    (e.g. to plot a ROC) call :func:`pool_templates` and :func:`score_template_pairs`.
    """
    templates = pool_templates(
        features,
        template_ids,
        media_ids,
        flip_features=flip_features,
        image_weights=image_weights,
        normalize_images=normalize_images,
    )
    scores = score_template_pairs(templates, template1, template2)
    y = _check_labels(labels, scores.shape[0], "labels")
    report = ScoreSet(scores[y], scores[~y], copy=False).report(fpr_targets)
    report.update(
        {
            "n_templates": int(templates.template_ids.size),
            "n_images": int(np.asarray(features).shape[0]),
            "n_pairs": int(scores.shape[0]),
            "flip_test": flip_features is not None,
            "image_weights": image_weights is not None,
            "normalize_images": bool(normalize_images),
        }
    )
    return report
