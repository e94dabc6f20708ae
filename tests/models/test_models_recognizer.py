"""FaceRecognizer: forward/embed semantics, checkpoints (torch + safetensors), safety."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facepriv.frontends.base import Frontend, validate_images
from facepriv.models import (
    ChannelStandardize,
    CheckpointError,
    FaceRecognizer,
    UnsafeCheckpointError,
    build_backbone,
    read_checkpoint,
)

BACKBONE = {"name": "mobilefacenet", "width": 0.0625}


class ToyFrontend(Frontend):
    """Stand-in frontend: a secret-keyed channel mix, a trainable gain, r views in training."""

    name = "toy"
    secret_keys = ("secret",)

    def __init__(self, secret: int = 0, views: int = 2, channels: int = 27) -> None:
        super().__init__()
        self.secret, self.views, self.channels = int(secret), int(views), int(channels)
        g = torch.Generator().manual_seed(self.secret)
        self.register_buffer("mix", torch.randn(channels, 3, generator=g), persistent=False)
        self.gain = nn.Parameter(torch.ones(channels))

    @property
    def out_channels(self) -> int:
        return self.channels

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "secret": self.secret, "views": self.views, "channels": self.channels}

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        validate_images(images)
        z = torch.einsum("cd,bdhw->bchw", self.mix, images) * self.gain[:, None, None] * 50 + 10
        if self.training and self.views > 1:
            z = torch.cat([z + 0.01 * v for v in range(self.views)]).reshape(self.views, *z.shape)
            z = z.transpose(0, 1).reshape(-1, *z.shape[2:])  # views of one image stay together
        return z

    def expand_labels(self, labels: Tensor) -> Tensor:
        return labels.repeat_interleave(self.views) if self.training and self.views > 1 else labels


def toy_factory(config: dict[str, Any]) -> Frontend:
    assert config["name"] == "toy"
    return ToyFrontend(**{k: v for k, v in config.items() if k != "name"})


def _model(secret: int = 1234, input_norm: bool = True) -> FaceRecognizer:
    torch.manual_seed(0)
    frontend = ToyFrontend(secret)
    backbone = build_backbone({**BACKBONE, "in_channels": frontend.out_channels})
    norm = ChannelStandardize(frontend.out_channels) if input_norm else None
    return FaceRecognizer(frontend, backbone, norm)


def _images(n: int = 2, seed: int = 0) -> Tensor:
    return torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(seed))


def _trained(model: FaceRecognizer) -> FaceRecognizer:
    """Calibrate and take one optimiser step so the weights differ from a fresh build."""
    images, labels = _images(2, 1), torch.tensor([0, 1])
    model.calibrate_input_norm([(images, labels)])
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    emb = model(images, labels)
    target = F.one_hot(model.expand_labels(labels), 512).float()
    (-(F.normalize(emb) * target).sum()).backward()
    opt.step()
    return model


def test_forward_views_and_embed() -> None:
    model = _model()
    images, labels = _images(3), torch.tensor([5, 6, 7])
    model.train()
    out = model(images, labels)
    assert out.shape == (6, 512)  # 2 views per image in training mode
    assert model.expand_labels(labels).tolist() == [5, 5, 6, 6, 7, 7]
    emb = model.embed(images)
    assert emb.shape == (3, 512)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert model.training  # embed restored the mode
    assert not emb.requires_grad
    chunked = model.embed(images, batch_size=2)
    assert torch.allclose(chunked, emb, atol=1e-5)


def test_flip_test_sums_raw_embeddings() -> None:
    model = _model().eval()
    images = _images(2)
    with torch.no_grad():
        expected = F.normalize(model(images) + model(images.flip(-1)), dim=1)
    got = model.embed(images, flip=True)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, model.embed(images), atol=1e-3)


def test_frontend_backbone_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="emits 27 channels but the backbone expects in_channels=3"):
        FaceRecognizer(ToyFrontend(), build_backbone({**BACKBONE, "in_channels": 3}))
    with pytest.raises(ValueError, match="input_norm has 3 channels"):
        FaceRecognizer(ToyFrontend(), build_backbone({**BACKBONE, "in_channels": 27}), ChannelStandardize(3))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_round_trip(tmp_path: Path, suffix: str) -> None:
    model = _trained(_model())
    extra = {"step": 1200, "metrics": {"lfw": 0.9917, "names": ["a", "b"]}, "epsilon": 3.5, "ema": torch.arange(3.0), "np": np.float64(0.5)}
    path = model.save(tmp_path / f"model{suffix}", extra=extra)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # atomic write left no temp file

    loaded = FaceRecognizer.load(path, frontend_factory=toy_factory)
    images = _images(2, 9)
    assert torch.equal(loaded.embed(images), model.embed(images))
    assert loaded.config == model.config
    assert loaded.config["frontend"]["secret"] == 1234  # secrets travel in the checkpoint
    assert bool(loaded.input_norm.calibrated)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded.extra["step"] == 1200 and loaded.extra["metrics"] == {"lfw": 0.9917, "names": ["a", "b"]}
    assert torch.equal(loaded.extra["ema"], torch.arange(3.0)) and loaded.extra["np"] == 0.5
    info = read_checkpoint(path)
    assert info["facepriv_version"] and info["torch_version"] == str(torch.__version__)


@pytest.mark.parametrize(
    ("fcfg", "suffix"),
    [({"name": "dct"}, ".pt"), ({"name": "partialface", "inference_seed": 3}, ".safetensors")],
)
def test_round_trip_with_real_frontends(tmp_path: Path, fcfg: dict[str, Any], suffix: str) -> None:
    # in-tree module: a broken import must fail here, never skip
    from facepriv.frontends import build_frontend  # noqa: F401
    images = _images(2, 3)
    model = FaceRecognizer.from_config({"frontend": fcfg, "backbone": BACKBONE, "input_norm": True})
    model.eval().calibrate_input_norm([images])
    path = model.save(tmp_path / f"model{suffix}")
    loaded = FaceRecognizer.load(path)  # default factory: facepriv.frontends.build_frontend
    assert loaded.config == model.config
    if fcfg["name"] == "partialface":
        # secret key and seeded inference stream come back: two loads embed identically
        assert loaded.config["frontend"]["secret_seed"] == model.frontend.config["secret_seed"]
        assert torch.equal(loaded.embed(images), FaceRecognizer.load(path).embed(images))
    else:
        assert torch.equal(loaded.embed(images), model.embed(images))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    # 1. a torch.save zip whose payload runs a command on unpickling
    evil_zip = tmp_path / "evil.pt"
    torch.save({"format": "facepriv.FaceRecognizer", "format_version": 1, "x": _Evil(marker)}, evil_zip)
    # 2. raw pickle streams (protocol 2 reaches the GLOBAL check; 5 fails on its framing)
    evil_raw = tmp_path / "evil.pkl"
    evil_raw.write_bytes(pickle.dumps({"x": _Evil(marker)}, protocol=2))
    evil_raw5 = tmp_path / "evil5.pkl"
    evil_raw5.write_bytes(pickle.dumps({"x": _Evil(marker)}, protocol=5))
    # 3. a genuine checkpoint with the payload smuggled into a nested value
    model = _model()
    good = model.save(tmp_path / "good.pt")
    data = torch.load(good, weights_only=True)
    data["extra"] = {"note": _Evil(marker)}
    evil_nested = tmp_path / "nested.pt"
    torch.save(data, evil_nested)
    for path in (evil_zip, evil_raw, evil_raw5, evil_nested):
        with pytest.raises(UnsafeCheckpointError, match="refusing to load") as info:
            FaceRecognizer.load(path, frontend_factory=toy_factory)
        assert str(path) in str(info.value)
        if path != evil_raw5:
            assert "system" in str(info.value)  # names what it refused
    assert not marker.exists()
    # sanity check of the test itself: unrestricted pickle *would* run the payload
    pickle.loads(evil_raw.read_bytes())
    assert marker.exists()


def test_version_and_format_mismatch(tmp_path: Path) -> None:
    model = _model()
    path = model.save(tmp_path / "m.pt")
    data = torch.load(path, weights_only=True)
    data["format_version"] = 99
    torch.save(data, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=r"future\.pt: checkpoint format version 99 was written by a newer facepriv"):
        FaceRecognizer.load(tmp_path / "future.pt", frontend_factory=toy_factory)

    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match=r"bare\.pt: not a facepriv recogniser checkpoint"):
        FaceRecognizer.load(tmp_path / "bare.pt", frontend_factory=toy_factory)

    from safetensors import safe_open
    from safetensors.torch import save_file

    st = model.save(tmp_path / "m.safetensors")
    with safe_open(str(st), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "future.safetensors"), metadata={**meta, "format_version": "2"})
    with pytest.raises(CheckpointError, match="format version 2 was written by a newer facepriv"):
        FaceRecognizer.load(tmp_path / "future.safetensors", frontend_factory=toy_factory)
    save_file(tensors, str(tmp_path / "other.safetensors"), metadata={"format": "something-else"})
    with pytest.raises(CheckpointError, match=r"other\.safetensors: not a facepriv recogniser checkpoint"):
        FaceRecognizer.load(tmp_path / "other.safetensors", frontend_factory=toy_factory)

    # weights that do not fit the config
    cfg = json.loads(meta["config"])
    cfg["backbone"]["width"] = 0.25
    save_file(tensors, str(tmp_path / "mismatch.safetensors"), metadata={**meta, "config": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match="weights do not match"):
        FaceRecognizer.load(tmp_path / "mismatch.safetensors", frontend_factory=toy_factory)


def test_corrupt_truncated_and_missing_files(tmp_path: Path) -> None:
    model = _model()
    for suffix in (".pt", ".safetensors"):
        path = model.save(tmp_path / f"m{suffix}")
        blob = path.read_bytes()
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(blob[: len(blob) // 2])
        with pytest.raises(CheckpointError, match=str(cut)):
            FaceRecognizer.load(cut, frontend_factory=toy_factory)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello, not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.bin: not a facepriv checkpoint"):
        FaceRecognizer.load(junk)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        FaceRecognizer.load(tmp_path / "missing.pt")


def test_save_refuses_non_plain_extra(tmp_path: Path) -> None:
    model = _model()
    with pytest.raises(TypeError, match=r"extra\['where'\]: PosixPath is not a plain type"):
        model.save(tmp_path / "m.pt", extra={"where": tmp_path})
    with pytest.raises(TypeError, match=r"extra\['n'\]: int64"):
        model.save(tmp_path / "m.safetensors", extra={"n": np.int64(3)})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_renamed_safetensors_is_refused_by_name(tmp_path: Path) -> None:
    """A file that claims to be safetensors is never handed to the unpickler."""
    marker = tmp_path / "PWNED"
    good = _model().save(tmp_path / "good.pt")
    disguised = tmp_path / "model.safetensors"
    disguised.write_bytes(good.read_bytes())  # a valid torch checkpoint, renamed
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(pickle.dumps({"x": _Evil(marker)}, protocol=2))
    for path in (disguised, raw):
        with pytest.raises(CheckpointError, match=rf"{path.name}: named \.safetensors but is not a safetensors file") as info:
            FaceRecognizer.load(path, frontend_factory=toy_factory)
        assert "\n" not in str(info.value)  # one line, naming the file
    assert not marker.exists()
    FaceRecognizer.load(good, frontend_factory=toy_factory)  # the same bytes load under their honest name


def test_unpickling_is_refused_on_torch_with_known_weights_only_bypasses(tmp_path: Path, monkeypatch) -> None:
    from facepriv.models import checkpoint as mc

    model = _model()
    pt, st = model.save(tmp_path / "m.pt"), model.save(tmp_path / "m.safetensors")
    for version in ("2.5.1", "2.9.1+cu121"):
        monkeypatch.setattr(torch, "__version__", version)
        with pytest.raises(UnsafeCheckpointError, match=r"m\.pt: refusing to unpickle .*torch>=2\.10"):
            FaceRecognizer.load(pt, frontend_factory=toy_factory)
        FaceRecognizer.load(st, frontend_factory=toy_factory)  # safetensors needs no unpickler
    monkeypatch.undo()
    with pytest.raises(UnsafeCheckpointError):
        mc.check_torch_unpickler(pt, "garbage")  # unparseable counts as too old
    for version in ("2.10.0", "2.13.0+cpu", "3.0.0a0"):
        mc.check_torch_unpickler(pt, version)


def test_the_dependency_floor_matches_the_loader_guard() -> None:
    """pyproject.toml must not allow a torch that checkpoint loading refuses."""
    import re

    from facepriv.models.checkpoint import MIN_SAFE_TORCH

    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=(\d+)\.(\d+)', text)
    assert floor is not None and (int(floor.group(1)), int(floor.group(2))) >= MIN_SAFE_TORCH
