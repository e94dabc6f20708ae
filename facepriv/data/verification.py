"""Face verification protocols: insightface ``.bin`` files, LFW ``pairs.txt``, generated pairs.

All sources become one ``VerificationSet``: an image list, ``pairs`` (P x 2 indices into
it), ``issame`` (P bools) and ``folds`` (P fold ids), plus batched loading as
``B x 3 x H x W`` float RGB in [0, 1] for the evaluation code. Keeping images and pairs
separate means each image is embedded once even when it appears in many pairs.

Folds: in a ``.bin`` file pairs are ordered and insightface evaluates with an unshuffled
10-fold ``KFold``, so folds are contiguous blocks (sklearn's sizes: the first ``P % k``
folds get one extra pair). In LFW's ``pairs.txt`` the header ``10<TAB>300`` says: 10 folds,
each 300 genuine lines followed by 300 impostor lines.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import ImageDecodeError, UnsafePickleError, VerificationDataError
from .images import decode_image, encode_image, image_size_arg, read_image, resize_to, to_tensor
from .safe_pickle import safe_load


# -- image sources --------------------------------------------------------------------------
class ImageSource(Protocol):
    """Indexable collection of images: ``load(i)`` gives uint8 RGB, ``name(i)`` a label for errors."""

    def __len__(self) -> int: ...

    def load(self, i: int) -> np.ndarray: ...

    def name(self, i: int) -> str: ...


class EncodedImageSource:
    """Images held as encoded bytes (a ``.bin`` file's contents)."""

    def __init__(self, blobs: Sequence[bytes | np.ndarray], source: str) -> None:
        self.blobs = blobs
        self.source = source

    def __len__(self) -> int:
        return len(self.blobs)

    def name(self, i: int) -> str:
        return f"{self.source}#image{i}"

    def load(self, i: int) -> np.ndarray:
        return decode_image(self.blobs[i], self.name(i))


class FileImageSource:
    """Images as files on disk (pairs.txt over an image folder)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, i: int) -> str:
        return self.paths[i]

    def load(self, i: int) -> np.ndarray:
        return read_image(self.paths[i])


class ArrayImageSource:
    """Images already in memory as an ``N x H x W x 3`` uint8 RGB array (synthetic sets)."""

    def __init__(self, images: np.ndarray, names: Sequence[str] | None = None) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected N x H x W x 3 uint8 images, got {images.dtype} {images.shape}")
        self.images = images
        self.names = list(names) if names is not None else None

    def __len__(self) -> int:
        return len(self.images)

    def name(self, i: int) -> str:
        return self.names[i] if self.names is not None else f"array#{i}"

    def load(self, i: int) -> np.ndarray:
        return self.images[i]


# -- the common object ----------------------------------------------------------------------
@dataclass
class ImageScan:
    """One decoding pass over a set's images: failures with reasons, and sizes (h, w) with a
    count and the first image of each size (for error messages)."""

    name: str
    total: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    sizes: dict[tuple[int, int], int] = field(default_factory=dict)
    examples: dict[tuple[int, int], str] = field(default_factory=dict)

    def size_counts(self) -> dict[str, int]:
        """``{"112x112": n, ...}``: the size histogram with JSON-friendly keys."""
        return {f"{h}x{w}": n for (h, w), n in sorted(self.sizes.items())}

    def bad_message(self, shown: int = 5) -> str:
        """``"k of n images are unreadable: a (why); b (why) ..."`` for an error message."""
        items = "; ".join(f"{s} ({r})" for s, r in self.bad[:shown])
        more = f"; and {len(self.bad) - shown} more" if len(self.bad) > shown else ""
        return f"{len(self.bad)} of {self.total} images are unreadable: {items}{more}"


def contiguous_folds(n_pairs: int, n_folds: int = 10) -> np.ndarray:
    """Fold id per pair for an unshuffled k-fold split (sklearn ``KFold`` sizes)."""
    if n_pairs == 0:
        return np.zeros(0, dtype=np.int64)
    k = max(1, min(int(n_folds), n_pairs))
    sizes = np.full(k, n_pairs // k, dtype=np.int64)
    sizes[: n_pairs % k] += 1
    return np.repeat(np.arange(k, dtype=np.int64), sizes)


@dataclass
class VerificationSet:
    """Pairs of images with same/different labels and fold ids.

    ``pairs[p] = (a, b)`` indexes ``images``; ``issame[p]`` is True for a genuine pair;
    ``folds[p]`` is the cross-validation fold. ``image_size`` (h, w) resizes any image of
    another size (None keeps sizes, which must then agree within a batch).
    """

    name: str
    images: ImageSource
    pairs: np.ndarray
    issame: np.ndarray
    folds: np.ndarray
    image_size: tuple[int, int] | None = (112, 112)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pairs = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        self.issame = np.asarray(self.issame, dtype=bool).reshape(-1)
        self.folds = np.asarray(self.folds, dtype=np.int64).reshape(-1)
        p = len(self.pairs)
        if len(self.issame) != p or len(self.folds) != p:
            raise VerificationDataError(
                f"{self.name}: {p} pairs but {len(self.issame)} issame labels and {len(self.folds)} fold ids"
            )
        if p and (self.pairs.min() < 0 or self.pairs.max() >= len(self.images)):
            raise VerificationDataError(
                f"{self.name}: pair indices out of range for {len(self.images)} images"
            )
        self.image_size = image_size_arg(self.image_size)

    @property
    def num_pairs(self) -> int:
        return len(self.pairs)

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def n_folds(self) -> int:
        return int(self.folds.max()) + 1 if len(self.folds) else 0

    def load_image(self, i: int) -> np.ndarray:
        """uint8 RGB ``H x W x 3`` (resized to ``image_size``); ``VerificationDataError`` on failure."""
        try:
            return resize_to(self.images.load(i), self.image_size)
        except ImageDecodeError as exc:
            raise VerificationDataError(f"{self.name}: image {i} ({exc.source}) unreadable: {exc.reason}") from exc

    def iter_batches(
        self, batch_size: int = 64, indices: Sequence[int] | None = None, progress: bool = False, dtype: str = "float"
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(image indices, images B x 3 x H x W)`` over all (or the given) images.

        Images are decoded lazily, one batch at a time, so a 12k-image protocol never sits
        fully decoded in memory unless the caller keeps it.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        idx = np.arange(self.num_images) if indices is None else np.asarray(indices, dtype=np.int64)
        from tqdm import tqdm

        bar = tqdm(total=len(idx), desc=f"load {self.name}", unit="img", disable=not progress)
        try:
            for start in range(0, len(idx), batch_size):
                chunk = idx[start : start + batch_size]
                arrays = [self.load_image(int(i)) for i in chunk]
                shapes = {a.shape for a in arrays}
                if len(shapes) > 1:
                    raise VerificationDataError(
                        f"{self.name}: images of different sizes {sorted(shapes)} in one batch; set image_size"
                    )
                batch = torch.stack([to_tensor(a, dtype) for a in arrays])
                bar.update(len(chunk))
                yield torch.from_numpy(chunk.copy()), batch
        finally:
            bar.close()

    def torch_dataset(self, dtype: str = "float") -> VerificationImages:
        """The images as a torch Dataset ``(image, index)`` for parallel DataLoader decoding."""
        return VerificationImages(self, dtype)

    def select_folds(self, folds: Sequence[int]) -> VerificationSet:
        """Pairs of the given folds only (e.g. LFW-half: folds 5-9); images are shared."""
        keep = np.isin(self.folds, np.asarray(list(folds), dtype=np.int64))
        return VerificationSet(
            name=f"{self.name}[folds {','.join(str(f) for f in folds)}]",
            images=self.images,
            pairs=self.pairs[keep],
            issame=self.issame[keep],
            folds=self.folds[keep],
            image_size=self.image_size,
            meta=dict(self.meta),
        )

    def check(self, progress: bool = False) -> list[tuple[str, str]]:
        """Decode every image once; ``(image name, reason)`` for each failure."""
        return self.scan_images(progress=progress).bad

    def scan_images(self, indices: Sequence[int] | np.ndarray | None = None, progress: bool = False) -> ImageScan:
        """Decode each image (all, or ``indices``) once, at its stored size: what fails, which sizes.

        For checks before a long evaluation: every unreadable image is found in one pass
        (not one per run), and the size histogram tells whether images fit a model's input.
        """
        from tqdm import tqdm

        idx = np.arange(self.num_images) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        scan = ImageScan(self.name, total=int(idx.size))
        for i in tqdm(idx, desc=f"check {self.name}", unit="img", disable=not progress):
            try:
                img = self.images.load(int(i))
            except ImageDecodeError as exc:
                scan.bad.append((exc.source, exc.reason))
                continue
            hw = (int(img.shape[0]), int(img.shape[1]))
            scan.sizes[hw] = scan.sizes.get(hw, 0) + 1
            scan.examples.setdefault(hw, self.images.name(int(i)))
        return scan

    def summary(self) -> dict[str, Any]:
        per_fold = [
            {
                "fold": int(f),
                "genuine": int(np.sum(self.issame[self.folds == f])),
                "impostor": int(np.sum(~self.issame[self.folds == f])),
            }
            for f in np.unique(self.folds)
        ]
        return {
            "name": self.name,
            "pairs": self.num_pairs,
            "images": self.num_images,
            "genuine": int(self.issame.sum()),
            "impostor": int((~self.issame).sum()),
            "folds": per_fold,
            **self.meta,
        }


class VerificationImages(Dataset):
    """Dataset view of a ``VerificationSet``'s images: ``(3 x H x W tensor, image index)``."""

    def __init__(self, vset: VerificationSet, dtype: str = "float") -> None:
        self.vset = vset
        self.dtype = dtype

    def __len__(self) -> int:
        return self.vset.num_images

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return to_tensor(self.vset.load_image(i), self.dtype), i


# -- insightface .bin -----------------------------------------------------------------------
def load_bin(
    path: str | os.PathLike[str], name: str | None = None, image_size: int | tuple[int, int] | None = (112, 112), n_folds: int = 10
) -> VerificationSet:
    """Load an insightface verification ``.bin`` (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``...).

    The pickle is read with a restricted unpickler: anything but plain data is refused with
    ``UnsafePickleError``. Pairs are images ``(2k, 2k+1)``; folds are contiguous blocks.
    """
    source = str(path)
    if not os.path.isfile(source):
        raise VerificationDataError(f"{source}: verification file not found")
    obj = safe_load(source)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise VerificationDataError(f"{source}: expected a pickled (bins, issame_list) pair, got {type(obj).__name__}")
    bins, issame = obj
    if isinstance(bins, np.ndarray) and bins.ndim == 2:
        bins = list(bins)
    if not isinstance(bins, (list, tuple)):
        raise VerificationDataError(f"{source}: 'bins' must be a list of encoded images, got {type(bins).__name__}")
    for i, b in enumerate(bins):
        if not isinstance(b, (bytes, bytearray, np.ndarray)):
            raise VerificationDataError(f"{source}: image {i} is a {type(b).__name__}, expected encoded bytes")
    issame_arr = np.asarray(issame, dtype=bool).reshape(-1)
    if len(bins) != 2 * len(issame_arr):
        raise VerificationDataError(
            f"{source}: {len(bins)} images but {len(issame_arr)} pairs (need exactly 2 images per pair)"
        )
    p = len(issame_arr)
    pairs = np.stack([np.arange(0, 2 * p, 2), np.arange(1, 2 * p, 2)], axis=1) if p else np.zeros((0, 2))
    return VerificationSet(
        name=name or Path(source).stem,
        images=EncodedImageSource(list(bins), source),
        pairs=pairs,
        issame=issame_arr,
        folds=contiguous_folds(p, n_folds),
        image_size=image_size,
        meta={"source": source, "format": "bin"},
    )


def write_bin(
    path: str | os.PathLike[str],
    images: Sequence[bytes | np.ndarray],
    issame: Sequence[bool],
    quality: int = 95,
    protocol: int = 4,
) -> None:
    """Write an insightface-style ``.bin``: ``pickle((bins, issame_list))``.

    ``images`` are encoded bytes, or RGB uint8 arrays which are JPEG-encoded; 2 per pair.
    """
    if len(images) != 2 * len(issame):
        raise ValueError(f"need 2 images per pair: {len(images)} images for {len(issame)} pairs")
    bins = [img if isinstance(img, (bytes, bytearray)) else encode_image(np.asarray(img), ".jpg", quality) for img in images]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump((bins, [bool(x) for x in issame]), f, protocol=protocol)


# -- LFW pairs.txt --------------------------------------------------------------------------
@dataclass(frozen=True)
class PairLine:
    """One ``pairs.txt`` line: ``name1 i name2 j`` (1-based image numbers)."""

    name1: str
    num1: int
    name2: str
    num2: int
    lineno: int

    @property
    def issame(self) -> bool:
        return self.name1 == self.name2


def parse_pairs_txt(path: str | os.PathLike[str]) -> tuple[list[PairLine], np.ndarray, dict[str, Any]]:
    """Parse LFW ``pairs.txt``: returns ``(lines, folds, info)``.

    Header ``F<TAB>N``: F folds of N genuine then N impostor lines (View 2: ``10 300``).
    Header ``N`` alone: one fold of N + N (View 1 files). No header: the standard 6000-line
    layout is taken as 10 x 600; anything else is split into 10 contiguous folds.
    """
    source = str(path)
    try:
        raw_lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise VerificationDataError(f"{source}: cannot read pairs file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise VerificationDataError(
            f"{source}: pairs file is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "re-save it as UTF-8, or check that this is a pairs list at all"
        ) from None
    numbered = [(n, ln.split()) for n, ln in enumerate(raw_lines, 1) if ln.strip()]
    if not numbered:
        raise VerificationDataError(f"{source}: empty pairs file")
    header: list[int] | None = None
    first = numbered[0][1]
    if len(first) <= 2 and all(tok.isdigit() for tok in first):
        header = [int(t) for t in first]
        numbered = numbered[1:]
    lines: list[PairLine] = []
    for lineno, toks in numbered:
        try:
            if len(toks) == 3:
                lines.append(PairLine(toks[0], int(toks[1]), toks[0], int(toks[2]), lineno))
            elif len(toks) == 4:
                lines.append(PairLine(toks[0], int(toks[1]), toks[2], int(toks[3]), lineno))
            else:
                raise ValueError
        except ValueError:
            raise VerificationDataError(
                f"{source}:{lineno}: expected 'name i j' or 'name1 i name2 j', got {' '.join(toks)!r}"
            ) from None
        if lines[-1].num1 < 1 or lines[-1].num2 < 1:
            raise VerificationDataError(f"{source}:{lineno}: image numbers are 1-based, got {' '.join(toks)!r}")
    n = len(lines)
    if header is not None:
        n_folds, per = (1, header[0]) if len(header) == 1 else (header[0], header[1])
        if n != 2 * n_folds * per:
            raise VerificationDataError(
                f"{source}: header says {n_folds} fold(s) x {per} genuine + {per} impostor = "
                f"{2 * n_folds * per} pairs, found {n} pair lines (truncated or wrong header?)"
            )
        folds = np.arange(n) // (2 * per) if per else np.zeros(n, dtype=np.int64)
        info = {"n_folds": n_folds, "pairs_per_fold": 2 * per, "header": True}
    elif n == 6000:
        folds = np.arange(n) // 600
        info = {"n_folds": 10, "pairs_per_fold": 600, "header": False}
    else:
        folds = contiguous_folds(n, 10)
        info = {"n_folds": int(folds.max()) + 1 if n else 0, "pairs_per_fold": None, "header": False}
    return lines, folds.astype(np.int64), info


def lfw_image_path(root: str | os.PathLike[str], name: str, num: int, ext: str = "jpg") -> str:
    """``root/<name>/<name>_%04d.<ext>``: LFW's file naming."""
    return os.path.join(str(root), name, f"{name}_{num:04d}.{ext.lstrip('.')}")


def load_pairs_txt(
    pairs_path: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    *,
    ext: str = "jpg",
    name: str | None = None,
    image_size: int | tuple[int, int] | None = (112, 112),
) -> VerificationSet:
    """LFW-style protocol over an image folder; every referenced file must exist.

    Missing files are reported all at once (count and the first few paths, with the
    pairs.txt line that needs them) rather than failing on the first during evaluation.
    """
    lines, folds, info = parse_pairs_txt(pairs_path)
    index: dict[str, int] = {}
    paths: list[str] = []
    needed_by: dict[str, int] = {}
    pairs = np.zeros((len(lines), 2), dtype=np.int64)
    for p, ln in enumerate(lines):
        for col, (nm, num) in enumerate(((ln.name1, ln.num1), (ln.name2, ln.num2))):
            path = lfw_image_path(image_root, nm, num, ext)
            if path not in index:
                index[path] = len(paths)
                paths.append(path)
                needed_by[path] = ln.lineno
            pairs[p, col] = index[path]
    missing = [pth for pth in paths if not os.path.isfile(pth)]
    if missing:
        shown = "; ".join(f"{m} (line {needed_by[m]})" for m in missing[:5])
        raise VerificationDataError(
            f"{pairs_path}: {len(missing)} of {len(paths)} images referenced are missing under {image_root}: {shown}"
        )
    return VerificationSet(
        name=name or Path(str(pairs_path)).stem,
        images=FileImageSource(paths),
        pairs=pairs,
        issame=np.array([ln.issame for ln in lines], dtype=bool),
        folds=folds,
        image_size=image_size,
        meta={"source": str(pairs_path), "image_root": str(image_root), "format": "pairs.txt", **info},
    )


# -- generating protocols -------------------------------------------------------------------
def make_pairs(
    labels: Sequence[int] | np.ndarray,
    n_folds: int = 10,
    pairs_per_fold: int = 600,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Identity-disjoint folds of half genuine, half impostor pairs over labelled images.

    Identities are dealt to folds at random; within a fold genuine pairs join two images of
    one identity (identities with at least 2 images) and impostor pairs two identities of
    the same fold, like LFW View 2. Duplicate pairs are avoided where possible. Returns
    ``(pairs P x 2, issame P, folds P)`` ordered fold by fold, genuine first.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    ids = np.unique(labels)
    if len(ids) < 2 * n_folds:
        raise ValueError(f"need at least {2 * n_folds} identities for {n_folds} folds, have {len(ids)}")
    by_id = {int(i): np.flatnonzero(labels == i) for i in ids}
    fold_of = rng.permutation(len(ids)) % n_folds
    half = pairs_per_fold // 2
    out_pairs: list[tuple[int, int]] = []
    out_same: list[bool] = []
    out_fold: list[int] = []
    for f in range(n_folds):
        fold_ids = [int(i) for i in ids[fold_of == f]]
        multi = [i for i in fold_ids if len(by_id[i]) >= 2]
        if not multi:
            raise ValueError(f"fold {f} has no identity with 2 or more images for genuine pairs")
        seen: set[tuple[int, int]] = set()
        for want_same in (True, False):
            made, tries = 0, 0
            while made < half and tries < 50 * half:
                tries += 1
                if want_same:
                    ident = multi[rng.integers(len(multi))]
                    a, b = rng.choice(by_id[ident], 2, replace=False)
                else:
                    i1, i2 = rng.choice(len(fold_ids), 2, replace=False)
                    a = rng.choice(by_id[fold_ids[i1]])
                    b = rng.choice(by_id[fold_ids[i2]])
                key = (int(min(a, b)), int(max(a, b)))
                if key in seen and tries < 10 * half:
                    continue
                seen.add(key)
                out_pairs.append((int(a), int(b)))
                out_same.append(want_same)
                out_fold.append(f)
                made += 1
    return (
        np.asarray(out_pairs, dtype=np.int64).reshape(-1, 2),
        np.asarray(out_same, dtype=bool),
        np.asarray(out_fold, dtype=np.int64),
    )


def write_pairs_txt(
    path: str | os.PathLike[str],
    entries: Sequence[tuple[str, int, str, int]],
    n_folds: int,
    per_fold: int,
) -> None:
    """Write LFW-format ``pairs.txt``; ``entries`` are ``(name1, num1, name2, num2)`` in
    fold order, each fold ``per_fold`` genuine then ``per_fold`` impostor lines."""
    if len(entries) != 2 * n_folds * per_fold:
        raise ValueError(f"{len(entries)} entries, expected {2 * n_folds * per_fold}")
    rows = [f"{n_folds}\t{per_fold}"]
    for n1, i, n2, j in entries:
        rows.append(f"{n1}\t{i}\t{j}" if n1 == n2 else f"{n1}\t{i}\t{n2}\t{j}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(rows) + "\n", encoding="utf-8")


def pairs_txt_for_folder(
    root: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    n_folds: int = 10,
    per_fold: int = 300,
    seed: int = 0,
    ext: str = "jpg",
) -> str:
    """Generate an LFW-format ``pairs.txt`` for a folder whose files follow LFW naming
    (``<name>/<name>_%04d.<ext>``, e.g. from ``synthetic.write_folder``)."""
    from .folders import ImageFolderDataset

    ds = ImageFolderDataset(root, extensions=(f".{ext.lstrip('.')}",))
    refs: list[tuple[str, int]] = []
    for path, label in ds.samples:
        name = ds.class_names[label]
        stem = Path(path).stem
        prefix = f"{name}_"
        if not stem.startswith(prefix) or not stem[len(prefix) :].isdigit():
            raise VerificationDataError(f"{path}: not LFW-style naming '<name>/<name>_NNNN.{ext}'")
        refs.append((name, int(stem[len(prefix) :])))
    pairs, same, _ = make_pairs(ds.targets, n_folds, 2 * per_fold, seed)
    if len(pairs) != 2 * n_folds * per_fold:
        raise VerificationDataError(f"{root}: too few images to draw {per_fold} distinct pairs per fold")
    entries = [(refs[a][0], refs[a][1], refs[b][0], refs[b][1]) for a, b in pairs]
    write_pairs_txt(out_path, entries, n_folds, per_fold)
    return str(out_path)


__all__ = [
    "ArrayImageSource",
    "EncodedImageSource",
    "FileImageSource",
    "ImageScan",
    "ImageSource",
    "PairLine",
    "VerificationImages",
    "VerificationSet",
    "UnsafePickleError",
    "contiguous_folds",
    "lfw_image_path",
    "load_bin",
    "load_pairs_txt",
    "make_pairs",
    "pairs_txt_for_folder",
    "parse_pairs_txt",
    "write_bin",
    "write_pairs_txt",
]
