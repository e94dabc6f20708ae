"""insightface / MXNet RecordIO (``train.rec`` + ``train.idx``) without mxnet.

Format (dmlc-core ``recordio`` as used by ``mx.recordio.MXIndexedRecordIO``):

* ``.idx`` is text, one ``key<TAB>byte offset`` line per record.
* A record in ``.rec`` is one or more *frames*: ``uint32 magic 0xced7230a``, ``uint32
  lrec`` (upper 3 bits: continuation flag ``cflag``, lower 29 bits: payload length), the
  payload, then zero padding to a multiple of 4 bytes. The writer splits a payload wherever
  the magic number occurs at a 4-byte-aligned position inside it (so a reader that lost its
  place can resynchronise on the magic): the magic is removed, the pieces are written as
  frames with ``cflag`` 1 (first), 2 (middle), 3 (last), and the reader re-inserts the
  magic between pieces. ``cflag`` 0 is an unsplit record.
* The payload starts with ``IRHeader`` = struct ``'IfQQ'`` (flag, label, id, id2),
  little-endian, 24 bytes. If ``flag > 0`` the real label is an array of ``flag`` float32
  values that follows the header. The rest is the encoded image (JPEG/PNG).
* insightface datasets start with a header record 0 whose label array is
  ``[first non-image id, end of identity records]``; images are ids ``1..label[0]-1``
  (``MXFaceDataset`` uses ``range(1, int(header.label[0]))``), optionally followed by one
  record per identity whose label is that identity's image-id range ``[start, end)``.

Readers use positional reads (``os.pread``) on a lazily opened descriptor, so a dataset
pickles into DataLoader workers and each worker opens its own file.

Nothing a file *claims* is trusted further than the file can back it: every read is capped
at the bytes the ``.rec`` really has, the header record's image count must fit the index
and its identity count the images, and a label must be an integer in ``[0, classes)`` (classes from the header
record or insightface's ``property`` file, else at most the number of images). A record that
breaks a rule is one bad record (substituted and reported), never a 128 GB classifier head.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError, ImageDecodeError, RecordIOError, TruncatedRecordError
from .images import decode_image, encode_image, image_size_arg, resize_to, stretches, to_tensor
from .runtime import FailureLog, ResizeLog

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
MAX_RECORD_BYTES = 1 << 29
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24
MAX_SUBSTITUTE_TRIES = 64


@dataclass(frozen=True)
class IRHeader:
    """Image-record header. ``label`` is a float, or a float32 array when ``flag > 0``."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int

    @property
    def class_label(self) -> int:
        """The identity label as insightface reads it (first element of an array label)."""
        lab = self.label
        if isinstance(lab, np.ndarray):
            if lab.size == 0:
                raise ValueError("empty label array")
            return int(lab.reshape(-1)[0])
        return int(lab)


# -- payloads -------------------------------------------------------------------------------
def pack_payload(label: float | Sequence[float] | np.ndarray, data: bytes, id: int = 0, id2: int = 0) -> bytes:
    """IRHeader + (label array) + data, as ``mx.recordio.pack`` builds it.

    A scalar label is stored in the header with ``flag=0``; a sequence/array is stored as
    ``flag=len`` float32 values after the header (header label field 0).
    """
    if isinstance(label, (int, float, np.integer, np.floating)):
        head = struct.pack(IR_FORMAT, 0, float(label), int(id), int(id2))
        return head + bytes(data)
    arr = np.asarray(label, dtype="<f4").reshape(-1)
    if arr.size == 0:
        raise ValueError("label array must not be empty (flag 0 means scalar label)")
    head = struct.pack(IR_FORMAT, int(arr.size), 0.0, int(id), int(id2))
    return head + arr.tobytes() + bytes(data)


def unpack_payload(payload: bytes, source: str = "<record>") -> tuple[IRHeader, bytes]:
    """Split a record payload into ``(IRHeader, image bytes)`` (``mx.recordio.unpack``)."""
    if len(payload) < IR_SIZE:
        raise RecordIOError(f"{source}: record payload of {len(payload)} bytes is shorter than the 24-byte IRHeader")
    flag, label, rid, rid2 = struct.unpack_from(IR_FORMAT, payload, 0)
    rest = payload[IR_SIZE:]
    if flag > 0:
        need = 4 * flag
        if len(rest) < need:
            raise RecordIOError(
                f"{source}: IRHeader says {flag} float32 labels ({need} bytes) but only {len(rest)} bytes follow"
            )
        arr = np.frombuffer(rest[:need], dtype="<f4").astype(np.float32)
        return IRHeader(flag, arr, rid, rid2), rest[need:]
    return IRHeader(flag, float(label), rid, rid2), rest


