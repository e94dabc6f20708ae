"""Distillation: a teacher sees the raw training images once; the student only protected tensors.

Why: a strong RGB recogniser (ArcFace IResNet-100, dlib, an ONNX model) already knows good
identity embeddings. The teacher runs once, where the raw images are (the data owner's
machine), and its embeddings are cached; from then on the student — frontend + backbone,
the model that will be deployed — trains on protected tensors only, learning to put each
image where the teacher would (cosine loss), optionally plus the usual margin loss.

Cache: ``<cache>.safetensors`` holds ``embeddings`` (N x D float32, L2-normalised) with
metadata naming the teacher and a SHA-256 over the ordered list of sample keys (file paths
or record ids), which is written next to it as ``<cache>.keys.txt``. A cache is reused only
if teacher identity, keys and count all match, so a changed dataset or teacher is never
silently trained against stale targets. In a cache *folder*, a dataset whose keys are all held
by another cache of the same teacher (a federated site's share of centrally embedded images)
takes its rows from there. Samples that could not be read when the cache was
built have all-zero targets, which give zero gradient (they are ignored, not fatal).

Teachers: any ``Callable[[Tensor], Tensor]`` taking RGB ``B x 3 x H x W`` in [0, 1], a
facepriv checkpoint path (``FaceRecognizer.load``, its ``embed``), or a judge spec
(``dlib``, an ArcFace ``.onnx`` file) resolved through ``facepriv.judges``. ``distill.cache`` may
be a file or a folder (one file per dataset, named by the hash of its sample keys). Under torchrun every rank embeds its share of the images and rank 0 merges.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from facepriv.io import atomic_path, atomic_write

from .batches import collate_samples, images_to_float
from .components import dataset_keys
from .config import TrainConfig
from .distributed import DistEnv, barrier

log = logging.getLogger(__name__)

CACHE_FORMAT = "facepriv-teacher-embeddings"
Teacher = Callable[[Tensor], Tensor]


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def keys_sha256(keys: list[str]) -> str:
    h = hashlib.sha256()
    for k in keys:
        h.update(k.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()


def teacher_identity(teacher: Any) -> str:
    """A stable description of the teacher for cache validation."""
    ident = getattr(teacher, "teacher_id", None)
    if ident:
        return str(ident)
    if isinstance(teacher, (str, Path)):
        return f"checkpoint:{Path(teacher).name}:sha256={file_sha256(teacher)}"
    fn = getattr(teacher, "__func__", teacher)
    name = getattr(fn, "__qualname__", type(teacher).__qualname__)
    return f"callable:{getattr(fn, '__module__', '?')}.{name}"


def resolve_teacher(spec: str | os.PathLike[str], device: torch.device) -> Teacher:
    """A teacher from its config string: a facepriv checkpoint file, or a judge spec.

    Judge specs (``dlib``, ``path/to/arcface.onnx``; see ``facepriv.judges.build_judge``) give a
    pretrained recogniser the defender did not train itself, e.g. the dlib ResNet that ships
    with ``face_recognition_models``: the realistic "we already own an RGB face model" case.
    """
    spec_s = str(spec)
    if spec_s.startswith("pack:"):
        return PackTeacher(spec_s[len("pack:"):])
    if Path(spec_s).is_file() and not spec_s.lower().endswith(".onnx"):
        return load_checkpoint_teacher(spec_s, device)
    try:
        from facepriv.judges import build_judge
    except ImportError as exc:  # pragma: no cover - eval ships with facepriv
        raise ValueError(f"distill.teacher {spec_s!r}: not a checkpoint file, and facepriv.judges is unavailable") from exc
    judge = build_judge(spec_s, device=str(device))

    @torch.no_grad()
    def embed(images: Tensor) -> Tensor:
        return judge.embed(images.float().cpu()).to(device)

    described = judge.describe()
    embed.teacher_id = "judge:" + json.dumps({k: described[k] for k in sorted(described) if k != "models_dir"},
                                             sort_keys=True)  # type: ignore[attr-defined]
    embed.judge = judge  # type: ignore[attr-defined]
    return embed


class PackTeacher:
    """Precomputed teacher embeddings from a pack (``facepriv data bundle``): ``distill.teacher:
    pack:DIR``, for training on the pack's ``train.rec`` where the teacher itself cannot run
    (a GPU machine without dlib, a cluster node without the raw images).

    It never runs a model: ``embeddings_for`` hands over the pack's rows, and only for the
    pack's own ``train.rec`` in its own record order (a dataset with another length or other
    sample keys gets an error naming both, never mismatched targets).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        from facepriv.data.pack import Pack

        self.pack = Pack(root)
        self.teacher_id = self.pack.teacher_id

    def embeddings_for(self, dataset: Dataset) -> Tensor:
        keys = dataset_keys(dataset)
        rec = Path(self.pack.root / "train.rec").resolve()
        expected = self.pack.manifest["train"]["images"]
        bad = [k for k in keys if Path(k.rpartition("#")[0]).resolve() != rec]
        if len(keys) != expected or bad:
            raise ValueError(f"distill.teacher pack:{self.pack.root}: its embeddings are for the {expected} records of "
                             f"{rec}; this dataset has {len(keys)} samples"
                             + (f" (first other sample: {bad[0]})" if bad else "")
                             + "; set data.format: recordio and data.path to the pack's train.rec")
        order = torch.tensor([int(k.rpartition("#")[2]) - 1 for k in keys], dtype=torch.long)
        return self.pack.teacher_embeddings()[order]

    def __call__(self, images: Tensor) -> Tensor:
        raise RuntimeError(f"pack:{self.pack.root} holds precomputed embeddings only; it cannot embed new images")


