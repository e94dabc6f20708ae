"""Image-folder datasets: one sub-folder per identity (``root/<identity>/<image>``).

The layout every face toolkit understands (insightface's ``ImageFolder`` path, TFace, LFW
and CelebA exports). Labels are positions in the sorted list of identity folders, so they
are stable across machines and file-system listing orders. Identity subsets (a train/test
split, the identities of one federated client) are selected by name and relabelled
``0..K-1`` in sorted order, or with an explicit ``label_map`` when a caller needs global
labels.

Bad files: ``scan()`` decodes every file once and drops the bad ones with a report (kept
as ``scan_report``, summarised in a warning and appended to the failure log, so a config
that just says ``scan: true`` still tells the user what went missing); at run time a file
that fails anyway is recorded in ``failures`` and replaced by the next readable sample
(deterministic), so a week-long run never dies on one corrupt JPEG. Files of another size
are resized to ``image_size``; those whose aspect ratio changes (stretched faces) are
counted in ``resizes`` and warned about.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError, ImageDecodeError
from .images import IMAGE_EXTENSIONS, image_size_arg, read_image, resize_to, stretches, to_tensor
from .runtime import FailureLog, ResizeLog

#: How many consecutive substitutes to try before concluding the dataset is unreadable.
MAX_SUBSTITUTE_TRIES = 64


@dataclass
class ScanReport:
    """Result of decoding every file once: what is usable and what is not (with reasons).

    ``stretched`` counts readable files whose aspect ratio differs from the dataset's
    ``image_size`` (they will be deformed when resized); 0 without an ``image_size``.
    """

    root: str
    total: int = 0
    ok: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    empty_classes: list[str] = field(default_factory=list)
    stretched: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "total": self.total,
            "ok": self.ok,
            "bad": [{"path": p, "reason": r} for p, r in self.bad],
            "sizes": self.sizes,
            "empty_classes": self.empty_classes,
            "stretched": self.stretched,
        }

    def message(self, size: tuple[int, int] | None = None) -> str | None:
        """One-paragraph warning text, or None when there is nothing to warn about."""
        parts = []
        if self.bad:
            shown = "; ".join(f"{p}: {r}" for p, r in self.bad[:3])
            more = f" and {len(self.bad) - 3} more" if len(self.bad) > 3 else ""
            parts.append(f"{len(self.bad)} of {self.total} images are unreadable and were dropped ({shown}{more})")
        if self.empty_classes:
            parts.append(f"{len(self.empty_classes)} identities have no readable image left (e.g. {self.empty_classes[:3]})")
        if self.stretched and size is not None:
            parts.append(f"{self.stretched} images will be stretched to {size[0]}x{size[1]} (aspect ratio changes)")
        return f"{self.root}: " + "; ".join(parts) if parts else None


def list_identity_folders(root: str | os.PathLike[str]) -> list[str]:
    """Sorted names of the identity sub-folders of ``root`` (hidden folders ignored)."""
    root_p = Path(root)
    if not root_p.is_dir():
        raise DataError(f"{root}: not a directory (expected one sub-folder per identity)")
    return sorted(e.name for e in os.scandir(root_p) if e.is_dir() and not e.name.startswith("."))


def list_images(folder: str | os.PathLike[str], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Sorted image file names directly inside ``folder``."""
    exts = tuple(e.lower() for e in extensions)
    return sorted(
        e.name
        for e in os.scandir(folder)
        if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in exts
    )