# -- framing --------------------------------------------------------------------------------
def encode_frames(payload: bytes) -> bytes:
    """dmlc RecordIO framing of one payload, splitting at 4-byte-aligned magic numbers."""
    n = len(payload)
    if n >= MAX_RECORD_BYTES:
        raise RecordIOError(f"record of {n} bytes exceeds RecordIO's 2^29-byte limit")
    out = io.BytesIO()
    start = 0
    pos = payload.find(_MAGIC_BYTES)
    while pos >= 0:
        if pos % 4 == 0 and pos + 4 <= (n // 4) * 4:
            piece = payload[start:pos]
            out.write(_MAGIC_BYTES)
            out.write(struct.pack("<I", ((1 if start == 0 else 2) << 29) | len(piece)))
            out.write(piece)  # aligned split points: no padding needed
            start = pos + 4
            pos = payload.find(_MAGIC_BYTES, start)
        else:
            pos = payload.find(_MAGIC_BYTES, pos + 1)
    last = payload[start:]
    out.write(_MAGIC_BYTES)
    out.write(struct.pack("<I", ((3 if start != 0 else 0) << 29) | len(last)))
    out.write(last)
    out.write(b"\x00" * ((-len(last)) % 4))
    return out.getvalue()


def resolve_paths(path: str | os.PathLike[str]) -> tuple[str, str]:
    """``(rec, idx)`` for a directory (``train.rec``), a ``.rec``/``.idx`` path or a prefix."""
    p = str(path)
    if os.path.isdir(p):
        return os.path.join(p, "train.rec"), os.path.join(p, "train.idx")
    if p.endswith(".rec") or p.endswith(".idx"):
        stem = p[:-4]
        return stem + ".rec", stem + ".idx"
    return p + ".rec", p + ".idx"


def read_index(idx_path: str | os.PathLike[str]) -> dict[int, int]:
    """Parse ``key<TAB>offset`` lines; errors name the file and line."""
    index: dict[int, int] = {}
    try:
        text = Path(idx_path).read_text(encoding="ascii")
    except OSError as exc:
        raise RecordIOError(f"{idx_path}: cannot read index file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise RecordIOError(f"{idx_path}: index file is not ASCII text (is this really a .idx?)") from exc
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise RecordIOError(f"{idx_path}:{lineno}: expected 'key<TAB>offset', got {line[:80]!r}")
        try:
            key, off = int(parts[0]), int(parts[1])
        except ValueError as exc:
            raise RecordIOError(f"{idx_path}:{lineno}: non-integer key or offset in {line[:80]!r}") from exc
        if off < 0:
            raise RecordIOError(f"{idx_path}:{lineno}: negative offset {off}")
        index[key] = off
    return index


class RecordIOReader:
    """Random access to records of a ``.rec`` through its ``.idx``.

    ``strict`` (default) checks at open time that every indexed offset lies inside the
    ``.rec`` and that the last record is complete (the usual shape of a truncated copy), so
    a broken download fails immediately with the file and offset instead of hours later.
    """

    def __init__(self, path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None, *, strict: bool = True) -> None:
        rec, idx = resolve_paths(path)
        self.rec_path = rec
        self.idx_path = str(idx_path) if idx_path is not None else idx
        if not os.path.isfile(self.rec_path):
            raise RecordIOError(f"{self.rec_path}: RecordIO file not found")
        if not os.path.isfile(self.idx_path):
            raise RecordIOError(
                f"{self.idx_path}: index file not found (rebuild it with facepriv.data.rebuild_index('{self.rec_path}'))"
            )
        self.index = read_index(self.idx_path)
        self.keys: list[int] = list(self.index)
        self.file_size = os.path.getsize(self.rec_path)
        self._fd: int | None = None
        self.dropped: list[tuple[int, int]] = []
        bad = [(k, o) for k, o in self.index.items() if o + 8 > self.file_size]
        if bad:
            if strict:
                k, o = bad[0]
                raise RecordIOError(
                    f"{self.idx_path}: key {k} points to offset {o}, past the end of {self.rec_path} "
                    f"({self.file_size} bytes); {len(bad)} index entries are past EOF - the .rec is truncated "
                    "or the .idx belongs to another file"
                )
            self.dropped = bad
            for k, _ in bad:
                del self.index[k]
            self.keys = list(self.index)
        if strict and self.index:
            last_key = max(self.index, key=self.index.__getitem__)
            try:
                self.read(last_key)
            except TruncatedRecordError:
                raise  # the tail is cut: the whole copy is suspect
            except RecordIOError:
                pass  # one corrupt record (bad magic...): substituted and reported when read

    # picklable: the descriptor is per process
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fd"] = None
        return state

    def _open(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except OSError as exc:
                raise RecordIOError(f"{self.rec_path}: cannot open ({exc.strerror or exc})") from exc
        return self._fd

    def _pread(self, n: int, offset: int) -> bytes:
        """Up to ``n`` bytes at ``offset``, never more than the file has after it.

        ``os.pread`` allocates its buffer at the requested size before reading, so a corrupt
        length field (up to 512 MB per frame) must not reach it unchecked.
        """
        n = max(0, min(int(n), self.file_size - int(offset)))
        fd = self._open()
        if hasattr(os, "pread"):
            return os.pread(fd, n, offset)
        os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - Windows
        return os.read(fd, n)  # pragma: no cover

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RecordIOReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def __len__(self) -> int:
        return len(self.index)

    def read_at(self, offset: int) -> tuple[bytes, int]:
        """Reassemble the record starting at byte ``offset``; returns ``(payload, next offset)``."""
        parts: list[bytes] = []
        pos = offset
        first = True
        while True:
            head = self._pread(8, pos)
            if len(head) < 8:
                raise TruncatedRecordError(
                    f"{self.rec_path}: truncated record header at offset {pos} (file has {self.file_size} bytes)"
                )
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise RecordIOError(
                    f"{self.rec_path}: bad magic 0x{magic:08x} at offset {pos} (expected 0x{MAGIC:08x}); "
                    "the file is corrupt or the index is wrong"
                )
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if first and cflag not in (0, 1):
                raise RecordIOError(
                    f"{self.rec_path}: offset {pos} is the middle of a split record (cflag {cflag}), not a record start"
                )
            if not first and cflag not in (2, 3):
                raise RecordIOError(
                    f"{self.rec_path}: split record continued with cflag {cflag} at offset {pos} (expected 2 or 3)"
                )
            if pos + 8 + length > self.file_size:
                raise TruncatedRecordError(
                    f"{self.rec_path}: truncated record at offset {pos}: needs {length} payload bytes, "
                    f"only {max(0, self.file_size - pos - 8)} left (file has {self.file_size} bytes)"
                )
            data = self._pread(length, pos + 8) if length else b""
            if len(data) < length:  # pragma: no cover - the file shrank while we read it
                raise TruncatedRecordError(
                    f"{self.rec_path}: truncated record at offset {pos}: needs {length} payload bytes, "
                    f"only {len(data)} left (file has {self.file_size} bytes)"
                )
            parts.append(data)
            pos += 8 + ((length + 3) & ~3)
            if cflag in (0, 3):
                return b"".join(parts), pos
            parts.append(_MAGIC_BYTES)
            first = False

    def read(self, key: int) -> bytes:
        """Payload (IRHeader + label + image bytes) of record ``key``."""
        try:
            offset = self.index[key]
        except KeyError:
            raise RecordIOError(f"{self.idx_path}: no record with key {key}") from None
        return self.read_at(offset)[0]

    def read_header(self, key: int) -> IRHeader:
        return unpack_payload(self.read(key), f"{self.rec_path}#{key}")[0]

    def iter_sequential(self) -> Iterator[tuple[int, bytes]]:
        """All records in file order, ignoring the index: ``(offset, payload)``."""
        pos = 0
        while pos < self.file_size:
            payload, nxt = self.read_at(pos)
            yield pos, payload
            pos = nxt


def rebuild_index(rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None) -> str:
    """Write a ``.idx`` for a ``.rec`` by walking it; keys are the IRHeader ``id`` fields.

    insightface writers set ``id`` to the record key, so this recovers the original index.
    Returns the index path.
    """
    rec, idx = resolve_paths(rec_path)
    idx = str(idx_path) if idx_path is not None else idx
    tmp = RecordIOReader.__new__(RecordIOReader)
    tmp.rec_path, tmp.idx_path, tmp._fd = rec, idx, None
    tmp.file_size = os.path.getsize(rec)
    lines = []
    try:
        for off, payload in tmp.iter_sequential():
            header, _ = unpack_payload(payload, f"{rec}@{off}")
            lines.append(f"{header.id}\t{off}\n")
    finally:
        tmp.close()
    Path(idx).write_text("".join(lines), encoding="ascii")
    return idx


# -- writing --------------------------------------------------------------------------------
class RecordIOWriter:
    """Write an indexed ``.rec``/``.idx`` pair readable by ``mx.recordio.MXIndexedRecordIO``."""

    def __init__(self, path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None) -> None:
        rec, idx = resolve_paths(path)
        self.rec_path = rec
        self.idx_path = str(idx_path) if idx_path is not None else idx
        Path(self.rec_path).parent.mkdir(parents=True, exist_ok=True)
        self._rec = open(self.rec_path, "wb")
        self._idx = open(self.idx_path, "w", encoding="ascii", newline="\n")
        self.count = 0

    def write(self, key: int, payload: bytes) -> int:
        """Append one raw payload under ``key``; returns its byte offset."""
        offset = self._rec.tell()
        self._rec.write(encode_frames(payload))
        self._idx.write(f"{int(key)}\t{offset}\n")
        self.count += 1
        return offset

    def write_record(
        self, key: int, label: float | Sequence[float] | np.ndarray, data: bytes = b"", id2: int = 0
    ) -> int:
        """Append ``IRHeader(id=key) + label + data`` (``mx.recordio.pack`` layout)."""
        return self.write(key, pack_payload(label, data, id=key, id2=id2))

    def close(self) -> None:
        if not self._rec.closed:
            self._rec.close()
            self._idx.close()

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class PackReport:
    """What ``pack_folder`` wrote and what it had to skip or stretch (never silently)."""

    rec_path: str
    idx_path: str
    images: int = 0
    classes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    stretched: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rec": self.rec_path,
            "idx": self.idx_path,
            "images": self.images,
            "classes": self.classes,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "stretched": list(self.stretched),
        }


def write_dataset(
    path: str | os.PathLike[str],
    items: Iterable[tuple[bytes, int | float | Sequence[float]]],
    identity_records: bool = True,
) -> tuple[str, str, int]:
    """Write an insightface-layout dataset from ``(encoded image, label)`` pairs.

    Record 0 is the header (label ``[n_images + 1, n_images + 1 + n_identities]``), images
    are keys ``1..n``, and with ``identity_records`` one record per identity follows with
    that identity's image-id range ``[start, end)`` (images must then be grouped by label).
    Returns ``(rec, idx, n_images)``.
    """
    rec, idx = resolve_paths(path)
    with RecordIOWriter(rec, idx) as w:
        # placeholder header; rewritten below once counts are known (same size: flag 2)
        w.write_record(0, [0.0, 0.0])
        ranges: dict[int, list[int]] = {}
        order: list[int] = []
        n = 0
        for data, label in items:
            n += 1
            w.write_record(n, label, data)
            cls = int(label) if isinstance(label, (int, float, np.integer, np.floating)) else int(np.asarray(label).reshape(-1)[0])
            if cls not in ranges:
                ranges[cls] = [n, n + 1]
                order.append(cls)
            else:
                if identity_records and ranges[cls][1] != n:
                    raise DataError(f"{rec}: images of label {cls} are not contiguous; sort items by label")
                ranges[cls][1] = n + 1
        n_ids = len(order) if identity_records else 0
        if identity_records:
            for k, cls in enumerate(order):
                w.write_record(n + 1 + k, [float(ranges[cls][0]), float(ranges[cls][1])])
    # patch the header record in place (fixed size, so offsets stay valid)
    header = encode_frames(pack_payload([float(n + 1), float(n + 1 + n_ids)], b"", id=0))
    if len(header) != len(encode_frames(pack_payload([0.0, 0.0], b"", id=0))):  # pragma: no cover
        raise RecordIOError(f"{rec}: header record changed size while patching")
    with open(rec, "r+b") as f:
        f.write(header)
    return rec, idx, n


def pack_folder(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    image_size: int | tuple[int, int] | None = None,
    quality: int = 95,
    verify: bool = True,
    identity_records: bool = True,
    progress: bool = False,
) -> PackReport:
    """Pack an identity-folder dataset into ``.rec``/``.idx`` (labels = sorted folder index).

    Files are stored as-is (no re-encode) unless ``image_size`` asks for a resize. With
    ``verify`` every image is decoded first; unreadable ones are skipped and listed in the
    report, as are images whose aspect ratio the resize changes (``stretched``). Also writes insightface's ``property`` file (``classes,h,w``) next to the .rec.
    """
    from tqdm import tqdm

    from .folders import ImageFolderDataset

    ds = ImageFolderDataset(folder)
    size = image_size_arg(image_size)
    rec, idx = resolve_paths(out)
    report = PackReport(rec, idx, classes=ds.num_classes)
    first_shape: list[tuple[int, int]] = []

    def items() -> Iterator[tuple[bytes, int]]:
        for path, label in tqdm(ds.samples, desc="pack", unit="img", disable=not progress):
            try:
                data = Path(path).read_bytes()
                if verify or size is not None:
                    rgb = decode_image(data, path)
                    if size is not None and rgb.shape[:2] != size:
                        if stretches(rgb.shape, size):
                            report.stretched.append(path)
                        rgb = resize_to(rgb, size)
                        data = encode_image(rgb, ".jpg", quality)
                    if not first_shape:
                        first_shape.append(rgb.shape[:2])
            except (OSError, ImageDecodeError) as exc:
                reason = exc.reason if isinstance(exc, ImageDecodeError) else str(exc)
                report.skipped.append((path, reason))
                continue
            yield data, label

    _, _, n = write_dataset(rec, items(), identity_records=identity_records)
    report.images = n
    h, w = size or (first_shape[0] if first_shape else (112, 112))
    Path(rec).with_name("property").write_text(f"{ds.num_classes},{h},{w}\n")
    return report


# -- dataset --------------------------------------------------------------------------------
def _integral(value: float) -> int | None:
    """``value`` as an int if it is a finite whole number, else None (NaN, inf, 3.5)."""
    v = float(value)
    if not math.isfinite(v) or v != math.floor(v):
        return None
    return int(v)


def read_property(rec_path: str | os.PathLike[str]) -> int | None:
    """Class count from insightface's ``property`` file (``classes,h,w``) next to a ``train.rec``.

    Only ``train.rec`` is paired with it (a folder may hold several ``.rec`` files, and the
    file describes the training set). ``None`` when there is no such file.
    """
    rec = Path(rec_path)
    prop = rec.with_name("property")
    if rec.name != "train.rec" or not prop.is_file():
        return None
    text = prop.read_text(encoding="ascii", errors="replace").strip()
    first = text.split(",")[0].strip()
    if not first.isdigit() or int(first) < 1:
        raise RecordIOError(f"{prop}: expected 'classes,height,width' with a positive class count, got {text[:80]!r}")
    return int(first)


class RecordIODataset(Dataset):
    """insightface ``train.rec`` as a torch Dataset: ``(image, label)``.

    Mirrors ``MXFaceDataset``: if record 0 has ``flag > 0`` its label gives the image ids
    ``1..label[0]-1``; otherwise every indexed key is an image. Images are returned as
    ``3 x H x W`` RGB float in [0, 1] (or uint8); training flips batches in the step. A record that fails to read or decode at run time, or whose
    label is not an integer in ``[0, label_bound)``, is recorded in ``failures`` and replaced
    by the next readable one; ``labels()`` applies the same substitution and lists such
    records in ``bad_records``.

    ``declared_classes`` is the class count the file states: the identity records of the
    header (``label[1] - label[0]``) and, for ``train.rec``, the ``property`` file (the larger
    if both). Neither may exceed the number of images (every class needs one). Without one,
    labels are bounded by the number of images and ``num_classes`` is the largest label + 1.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        image_size: int | tuple[int, int] | None = None,
        dtype: str = "float",
        on_error: str = "substitute",
        strict: bool = True,
        failure_log: str | os.PathLike[str] | None = None,
    ) -> None:
        if dtype not in ("float", "uint8"):
            raise ValueError(f"dtype must be 'float' or 'uint8', got {dtype!r}")
        if on_error not in ("substitute", "raise"):
            raise ValueError(f"on_error must be 'substitute' or 'raise', got {on_error!r}")
        self.reader = RecordIOReader(path, strict=strict)
        self.dtype = dtype
        self.on_error = on_error
        self.image_size = image_size_arg(image_size)
        self.failures = FailureLog(failure_log)
        self.resizes = ResizeLog()
        self.header0: tuple[int, int] | None = None
        h0 = self._read_header0()
        header_classes: int | None = None
        if h0 is not None and h0.flag > 0:
            self.header0 = self._header_range(h0)
            end = self.header0[0]
            self.imgidx = np.arange(1, end, dtype=np.int64)
            indexed = np.isin(self.imgidx, np.fromiter(self.reader.index, dtype=np.int64, count=len(self.reader)))
            if not indexed.all():
                raise RecordIOError(
                    f"{self.reader.idx_path}: header record says images are keys 1..{end - 1} but "
                    f"{int((~indexed).sum())} are not indexed (first: {int(self.imgidx[~indexed][0])})"
                )
            header_classes = (self.header0[1] - end) or None
        else:
            self.imgidx = np.asarray(self.reader.keys, dtype=np.int64)
        declared = [c for c in (header_classes, read_property(self.reader.rec_path)) if c is not None]
        self.declared_classes: int | None = max(declared) if declared else None
        n = len(self.imgidx)
        if self.declared_classes is not None and self.declared_classes > n:
            raise RecordIOError(
                f"{self.reader.rec_path}: the header record / property file declare {self.declared_classes} "
                f"identities but the file holds only {n} images (every identity needs one); the header or "
                "property file is corrupt or belongs to another dataset"
            )
        #: labels must lie in [0, label_bound): the declared class count, else the image count
        self.label_bound = self.declared_classes if self.declared_classes is not None else n
        self.bad_records: list[tuple[str, str]] = []
        self._labels: np.ndarray | None = None

    def _read_header0(self) -> IRHeader | None:
        """Record 0's header, or None when key 0 is not indexed (plain record lists)."""
        if 0 not in self.reader.index:
            return None
        try:
            return self.reader.read_header(0)
        except RecordIOError as exc:
            raise RecordIOError(
                f"header record 0 is unreadable, so the image range is unknown: {exc}"
            ) from exc

    def _header_range(self, h0: IRHeader) -> tuple[int, int]:
        """``(end of images, end of identity records)`` from record 0, checked against the index.

        A header is trusted only as far as the index backs it: ``np.arange`` over a claimed
        billion images would allocate 8 GB before the first check could fail.
        """
        lab = np.asarray(h0.label, dtype=np.float64).reshape(-1)
        ends = [_integral(v) for v in lab[:2]]
        where = f"{self.reader.rec_path}#0 (header record)"
        if any(e is None for e in ends):
            raise RecordIOError(f"{where}: label {lab[:2].tolist()} is not a pair of whole numbers")
        end = int(ends[0])  # type: ignore[arg-type]
        ids_end = int(ends[1]) if len(ends) > 1 else end  # type: ignore[arg-type]
        n_indexed = len(self.reader)
        if not 1 <= end <= n_indexed:
            raise RecordIOError(
                f"{where}: says images are keys 1..{end - 1}, but the index has only {n_indexed} records"
            )
        if ids_end < end:
            raise RecordIOError(f"{where}: identity records end ({ids_end}) before the images do ({end})")
        return end, ids_end

    def __len__(self) -> int:
        return len(self.imgidx)

    def _checked_label(self, header: IRHeader, source: str) -> int:
        """The record's class label, or ``RecordIOError`` when it cannot be a class index."""
        lab = header.label
        if isinstance(lab, np.ndarray):
            if lab.size == 0:
                raise RecordIOError(f"{source}: empty label array")
            value = float(lab.reshape(-1)[0])
        else:
            value = float(lab)
        label = _integral(value)
        if label is None or not 0 <= label < self.label_bound:
            bound = (
                f"{self.declared_classes} identities declared by the file" if self.declared_classes is not None
                else f"{self.label_bound} images, the most identities the file can hold"
            )
            raise RecordIOError(f"{source}: label {value!r} is not an integer in [0, {self.label_bound}) ({bound})")
        return label

    def read_sample(self, index: int) -> tuple[np.ndarray, int]:
        """Decode sample ``index`` (uint8 RGB, label); raises on any failure, a bad label included."""
        key = int(self.imgidx[index])
        source = f"{self.reader.rec_path}#{key}"
        header, data = unpack_payload(self.reader.read(key), source)
        label = self._checked_label(header, source)
        rgb = decode_image(data, source)
        if self.image_size is not None:
            self.resizes.record(source, rgb.shape, self.image_size)
        return resize_to(rgb, self.image_size), label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.imgidx)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} records")
        first_error: Exception | None = None
        for step in range(min(MAX_SUBSTITUTE_TRIES, n)):
            j = (index + step) % n
            try:
                rgb, label = self.read_sample(j)
            except (RecordIOError, ImageDecodeError) as exc:
                if self.on_error == "raise":
                    raise
                first_error = first_error or exc
                src = f"{self.reader.rec_path}#{int(self.imgidx[j])}"
                nxt = f"{self.reader.rec_path}#{int(self.imgidx[(j + 1) % n])}"
                self.failures.record(src, str(exc), substitute=nxt)
                continue
            return to_tensor(rgb, self.dtype), label
        raise DataError(
            f"{self.reader.rec_path}: {MAX_SUBSTITUTE_TRIES} consecutive records from index {index} failed "
            f"(first: {first_error})"
        )

    def labels(self, progress: bool = False) -> np.ndarray:
        """Label of every sample (reads each record header once; cached).

        A record whose header is unreadable or whose label is out of range gets the label of
        the next good record (the sample ``__getitem__`` substitutes for it); such records are
        listed in ``bad_records`` and summarised in one warning.
        """
        if self._labels is None:
            from tqdm import tqdm

            out = np.full(len(self.imgidx), -1, dtype=np.int64)
            bad: list[tuple[str, str]] = []
            for i, key in enumerate(tqdm(self.imgidx, desc="labels", disable=not progress)):
                source = f"{self.reader.rec_path}#{int(key)}"
                try:
                    out[i] = self._checked_label(self._header_only(int(key)), source)
                except RecordIOError as exc:
                    bad.append((source, str(exc)))
            if bad:
                good = np.flatnonzero(out >= 0)
                if good.size == 0:
                    raise DataError(
                        f"{self.reader.rec_path}: none of the {len(out)} records has a readable header and a valid "
                        f"label (first: {bad[0][1]}); is the .idx from another file?"
                    )
                missing = np.flatnonzero(out < 0)
                out[missing] = out[good[np.searchsorted(good, missing) % good.size]]
                warnings.warn(
                    f"{self.reader.rec_path}: {len(bad)} of {len(out)} records have an unreadable header or an "
                    f"invalid label and are substituted by the next good record (first: {bad[0][1]})",
                    RuntimeWarning,
                    stacklevel=2,
                )
            self.bad_records = bad
            self._labels = out
        return self._labels

    def _header_only(self, key: int) -> IRHeader:
        """Read just enough of a record for its IRHeader and label array."""
        off = self.reader.index[key]
        head = self.reader._pread(8 + IR_SIZE, off)
        if len(head) == 8 + IR_SIZE:
            magic, lrec = struct.unpack_from("<II", head)
            if magic == MAGIC and (lrec >> 29) == 0:
                flag = struct.unpack_from("<I", head, 8)[0]
                if flag > 0:
                    need = 8 + IR_SIZE + 4 * flag
                    if need - 8 <= (lrec & _LEN_MASK):
                        head = self.reader._pread(need, off)
                return unpack_payload(head[8:], f"{self.reader.rec_path}#{key}")[0]
        return self.reader.read_header(key)  # split or odd record: full read with checks

    @property
    def num_classes(self) -> int:
        """The declared class count, else the largest (valid) label + 1."""
        if self.declared_classes is not None:
            return self.declared_classes
        lab = self.labels()
        return int(lab.max()) + 1 if lab.size else 0

    def verify(self, progress: bool = False) -> list[tuple[str, str]]:
        """Read and decode every sample; returns ``(record, reason)`` for each failure."""
        from tqdm import tqdm

        bad: list[tuple[str, str]] = []
        for i in tqdm(range(len(self.imgidx)), desc="verify", disable=not progress):
            try:
                self.read_sample(i)
            except (RecordIOError, ImageDecodeError) as exc:
                bad.append((f"{self.reader.rec_path}#{int(self.imgidx[i])}", str(exc)))
        return bad


def pack_images(
    path: str | os.PathLike[str],
    images: Iterable[np.ndarray],
    labels: Iterable[int],
    quality: int = 95,
) -> tuple[str, str, int]:
    """Encode RGB uint8 arrays as JPEG and write an insightface dataset (grouped by label)."""
    pairs = ((encode_image(img, ".jpg", quality), int(lab)) for img, lab in zip(images, labels))
    return write_dataset(path, pairs)

