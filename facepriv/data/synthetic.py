"""Procedural synthetic faces: many identities, aligned to the ArcFace 112x112 template.

Why: the quickstart and the tests need face-like data with *identity* structure and no
download, no real people and no licence questions. Each identity is a fixed set of
parameters (face shape, skin tone, eye/brow/nose/mouth geometry, iris colour, hair style and
colour, facial hair, freckles and moles); each image of it adds nuisance a recogniser must
learn to ignore (head yaw/pitch/roll, scale and shift, expression: eye and mouth openness,
smile, brow raise, gaze; lighting direction, intensity and colour; background and clothing;
blur, sensor noise, colour jitter; occlusion by a bar, sunglasses or a mask).

Geometry is 3-D-lite: features live on an ellipsoid, are rotated by yaw/pitch and
projected, then a similarity transform re-aligns the projected 5 landmarks to the
identity's frontal landmarks (as a detector+``norm_crop`` pipeline would), so pose leaves
realistic residuals (the nose moves relative to the eyes, the outline shifts) rather than
moving the whole face. The identity's frontal landmarks sit within a few pixels of the
ArcFace template.

Determinism: identity ``i``'s parameters depend only on ``(seed, i)``; image ``j`` of
identity ``i`` only on ``(seed, i, j)`` (NumPy ``SeedSequence`` keys), so any image can
be rendered alone, in any order, in any worker. Rendering uses OpenCV primitives on uint8
plus a few whole-image float operations: roughly 1-2k images/s on one core at 112x112.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .align import ARCFACE_TEMPLATE, apply_affine
from .images import to_tensor, write_image

_ID_TAG = 0x1D3A7
_IMG_TAG = 0x13A6E
#: canonical face centre in 112-pixel coordinates; all shapes are built relative to it.
CENTER = np.array([56.0, 60.0])
_SHIFT = 4  # cv2 drawing sub-pixel bits
_SCALE_FIX = float(1 << _SHIFT)

# palettes (RGB)
_SKIN = np.array([[247, 214, 190], [232, 190, 160], [214, 166, 130], [190, 140, 105], [150, 100, 70], [105, 68, 48], [75, 50, 38]], float)
_HAIR = np.array([[20, 17, 16], [52, 36, 28], [92, 62, 40], [150, 110, 70], [205, 170, 110], [150, 60, 30], [160, 155, 150], [225, 220, 210]], float)
_HAIR_P = np.array([0.24, 0.24, 0.16, 0.1, 0.09, 0.06, 0.07, 0.04])
_IRIS = np.array([[60, 38, 25], [100, 65, 35], [70, 110, 150], [80, 120, 85], [110, 110, 100], [40, 30, 25]], float)


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


def _clip255(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Clip to [0, 255] (``np.clip`` has ~50 us fixed overhead in NumPy 2; this does not)."""
    x = np.maximum(x, 0.0, out=out)
    return np.minimum(x, 255.0, out=x)


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]))


@dataclass(frozen=True)
class IdentityParams:
    """Everything that makes identity ``index`` look like itself (all in 112-px units)."""

    index: int
    face_a: float
    face_b: float
    face_cy: float
    n_top: float
    n_bot: float
    jaw_taper: float
    eye_y: float
    eye_dx: float
    eye_w: float
    eye_h: float
    eye_tilt: float
    iris_r: float
    iris_rgb: tuple[float, float, float]
    brow_gap: float
    brow_thick: float
    brow_len: float
    brow_arch: float
    brow_slope: float
    nose_y: float
    nose_w: float
    nose_len: float
    nose_x: float
    mouth_y: float
    mouth_hw: float
    lip_up: float
    lip_lo: float
    lip_rgb: tuple[float, float, float]
    skin_rgb: tuple[float, float, float]
    hair_rgb: tuple[float, float, float]
    hair_style: int
    hairline: float
    hair_volume: float
    hair_part: float
    facial_hair: int
    ear_size: float
    ear_y: float
    freckles: np.ndarray
    moles: np.ndarray
    cheek_lines: float

    def landmarks(self) -> np.ndarray:
        """Frontal 5 landmarks (image coordinates, 112 px)."""
        mouth_x = self.mouth_hw * 0.92
        return np.array(
            [
                [56.0 - self.eye_dx, self.eye_y],
                [56.0 + self.eye_dx, self.eye_y],
                [56.0 + self.nose_x, self.nose_y],
                [56.0 - mouth_x, self.mouth_y],
                [56.0 + mouth_x, self.mouth_y],
            ]
        )


