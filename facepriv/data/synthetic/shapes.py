"""The face as 2-D shapes in its own plane: outline, ears, hair, eyes, brows, nose, mouth,
facial hair, freckles, moles and the 5 landmarks, for one identity and expression.

Why its own module: this is the drawing of a face (what the features look like and where
they sit), independent of pose, lighting and rasterisation, which ``render.py`` applies.
Its geometry is linear in the expression parameters, so the renderer can cache a
per-identity basis and pose any expression with a few array additions.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from .identity import IdentityParams

#: canonical face centre in 112-pixel coordinates; all shapes are built relative to it.
CENTER = np.array([56.0, 60.0])


@functools.lru_cache(maxsize=None)
def _unit_circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.cos(t), np.sin(t)


@functools.lru_cache(maxsize=None)
def _unit_arc(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 1.0, n)
    return t, t - 0.5, 1 - (2 * t - 1) ** 2


def ellipse(cx: float, cy: float, a: float, b: float, n: int = 20, angle: float = 0.0) -> np.ndarray:
    """``n`` points on the ellipse with centre ``(cx, cy)``, semi-axes ``a``, ``b``, rotated by ``angle``."""
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


def plane_shapes(idp: IdentityParams, expr: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """All shapes in the face plane (relative to CENTER) plus per-shape extra depth.

    Geometry is linear in the 6 expression parameters ``expr`` = (eye openness, gaze x,
    gaze y, brow raise, smile, mouth openness); ``FaceRenderer._basis`` relies on that.
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
        shapes[f"ear{side}"] = ellipse(side * (a - 1.0), idp.eye_y - CENTER[1] + 6 + idp.ear_y, idp.ear_size * 0.45, idp.ear_size, 14)
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
        top = ellipse(0, cy - b * 0.15, a + v, b * 0.95 + v, 28)
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
        upper = ellipse(0, cy - b * 0.15, a + v, b * 0.95 + v, 40)
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
        shapes[f"iris{k}"] = ellipse(ex + gaze_x, ey + gaze_y, idp.iris_r, idp.iris_r, 14)
        depth[f"iris{k}"] = -1.0
        shapes[f"pupil{k}"] = ellipse(ex + gaze_x, ey + gaze_y, idp.iris_r * 0.42, idp.iris_r * 0.42, 10)
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
        shapes[f"nostril{side}"] = ellipse(nx + side * idp.nose_w * 0.28, ny + 2.2, idp.nose_w * 0.14, idp.nose_w * 0.08 + 0.5, 10)
        depth[f"nostril{side}"] = 8.0
    shapes["nose_tip"] = ellipse(nx, ny, idp.nose_w * 0.3, 2.2, 12)
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
