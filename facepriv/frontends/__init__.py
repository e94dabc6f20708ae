"""Privacy frontends: aligned RGB face in, protected frequency tensor out.

``block_dct`` / ``block_idct`` are the one DCT implementation in facepriv; ``PartialFace``
and ``DCTDP`` protect it; ``RGBFrontend`` and ``DCTFrontend`` are the unprotected baselines.
"""

from facepriv.frontends.base import Frontend, validate_images
from facepriv.frontends.baselines import DCTFrontend, RGBFrontend
from facepriv.frontends.dct import (
    FULL_CHANNELS,
    block_dct,
    block_dct_select,
    block_idct,
    channel_index,
    reference_block_dct,
)
from facepriv.frontends.dp import AC_CHANNELS, AC_INDEX, DCTDP, analytic_ac_bounds
from facepriv.frontends.minusface import MinusFace
from facepriv.frontends.partial import PartialFace, default_pruned
from facepriv.frontends.registry import FRONTENDS, build_frontend

__all__ = [
    "Frontend", "validate_images", "RGBFrontend", "DCTFrontend", "PartialFace", "DCTDP", "MinusFace",
    "block_dct", "block_dct_select", "block_idct", "reference_block_dct", "channel_index",
    "FULL_CHANNELS", "AC_CHANNELS", "AC_INDEX", "analytic_ac_bounds", "default_pruned",
    "FRONTENDS", "build_frontend",
]
