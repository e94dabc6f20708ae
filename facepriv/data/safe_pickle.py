"""A pickle loader that only rebuilds plain data, for third-party ``.bin`` verification files.

``pickle.load`` on a downloaded file runs whatever callables the file names
(``os.system`` is one opcode away). insightface's ``.bin`` files only hold
``(list of encoded images, list of bools)``: bytes/str/list/tuple/bool/int/float are
built by pickle opcodes without any global lookup, so the only globals a legitimate file
needs are the ones numpy uses to rebuild arrays (some converters store each image as a
uint8 array from ``cv2.imencode`` and ``issame`` as a bool array) and ``_codecs.encode``,
which Python 3 uses to write ``bytes`` in protocol 0-2. Every other global is refused
before it is called.

Refusing globals is not enough for a file from the internet: CPython's unpickler allocates
what a length prefix *claims* before it reads the bytes (``BINBYTES8`` of 2.3 GB in a
169-byte file allocates 2.3 GB) and grows its memo to twice the largest ``PUT`` index. So
``safe_loads`` first walks the opcodes without building anything (``pickletools.genops``
reads each argument from an in-memory buffer, so a length beyond the end fails instead of
allocating) and refuses lengths and memo indices the file cannot honestly contain. Memory
is then bounded by a small multiple of the file size.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import pickletools
from typing import Any

from .errors import UnsafePickleError

# numpy 1.x and 2.x spell the array-reconstruction module differently.
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` limited to the text codecs pickle itself emits."""
    if codecs.lookup(encoding).name not in ("latin-1", "iso8859-1", "utf-8", "ascii"):
        raise UnsafePickleError(f"pickle asked for codec {encoding!r}, which plain data never needs")
    if not isinstance(obj, str):
        raise UnsafePickleError(f"pickle asked to encode a {type(obj).__name__}, expected str")
    return codecs.encode(obj, encoding, errors)


def _allowed(module: str, name: str) -> Any:
    import numpy as np

    if module == "_codecs" and name == "encode":
        return _latin1_encode
    if module in _NUMPY_MODULES and name == "_reconstruct":
        return np.ndarray(0).__reduce__()[0]  # numpy's own _reconstruct, whatever its module
    if module in _NUMPY_MODULES and name == "scalar":
        return _numpy_scalar
    if module == "numpy" and name == "ndarray":
        return np.ndarray
    if module == "numpy" and name == "dtype":
        return np.dtype
    if module in ("builtins", "__builtin__") and name in ("bytearray", "set", "frozenset"):
        return {"bytearray": bytearray, "set": set, "frozenset": frozenset}[name]
    return None


def _numpy_scalar(dtype: Any, data: bytes = b"") -> Any:
    """``numpy.core.multiarray.scalar`` for plain (non-object) dtypes only."""
    import numpy as np

    dt = np.dtype(dtype)
    if dt.hasobject:
        raise UnsafePickleError("pickle asked for a numpy object scalar")
    if isinstance(data, str):  # Python 2 pickles loaded with encoding='latin1'
        data = data.encode("latin-1")
    return np.frombuffer(data, dtype=dt, count=1)[0]


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that refuses every global except plain-data constructors."""

    def __init__(self, file: io.BufferedIOBase, source: str, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed(module, name)
        if obj is None:
            raise UnsafePickleError(
                f"{self.source}: refusing to load: the pickle references {module}.{name}, which a plain data "
                "file never contains (loading it could run code). Only bytes, lists, tuples, bools and numpy "
                "arrays are allowed."
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refusing persistent id {pid!r} in pickle")


def _check_arrays(obj: Any, source: str, depth: int = 0) -> None:
    """Reject numpy object arrays anywhere in the loaded structure (they can hide objects)."""
    import numpy as np

    if depth > 4:
        return
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise UnsafePickleError(f"{source}: numpy object arrays are not allowed in data pickles")
    if isinstance(obj, (list, tuple)) and depth < 2:
        for item in obj[:4] if len(obj) > 4096 else obj:
            _check_arrays(item, source, depth + 1)


#: opcodes that store into the memo at an explicit index (the unpickler sizes its memo by it)
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def check_bounds(data: bytes, source: str = "<bytes>") -> int:
    """Refuse a pickle whose length prefixes or memo indices exceed what ``data`` holds.

    Why: the C unpickler allocates a ``BINBYTES``/``BINBYTES8``/``BYTEARRAY8`` object of the
    claimed size before reading it, and resizes its memo to ``2 x index`` on a ``PUT``, so a
    few bytes can demand gigabytes. ``pickletools.genops`` reads every argument from the
    buffer (a short read is an error, not an allocation); a memo index larger than the number
    of opcodes so far is never written by a pickler. Returns the number of opcodes.
    """
    buf = io.BytesIO(data)
    n_ops = 0
    try:
        for op, arg, pos in pickletools.genops(buf):
            n_ops += 1
            if op.name in _MEMO_PUTS and int(arg) > n_ops:
                raise UnsafePickleError(
                    f"{source}: corrupt pickle: {op.name} at byte {pos} uses memo index {arg}, but the file has only "
                    f"{n_ops} opcodes so far (a pickler numbers memo entries 0, 1, 2, ...)"
                )
            if op.name == "FRAME" and int(arg) > len(data) - buf.tell():
                raise UnsafePickleError(
                    f"{source}: corrupt pickle: FRAME at byte {pos} claims {arg} bytes, but only "
                    f"{len(data) - buf.tell()} follow in the {len(data)}-byte file"
                )
    except ValueError as exc:  # genops: an argument longer than the bytes left, or an unknown opcode
        if isinstance(exc, UnsafePickleError):
            raise
        raise UnsafePickleError(
            f"{source}: corrupt or truncated pickle ({exc}; the file has {len(data)} bytes)"
        ) from None
    return n_ops


def safe_loads(data: bytes, source: str = "<bytes>", encoding: str = "ASCII") -> Any:
    """Unpickle plain data from bytes; raises ``UnsafePickleError`` naming ``source``.

    The opcodes are bounds-checked first (:func:`check_bounds`), so memory stays proportional
    to ``len(data)`` whatever the file claims.
    """
    check_bounds(data, source)
    try:
        obj = SafeUnpickler(io.BytesIO(data), source, encoding=encoding).load()
    except UnsafePickleError:
        raise
    except UnicodeDecodeError:
        raise
    except Exception as exc:
        raise UnsafePickleError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
    _check_arrays(obj, source)
    return obj


def safe_load(path: str | os.PathLike[str]) -> Any:
    """Unpickle a plain-data file like insightface's ``load_bin`` does.

    Tries the default (ASCII) decoding first and falls back to ``encoding='bytes'`` for
    Python 2 pickles whose ``str`` objects are binary image data.
    """
    source = str(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        return safe_loads(data, source)
    except UnicodeDecodeError:
        return safe_loads(data, source, encoding="bytes")