def load_checkpoint_teacher(path: str | os.PathLike[str], device: torch.device) -> Teacher:
    """A facepriv FaceRecognizer checkpoint as a teacher (its own frontend, eval mode)."""
    from facepriv.models import FaceRecognizer

    model = FaceRecognizer.load(path).to(device).eval()

    @torch.no_grad()
    def embed(images: Tensor) -> Tensor:
        return model.embed(images)

    embed.teacher_id = teacher_identity(path)  # type: ignore[attr-defined]
    embed.model = model  # type: ignore[attr-defined]
    return embed


@torch.no_grad()
def compute_teacher_embeddings(teacher: Teacher, dataset: Dataset, device: torch.device, *, indices: list[int] | None = None,
                               batch_size: int = 64, num_workers: int = 0, progress: bool = True) -> tuple[Tensor, Tensor]:
    """Embed ``dataset`` (a SafeDataset: items ``(image, label, index)`` or None).

    Returns ``(indices, embeddings)``; unreadable samples get a zero row.
    """
    from tqdm import tqdm

    subset = Subset(dataset, indices) if indices is not None else dataset
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_samples)
    if isinstance(teacher, nn.Module):
        teacher.eval()
    all_idx, all_emb = [], []
    dim: int | None = None
    for batch in tqdm(loader, desc="teacher embeddings", unit="batch", disable=not progress):
        if batch.labels.numel() == 0:
            continue
        emb = teacher(images_to_float(batch.images.to(device)))
        if not isinstance(emb, Tensor) or emb.dim() != 2 or emb.shape[0] != batch.labels.numel():
            raise ValueError(f"teacher must return a (B, D) tensor for B images, got "
                             f"{tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__}")
        if not bool(torch.isfinite(emb).all()):
            raise ValueError("teacher returned NaN/inf embeddings")
        dim = emb.shape[1]
        all_idx.append(batch.indices.clone())
        all_emb.append(F.normalize(emb.float(), dim=1).cpu())
    if dim is None:
        raise ValueError("teacher embeddings: no readable training sample")
    return torch.cat(all_idx), torch.cat(all_emb)


