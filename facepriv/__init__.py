"""facepriv: privacy-preserving face recognition.

The core package holds what runs on both sides of the privacy boundary: the image
frontends (the only code that ever sees raw pixels), the recognition models, the data
readers and privacy accounting. It imports with torch, numpy, scipy and opencv only;
federated (flwr), DP-SGD (opacus) and alignment (insightface) support live behind extras.

The public names below are re-exported lazily so that `import facepriv` (and the CLI's
`--help`) stay fast and a subpackage can be used without importing all the others::

    import facepriv
    rec = facepriv.load("runs/pf/model.pt")
    protected = rec.protect(faces)          # client: the only step that sees pixels
    emb = rec.embed(protected)              # server: protected tensors only
    same = rec.verify(emb[:1], emb[1:2])    # cosine similarity
"""

from __future__ import annotations

from facepriv.lazy import lazy_exports

__version__ = "0.1.0"

#: The top-level API, and only it (``dir(facepriv)``): the deployed path (``load`` ->
#: ``Recognizer.protect`` / ``.embed`` / ``.verify``) and the three jobs the CLI runs.
#: Frontends, models, data and the rest stay importable as subpackages
#: (``from facepriv.frontends import PartialFace``).
_EXPORTS = {
    "load": "facepriv.api",
    "Recognizer": "facepriv.api",
    "train": "facepriv.training.cli",
    "evaluate": "facepriv.eval.api",
    "attack": "facepriv.eval.api",
}

__all__ = ["__version__", *_EXPORTS]

__getattr__, _lazy_dir = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    """Only the public API (subpackages, once imported, are attributes too, but not the API)."""
    return sorted(__all__)
