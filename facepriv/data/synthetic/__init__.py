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

Layout: ``identity.py`` (identity and image parameters: the determinism contract),
``shapes.py`` (the face drawn in its own plane), ``render.py`` (pose, rasterise, light,
occlude, noise), ``dataset.py`` (``SyntheticFaces`` and ``write_folder``).
"""

from __future__ import annotations

from .dataset import SyntheticFaces, write_folder
from .identity import IdentityParams, ImageParams, identity_name, identity_params, image_params
from .render import FaceRenderer, render_face, render_unaligned, similarity_2d
from .shapes import CENTER

__all__ = [
    "CENTER",
    "FaceRenderer",
    "IdentityParams",
    "ImageParams",
    "SyntheticFaces",
    "identity_name",
    "identity_params",
    "image_params",
    "render_face",
    "render_unaligned",
    "similarity_2d",
    "write_folder",
]