class DistillTargets:
    """Teacher embeddings for every training sample, looked up by dataset index."""

    def __init__(self, embeddings: Tensor, teacher_id: str, keys_hash: str, cache: Path | None, device: torch.device) -> None:
        self.embeddings = embeddings.to(device)
        self.teacher_id = teacher_id
        self.keys_hash = keys_hash
        self.cache = cache

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def targets(self, indices: Tensor) -> Tensor:
        return self.embeddings[indices.to(self.embeddings.device)]

    def check_embedding_size(self, student_dim: int) -> None:
        if student_dim != self.dim:
            raise ValueError(f"distillation: the teacher's embeddings have {self.dim} dimensions, the student's "
                             f"{student_dim}; set model.embedding_size: {self.dim}")

    def identity(self) -> dict[str, Any]:
        return {"teacher": self.teacher_id, "keys_sha256": self.keys_hash, "cache": str(self.cache) if self.cache else None}

    # ------------------------------------------------------------------ cache
    @staticmethod
    def read_cache(path: Path, teacher_id: str, keys_hash: str, n: int) -> Tensor | None:
        """The cached embeddings if they match this teacher and dataset, else None."""
        from safetensors import safe_open

        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                if meta.get("format") != CACHE_FORMAT:
                    log.warning("%s is not a teacher-embedding cache; recomputing", path)
                    return None
                if meta.get("teacher") != teacher_id or meta.get("keys_sha256") != keys_hash or int(meta.get("num_samples", -1)) != n:
                    log.warning("teacher cache %s is for another teacher or dataset; recomputing", path)
                    return None
                emb = f.get_tensor("embeddings")
        except Exception as exc:  # noqa: BLE001 - a corrupt cache is recomputed, not fatal
            log.warning("cannot read teacher cache %s (%s); recomputing", path, exc)
            return None
        if emb.shape[0] != n or not bool(torch.isfinite(emb).all()):
            log.warning("teacher cache %s has a bad shape or NaNs; recomputing", path)
            return None
        return emb

    @staticmethod
    def read_covering_cache(folder: Path, teacher_id: str, keys: list[str]) -> Tensor | None:
        """Rows for ``keys`` from a cache in ``folder`` by the same teacher that holds all of them.

        A cache is used only if its key file matches the SHA-256 in its metadata, so a
        hand-edited or half-written key list never maps images to the wrong targets.
        """
        from safetensors import safe_open

        wanted = set(keys)
        for path in sorted(folder.glob("teacher_*.safetensors")):
            keys_path = path.with_suffix(".keys.txt")
            try:
                with safe_open(str(path), framework="pt", device="cpu") as f:
                    meta = f.metadata() or {}
                    if meta.get("format") != CACHE_FORMAT or meta.get("teacher") != teacher_id:
                        continue
                    theirs = keys_path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
                    if keys_sha256(theirs) != meta.get("keys_sha256") or not wanted <= set(theirs):
                        continue
                    position = {k: i for i, k in enumerate(theirs)}
                    emb = f.get_tensor("embeddings")[torch.tensor([position[k] for k in keys], dtype=torch.long)]
            except Exception as exc:  # noqa: BLE001 - an unreadable cache is skipped, not fatal
                log.warning("cannot read teacher cache %s (%s); skipping it", path, exc)
                continue
            if emb.shape[0] == len(keys) and bool(torch.isfinite(emb).all()):
                log.info("teacher embeddings of %d samples taken from %s", len(keys), path)
                return emb
        return None

    @staticmethod
    def write_cache(path: Path, embeddings: Tensor, teacher_id: str, keys: list[str], keys_hash: str) -> None:
        from safetensors.torch import save_file

        keys_path = path.with_suffix(".keys.txt")
        atomic_write(keys_path, "\n".join(keys) + "\n", errors="surrogateescape")
        meta = {"format": CACHE_FORMAT, "teacher": teacher_id, "keys_sha256": keys_hash,
                "num_samples": str(len(keys)), "dim": str(embeddings.shape[1]), "keys_file": keys_path.name}
        with atomic_path(path) as tmp:
            save_file({"embeddings": embeddings.contiguous()}, str(tmp), metadata=meta)

    # ------------------------------------------------------------------ building
    @classmethod
    def prepare(cls, cfg: TrainConfig, dataset: Dataset, *, teacher: Teacher | None, run_dir: Path | None,
                env: DistEnv, device: torch.device) -> DistillTargets:
        """Load the cache or compute it (sharded over ranks), then hold it on ``device``."""
        if teacher is None:
            if not cfg.distill.teacher:
                raise ValueError("distill.enabled needs distill.teacher (a facepriv checkpoint, 'dlib' or an "
                                 ".onnx file) or a teacher callable")
            teacher = resolve_teacher(cfg.distill.teacher, device)
        keys = dataset_keys(dataset)
        n = len(keys)
        khash = keys_sha256(keys)
        if cfg.distill.cache and (str(cfg.distill.cache).endswith(("/", os.sep)) or Path(cfg.distill.cache).is_dir()):
            # a folder: one file per dataset, so runs on different data (federated sites,
            # experiment arms) share the folder without overwriting each other's targets
            folder: Path | None = Path(cfg.distill.cache)
            cache = folder / f"teacher_{khash[:16]}.safetensors"
        elif cfg.distill.cache:
            folder, cache = None, Path(cfg.distill.cache)
        elif run_dir is not None:
            folder, cache = None, run_dir / "teacher_embeddings.safetensors"
        else:
            folder, cache = None, None
        tid = teacher_identity(teacher)
        emb = cls.read_cache(cache, tid, khash, n) if cache is not None else None
        if emb is None and folder is not None and cache is not None:
            # a folder cache: a federated site's images are a subset of what the data owner
            # may already have embedded centrally; take their rows instead of re-running the teacher
            emb = cls.read_covering_cache(folder, tid, keys)
            if emb is not None and env.is_main:
                cls.write_cache(cache, emb, tid, keys, khash)
        if emb is None and hasattr(teacher, "embeddings_for"):  # precomputed rows (a pack): no model runs
            emb = teacher.embeddings_for(dataset)
        if emb is None:
            shard = list(range(env.rank, n, env.world_size))
            idx, part = compute_teacher_embeddings(teacher, dataset, device, indices=shard, batch_size=cfg.distill.batch_size,
                                                   num_workers=cfg.data.num_workers, progress=env.is_main)
            emb = _gather_rows(idx, part, n, env, device)
            if cache is not None and env.is_main:
                cls.write_cache(cache, emb, tid, keys, khash)
                log.info("teacher embeddings (%d x %d) cached at %s", n, emb.shape[1], cache)
            barrier()
        if cfg.distill.center:
            emb = center_embeddings(emb)
        return cls(emb, tid, khash, cache, device)


