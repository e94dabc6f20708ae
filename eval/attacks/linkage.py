"""Identity linkage without reconstruction: regress a judge's embedding from the protected tensor.

An attacker does not need a face to track a person: it needs a number that a face
recogniser would also give that person. With auxiliary faces of *other* people and an
independent recogniser (the identity judge: dlib, an ArcFace ONNX file, a checkpoint), it
trains a network that maps a protected tensor (read through its view, exactly as the
reconstruction attacks read it: ``facepriv.eval.attacks.views``) to the judge's embedding
of the *original* face, with a cosine loss. Then:

* **probe -> raw gallery**: a victim's intercepted query is embedded by the network and
  verified / identified against the judge's embeddings of the victim's raw photos (a
  gallery the attacker collected elsewhere). The figures (TPR@FPR, rank-1) are directly
  comparable with the reconstruction attacks', so the report puts both families in one table
  and the best attack per victim takes the maximum over both.
* **protected -> protected**: two protected queries of one person are linked through the
  network alone (probe and gallery both protected, both embedded by the network): a server
  that never sees a raw face can still recognise the same person across sessions.

Training reuses the learned attacks' loop (``facepriv.eval.attacks.learned.train_network``:
simulated protection with the attacker's randomness, checkpoints, exact resume, the
budget-doubling convergence check). The network (``EmbeddingRegressor``) is the decoder's
encoder half: the same channels-last 1x1 stem with the channel mask as a per-sample bias,
residual GroupNorm blocks with stride-2 down-sampling, then average pooling to a 4 x 4 grid
(position matters to a face embedding) and a linear map to the judge's embedding size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facepriv.eval.attacks.decoder import _Block
from facepriv.eval.attacks.learned import EvalFn, LearnedConfig, TrainedNetwork, train_network
from facepriv.eval.attacks.views import AttackerView, Placed

__all__ = ["EmbeddingRegressor", "LinkageConfig", "LinkageModel", "train_linkage"]

CHECKPOINT_FORMAT = "facepriv.attack_linkage"
POOL = 4


@dataclass
class LinkageConfig(LearnedConfig):
    """The linkage network's size and budget (fields of ``LearnedConfig``; cosine loss)."""

    loss: str = "cosine"
    depth: int = 4
    #: also link protected queries to protected queries (the gallery protected by the real frontend)
    protected_gallery: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in ("cosine", "mse"):
            raise ValueError(f"LinkageConfig: loss must be 'cosine' or 'mse', got {self.loss!r}")


class EmbeddingRegressor(nn.Module):
    """``(B, C, H, W)`` standardised observation + ``(B, S)`` mask -> ``(B, D)`` raw embedding."""

    def __init__(self, in_channels: int, side_channels: int, out_dim: int, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        if in_channels < 1 or out_dim < 1 or width < 2 or depth < 0:
            raise ValueError(f"EmbeddingRegressor: bad sizes in_channels={in_channels}, out_dim={out_dim}, "
                             f"width={width}, depth={depth}")
        self.cfg = {"in_channels": int(in_channels), "side_channels": int(side_channels), "out_dim": int(out_dim),
                    "width": int(width), "depth": int(depth)}
        self.stem = nn.Linear(in_channels, width)  # 1x1 stem on a channels-last view (see UNetDecoder)
        self.side = nn.Linear(side_channels, width, bias=False) if side_channels else None
        blocks: list[nn.Module] = []
        prev = width
        for i in range(depth + 1):
            ch = min(width * 2**i, width * 8)
            blocks.append(_Block(prev, ch))
            if i < depth:
                blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
            prev = ch
        self.blocks = nn.Sequential(*blocks)
        # where a feature sits matters to a face embedding: pool to a fixed 4x4 grid and keep it
        # (as IResNet's flatten + FC output layer does), rather than a global average
        self.pool = nn.AdaptiveAvgPool2d(POOL)
        self.head = nn.Linear(prev * POOL * POOL, out_dim)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.cfg)

    def forward(self, x: Tensor, side: Tensor | None = None) -> Tensor:
        h = self.stem(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.side is not None and side is not None:
            h = h + self.side(side).view(side.shape[0], -1, 1, 1)
        return self.head(self.pool(self.blocks(h)).flatten(1))


class LinkageModel(TrainedNetwork):
    """A trained regressor: placed observations -> unit embeddings in the judge's space."""

    def embed_placed(self, placed: Placed, batch_size: int = 32) -> Tensor:
        return F.normalize(self.apply_placed(placed, batch_size), dim=1)

    def embed(self, protected: Tensor, batch_size: int = 32) -> Tensor:
        return self.embed_placed(self.view.place(protected), batch_size)


def _targets_digest(targets: Tensor) -> str:
    return hashlib.sha256(targets.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def train_linkage(
    view: AttackerView,
    aux_images: Tensor,
    targets: Tensor,
    cfg: LinkageConfig,
    *,
    targets_flipped: Tensor | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    evaluate: EvalFn | None = None,
) -> LinkageModel:
    """Train (or resume) the embedding regressor for ``view``.

    ``targets``: the judge's unit embeddings ``(N, D)`` of ``aux_images``; ``targets_flipped``
    those of the horizontally flipped faces (needed when ``cfg.flip``: a flipped face has
    its own embedding).
    """
    if targets.dim() != 2 or targets.shape[0] != aux_images.shape[0]:
        raise ValueError(f"linkage targets must be one embedding per auxiliary image ({aux_images.shape[0]}), "
                         f"got shape {tuple(targets.shape)}")
    if cfg.flip and (targets_flipped is None or targets_flipped.shape != targets.shape):
        raise ValueError("linkage with flip augmentation needs the judge's embeddings of the flipped auxiliary faces")
    dev = torch.device(device)
    tgt = F.normalize(targets.float(), dim=1).to(dev)
    tgt_flip = F.normalize(targets_flipped.float(), dim=1).to(dev) if cfg.flip and targets_flipped is not None else tgt

    def loss(model: nn.Module, x: Tensor, side: Tensor, idx: Tensor, flip: Tensor, _images: Tensor) -> Tensor:
        i, f = idx.to(dev), flip.to(dev)
        want = torch.where(f.view(-1, 1), tgt_flip[i], tgt[i])
        pred = F.normalize(model(x, side).float(), dim=1)
        if cfg.loss == "cosine":
            return (1 - (pred * want).sum(1)).mean()
        return F.mse_loss(pred, want)

    extra = {"attack": "linkage", "targets": _targets_digest(targets),
             "targets_flipped": _targets_digest(targets_flipped) if cfg.flip and targets_flipped is not None else None}
    net = train_network(
        view, aux_images, cfg,
        build=lambda: EmbeddingRegressor(view.channels, view.channels, int(targets.shape[1]), cfg.width, cfg.depth),
        loss=loss, kind="linkage", checkpoint_format=CHECKPOINT_FORMAT, checkpoint=checkpoint, resume=resume,
        device=device, progress=progress, evaluate=evaluate, fingerprint_extra=extra, wrap=LinkageModel,
    )
    assert isinstance(net, LinkageModel)
    return net
