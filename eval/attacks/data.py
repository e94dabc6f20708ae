"""Loading the attacker's auxiliary faces and the victims, and keeping them apart.

The attacker's auxiliary data are *other people's* faces (a public dataset). Results are
only meaningful on victims the attacker never saw: if a victim's identity were in the
auxiliary set, a learned decoder could recall that person instead of reconstructing them.
``check_disjoint`` therefore refuses any identity folder name present on both sides (names
are all we can check: the same person under two different folder names, e.g. a celebrity in
both LFW and CelebA, is not detectable here; docs/attacks.md says so).

Victims are split per identity into one *probe* image (the protected query the attacker
intercepts and reconstructs) and a *gallery* of that person's other images (what the judge
compares reconstructions with). Identities with a single image cannot be verified and are
skipped, with a count in the report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from facepriv.data import DataError, ImageFolderDataset, list_identity_folders

__all__ = ["FaceSet", "VictimSplit", "check_disjoint", "concat_faces", "load_attack_inputs", "load_faces", "load_victims",
           "split_victims"]


@dataclass
class FaceSet:
    """Decoded faces in memory: ``images`` N x 3 x H x W uint8, integer ``labels``, identity ``names``."""

    images: Tensor
    labels: Tensor
    names: list[str]
    paths: list[str]
    root: str
    skipped: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def summary(self) -> dict[str, Any]:
        return {"root": self.root, "images": len(self), "identities": len(set(self.labels.tolist())),
                "skipped_files": len(self.skipped)}


def check_disjoint(aux_root: str | os.PathLike[str], victims_root: str | os.PathLike[str],
                   aux_names: list[str] | None = None, victim_names: list[str] | None = None) -> dict[str, Any]:
    """Raise ``ValueError`` if the two folders share an identity folder name (or are the same folder)."""
    a, v = Path(aux_root), Path(victims_root)
    if a.exists() and v.exists() and a.resolve() == v.resolve():
        raise ValueError(f"auxiliary and victim data are the same folder ({a}); the attacker must not have seen the victims")
    aux = set(aux_names if aux_names is not None else list_identity_folders(a))
    vic = set(victim_names if victim_names is not None else list_identity_folders(v))
    shared = sorted(aux & vic)
    if shared:
        raise ValueError(
            f"{len(shared)} identities appear in both the auxiliary set {a} and the victims {v} "
            f"(e.g. {shared[:5]}); an attack evaluated on people the attacker trained on overstates leakage. "
            "Use identity-disjoint folders."
        )
    return {"aux_identities": len(aux), "victim_identities": len(vic), "shared_identities": 0,
            "checked": "identity folder names"}


def _read(ds: ImageFolderDataset, indices: list[int], progress: bool, desc: str) -> tuple[list[Tensor], list[int], list[str], list[dict[str, str]]]:
    from tqdm import tqdm

    from facepriv.data import ImageDecodeError

    imgs, labels, paths, skipped = [], [], [], []
    for i in tqdm(indices, desc=desc, unit="img", disable=not progress, leave=False):
        path, label = ds.samples[i]
        try:
            rgb = ds.load_rgb(i)
        except ImageDecodeError as exc:  # one bad file never stops a run: record and go on
            skipped.append({"path": path, "reason": exc.reason})
            continue
        imgs.append(torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))))
        labels.append(label)
        paths.append(path)
    return imgs, labels, paths, skipped


def load_faces(root: str | os.PathLike[str], *, image_size: int = 112, max_images: int | None = None,
               identities: list[str] | None = None, min_images: int = 1, seed: int = 0,
               progress: bool = False, desc: str = "load") -> FaceSet:
    """Decode ``root/<identity>/<image>`` into memory (uint8), resized to ``image_size``.

    ``max_images`` keeps a seeded random subset of images (the auxiliary set can be large);
    unreadable files are skipped and listed in ``skipped``.
    """
    ds = ImageFolderDataset(root, identities, image_size=image_size, min_images=min_images, on_error="raise")
    order = list(range(len(ds)))
    if max_images is not None and max_images < len(order):
        rng = np.random.default_rng(seed)
        order = sorted(rng.choice(len(order), size=int(max_images), replace=False).tolist())
    imgs, labels, paths, skipped = _read(ds, order, progress, desc)
    if not imgs:
        raise DataError(f"{root}: no readable images ({len(skipped)} unreadable)")
    return FaceSet(torch.stack(imgs), torch.tensor(labels, dtype=torch.long), list(ds.class_names), paths, str(root), skipped)


def concat_faces(sets: list[FaceSet]) -> FaceSet:
    """Several auxiliary sets as one (e.g. LFW training identities + CelebA); identities stay
    distinct (labels are offset per set, names prefixed by their set's folder name)."""
    if not sets:
        raise ValueError("concat_faces: no face sets")
    if len(sets) == 1:
        return sets[0]
    shapes = {tuple(s.images.shape[1:]) for s in sets}
    if len(shapes) != 1:
        raise ValueError(f"auxiliary sets have different image shapes {sorted(shapes)}; use one --image-size")
    labels, names, offset = [], [], 0
    for s in sets:
        labels.append(s.labels + offset)
        names += [f"{Path(s.root).name}/{n}" for n in s.names]
        offset += len(s.names)
    return FaceSet(torch.cat([s.images for s in sets]), torch.cat(labels), names, [p for s in sets for p in s.paths],
                   " + ".join(s.root for s in sets), [k for s in sets for k in s.skipped])


@dataclass
class VictimSplit:
    """Probe images (one per victim identity) and the gallery of their other images."""

    probes: Tensor          # P x 3 x H x W uint8
    probe_ids: Tensor       # P
    probe_paths: list[str]
    gallery: Tensor         # G x 3 x H x W uint8
    gallery_ids: Tensor     # G
    names: list[str]        # identity names, indexed by id
    root: str
    skipped: list[dict[str, str]]
    n_single_image_identities: int

    def summary(self) -> dict[str, Any]:
        return {"root": self.root, "victim_identities": len(self.names), "probes": int(self.probes.shape[0]),
                "gallery_images": int(self.gallery.shape[0]), "skipped_files": len(self.skipped),
                "single_image_identities_skipped": self.n_single_image_identities}


def split_victims(faces: FaceSet, *, max_victims: int | None = None, max_gallery_per_identity: int | None = None,
                  seed: int = 0) -> VictimSplit:
    """First (sorted) image of each identity -> probe, the others -> gallery.

    Identities with one readable image are dropped. ``max_victims`` keeps a seeded random
    subset of identities.
    """
    by_id: dict[int, list[int]] = {}
    for i, lab in enumerate(faces.labels.tolist()):
        by_id.setdefault(lab, []).append(i)
    usable = sorted(k for k, v in by_id.items() if len(v) >= 2)
    singles = len(by_id) - len(usable)
    if not usable:
        raise DataError(f"{faces.root}: no victim identity has two readable images (one probe + one gallery image needed)")
    if max_victims is not None and max_victims < len(usable):
        rng = np.random.default_rng(seed)
        usable = sorted(rng.choice(usable, size=int(max_victims), replace=False).tolist())
    names = [faces.names[k] for k in usable]
    probes, pids, ppaths, gallery, gids = [], [], [], [], []
    for new_id, k in enumerate(usable):
        idx = sorted(by_id[k], key=lambda i: faces.paths[i])
        probes.append(idx[0])
        pids.append(new_id)
        ppaths.append(faces.paths[idx[0]])
        rest = idx[1:] if max_gallery_per_identity is None else idx[1 : 1 + max_gallery_per_identity]
        gallery += rest
        gids += [new_id] * len(rest)
    return VictimSplit(
        probes=faces.images[probes], probe_ids=torch.tensor(pids), probe_paths=ppaths,
        gallery=faces.images[gallery], gallery_ids=torch.tensor(gids), names=names, root=faces.root,
        skipped=faces.skipped, n_single_image_identities=singles,
    )


def load_victims(root: str | os.PathLike[str], *, image_size: int = 112, max_victims: int | None = None,
                 max_gallery_per_identity: int | None = 10, seed: int = 0, progress: bool = False) -> VictimSplit:
    """Choose victim identities (>= 2 images) first, then decode only their images."""
    ds = ImageFolderDataset(root, image_size=image_size, min_images=2, on_error="raise")
    n_folders = len(list_identity_folders(root))
    names = list(ds.class_names)  # identities with >= 2 image files
    if max_victims is not None and max_victims < len(names):
        rng = np.random.default_rng(seed)
        names = sorted(rng.choice(names, size=int(max_victims), replace=False).tolist())
    # keep (probe + gallery cap) files per identity so a 500-image identity does not dominate
    keep_per = None if max_gallery_per_identity is None else 1 + int(max_gallery_per_identity)
    by_name: dict[str, list[int]] = {n: [] for n in names}
    for i, (_, label) in enumerate(ds.samples):
        name = ds.class_names[label]
        if name in by_name:
            by_name[name].append(i)
    indices = sorted(i for n in names for i in (by_name[n] if keep_per is None else by_name[n][:keep_per]))
    imgs, labels, paths, skipped = _read(ds, indices, progress, "victims")
    if not imgs:
        raise DataError(f"{root}: no readable victim images")
    faces = FaceSet(torch.stack(imgs), torch.tensor(labels), list(ds.class_names), paths, str(root), skipped)
    split = split_victims(faces, max_gallery_per_identity=max_gallery_per_identity, seed=seed)
    split.n_single_image_identities += n_folders - len(ds.class_names)
    return split


def load_attack_inputs(aux: str | os.PathLike[str] | list[str | os.PathLike[str]], victims: str | os.PathLike[str], *,
                       image_size: int = 112, max_victims: int | None = None, max_gallery: int | None = None,
                       max_aux: int | None = None, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """What every attack run loads, checked the same way for the CLI and the Python API:
    the victims, the attacker's auxiliary faces (one or several folders, pooled) and the
    identity-disjointness check of every auxiliary folder against the victims (an attack
    scored on people the attacker trained on overstates leakage)."""
    aux_roots = [aux] if isinstance(aux, (str, os.PathLike)) else list(aux)
    if not aux_roots:
        raise ValueError("give at least one auxiliary face folder")
    overlap = [check_disjoint(a, victims) for a in aux_roots]
    gallery = {} if max_gallery is None else {"max_gallery_per_identity": max_gallery}
    loaded_victims = load_victims(victims, image_size=image_size, max_victims=max_victims, seed=seed,
                                  progress=progress, **gallery)
    loaded_aux = concat_faces([load_faces(a, image_size=image_size, max_images=max_aux or None, seed=seed,
                                          progress=progress, desc="aux") for a in aux_roots])
    return {"victims": loaded_victims, "aux": loaded_aux,
            "overlap_check": overlap[0] if len(overlap) == 1 else overlap}

