"""The "LFW-half" protocol laid out as folders the rest of facepriv already reads.

``../shared/data`` (see its README) holds aligned LFW, its official ``pairs.txt`` with 10
identity-disjoint folds, ``identity_fold.json`` and an aligned CelebA subset. LFW-half:

* **train**: LFW identities of folds 0-4, LFW identities in no fold, all ``celeba299``
  identities (prefixed ``celeba_`` so ids never collide with LFW names);
* **test**: the 3,000 pairs of folds 5-9 (a ``pairs.txt`` with header ``5 300``), so
  5-fold accuracy and TPR@FPR over all 3,000 pairs;
* **attacks**: victims = fold 5-9 identities with >= 2 images (never trained on), attacker
  auxiliary faces = the LFW training identities (disjoint from the victims).

Why symlinks: nothing is copied (the data is large and must never land in the repository),
yet the training, federated, verification and attack code see ordinary identity folders.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from facepriv.io import atomic_write

TRAIN_FOLDS = frozenset(range(5))
TEST_FOLDS = (5, 6, 7, 8, 9)


class LfwDataError(ValueError):
    """The data root does not have the expected LFW-half layout."""


@dataclass
class LfwHalf:
    root: str
    lfw_images: str
    train: str
    aux: str
    victims: str
    pairs: str
    counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise LfwDataError(f"{path}: missing ({what}); --data must point at the shared data folder "
                           "(lfw/aligned112, lfw/pairs.txt, lfw/identity_fold.json, celeba299/aligned112)")
    return path


def _link_tree(out: Path, sources: dict[str, Path]) -> None:
    """``out/<name> -> source`` for every identity; an existing correct link is kept."""
    out.mkdir(parents=True, exist_ok=True)
    for name, src in sources.items():
        link = out / name
        if link.is_symlink() and os.readlink(link) == str(src):
            continue
        if link.is_symlink() or link.exists():
            raise LfwDataError(f"{link} exists and is not a link to {src}; use a fresh --out folder")
        os.symlink(src, link, target_is_directory=True)
    stale = {p.name for p in out.iterdir()} - set(sources)
    if stale:
        raise LfwDataError(f"{out} has entries that are not part of this protocol (e.g. {sorted(stale)[:3]}); "
                           "use a fresh --out folder")


def _images(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def _test_pairs(pairs_src: Path, dest: Path) -> int:
    """Folds 5-9 of the official pairs.txt, with a matching ``5<TAB>300`` header."""
    lines = pairs_src.read_text(encoding="utf-8").splitlines()
    head = lines[0].split()
    if len(head) != 2:
        raise LfwDataError(f"{pairs_src}: first line must be '<folds> <pairs per half-fold>', got {lines[0]!r}")
    n_folds, per = int(head[0]), int(head[1])
    body = [ln for ln in lines[1:] if ln.strip()]
    if len(body) != n_folds * 2 * per:
        raise LfwDataError(f"{pairs_src}: header says {n_folds} folds x {2 * per} pairs, found {len(body)} pair lines")
    keep = [ln for f in TEST_FOLDS for ln in body[f * 2 * per : (f + 1) * 2 * per]]
    text = f"{len(TEST_FOLDS)}\t{per}\n" + "\n".join(keep) + "\n"
    if not dest.is_file() or dest.read_text(encoding="utf-8") != text:
        atomic_write(dest, text)
    return len(keep)


def prepare_lfw_half(data_root: str | os.PathLike[str], out: str | os.PathLike[str]) -> LfwHalf:
    """Build (or check) the symlinked folders and the test pairs under ``out``."""
    root = Path(data_root).resolve()
    lfw = _need(root / "lfw" / "aligned112", "aligned LFW images")
    pairs_src = _need(root / "lfw" / "pairs.txt", "LFW View-2 pairs")
    fold_file = _need(root / "lfw" / "identity_fold.json", "fold of every LFW pairs identity")
    celeb = _need(root / "celeba299" / "aligned112", "aligned CelebA subset")
    try:
        folds: dict[str, int] = json.loads(fold_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LfwDataError(f"{fold_file}: cannot read identity folds: {exc}") from exc

    lfw_ids = sorted(p.name for p in lfw.iterdir() if p.is_dir())
    train_lfw = {n: lfw / n for n in lfw_ids if folds.get(n) is None or int(folds[n]) in TRAIN_FOLDS}
    test_ids = {n: lfw / n for n in lfw_ids if folds.get(n) is not None and int(folds[n]) in TEST_FOLDS}
    celeb_ids = {f"celeba_{p.name}": p for p in sorted(celeb.iterdir()) if p.is_dir()}
    clash = set(train_lfw) & set(celeb_ids)
    if clash:
        raise LfwDataError(f"identity names clash between LFW and CelebA: {sorted(clash)[:3]}")
    victims = {n: p for n, p in test_ids.items() if _images(p) >= 2}

    base = Path(out) / "data"
    _link_tree(base / "train", {**train_lfw, **celeb_ids})
    _link_tree(base / "aux", train_lfw)
    _link_tree(base / "victims", victims)
    n_pairs = _test_pairs(pairs_src, base / "pairs_folds5-9.txt")
    counts = {
        "train_identities": len(train_lfw) + len(celeb_ids),
        "train_lfw_identities": len(train_lfw),
        "train_celeba_identities": len(celeb_ids),
        "train_images": sum(_images(p) for p in train_lfw.values()) + sum(_images(p) for p in celeb_ids.values()),
        "test_identities": len(test_ids),
        "test_pairs": n_pairs,
        "victim_identities": len(victims),
        "aux_identities": len(train_lfw),
    }
    return LfwHalf(root=str(root), lfw_images=str(lfw), train=str(base / "train"), aux=str(base / "aux"),
                   victims=str(base / "victims"), pairs=str(base / "pairs_folds5-9.txt"), counts=counts)
