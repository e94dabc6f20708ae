"""A compact, self-checking pack of a training set, its test pairs and cached teacher embeddings.

Why: a GPU window is short and only a small working tree travels to it (64 MiB, data
included), while the real faces behind an experiment (LFW + CelebA folders, ~180 MB) and the
teacher that distils into the students (dlib, CPU-only) stay behind. A pack carries exactly
what a training run on the far side needs, nothing more:

* ``train.rec`` / ``train.idx`` / ``property``: the training identities in insightface
  RecordIO layout (``RecordIODataset`` reads it), images re-encoded as JPEG at ``quality``;
* ``test.rec`` / ``test.idx``: every image the test pairs reference, once (label = the
  pair list's image index), and ``test_pairs.json``: pairs, same/different and folds;
* ``teacher.safetensors``: the teacher's L2-normalised embedding of every training record
  (row ``i`` = record ``i + 1``), computed on the *original* images where the data owner
  holds them, stored as float16 (a cosine target needs no more);
* ``manifest.json`` (written last): counts, the teacher's description, and the size and
  SHA-256 of every file, so a truncated or mixed-up pack is refused by name on load.

Nothing in a pack is secret beyond the faces themselves (no frontend, no seeds); treat it
like the image folders it was made from.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from facepriv.io import atomic_write_json

from .errors import DataError
from .images import decode_image, encode_image, to_tensor
from .recordio import RecordIODataset, RecordIOReader, unpack_payload, write_dataset
from .verification import EncodedImageSource, VerificationSet, load_pairs_txt

PACK_FORMAT = "facepriv-pack"
PACK_VERSION = 1
FILES = ("train.rec", "train.idx", "property", "test.rec", "test.idx", "test_pairs.json", "teacher.safetensors")
#: what a GPU window carries comfortably next to the repository (64 MiB in all)
DEFAULT_MAX_MB = 50.0

Teacher = Callable[[Tensor], Tensor]


class PackError(DataError):
    """A pack is missing, incomplete, corrupt or does not fit its size budget."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@dataclass
class PackSummary:
    """What ``write_pack`` wrote; ``skipped`` lists training images that could not be decoded."""

    out: str
    train_images: int
    identities: int
    test_images: int
    test_pairs: int
    total_bytes: int
    skipped: list[dict[str, str]]

    @property
    def total_mb(self) -> float:
        return self.total_bytes / 2**20