def identity_params(seed: int, index: int) -> IdentityParams:
    """Sample identity ``index`` (depends only on ``(seed, index)``)."""
    r = _rng(_ID_TAG, seed, index)
    u = r.uniform
    tpl = ARCFACE_TEMPLATE
    skin_t = u(0, len(_SKIN) - 1)
    k = int(skin_t)
    skin = _SKIN[k] + (_SKIN[min(k + 1, len(_SKIN) - 1)] - _SKIN[k]) * (skin_t - k)
    skin = _clip255(skin * u(0.95, 1.05, 3) + u(-6, 6))
    old = r.random() < 0.12
    hair = _HAIR[r.choice(len(_HAIR), p=_HAIR_P)] if not old else _HAIR[6 + r.integers(2)]
    hair = _clip255(hair * u(0.85, 1.15) + u(-8, 8, 3))
    iris = _clip255(_IRIS[r.integers(len(_IRIS))] * u(0.8, 1.2, 3))
    lip = _clip255(skin * np.array([0.92, 0.62, 0.62]) * u(0.8, 1.05) + np.array([25, 0, 5]))
    male = r.random() < 0.5
    style = int(r.choice(5, p=[0.08, 0.34, 0.22, 0.24, 0.12] if male else [0.02, 0.1, 0.2, 0.5, 0.18]))
    eye_dx = (tpl[1, 0] - tpl[0, 0]) / 2 + u(-2.2, 2.2)
    n_freckles = int(r.integers(12, 40)) if r.random() < 0.22 else 0
    fr = np.column_stack([r.choice([-1, 1], n_freckles) * u(8, 26, n_freckles), u(0, 18, n_freckles), u(0.45, 0.9, n_freckles)])
    n_moles = int(r.choice(4, p=[0.4, 0.35, 0.17, 0.08]))
    mo = np.column_stack([u(-26, 26, n_moles), u(-30, 38, n_moles), u(0.8, 1.6, n_moles)])
    return IdentityParams(
        index=int(index),
        face_a=u(32.5, 39.5),
        face_b=u(45.0, 53.0),
        face_cy=60.0 + u(-2.0, 2.0),
        n_top=u(2.0, 2.8),
        n_bot=u(1.7, 3.0),
        jaw_taper=u(0.05, 0.35),
        eye_y=float(tpl[0, 1] + u(-2.5, 2.5)),
        eye_dx=float(eye_dx),
        eye_w=u(8.5, 12.5),
        eye_h=u(2.8, 4.8),
        eye_tilt=u(-0.14, 0.14),
        iris_r=u(2.6, 3.5),
        iris_rgb=tuple(iris),
        brow_gap=u(5.0, 9.0),
        brow_thick=u(1.3, 3.8) * (1.15 if male else 0.9),
        brow_len=u(11.0, 17.0),
        brow_arch=u(0.3, 3.5),
        brow_slope=u(-2.5, 2.5),
        nose_y=float(tpl[2, 1] + u(-3.0, 3.0)),
        nose_w=u(6.5, 12.0),
        nose_len=u(13.0, 22.0),
        nose_x=u(-1.0, 1.0),
        mouth_y=float((tpl[3, 1] + tpl[4, 1]) / 2 + u(-3.0, 3.0)),
        mouth_hw=u(11.5, 17.5),
        lip_up=u(1.3, 3.6),
        lip_lo=u(1.8, 5.0),
        lip_rgb=tuple(lip),
        skin_rgb=tuple(skin),
        hair_rgb=tuple(hair),
        hair_style=style,
        hairline=u(0.45, 0.8),
        hair_volume=u(2.0, 10.0),
        hair_part=u(-1.0, 1.0),
        facial_hair=int(r.choice(4, p=[0.55, 0.15, 0.15, 0.15])) if male else 0,
        ear_size=u(8.0, 12.0),
        ear_y=u(-2.0, 4.0),
        freckles=fr,
        moles=mo,
        cheek_lines=u(0, 1) if old else 0.0,
    )


