"""Rasterise synthetic faces: pose the plane shapes in 3-D-lite, re-align them like a
detector would, draw them with OpenCV and apply lighting, occlusion, blur and noise.

Why its own module: everything that turns parameters into pixels lives here, so the
bit-exact output for a given seed (pinned by ``tests/data/test_data_synthetic.py``) has
one owner. Parameters come from ``identity.py``, the face drawing from ``shapes.py``.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from ..align import apply_affine
from .identity import IMAGE_TAG, IdentityParams, ImageParams, clip255, keyed_rng, identity_params, image_params
from .shapes import CENTER, ellipse, plane_shapes

_SHIFT = 4  # cv2 drawing sub-pixel bits
_SCALE_FIX = float(1 << _SHIFT)


def similarity_2d(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2-D similarity ``src -> dst`` as a 2x3 matrix.

    Same optimum as ``align.umeyama_similarity`` (in 2-D a rotation+scale is one complex
    number ``a``: minimise sum |a z + b - w|^2, so ``a = <w_c, z_c> / |z_c|^2``), in a few
    scalar operations: the renderer calls it once per image.
    """
    z = src[:, 0] + 1j * src[:, 1]
    w = dst[:, 0] + 1j * dst[:, 1]
    zc, wc = z - z.mean(), w - w.mean()
    a = (wc * zc.conj()).sum() / (zc * zc.conj()).real.sum()
    b = w.mean() - a * z.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


