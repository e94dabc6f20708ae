"""Synthetic identities and per-image nuisance as parameters (no pixels).

Why separate from the renderer: what makes a face *someone* (and what varies between two
photos of them) is the determinism contract of the synthetic data: identity ``i`` depends
only on ``(seed, i)``, image ``j`` of it only on ``(seed, i, j)``, drawn from NumPy
``SeedSequence`` keys so any image can be sampled alone, in any order, in any worker.
The renderer (``render.py``) turns these parameters into pixels; the dataset
(``dataset.py``) names and indexes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..align import ARCFACE_TEMPLATE

IDENTITY_TAG = 0x1D3A7
IMAGE_TAG = 0x13A6E

# palettes (RGB)
_SKIN = np.array([[247, 214, 190], [232, 190, 160], [214, 166, 130], [190, 140, 105], [150, 100, 70], [105, 68, 48], [75, 50, 38]], float)
_HAIR = np.array([[20, 17, 16], [52, 36, 28], [92, 62, 40], [150, 110, 70], [205, 170, 110], [150, 60, 30], [160, 155, 150], [225, 220, 210]], float)
_HAIR_P = np.array([0.24, 0.24, 0.16, 0.1, 0.09, 0.06, 0.07, 0.04])
_IRIS = np.array([[60, 38, 25], [100, 65, 35], [70, 110, 150], [80, 120, 85], [110, 110, 100], [40, 30, 25]], float)


def clip255(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Clip to [0, 255] (``np.clip`` has ~50 us fixed overhead in NumPy 2; this does not)."""
    x = np.maximum(x, 0.0, out=out)
    return np.minimum(x, 255.0, out=x)


def keyed_rng(*keys: int) -> np.random.Generator:
    """A generator that depends only on ``keys`` (a tag, the seed, indices): what makes any
    identity or image reproducible alone, in any order and any worker."""
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
    r = keyed_rng(IDENTITY_TAG, seed, index)
    u = r.uniform
    tpl = ARCFACE_TEMPLATE
    skin_t = u(0, len(_SKIN) - 1)
    k = int(skin_t)
    skin = _SKIN[k] + (_SKIN[min(k + 1, len(_SKIN) - 1)] - _SKIN[k]) * (skin_t - k)
    skin = clip255(skin * u(0.95, 1.05, 3) + u(-6, 6))
    old = r.random() < 0.12
    hair = _HAIR[r.choice(len(_HAIR), p=_HAIR_P)] if not old else _HAIR[6 + r.integers(2)]
    hair = clip255(hair * u(0.85, 1.15) + u(-8, 8, 3))
    iris = clip255(_IRIS[r.integers(len(_IRIS))] * u(0.8, 1.2, 3))
    lip = clip255(skin * np.array([0.92, 0.62, 0.62]) * u(0.8, 1.05) + np.array([25, 0, 5]))
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
    r = keyed_rng(IMAGE_TAG, seed, index, image)
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
    bg = clip255(np.array(grey).reshape(2, 2, 1) + np.array([u(-70, 70) for _ in range(12)]).reshape(2, 2, 3))
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


def identity_name(index: int) -> str:
    """Folder name of synthetic identity ``index`` (sortable, so labels equal indices)."""
    return f"synth_{index:06d}"