@dataclass(frozen=True)
class ImageParams:
    """Nuisance for one image (pose, expression, light, capture, occlusion)."""

    yaw: float
    pitch: float
    roll: float
    scale: float
    shift: tuple[float, float]
    eye_open: float
    gaze: tuple[float, float]
    mouth_open: float
    smile: float
    brow_raise: float
    light: tuple[float, float, float]
    ambient: float
    diffuse: float
    tint: tuple[float, float, float]
    bg: np.ndarray
    cloth_rgb: tuple[float, float, float]
    blur: float
    noise: float
    contrast: float
    brightness: float
    occlusion: int
    occ: np.ndarray
    seed: int


def image_params(seed: int, index: int, image: int, difficulty: float = 1.0) -> ImageParams:
    """Sample nuisance for image ``image`` of identity ``index`` (depends only on these and ``seed``).

    ``difficulty`` scales pose, lighting, blur, noise and occlusion probability (0 gives
    frontal, evenly lit, clean images; 1 the default mix).
    """
    r = _rng(_IMG_TAG, seed, index, image)
    # one draw of all uniforms: a Generator call per field costs more than the maths
    v = r.random(64).tolist()
    it = iter(v)

    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * next(it)

    d = float(difficulty)
    blink, gape, lit, occ_draw, blurry = (next(it) for _ in range(5))
    eye_open = u(0.1, 0.35) if blink < 0.06 * d else u(0.75, 1.1)
    mouth_open = u(0.0, 0.4) if gape < 1 - 0.35 * d else u(0.4, 1.0)
    az = u(0, 2 * math.pi)
    el = u(0.35, 1.0) if d > 0 else 1.0
    lz = el + (1 - el) * (1 - min(d, 1))
    lxy = math.sqrt(max(0.0, 1 - lz * lz))
    occ_p = 0.3 * d
    occ = 0 if occ_draw >= occ_p else 1 + min(2, int(3 * occ_draw / occ_p))
    grey = [u(60, 200) for _ in range(4)]
    bg = _clip255(np.array(grey).reshape(2, 2, 1) + np.array([u(-70, 70) for _ in range(12)]).reshape(2, 2, 3))
    return ImageParams(
        yaw=u(-18, 18) * d * math.pi / 180,
        pitch=u(-11, 11) * d * math.pi / 180,
        roll=u(-6, 6) * d * math.pi / 180,
        scale=1 + u(-0.05, 0.05) * d,
        shift=(u(-2.5, 2.5) * d, u(-2.5, 2.5) * d),
        eye_open=eye_open,
        gaze=(u(-1.2, 1.2), u(-0.6, 0.6)),
        mouth_open=mouth_open,
        smile=u(-0.8, 2.5),
        brow_raise=u(-1.5, 1.5),
        light=(lxy * math.cos(az), lxy * math.sin(az), lz),
        ambient=u(0.35, 0.6),
        diffuse=u(0.45, 0.8),
        tint=tuple(1 + u(-0.08, 0.08) * d for _ in range(3)),
        bg=bg,
        cloth_rgb=tuple(u(10, 240) for _ in range(3)),
        blur=u(0.0, 1.2) * d if blurry < 0.7 else 0.0,
        noise=u(0.5, 7.0) * d,
        contrast=1 + u(-0.15, 0.15) * d,
        brightness=u(-18, 18) * d,
        occlusion=occ,
        occ=np.array([u(0, 1) for _ in range(6)]),
        seed=int(r.integers(0, 2**31 - 1)),
    )


# -- geometry helpers ------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _unit_circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.cos(t), np.sin(t)


@functools.lru_cache(maxsize=None)
def _unit_arc(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 1.0, n)
    return t, t - 0.5, 1 - (2 * t - 1) ** 2


def _ellipse(cx: float, cy: float, a: float, b: float, n: int = 20, angle: float = 0.0) -> np.ndarray:
    c, s = _unit_circle(n)
    out = np.empty((n, 2))
    if angle:
        ca, sa = math.cos(angle), math.sin(angle)
        out[:, 0] = ca * a * c - sa * b * s + cx
        out[:, 1] = sa * a * c + ca * b * s + cy
    else:
        out[:, 0] = a * c + cx
        out[:, 1] = b * s + cy
    return out


