"""Gradient inversion of a federated site's update: one face comes back from an unprotected
model's update (PSNR threshold), with or without the server knowing the site's head, and
does not under strong DP noise; the site's DP mechanism clips and noises as specified."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from facepriv.data import SyntheticFaces
from facepriv.frontends import PartialFace, RGBFrontend
from facepriv.models import ChannelStandardize, FaceRecognizer

from facepriv.eval.attacks import DPSpec, GradientConfig, SiteSpec, invert_update, psnr, site_update
from facepriv.eval.attacks.gradient import _head, merge_views, site_model
from facepriv.eval.attacks.views import Placed

SIZE = 16


class SigmoidNet(nn.Module):
    """The classic gradient-inversion sanity model (DLG / Inverting Gradients): two
    convolutions with sigmoid activations and a linear embedding layer."""

    def __init__(self, in_channels: int = 3, dim: int = 16, width: int = 16) -> None:
        super().__init__()
        self.config = {"in_channels": in_channels, "embedding_size": dim, "input_size": SIZE}
        self.net = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.Sigmoid(),
                                 nn.Conv2d(width, width, 3, stride=2, padding=1), nn.Sigmoid(), nn.Flatten(),
                                 nn.Linear(width * (SIZE // 2) ** 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    arr = SyntheticFaces(4, 1, seed=0, image_size=32, first_identity=500).as_array()
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2))).float() / 255.0
    return torch.nn.functional.interpolate(x, size=SIZE, mode="area")


def _attack(faces, head_knowledge: str, dp: DPSpec | None) -> tuple[float, dict]:
    torch.manual_seed(0)
    model = FaceRecognizer(RGBFrontend(), SigmoidNet(), ChannelStandardize(3), image_size=SIZE)
    model.calibrate_input_norm([faces])
    cfg = GradientConfig(steps=600, lr=0.1, tv_weight=1e-3, head_knowledge=head_knowledge)
    head = _head(cfg, 16, 4)
    site = SiteSpec(batch_size=1, local_steps=1, lr=0.1, dp=dp)
    x, labels = faces[:1], torch.arange(1)
    observed, rows = site_update(model, head, x, labels, site, torch.Generator().manual_seed(0))
    dummies, info = invert_update(model, head if head_knowledge == "known" else None, observed, site, 1, 1, labels,
                                  cfg, image_domain=True, row_shape=tuple(rows.shape[1:]), image_size=SIZE)
    return float(psnr(dummies, x)), info["final"]


@pytest.mark.parametrize("head_knowledge", ["known", "unknown"])
def test_single_image_comes_back_from_an_unprotected_update(faces, head_knowledge):
    value, final = _attack(faces, head_knowledge, None)
    grey = float(psnr(torch.full_like(faces[:1], 0.5), faces[:1]))
    assert value > 22.0 and value > grey + 8, (value, grey)
    assert final["cosine_distance"] < 1e-3


def test_strong_dp_noise_defeats_the_inversion(faces):
    value, final = _attack(faces, "known", DPSpec(clip=1.0, noise_multiplier=1.0))
    assert value < 15.0
    assert final["cosine_distance"] > 0.5  # nothing matches the noise-dominated update


def test_site_dp_clips_each_image_and_adds_the_stated_noise(faces):
    cfg = GradientConfig(backbone={"name": "iresnet", "layers": [1, 1, 1, 1], "width": 0.125, "embedding_size": 16,
                                   "norm": "group", "norm_groups": 4})
    model = site_model(RGBFrontend(), cfg, faces, SIZE)
    head = _head(cfg, 16, 4)
    x, labels = faces[:2], torch.arange(2)
    clipped, _ = site_update(model, head, x, labels, SiteSpec(2, 1, 1.0, DPSpec(1e-3, 0.0)), torch.Generator())
    norm = torch.sqrt(sum(d.pow(2).sum() for d in clipped.values()))
    assert norm <= 1e-3 * 1.0001  # mean of two gradients, each clipped to 1e-3 (lr 1)
    noisy, _ = site_update(model, head, x, labels, SiteSpec(2, 1, 1.0, DPSpec(1e-3, 1e3)), torch.Generator().manual_seed(1))
    n_params = sum(d.numel() for d in noisy.values())
    per_coord = torch.cat([d.flatten() for d in noisy.values()]).std()
    assert per_coord == pytest.approx(1e-3 * 1e3 / 2, rel=0.05) and n_params > 1000  # sigma C / B per coordinate
    # the frontend the site trains with is a private copy: the caller's frontend is untouched
    assert all(not p.requires_grad for p in model.frontend.parameters())


def test_partialface_update_rows_are_training_views_and_merge(faces):
    cfg = GradientConfig(backbone={"name": "iresnet", "layers": [1, 1, 1, 1], "width": 0.125, "embedding_size": 16,
                                   "norm": "group", "norm_groups": 4}, steps=2)
    fe = PartialFace(secret_seed=3)
    model = site_model(fe, cfg, faces, SIZE)
    head = _head(cfg, 16, 4)
    observed, rows = site_update(model, head, faces[:2], torch.arange(2), SiteSpec(2, 2, 0.1), torch.Generator())
    assert rows.shape[0] == 2 * fe.sample_multiplier and rows.shape[1] == 27
    assert set(observed) == {n for n, _ in model.named_parameters() if n.startswith("backbone.")}
    dummies, _ = invert_update(model, None, observed, SiteSpec(2, 2, 0.1), 2, fe.sample_multiplier, None, cfg,
                               image_domain=False, row_shape=tuple(rows.shape[1:]), image_size=SIZE)
    assert dummies.shape == rows.shape
    # three views with disjoint channels merge into one observation holding all of them
    mask = torch.zeros(6, 192)
    for i in range(6):
        mask[i, i * 3 : i * 3 + 3] = 1
    values = torch.randn(6, 192, 2, 2) * mask.view(6, 192, 1, 1)
    merged = merge_views(Placed("dct", values, mask), 3)
    assert merged.mask.shape == (2, 192) and merged.mask.sum(1).tolist() == [9, 9]
    assert torch.equal(merged.values[0], values[:3].sum(0))


def test_gradient_config_errors():
    with pytest.raises(ValueError, match="head_knowledge"):
        GradientConfig(head_knowledge="psychic")
    with pytest.raises(ValueError, match="site_classes"):
        GradientConfig(batch_sizes=[1, 32])
    with pytest.raises(ValueError, match="noise_multiplier"):
        DPSpec(clip=1.0, noise_multiplier=-1)
    cfg = GradientConfig(dp=[None, {"clip": 2.0, "noise_multiplier": 0.5}], batch_sizes=[1, 2])
    assert [s.label() for s in cfg.sites()][-1] == "batch 2, 1 local step(s), DP clip 2, noise x0.5"


def test_run_attacks_inverts_a_given_model_without_touching_it(faces):
    from facepriv.eval.attacks import AttackConfig, FaceSet, run_attacks, split_victims

    arr = SyntheticFaces(6, 2, seed=0, image_size=32, first_identity=800).as_array()
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2))).float()
    x = torch.nn.functional.interpolate(x, size=SIZE, mode="area").round().to(torch.uint8)
    sets = [FaceSet(x[i:i + 6], torch.arange(3).repeat_interleave(2), [f"{r}{k}" for k in range(3)],
                    [f"{r}{k // 2}/{k % 2}.png" for k in range(6)], r) for i, r in ((0, "aux"), (6, "victims"))]
    fe = PartialFace(secret_seed=3)
    model = FaceRecognizer(fe, SigmoidNet(in_channels=27), ChannelStandardize(27), image_size=SIZE).eval()
    before = fe._train_generator.get_state().clone()
    cfg = AttackConfig(attacks=["gradient"], knowledge="public", grid_victims=0, progress=False, bootstrap=0,
                       gradient={"batch_sizes": [1], "dp": [None], "steps": 2, "max_victims": 2})
    res = run_attacks(fe, sets[0], split_victims(sets[1]), config=cfg, model=model)
    (row,) = res["gradient"]["settings"]
    assert res["gradient"]["dummies"] == "protected tensor" and res["gradient"]["view"] == "secret"
    assert row["image"]["psnr_db"]["n"] == 2 and row["site"]["batch_size"] == 1
    # the site trained a private copy: the caller's model and frontend are as they were
    assert not model.training and not fe.training and torch.equal(fe._train_generator.get_state(), before)