def write_pack(
    out: str | os.PathLike[str],
    train_folder: str | os.PathLike[str],
    pairs_file: str | os.PathLike[str],
    pairs_root: str | os.PathLike[str],
    *,
    teacher: Teacher | None,
    teacher_info: dict[str, Any] | None = None,
    quality: int = 70,
    max_mb: float = DEFAULT_MAX_MB,
    batch_size: int = 64,
    progress: bool = True,
) -> PackSummary:
    """Write a pack (see the module docstring) and check it fits ``max_mb``.

    ``teacher`` embeds float RGB ``B x 3 x H x W`` in [0, 1] (the original, not re-encoded,
    images); None packs no teacher (then students can only train from scratch). Training
    images that cannot be decoded are skipped and listed in the manifest, never silently.
    Raises ``PackError`` if the written pack is larger than ``max_mb`` (files are kept, so
    the caller can inspect them; lower ``quality`` to shrink it).
    """
    from tqdm import tqdm

    from .folders import ImageFolderDataset

    if not 1 <= int(quality) <= 100:
        raise PackError(f"quality must be in 1..100, got {quality}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        manifest_path.unlink()  # an interrupted rewrite must never look like a finished pack
    ds = ImageFolderDataset(train_folder)
    skipped: list[dict[str, str]] = []
    shapes: set[tuple[int, int]] = set()
    embeddings: list[np.ndarray] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        if teacher is None or not pending:
            pending.clear()
            return
        batch = torch.stack([to_tensor(a, "float") for a in pending])
        with torch.no_grad():
            emb = teacher(batch)
        if not isinstance(emb, Tensor) or emb.dim() != 2 or emb.shape[0] != len(pending):
            raise PackError(f"teacher must return a (B, D) tensor for B={len(pending)} images")
        if not bool(torch.isfinite(emb).all()):
            raise PackError("teacher returned NaN/inf embeddings")
        embeddings.append(torch.nn.functional.normalize(emb.float(), dim=1).cpu().numpy())
        pending.clear()

    def train_items():
        for path, label in tqdm(ds.samples, desc="pack train", unit="img", disable=not progress, dynamic_ncols=True):
            try:
                rgb = decode_image(Path(path).read_bytes(), path)
            except (OSError, DataError) as exc:
                skipped.append({"path": str(path), "reason": str(exc)})
                continue
            shapes.add(rgb.shape[:2])
            pending.append(rgb)
            if len(pending) >= batch_size:
                flush()
            yield encode_image(rgb, ".jpg", int(quality)), label

    _, _, n_train = write_dataset(root / "train.rec", train_items())
    flush()
    if len(shapes) != 1:
        raise PackError(f"{train_folder}: a pack needs one image size (aligned faces), found {sorted(shapes) or 'none'}")
    h, w = shapes.pop()
    (root / "property").write_text(f"{ds.num_classes},{h},{w}\n")

    vset = load_pairs_txt(pairs_file, pairs_root, image_size=(h, w))
    test_items = ((encode_image(vset.images.load(i), ".jpg", int(quality)), i)
                  for i in tqdm(range(vset.num_images), desc="pack test", unit="img", disable=not progress,
                                dynamic_ncols=True))
    write_dataset(root / "test.rec", test_items, identity_records=False)
    (root / "test_pairs.json").write_text(json.dumps({
        "name": vset.name, "pairs": vset.pairs.tolist(), "issame": vset.issame.astype(int).tolist(),
        "folds": vset.folds.tolist()}))

    from safetensors.numpy import save_file

    emb = np.concatenate(embeddings) if embeddings else np.zeros((n_train, 0), np.float32)
    if emb.shape[0] != n_train:
        raise PackError(f"teacher embedded {emb.shape[0]} images but {n_train} were packed")
    info = dict(teacher_info or {})
    save_file({"embeddings": emb.astype(np.float16)}, str(root / "teacher.safetensors"),
              metadata={"format": PACK_FORMAT, "teacher": json.dumps(info, sort_keys=True),
                        "rows": "record i+1 of train.rec"})

    files = {name: {"bytes": (root / name).stat().st_size, "sha256": _sha256(root / name)} for name in FILES}
    total = sum(f["bytes"] for f in files.values())
    manifest = {
        "format": PACK_FORMAT, "version": PACK_VERSION, "jpeg_quality": int(quality), "image_size": [h, w],
        "train": {"images": n_train, "identities": ds.num_classes, "source": Path(train_folder).name,
                  "skipped": skipped},
        "test": {"name": vset.name, "images": vset.num_images, "pairs": vset.num_pairs,
                 "folds": sorted(int(f) for f in np.unique(vset.folds))},
        "teacher": {"embedded": teacher is not None, "dim": int(emb.shape[1]), **info},
        "files": files, "total_bytes": total,
    }
    atomic_write_json(manifest_path, manifest, indent=2)
    summary = PackSummary(str(root), n_train, ds.num_classes, vset.num_images, vset.num_pairs, total, skipped)
    if summary.total_mb > max_mb:
        raise PackError(f"{root}: pack is {summary.total_mb:.1f} MB, over the {max_mb:g} MB budget; "
                        f"lower --quality (now {quality}) or raise --max-mb")
    return summary


class Pack:
    """A pack on disk, checked against its manifest (sizes always, SHA-256 with ``verify``)."""

    def __init__(self, root: str | os.PathLike[str], *, verify: bool = True) -> None:
        self.root = Path(root)
        path = self.root / "manifest.json"
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise PackError(f"{self.root}: no manifest.json (not a pack, or its writing did not finish)") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise PackError(f"{path}: unreadable manifest ({exc})") from exc
        if self.manifest.get("format") != PACK_FORMAT or self.manifest.get("version") != PACK_VERSION:
            raise PackError(f"{path}: not a {PACK_FORMAT} v{PACK_VERSION} manifest")
        for name in FILES:
            want = self.manifest["files"].get(name)
            f = self.root / name
            if want is None or not f.is_file():
                raise PackError(f"{self.root}: {name} is missing")
            if f.stat().st_size != want["bytes"]:
                raise PackError(f"{f}: {f.stat().st_size} bytes, manifest says {want['bytes']} (truncated or replaced)")
            if verify and _sha256(f) != want["sha256"]:
                raise PackError(f"{f}: SHA-256 differs from the manifest (corrupt or replaced)")
        if "image_size" not in self.manifest:  # packs written before the key existed: the property file
            _, h, w = (int(v) for v in (self.root / "property").read_text().split(","))
            self.manifest["image_size"] = [h, w]

    @property
    def teacher_id(self) -> str:
        """Names teacher and data together: these targets belong to exactly this ``train.rec``."""
        t = {k: v for k, v in self.manifest["teacher"].items() if k != "embedded"}
        return "pack:" + json.dumps({"teacher": t, "train_rec_sha256": self.manifest["files"]["train.rec"]["sha256"]},
                                    sort_keys=True)

    def train_dataset(self, **kwargs: Any) -> RecordIODataset:
        return RecordIODataset(self.root / "train.rec", **kwargs)

    def teacher_embeddings(self) -> Tensor:
        """``N x D`` float32 unit rows, row ``i`` for training sample ``i`` (record ``i + 1``)."""
        from safetensors.torch import load_file

        if not self.manifest["teacher"].get("embedded"):
            raise PackError(f"{self.root}: this pack holds no teacher embeddings (packed without --teacher)")
        emb = load_file(str(self.root / "teacher.safetensors"))["embeddings"].float()
        if emb.shape[0] != self.manifest["train"]["images"]:
            raise PackError(f"{self.root}: {emb.shape[0]} teacher rows for {self.manifest['train']['images']} images")
        return torch.nn.functional.normalize(emb, dim=1)

    def test_set(self) -> VerificationSet:
        """The test pairs as a ``VerificationSet`` over the packed (encoded) images."""
        meta = json.loads((self.root / "test_pairs.json").read_text())
        with RecordIOReader(self.root / "test.rec") as reader:
            blobs = [unpack_payload(reader.read(k), f"test.rec#{k}")[1] for k in sorted(reader.keys) if k > 0]
        if len(blobs) != self.manifest["test"]["images"]:
            raise PackError(f"{self.root}: test.rec holds {len(blobs)} images, manifest says "
                            f"{self.manifest['test']['images']}")
        return VerificationSet(name=meta["name"], images=EncodedImageSource(blobs, str(self.root / "test.rec")),
                               pairs=np.asarray(meta["pairs"]), issame=np.asarray(meta["issame"], dtype=bool),
                               folds=np.asarray(meta["folds"]), image_size=tuple(self.manifest["image_size"]),
                               meta={"pack": str(self.root)})