def _arc(x0: float, x1: float, y0: float, bulge: float, n: int = 9, slope: float = 0.0) -> np.ndarray:
    """Points from x0 to x1 along a parabola bulging by ``bulge`` (negative = up)."""
    t, tc, bump = _unit_arc(n)
    out = np.empty((n, 2))
    out[:, 0] = x0 + (x1 - x0) * t
    out[:, 1] = y0 + slope * tc + bulge * bump
    return out


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

    @staticmethod
    def _plane_shapes(idp: IdentityParams, expr: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """All shapes in the face plane (relative to CENTER) plus per-shape extra depth.

        Geometry is linear in the 6 expression parameters ``expr`` = (eye openness, gaze x,
        gaze y, brow raise, smile, mouth openness); ``_basis`` relies on that.
        """
        eye_open, gaze_x, gaze_y, brow_raise, smile, mouth_open = (float(v) for v in expr)
        shapes: dict[str, np.ndarray] = {}
        depth: dict[str, float | np.ndarray] = {}
        a, b = idp.face_a, idp.face_b
        cy = idp.face_cy - CENTER[1]
        # face outline: super-ellipse, different exponents top/bottom, jaw taper toward chin
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        c, s = np.cos(t), np.sin(t)
        n = np.where(s > 0, idp.n_bot, idp.n_top)
        x = a * np.sign(c) * np.abs(c) ** (2 / n)
        y = b * np.sign(s) * np.abs(s) ** (2 / n)
        x = x * (1 - idp.jaw_taper * np.minimum(np.maximum(y / b, 0.0), 1.0) ** 2)
        shapes["face"] = np.column_stack([x, y + cy])
        depth["face"] = 0.0
        # ears
        for side in (-1, 1):
            shapes[f"ear{side}"] = _ellipse(side * (a - 1.0), idp.eye_y - CENTER[1] + 6 + idp.ear_y, idp.ear_size * 0.45, idp.ear_size, 14)
            depth[f"ear{side}"] = -8.0
        # neck and shoulders
        nw = a * 0.62
        shapes["neck"] = np.array([[-nw, cy + b * 0.5], [nw, cy + b * 0.5], [nw * 1.05, 70], [-nw * 1.05, 70]])
        depth["neck"] = -12.0
        shapes["cloth"] = np.array([[-80, 70], [-nw * 1.1, cy + b + 4], [nw * 1.1, cy + b + 4], [80, 70]])
        depth["cloth"] = -14.0
        # hair: back volume, and top with hairline
        v = idp.hair_volume
        if idp.hair_style > 0:
            top = _ellipse(0, cy - b * 0.15, a + v, b * 0.95 + v, 28)
            shapes["hair_back"] = top
            depth["hair_back"] = -15.0
            if idp.hair_style == 3:  # long
                shapes["hair_long"] = np.array([[-a - v - 2, cy - b * 0.2], [a + v + 2, cy - b * 0.2], [a + v + 6, cy + b * 0.95], [-a - v - 6, cy + b * 0.95]])
                depth["hair_long"] = -16.0
            hl_y = cy - b * idp.hairline - 4
            temple_y = idp.eye_y - CENTER[1] - 10 + (6 if idp.hair_style in (1, 4) else 0)
            xs = np.linspace(a + v, -a - v, 17)
            p = 2.2 + 2 * abs(idp.hair_part)
            yy = hl_y + (temple_y - hl_y) * np.abs(xs / (a + v)) ** p
            if idp.hair_style == 2:  # fringe
                brow_top = idp.eye_y - CENTER[1] - idp.brow_gap - idp.brow_thick - 2.5
                yy = np.minimum(yy + 10 + 1.5 * np.cos(xs * 0.9), brow_top)
            if idp.hair_style == 4:  # side part: asymmetric swoop
                yy = yy + 6 * idp.hair_part * (xs / (a + v))
            upper = _ellipse(0, cy - b * 0.15, a + v, b * 0.95 + v, 40)
            upper = upper[upper[:, 1] <= yy.max()]
            # order left -> over the top -> right (angle from "up", no wrap-around at the sides)
            upper = upper[np.argsort(np.arctan2(upper[:, 0], (cy - b * 0.15) - upper[:, 1]))]
            shapes["hair_top"] = np.vstack([np.column_stack([xs, yy]), upper]) if len(upper) else np.column_stack([xs, yy])
            depth["hair_top"] = 2.0
        # eyes
        ey = idp.eye_y - CENTER[1]
        eh = idp.eye_h * eye_open
        for side, k in ((-1, "R"), (1, "L")):
            ex = side * idp.eye_dx + 0.0
            tilt = -side * idp.eye_tilt
            up = _arc(ex - idp.eye_w / 2, ex + idp.eye_w / 2, ey, -eh, 9, slope=tilt * idp.eye_w)
            lo = _arc(ex + idp.eye_w / 2, ex - idp.eye_w / 2, ey, eh * 0.6, 9, slope=-tilt * idp.eye_w)
            shapes[f"eye{k}"] = np.vstack([up, lo])
            depth[f"eye{k}"] = -1.5
            shapes[f"iris{k}"] = _ellipse(ex + gaze_x, ey + gaze_y, idp.iris_r, idp.iris_r, 14)
            depth[f"iris{k}"] = -1.0
            shapes[f"pupil{k}"] = _ellipse(ex + gaze_x, ey + gaze_y, idp.iris_r * 0.42, idp.iris_r * 0.42, 10)
            depth[f"pupil{k}"] = -0.8
            box_t = ey - idp.iris_r - 2.5
            box_b = ey + idp.iris_r + 2.5
            shapes[f"lidU{k}"] = np.vstack([up, [[ex + idp.eye_w / 2 + 0.5, box_t], [ex - idp.eye_w / 2 - 0.5, box_t]]])
            depth[f"lidU{k}"] = -1.5
            shapes[f"lidL{k}"] = np.vstack([lo, [[ex - idp.eye_w / 2 - 0.5, box_b], [ex + idp.eye_w / 2 + 0.5, box_b]]])
            depth[f"lidL{k}"] = -1.5
            # brow: thick arc, inner end near the nose
            by = ey - idp.brow_gap - brow_raise
            inner, outer = ex - side * idp.brow_len * 0.35, ex + side * idp.brow_len * 0.65
            top = _arc(inner, outer, by - idp.brow_thick / 2, -idp.brow_arch, 9, slope=side * idp.brow_slope)
            bot = _arc(outer, inner, by + idp.brow_thick / 2, -idp.brow_arch * 0.8, 9, slope=-side * idp.brow_slope)
            shapes[f"brow{k}"] = np.vstack([top, bot])
            depth[f"brow{k}"] = 0.5
        # nose
        ny = idp.nose_y - CENTER[1]
        nx = idp.nose_x
        shapes["nose_bridge"] = np.array([[nx - 1.2, ny - idp.nose_len], [nx + 1.2, ny - idp.nose_len], [nx + idp.nose_w * 0.35, ny + 1], [nx - idp.nose_w * 0.35, ny + 1]])
        depth["nose_bridge"] = np.array([4.0, 4.0, 12.0, 12.0])
        for side in (-1, 1):
            shapes[f"nostril{side}"] = _ellipse(nx + side * idp.nose_w * 0.28, ny + 2.2, idp.nose_w * 0.14, idp.nose_w * 0.08 + 0.5, 10)
            depth[f"nostril{side}"] = 8.0
        shapes["nose_tip"] = _ellipse(nx, ny, idp.nose_w * 0.3, 2.2, 12)
        depth["nose_tip"] = 13.0
        # mouth
        my = idp.mouth_y - CENTER[1]
        hw = idp.mouth_hw
        sm = smile
        op = mouth_open * (idp.lip_lo + 2.5)
        upper_top = _arc(-hw, hw, my - sm, -idp.lip_up, 11)
        upper_top[:, 1] += 0.9 * np.exp(-((upper_top[:, 0] / 2.5) ** 2))  # cupid's bow dip
        mid_u = _arc(hw, -hw, my - sm, sm * 0.8, 11)
        mid_l = _arc(-hw, hw, my - sm, sm * 0.8 + op, 11)
        lower_bot = _arc(hw, -hw, my - sm, sm * 0.8 + op + idp.lip_lo, 11)
        shapes["lip_up"] = np.vstack([upper_top, mid_u])
        shapes["lip_lo"] = np.vstack([mid_l, lower_bot])
        shapes["mouth_in"] = np.vstack([mid_u[::-1], mid_l[::-1]])
        for k in ("lip_up", "lip_lo", "mouth_in"):
            depth[k] = 1.0
        # facial hair
        if idp.facial_hair in (1, 3):  # moustache
            shapes["moustache"] = np.vstack([_arc(-hw - 1, hw + 1, my - sm - idp.lip_up - 0.5, -2.0, 9), _arc(hw + 1, -hw - 1, ny + 5, 0.0, 9)])
            depth["moustache"] = 2.0
        if idp.facial_hair in (2, 3):  # beard along the jaw
            f = shapes["face"]
            jaw = f[(f[:, 1] > my - 6 - cy * 0)]
            jaw = jaw[np.argsort(np.arctan2(jaw[:, 1] - cy, jaw[:, 0]))]
            inner = _arc(-hw - 2, hw + 2, my + idp.lip_lo + 3, 3.0, 9)
            shapes["beard"] = np.vstack([jaw, inner])
            depth["beard"] = 0.0
        # freckles and moles
        if len(idp.freckles):
            shapes["freckles"] = np.column_stack([idp.freckles[:, 0], ny - 6 + idp.freckles[:, 1] * 0.5])
            depth["freckles"] = 0.0
        if len(idp.moles):
            shapes["moles"] = idp.moles[:, :2].copy()
            depth["moles"] = 0.0
        # landmarks
        shapes["lm"] = np.array([[-idp.eye_dx, ey], [idp.eye_dx, ey], [nx, ny], [-hw * 0.92, my - sm], [hw * 0.92, my - sm]])
        depth["lm"] = np.array([-1.5, -1.5, 13.0, 1.0, 1.0])

        return shapes, depth

    def _basis(self, idp: IdentityParams) -> tuple[list[str], list[int], np.ndarray, np.ndarray, np.ndarray]:
        """Per-identity linear basis: points = P0 + sum_k expr_k * dP_k (cached per identity)."""
        hit = self._basis_cache.get(idp.index)
        if hit is not None and hit[0] is idp:
            return hit[1]
        shapes, depth = self._plane_shapes(idp, np.zeros(6))
        keys = list(shapes)
        sizes = [len(shapes[k]) for k in keys]
        p0 = np.vstack([shapes[k] for k in keys])
        deltas = np.empty((6,) + p0.shape)
        for k in range(6):
            e = np.zeros(6)
            e[k] = 1.0
            sk, _ = self._plane_shapes(idp, e)
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
        _clip255(out, out=out)
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
                polys.append((_ellipse(c[0], c[1] + 0.5, w, w * 0.72, 18), dark))
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


def identity_name(index: int) -> str:
    """Folder name of synthetic identity ``index`` (sortable, so labels equal indices)."""
    return f"synth_{index:06d}"


class SyntheticFaces(Dataset):
    """Synthetic identities as a torch Dataset: item ``k`` is image ``k % K`` of identity
    ``first_identity + k // K`` with label ``k // K``.

    Images are rendered on demand (deterministic, worker-safe); ``cache=True`` keeps
    rendered uint8 images in memory for repeated epochs.
    """

    def __init__(
        self,
        n_identities: int,
        images_per_identity: int,
        seed: int = 0,
        *,
        image_size: int = 112,
        first_identity: int = 0,
        first_image: int = 0,
        difficulty: float = 1.0,
        dtype: str = "float",
        cache: bool = False,
    ) -> None:
        if n_identities <= 0 or images_per_identity <= 0:
            raise ValueError("n_identities and images_per_identity must be positive")
        if dtype not in ("float", "uint8"):
            raise ValueError(f"dtype must be 'float' or 'uint8', got {dtype!r}")
        self.n_identities = int(n_identities)
        self.images_per_identity = int(images_per_identity)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.first_identity = int(first_identity)
        self.first_image = int(first_image)
        self.difficulty = float(difficulty)
        self.dtype = dtype
        self.renderer = FaceRenderer(image_size)
        self._ids: dict[int, IdentityParams] = {}
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    @property
    def num_classes(self) -> int:
        return self.n_identities

    @property
    def class_names(self) -> list[str]:
        return [identity_name(self.first_identity + i) for i in range(self.n_identities)]

    @property
    def targets(self) -> list[int]:
        return [k // self.images_per_identity for k in range(len(self))]

    def __len__(self) -> int:
        return self.n_identities * self.images_per_identity

    def identity(self, label: int) -> IdentityParams:
        idx = self.first_identity + label
        p = self._ids.get(idx)
        if p is None:
            p = self._ids[idx] = identity_params(self.seed, idx)
        return p

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8 RGB, landmarks)`` of item ``index``."""
        label, j = divmod(int(index), self.images_per_identity)
        idp = self.identity(label)
        imp = image_params(self.seed, idp.index, self.first_image + j, self.difficulty)
        return self.renderer.render(idp, imp)

    def describe(self, index: int) -> str:
        """Stable name of item ``index`` (e.g. for caches keyed by sample)."""
        label, j = divmod(int(index), self.images_per_identity)
        return f"synthetic/seed{self.seed}/d{self.difficulty:g}/{self.image_size}/{identity_name(self.first_identity + label)}/{self.first_image + j}"

    def rgb(self, index: int) -> np.ndarray:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        img = self.render(index)[0]
        if self._cache is not None:
            self._cache[index] = img
        return img

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return to_tensor(self.rgb(index), self.dtype), index // self.images_per_identity

    def as_array(self) -> np.ndarray:
        """All images as ``N x H x W x 3`` uint8 (small sets only)."""
        return np.stack([self.rgb(i) for i in range(len(self))])


def write_folder(
    out: str | os.PathLike[str],
    n_identities: int,
    images_per_identity: int,
    seed: int = 0,
    *,
    image_size: int = 112,
    first_identity: int = 0,
    difficulty: float = 1.0,
    ext: str = "jpg",
    quality: int = 95,
    landmarks: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``out/<synth_NNNNNN>/<synth_NNNNNN>_%04d.<ext>`` (LFW naming, 1-based), so
    ``pairs.txt`` tools work on it. Returns a summary (counts, seconds, images/s)."""
    import json
    import time

    from tqdm import tqdm

    ds = SyntheticFaces(n_identities, images_per_identity, seed, image_size=image_size, first_identity=first_identity, difficulty=difficulty)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    lms: dict[str, list[list[float]]] = {}
    t0 = time.perf_counter()
    for k in tqdm(range(len(ds)), desc="synth", unit="img", disable=not progress):
        label, j = divmod(k, images_per_identity)
        name = identity_name(first_identity + label)
        rel = f"{name}/{name}_{j + 1:04d}.{ext.lstrip('.')}"
        img, lm = ds.render(k)
        write_image(root / rel, img, quality)
        if landmarks:
            lms[rel] = lm.round(2).tolist()
    secs = time.perf_counter() - t0
    summary = {
        "out": str(root),
        "identities": n_identities,
        "images_per_identity": images_per_identity,
        "images": len(ds),
        "seed": seed,
        "image_size": image_size,
        "difficulty": difficulty,
        "seconds": round(secs, 3),
        "images_per_second": round(len(ds) / secs, 1) if secs > 0 else None,
    }
    if landmarks:
        (root / "landmarks.json").write_text(json.dumps(lms))
    return summary


def render_unaligned(
    seed: int, identity: int, image: int, canvas: int = 250, face_scale: float = 1.0, difficulty: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic "photo": the face placed at a random position, size and angle in a
    larger canvas, with its true landmarks. For testing detection + alignment pipelines."""
    img, lm = render_face(seed, identity, image, 112, difficulty)
    r = _rng(_IMG_TAG + 1, seed, identity, image)
    ang = r.uniform(-25, 25)
    sc = face_scale * r.uniform(0.9, 1.6) * canvas / 250
    cx, cy = r.uniform(0.35, 0.65, 2) * canvas
    m = cv2.getRotationMatrix2D((56.0, 60.0), ang, sc)
    m[:, 2] += np.array([cx, cy]) - np.array([56.0, 60.0])
    photo = cv2.warpAffine(img, m, (canvas, canvas), borderMode=cv2.BORDER_REFLECT_101)
    return photo, apply_affine(m, lm)