def center_embeddings(emb: Tensor) -> Tensor:
    """Subtract the mean teacher embedding (over readable samples) and re-normalise.

    Why: identity lives in how embeddings *differ*. Some recognisers' embeddings share a
    large common component — the dlib ResNet's mean embedding over LFW-half has norm 0.91
    and two random faces have cosine 0.83 on average — so a cosine loss against raw targets
    mostly rewards the student for reproducing that one direction (measured: a PartialFace
    student at chance level after 1.2 epochs). After centering, random pairs have cosine ~0
    and the whole loss is about identity. Zero rows (unreadable samples) stay zero.
    """
    valid = emb.abs().sum(dim=1) > 0
    if int(valid.sum()) < 2:
        return emb
    out = emb.clone()
    mean = emb[valid].mean(dim=0, keepdim=True)
    out[valid] = F.normalize(emb[valid] - mean, dim=1)
    return out


def _gather_rows(idx: Tensor, part: Tensor, n: int, env: DistEnv, device: torch.device) -> Tensor:
    """Assemble the full N x D table from every rank's rows (zeros for unreadable samples)."""
    full = torch.zeros(n, part.shape[1], dtype=torch.float32)
    full[idx] = part
    if env.distributed:
        import torch.distributed as dist

        t = full.to(device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)  # rows are disjoint across ranks
        full = t.cpu()
    return full
