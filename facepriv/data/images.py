"""Image decoding, integrity checks and tensor conversion shared by every reader.

One decode path for folders, RecordIO records, ``.bin`` verification sets and pairs.txt
folders means one convention everywhere: images come out as ``H x W x 3`` uint8 **RGB**
(OpenCV decodes BGR; forgetting the swap silently costs a recognition model several
points of accuracy) and tensors as ``3 x H x W`` float in [0, 1], the frontend contract.

OpenCV happily "decodes" a truncated JPEG (it pads the missing rows with grey and prints a
warning), so ``decode_image`` checks the container's end marker itself: a half-written
file must be reported, not trained on.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch

from .errors import ImageDecodeError

#: File extensions treated as images by folder readers (lower case, with dot).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_JPEG_SOS = b"\xff\xda"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True for names with a supported image extension (case-insensitive)."""
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def check_container(data: bytes, source: str) -> None:
    """Raise ``ImageDecodeError`` for truncated JPEG/PNG byte strings.

    Why: libjpeg recovers from a missing tail by filling grey, so ``cv2.imdecode`` returns an
    image for a half-downloaded file. A JPEG is complete when an end-of-image marker follows
    the last start-of-scan (0xFFD9 cannot occur inside entropy-coded data because of byte
    stuffing); a PNG is complete when it has its IEND chunk.
    """
    if len(data) == 0:
        raise ImageDecodeError(source, "empty file")
    if data[:2] == _JPEG_SOI:
        last_sos = data.rfind(_JPEG_SOS)
        last_eoi = data.rfind(_JPEG_EOI)
        if last_sos < 0:
            raise ImageDecodeError(source, "truncated JPEG (no start-of-scan marker)")
        if last_eoi < last_sos:
            raise ImageDecodeError(source, "truncated JPEG (no end-of-image marker after the last scan)")
    elif data[:8] == _PNG_SIG:
        if data.rfind(b"IEND") < 0:
            raise ImageDecodeError(source, "truncated PNG (no IEND chunk)")


def decode_image(data: bytes | bytearray | memoryview | np.ndarray, source: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to an ``H x W x 3`` uint8 RGB array.

    Grey and 16-bit images are converted to 8-bit 3-channel; alpha is dropped. Raises
    ``ImageDecodeError`` naming ``source`` when the bytes are empty, truncated or not an
    image OpenCV can read.
    """
    if isinstance(data, np.ndarray):
        # Some .bin files store each image as a uint8 array of encoded bytes.
        raw_bytes = np.ascontiguousarray(data).reshape(-1).view(np.uint8).tobytes()
    else:
        raw_bytes = bytes(data)
    check_container(raw_bytes, source)
    buf = np.frombuffer(raw_bytes, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:  # pragma: no cover - OpenCV raises only for exotic inputs
        raise ImageDecodeError(source, f"OpenCV could not decode the image ({exc})") from exc
    if img is None:
        raise ImageDecodeError(source, "not a decodable image (unknown format or corrupt data)")
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageDecodeError(source, f"unexpected decoded shape {img.shape}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read and decode an image file to uint8 RGB, raising ``ImageDecodeError`` naming it.

    Reads bytes with Python I/O (not ``cv2.imread``) so unreadable files, permission
    problems and non-ASCII paths give a precise reason instead of a silent ``None``.
    """
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(source, f"cannot read file ({exc.strerror or exc})") from exc
    return decode_image(data, source)


def encode_image(rgb: np.ndarray, ext: str = ".jpg", quality: int = 95) -> bytes:
    """Encode an ``H x W x 3`` uint8 RGB array (JPEG quality / PNG lossless)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"encode_image expects H x W x 3 uint8 RGB, got {rgb.dtype} {rgb.shape}")
    ext = ext if ext.startswith(".") else "." + ext
    params: list[int] = []
    if ext.lower() in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif ext.lower() == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode an image as {ext}")
    return buf.tobytes()


def write_image(path: str | os.PathLike[str], rgb: np.ndarray, quality: int = 95) -> None:
    """Write an RGB uint8 image; the format follows the extension. Creates parent folders."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(encode_image(rgb, p.suffix or ".png", quality))


#: relative change of the aspect ratio above which a resize counts as stretching the face
STRETCH_TOLERANCE = 0.01


def stretches(shape: tuple[int, ...], size: tuple[int, int] | None) -> bool:
    """True when resizing an image of ``shape`` (h, w, ...) to ``size`` changes its aspect ratio.

    Why it matters: ``resize_to`` scales height and width independently, so a 200x150 photo
    becomes a 112x112 face squeezed by a third: not the aligned face a recogniser expects.
    Readers count such images and warn instead of doing it silently. Ratios within
    ``STRETCH_TOLERANCE`` (a pixel of rounding) do not count.
    """
    if size is None:
        return False
    h, w = int(shape[0]), int(shape[1])
    th, tw = int(size[0]), int(size[1])
    if (h, w) == (th, tw) or h <= 0 or w <= 0:
        return False
    return abs((h * tw) / (w * th) - 1.0) > STRETCH_TOLERANCE


def resize_to(rgb: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize to ``(height, width)`` when it differs (area filter when shrinking).

    Height and width are scaled independently (see ``stretches``); callers that accept
    arbitrary files count or refuse aspect-ratio changes.
    """
    if size is None:
        return rgb
    h, w = int(size[0]), int(size[1])
    if rgb.shape[0] == h and rgb.shape[1] == w:
        return rgb
    interp = cv2.INTER_AREA if (rgb.shape[0] > h and rgb.shape[1] > w) else cv2.INTER_LINEAR
    return cv2.resize(rgb, (w, h), interpolation=interp)


def to_tensor(rgb: np.ndarray, dtype: str = "float") -> torch.Tensor:
    """``H x W x 3`` uint8 RGB -> ``3 x H x W`` tensor: float32 in [0, 1] or uint8.

    uint8 output keeps a decoded dataset in a quarter of the memory; convert a batch with
    ``x.float() / 255`` right before the frontend.
    """
    chw = rgb.transpose(2, 0, 1)
    if dtype == "uint8":
        return torch.from_numpy(np.ascontiguousarray(chw))
    if dtype != "float":
        raise ValueError(f"dtype must be 'float' or 'uint8', got {dtype!r}")
    # numpy, not torch ops: per-sample torch kernels pay intra-op thread start-up costs
    # (milliseconds on a busy machine) for a 37k-element image.
    out = np.empty(chw.shape, dtype=np.float32)
    np.divide(chw, np.float32(255.0), out=out, dtype=np.float32)  # bitwise equal to x.float() / 255
    return torch.from_numpy(out)


def image_size_arg(size: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """Normalise an ``image_size`` argument (int -> square) and check it."""
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or int(size[0]) <= 0 or int(size[1]) <= 0:
        raise ValueError(f"image_size must be a positive int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])
