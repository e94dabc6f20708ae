"""facepriv: privacy-preserving face recognition.

The core package holds what runs on both sides of the privacy boundary: the image
frontends (the only code that ever sees raw pixels), the recognition models, the data
readers and privacy accounting. It imports with torch, numpy, scipy and opencv only;
federated (flwr), DP-SGD (opacus) and alignment (insightface) support live behind extras.

The public names below are re-exported lazily so that `import facepriv` (and the CLI's
`--help`) stay fast and a subpackage can be used without importing all the others.
"""

from __future__ import annotations

from facepriv.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "Frontend": "facepriv.frontends",
    "RGBFrontend": "facepriv.frontends",
    "DCTFrontend": "facepriv.frontends",
    "PartialFace": "facepriv.frontends",
    "DCTDP": "facepriv.frontends",
    "block_dct": "facepriv.frontends",
    "block_idct": "facepriv.frontends",
    "build_frontend": "facepriv.frontends",
    "FaceRecognizer": "facepriv.models",
    "build_backbone": "facepriv.models",
}

__all__ = ["__version__", *_EXPORTS]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