def split_identities(
    names: Sequence[str], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Identity-disjoint train/test split (sorted lists), reproducible from ``seed``."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    names = sorted(names)
    order = np.random.default_rng(seed).permutation(len(names))
    n_test = int(round(test_fraction * len(names)))
    test = sorted(names[i] for i in order[:n_test])
    train = sorted(names[i] for i in order[n_test:])
    return train, test


def partition_identities(names: Sequence[str], n_parts: int, seed: int = 0) -> list[list[str]]:
    """Split identities into ``n_parts`` disjoint, near-equal groups (e.g. federated clients).

    Identities never straddle parts: each client owns its people, as in cross-silo face
    recognition where a person is enrolled at one site.
    """
    if n_parts <= 0:
        raise ValueError(f"n_parts must be positive, got {n_parts}")
    names = sorted(names)
    if n_parts > len(names):
        raise ValueError(f"cannot split {len(names)} identities into {n_parts} non-empty parts")
    order = np.random.default_rng(seed).permutation(len(names))
    return [sorted(names[i] for i in chunk) for chunk in np.array_split(order, n_parts)]


class ImageFolderDataset(Dataset):
    """``root/<identity>/<image>`` -> ``(image, label)``.

    Args:
        root: dataset folder.
        identities: keep only these identity folder names (others ignored); labels are
            assigned in sorted order of the kept names unless ``label_map`` is given.
        label_map: explicit ``name -> label`` (e.g. global labels shared by federated
            clients); identities missing from it are an error.
        image_size: resize to ``(h, w)`` (int for square) when a file differs; ``None`` keeps
            the file's size (all files must then match for batching).
        dtype: ``"float"`` (3xHxW float32 in [0, 1]) or ``"uint8"`` (3xHxW, 4x less memory).
        min_images: drop identities with fewer images (e.g. 2 for verification pairs).
        extensions: accepted file extensions.
        scan: decode every file now and drop unreadable ones (see ``scan()``).
        on_error: ``"substitute"`` (default; record and use the next readable sample) or
            ``"raise"``.
        failure_log: optional JSON-lines file that every worker appends failures to.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        identities: Iterable[str] | None = None,
        *,
        label_map: Mapping[str, int] | None = None,
        image_size: int | tuple[int, int] | None = None,
        dtype: str = "float",
        min_images: int = 1,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        scan: bool = False,
        on_error: str = "substitute",
        failure_log: str | os.PathLike[str] | None = None,
        progress: bool = False,
    ) -> None:
        if dtype not in ("float", "uint8"):
            raise ValueError(f"dtype must be 'float' or 'uint8', got {dtype!r}")
        if on_error not in ("substitute", "raise"):
            raise ValueError(f"on_error must be 'substitute' or 'raise', got {on_error!r}")
        self.root = str(root)
        self.image_size = image_size_arg(image_size)
        self.dtype = dtype
        self.on_error = on_error
        self.failures = FailureLog(failure_log)
        self.resizes = ResizeLog()

        available = list_identity_folders(root)
        if identities is None:
            selected = available
        else:
            wanted = sorted(set(identities))
            missing = sorted(set(wanted) - set(available))
            if missing:
                raise DataError(
                    f"{root}: {len(missing)} requested identities have no folder, e.g. {missing[:5]}"
                )
            selected = wanted

        per_class: dict[str, list[str]] = {}
        for name in selected:
            files = list_images(os.path.join(self.root, name), extensions)
            if len(files) >= max(min_images, 1):
                per_class[name] = files
        if not per_class:
            raise DataError(
                f"{root}: no identity folder with at least {max(min_images, 1)} images "
                f"(extensions {', '.join(extensions)})"
            )
        self.class_names: list[str] = sorted(per_class)
        if label_map is not None:
            missing = [n for n in self.class_names if n not in label_map]
            if missing:
                raise DataError(f"label_map has no label for identities {missing[:5]}")
            self.class_to_idx = {n: int(label_map[n]) for n in self.class_names}
        else:
            self.class_to_idx = {n: i for i, n in enumerate(self.class_names)}
        self.samples: list[tuple[str, int]] = [
            (os.path.join(self.root, name, f), self.class_to_idx[name])
            for name in self.class_names
            for f in per_class[name]
        ]
        self.scan_report: ScanReport | None = None
        if scan:
            self.scan(progress=progress)

    # -- basic properties -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of identities (labels are ``0..num_classes-1`` unless ``label_map`` is used)."""
        if not self.class_to_idx:
            return 0
        return max(self.class_to_idx.values()) + 1

    @property
    def targets(self) -> list[int]:
        """Label of every sample (same order as ``samples``)."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def images_per_class(self) -> dict[str, int]:
        counts = {n: 0 for n in self.class_names}
        idx_to_name = {v: k for k, v in self.class_to_idx.items()}
        for _, label in self.samples:
            counts[idx_to_name[label]] += 1
        return counts

    # -- loading ----------------------------------------------------------------------------
    def load_rgb(self, index: int) -> np.ndarray:
        """Decode sample ``index`` to uint8 RGB (resized to ``image_size``); raises on failure."""
        path, _ = self.samples[index]
        rgb = read_image(path)
        if self.image_size is not None:
            self.resizes.record(path, rgb.shape, self.image_size)
        return resize_to(rgb, self.image_size)

    def _load_with_substitution(self, index: int) -> tuple[np.ndarray, int, int]:
        n = len(self.samples)
        first_error: ImageDecodeError | None = None
        for step in range(min(MAX_SUBSTITUTE_TRIES, n)):
            j = (index + step) % n
            path, label = self.samples[j]
            if step > 0 and path in self.failures.bad_sources:
                continue
            try:
                rgb = self.load_rgb(j)
            except ImageDecodeError as exc:
                if self.on_error == "raise":
                    raise
                first_error = first_error or exc
                nxt = self.samples[(j + 1) % n][0]
                self.failures.record(exc.source, exc.reason, substitute=nxt)
                continue
            return rgb, label, j
        raise DataError(
            f"{self.root}: {MAX_SUBSTITUTE_TRIES} consecutive samples from index {index} failed to decode "
            f"(first: {first_error}); the dataset looks unreadable - run scan() for a full report"
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            index += len(self.samples)
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} samples")
        rgb, label, _ = self._load_with_substitution(index)
        return to_tensor(rgb, self.dtype), label

    # -- integrity --------------------------------------------------------------------------
    def scan(self, progress: bool = False) -> ScanReport:
        """Decode every file once; drop the unreadable ones and report them with reasons.

        Returns the report (also kept as ``scan_report``). Identities left with no images
        stay in ``class_names`` (labels must not shift) and are listed in
        ``empty_classes``. Anything dropped (or to be stretched) is also summarised in one
        ``RuntimeWarning``, and every dropped file is appended to the failure log, because a
        caller that only set ``scan=True`` would otherwise never hear of it.
        """
        from tqdm import tqdm

        report = ScanReport(root=self.root, total=len(self.samples))
        kept: list[tuple[str, int]] = []
        it = tqdm(self.samples, desc="scan", unit="img", disable=not progress)
        for path, label in it:
            try:
                rgb = read_image(path)
            except ImageDecodeError as exc:
                report.bad.append((path, exc.reason))
                continue
            key = f"{rgb.shape[0]}x{rgb.shape[1]}"
            report.sizes[key] = report.sizes.get(key, 0) + 1
            report.stretched += int(stretches(rgb.shape, self.image_size))
            kept.append((path, label))
        report.ok = len(kept)
        labels_left = {label for _, label in kept}
        report.empty_classes = [n for n in self.class_names if self.class_to_idx[n] not in labels_left]
        self.samples = kept
        self.scan_report = report
        for path, reason in report.bad:
            self.failures.note(path, reason, action="dropped by scan")
        msg = report.message(self.image_size)
        if msg is not None:
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return report

    def subset(self, identities: Iterable[str], *, keep_labels: bool = False) -> ImageFolderDataset:
        """A new dataset with only ``identities`` (relabelled 0..K-1 unless ``keep_labels``)."""
        names = set(identities)
        unknown = sorted(names - set(self.class_names))
        if unknown:
            raise DataError(f"{self.root}: unknown identities {unknown[:5]}")
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.failures = FailureLog(self.failures.log_path)
        new.resizes = ResizeLog()
        new.class_names = sorted(names)
        new.class_to_idx = (
            {n: self.class_to_idx[n] for n in new.class_names}
            if keep_labels
            else {n: i for i, n in enumerate(new.class_names)}
        )
        old_to_name = {v: k for k, v in self.class_to_idx.items()}
        new.samples = [
            (p, new.class_to_idx[old_to_name[lab]]) for p, lab in self.samples if old_to_name[lab] in names
        ]
        new.scan_report = None
        return new

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={self.root!r}, identities={len(self.class_names)}, "
            f"images={len(self.samples)}, dtype={self.dtype!r})"
        )