class FaceRenderer:
    """Renders (identity, image) parameter pairs to uint8 RGB at ``image_size`` pixels."""

    def __init__(self, image_size: int = 112) -> None:
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {image_size}")
        self.size = int(image_size)
        self.s = self.size / 112.0
        self._basis_cache: dict[int, tuple[IdentityParams, Any]] = {}
        # shading is smooth: evaluate it on a coarse grid and upsample
        self._lo = max(16, self.size // 4)
        ys, xs = np.mgrid[0 : self._lo, 0 : self._lo].astype(np.float32)
        self._xs = (xs + 0.5) * (112.0 / self._lo)
        self._ys = (ys + 0.5) * (112.0 / self._lo)

    def _basis(self, idp: IdentityParams) -> tuple[list[str], list[int], np.ndarray, np.ndarray, np.ndarray]:
        """Per-identity linear basis: points = P0 + sum_k expr_k * dP_k (cached per identity)."""
        hit = self._basis_cache.get(idp.index)
        if hit is not None and hit[0] is idp:
            return hit[1]
        shapes, depth = plane_shapes(idp, np.zeros(6))
        keys = list(shapes)
        sizes = [len(shapes[k]) for k in keys]
        p0 = np.vstack([shapes[k] for k in keys])
        deltas = np.empty((6,) + p0.shape)
        for k in range(6):
            e = np.zeros(6)
            e[k] = 1.0
            sk, _ = plane_shapes(idp, e)
            deltas[k] = np.vstack([sk[key] for key in keys]) - p0
        extra = np.concatenate([np.broadcast_to(np.asarray(depth[k], float), (len(shapes[k]),)) for k in keys])
        out = (keys, sizes, p0, deltas, extra)
        if len(self._basis_cache) >= 4096:
            self._basis_cache.clear()
        self._basis_cache[idp.index] = (idp, out)
        return out

    def _build(
        self, idp: IdentityParams, imp: ImageParams
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
        """Posed shapes in 112-px image coordinates, the same as cv2 fixed-point pixel ints,
        and the 2x3 plane-to-image transform."""
        keys, sizes, p0, deltas, extra = self._basis(idp)
        expr = np.array([imp.eye_open, imp.gaze[0], imp.gaze[1], imp.brow_raise, imp.smile, imp.mouth_open])
        pts = p0.copy()
        for k in range(6):  # explicit loop: a BLAS call here pays thread start-up per image
            if expr[k]:
                pts += expr[k] * deltas[k]
        a, b = idp.face_a, idp.face_b
        cy = idp.face_cy - CENTER[1]
        # 3-D: z on an ellipsoid + per-shape offsets, rotate by yaw/pitch, project orthographically
        A, B, D = a * 1.05, b * 1.1, a * 0.85
        q = 1 - (pts[:, 0] / A) ** 2 - ((pts[:, 1] - cy) / B) ** 2
        z = D * np.sqrt(np.maximum(q, 0.0)) + extra
        cyw, syw = math.cos(imp.yaw), math.sin(imp.yaw)
        cpt, spt = math.cos(imp.pitch), math.sin(imp.pitch)
        x1 = pts[:, 0] * cyw + z * syw
        z1 = -pts[:, 0] * syw + z * cyw
        y1 = pts[:, 1] * cpt - z1 * spt
        proj = np.column_stack([x1, y1]) + CENTER
        # re-align like a detector + similarity warp would, then add residual roll/scale/shift
        lm_idx = sum(sizes[: keys.index("lm")])
        frontal = idp.landmarks()
        m = similarity_2d(proj[lm_idx : lm_idx + 5], frontal)
        ang, sc = imp.roll, imp.scale
        r2 = np.array([[sc * math.cos(ang), -sc * math.sin(ang)], [sc * math.sin(ang), sc * math.cos(ang)]])
        nuis = np.empty((2, 3))
        nuis[:, :2] = r2
        nuis[:, 2] = CENTER - r2 @ CENTER + np.asarray(imp.shift)
        full = nuis @ np.vstack([m, [0, 0, 1]])
        out = apply_affine(full, proj)
        fixed = np.round(out * (self.s * _SCALE_FIX)).astype(np.int32)
        result: dict[str, np.ndarray] = {}
        ints: dict[str, np.ndarray] = {}
        start = 0
        for k, nk in zip(keys, sizes):
            result[k] = out[start : start + nk]
            ints[k] = fixed[start : start + nk]
            start += nk
        return result, ints, full

    def _poly(self, img: np.ndarray, pts: np.ndarray, color: Any) -> None:
        """Fill a polygon given in 112-px float coordinates."""
        p = np.round(pts * (self.s * _SCALE_FIX)).astype(np.int32)
        cv2.fillPoly(img, [p], color, cv2.LINE_AA, _SHIFT)

    def render(self, idp: IdentityParams, imp: ImageParams) -> tuple[np.ndarray, np.ndarray]:
        """Render one image: ``(H x W x 3 uint8 RGB, 5 x 2 landmarks in pixels)``."""
        S = self.size
        g, gi, full = self._build(idp, imp)  # gi: the same shapes as fixed-point ints for cv2
        fix = self.s * _SCALE_FIX
        aa, sh = cv2.LINE_AA, _SHIFT

        def fill(target: np.ndarray, key: str, color: Any) -> None:
            cv2.fillPoly(target, [gi[key]], color, aa, sh)

        img = cv2.resize(imp.bg.astype(np.uint8), (S, S), interpolation=cv2.INTER_LINEAR)
        mask = np.zeros((S, S), np.uint8)
        skin = idp.skin_rgb
        dark_skin = tuple(0.82 * v for v in skin)
        hair = idp.hair_rgb
        fill(img, "cloth", imp.cloth_rgb)
        fill(img, "neck", dark_skin)
        cv2.fillPoly(mask, [gi["cloth"], gi["neck"]], 255, aa, sh)
        for k in ("hair_long", "hair_back"):
            if k in gi:
                fill(img, k, hair)
                fill(mask, k, 255)
        fill(img, "ear-1", dark_skin)
        fill(img, "ear1", dark_skin)
        fill(img, "face", skin)
        cv2.fillPoly(mask, [gi["ear-1"], gi["ear1"], gi["face"]], 255, aa, sh)
        if "beard" in gi:
            fill(img, "beard", tuple(0.55 * h + 0.45 * s_ for h, s_ in zip(hair, skin)))
        if "freckles" in gi:
            col = tuple(0.78 * v for v in skin)
            for (x, y), r in zip(gi["freckles"], idp.freckles[:, 2]):
                cv2.circle(img, (int(x), int(y)), max(1, int(r * fix)), col, -1, aa, sh)
        if "moles" in gi:
            for (x, y), r in zip(gi["moles"], idp.moles[:, 2]):
                cv2.circle(img, (int(x), int(y)), max(1, int(r * fix)), (70, 45, 35), -1, aa, sh)
        if idp.cheek_lines:
            col = tuple(0.75 * v for v in skin)
            nl = g["nose_tip"].mean(0)
            for side, lm_i in ((-1, 3), (1, 4)):
                pts = np.array([nl + [side * 5.0, 0], g["lm"][lm_i] + [side * 2.5, 0]]) * fix
                cv2.polylines(img, [pts.astype(np.int32)], False, col, 1, aa, sh)
        lw = max(1, round(self.s))
        brow_col = tuple(0.8 * v for v in hair)
        for k in ("R", "L"):
            fill(img, f"eye{k}", (238, 236, 230))
            fill(img, f"iris{k}", idp.iris_rgb)
            fill(img, f"pupil{k}", (12, 10, 10))
            cv2.fillPoly(img, [gi[f"lidU{k}"], gi[f"lidL{k}"]], skin, aa, sh)
            cv2.polylines(img, [gi[f"eye{k}"][:9]], False, (35, 25, 22), lw, aa, sh)
            fill(img, f"brow{k}", brow_col)
        # nose: side shadow opposite to the light, tip, nostrils
        bridge = gi["nose_bridge"]
        shade_side = bridge[[1, 2]] if imp.light[0] < 0 else bridge[[0, 3]]
        cv2.polylines(img, [shade_side], False, tuple(0.72 * v for v in skin), lw, aa, sh)
        fill(img, "nose_tip", tuple(min(255.0, 1.04 * v) for v in skin))
        cv2.fillPoly(img, [gi["nostril-1"], gi["nostril1"]], tuple(0.45 * v for v in skin), aa, sh)
        if imp.mouth_open > 0.05:
            fill(img, "mouth_in", (60, 25, 25))
        fill(img, "lip_up", idp.lip_rgb)
        fill(img, "lip_lo", tuple(min(255.0, 1.06 * v) for v in idp.lip_rgb))
        if "moustache" in gi:
            fill(img, "moustache", tuple(0.85 * v for v in hair))
        if "hair_top" in gi:
            fill(img, "hair_top", hair)
            fill(mask, "hair_top", 255)

        # lighting: Lambertian shading of the head ellipsoid on the foreground, flat elsewhere
        centre = apply_affine(full, np.array([CENTER + [0, idp.face_cy - CENTER[1]]]))[0]
        sc = math.hypot(full[0, 0], full[1, 0])
        nx = (self._xs - centre[0]) * (1.0 / ((idp.face_a + 6) * sc))
        ny = (self._ys - centre[1]) * (1.0 / ((idp.face_b + 6) * sc))
        r2 = np.minimum(nx * nx + ny * ny, 1.0)
        lxx, lyy, lzz = imp.light
        dot = np.maximum(lxx * nx + lyy * ny + lzz * np.sqrt(1.0 - r2), 0.0)
        dot = cv2.resize(dot, (S, S), interpolation=cv2.INTER_LINEAR)
        gain = imp.contrast / (imp.ambient + imp.diffuse * 0.85)
        fg = mask.astype(np.float32) * (1.0 / 255.0)
        # shade = (ambient + diffuse * (fg * dot + (1 - fg) * 0.8)) * gain
        shade = (dot - 0.8) * fg
        shade += 0.8
        shade *= imp.diffuse * gain
        shade += imp.ambient * gain
        out = cv2.merge([shade * float(t) for t in imp.tint])
        out *= img
        out += imp.brightness + (1 - imp.contrast) * 110.0
        if imp.occlusion:  # occluders are in front of the face: not shaded
            occ = np.zeros_like(img)
            omask = np.zeros((S, S), np.uint8)
            self._occlude(occ, omask, g, imp)
            alpha = omask.astype(np.float32) * (1.0 / 255.0)
            out *= (1.0 - alpha)[..., None]
            out += occ.astype(np.float32) * alpha[..., None]
        if imp.blur > 0.15:
            out = cv2.GaussianBlur(out, (0, 0), imp.blur * self.s)
        if imp.noise > 0:
            out += _noise_patch(imp.seed, S) * imp.noise
        clip255(out, out=out)
        return out.astype(np.uint8), g["lm"] * self.s

    def _occlude(self, img: np.ndarray, mask: np.ndarray, g: dict[str, np.ndarray], imp: ImageParams) -> None:
        """Draw the occluder into ``img`` and its footprint into ``mask``."""
        polys: list[tuple[np.ndarray, Any]] = []
        o = imp.occ
        col = tuple(float(v) for v in 20 + 215 * o[:3])
        if imp.occlusion == 1:  # bar across the face at a random height and angle
            yc = 40 + 60 * o[3]
            ang = (o[4] - 0.5) * 0.8
            hw = 4 + 6 * o[5]
            d = np.array([math.cos(ang), math.sin(ang)])
            nrm = np.array([-d[1], d[0]])
            c = np.array([56.0, yc])
            pts = np.array([c - 70 * d - hw * nrm, c + 70 * d - hw * nrm, c + 70 * d + hw * nrm, c - 70 * d + hw * nrm])
            polys.append((pts, col))
        elif imp.occlusion == 2:  # sunglasses
            dark = tuple(float(v) for v in 10 + 40 * o[:3])
            for k in ("R", "L"):
                e = g[f"eye{k}"]
                c = e.mean(0)
                w = (e[:, 0].max() - e[:, 0].min()) * 0.75 + 2
                polys.append((ellipse(c[0], c[1] + 0.5, w, w * 0.72, 18), dark))
            a, b = g["eyeR"].mean(0), g["eyeL"].mean(0)
            pts = (np.array([a, b]) * self.s * _SCALE_FIX).astype(np.int32)
            for target, colr in ((img, dark), (mask, 255)):
                cv2.polylines(target, [pts], False, colr, max(1, round(1.5 * self.s)), cv2.LINE_AA, _SHIFT)
        else:  # face mask over nose tip to chin
            f = g["face"]
            lm = g["lm"]
            top = lm[2][1] - 2
            lower = f[f[:, 1] > top]
            lower = lower[np.argsort(np.arctan2(lower[:, 1] - top, lower[:, 0] - lm[2][0]))]
            pts = np.vstack([[[lower[:, 0].max(), top - 2], [lm[2][0], top - 5], [lower[:, 0].min(), top - 2]], lower[::-1]])
            light = tuple(float(v) for v in 170 + 85 * o[:3])
            polys.append((pts, light))
        for pts, colr in polys:
            self._poly(img, pts, colr)
            self._poly(mask, pts, 255)


_NOISE_BANK: np.ndarray | None = None
_BANK_TILES, _BANK_SIZE = 8, 320


def _noise_patch(seed: int, size: int) -> np.ndarray:
    """Unit Gaussian noise ``size x size x 3``, a seed-chosen crop of a fixed noise bank.

    Drawing fresh normals for every image costs more than the rest of the render; crops
    at random offsets and flips of a fixed bank (generated once per process from a
    constant seed, so still deterministic) are statistically just as good as nuisance.
    """
    global _NOISE_BANK
    if _NOISE_BANK is None:
        _NOISE_BANK = np.random.default_rng(0x5EED).standard_normal((_BANK_TILES, _BANK_SIZE, _BANK_SIZE, 3), dtype=np.float32)
    if size > _BANK_SIZE:
        return np.random.default_rng(seed).standard_normal((size, size, 3), dtype=np.float32)
    t = seed % _BANK_TILES
    span = _BANK_SIZE - size + 1
    y = (seed // _BANK_TILES) % span
    x = (seed // (_BANK_TILES * span)) % span
    patch = _NOISE_BANK[t, y : y + size, x : x + size]
    if (seed >> 20) & 1:
        patch = patch[:, ::-1]
    return patch


# -- public helpers -------------------------------------------------------------------------
def render_face(seed: int, identity: int, image: int, image_size: int = 112, difficulty: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Render image ``image`` of identity ``identity``: ``(uint8 RGB, 5 x 2 landmarks)``."""
    return FaceRenderer(image_size).render(identity_params(seed, identity), image_params(seed, identity, image, difficulty))


def render_unaligned(
    seed: int, identity: int, image: int, canvas: int = 250, face_scale: float = 1.0, difficulty: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic "photo": the face placed at a random position, size and angle in a
    larger canvas, with its true landmarks. For testing detection + alignment pipelines."""
    img, lm = render_face(seed, identity, image, 112, difficulty)
    r = keyed_rng(IMAGE_TAG + 1, seed, identity, image)
    ang = r.uniform(-25, 25)
    sc = face_scale * r.uniform(0.9, 1.6) * canvas / 250
    cx, cy = r.uniform(0.35, 0.65, 2) * canvas
    m = cv2.getRotationMatrix2D((56.0, 60.0), ang, sc)
    m[:, 2] += np.array([cx, cy]) - np.array([56.0, 60.0])
    photo = cv2.warpAffine(img, m, (canvas, canvas), borderMode=cv2.BORDER_REFLECT_101)
    return photo, apply_affine(m, lm)
