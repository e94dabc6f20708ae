"""Margin losses (known values), cosine classifier, its per-sample gradient, build_head."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facepriv.models import (
    ArcFaceLoss,
    CombinedMarginLoss,
    CosFaceLoss,
    CosineClassifier,
    PartialFC,
    SoftmaxHead,
    build_head,
    build_margin,
    cosine_classifier_grad_sample,
)


def _ce(logits: list[float], target: int) -> float:
    m = max(logits)
    return m + math.log(sum(math.exp(v - m) for v in logits)) - logits[target]


def test_arcface_known_logit_and_loss() -> None:
    cos = torch.tensor([[0.5, 0.2, -0.3]], dtype=torch.float64)
    loss_fn = ArcFaceLoss(s=64.0, m=0.5)
    logits = loss_fn.margin_logits(cos, torch.tensor([0]))
    # theta = 60 degrees; cos(pi/3 + 0.5) by hand
    expected_target = 64.0 * math.cos(math.pi / 3 + 0.5)
    assert logits[0, 0].item() == pytest.approx(expected_target, abs=1e-9)
    assert logits[0, 0].item() == pytest.approx(64 * 0.0235965, abs=1e-5)  # sin(pi/2 - 1.5472)
    assert logits[0, 1:].tolist() == pytest.approx([64 * 0.2, 64 * -0.3])
    loss = loss_fn(cos, torch.tensor([0]))
    assert loss.item() == pytest.approx(_ce([expected_target, 12.8, -19.2], 0), abs=1e-9)


def test_arcface_fallback_branch_past_pi_minus_m() -> None:
    loss_fn = ArcFaceLoss(s=64.0, m=0.5)
    # cos = -0.9: theta = 2.69 > pi - 0.5 = 2.64, so insightface's cos - m*sin(m) applies
    cos = torch.tensor([[-0.9, 0.1]], dtype=torch.float64)
    logits = loss_fn.margin_logits(cos, torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(64 * (-0.9 - 0.5 * math.sin(0.5)), abs=1e-9)
    # just inside the boundary the cos(theta + m) branch is still used
    c = math.cos(math.pi - 0.5) + 1e-3
    inside = loss_fn.margin_logits(torch.tensor([[c, 0.0]], dtype=torch.float64), torch.tensor([0]))
    assert inside[0, 0].item() == pytest.approx(64 * math.cos(math.acos(c) + 0.5), abs=1e-6)
    # the penalised target logit is monotone in cos over the whole range
    grid = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    phi = loss_fn.target_logit(grid)
    assert (phi[1:] >= phi[:-1]).all()
    assert (phi <= grid + 1e-12).all()  # a margin never helps the target


def test_margin_gradients_are_finite_at_the_poles() -> None:
    for loss_fn in (ArcFaceLoss(), CosFaceLoss(), CombinedMarginLoss(m1=1.2, m2=0.3, m3=0.1)):
        cos = torch.tensor([[1.0, -1.0, 0.3], [-1.0, 1.0, 0.0]], requires_grad=True)
        loss = loss_fn(cos, torch.tensor([0, 0]))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(cos.grad).all(), type(loss_fn).__name__


def test_cosface_known_values() -> None:
    cos = torch.tensor([[0.7, 0.1], [0.2, 0.4]], dtype=torch.float64)
    loss_fn = CosFaceLoss(s=30.0, m=0.35)
    logits = loss_fn.margin_logits(cos, torch.tensor([0, 1]))
    assert logits.flatten().tolist() == pytest.approx([30 * 0.35, 3.0, 6.0, 30 * 0.05])
    expected = (_ce([10.5, 3.0], 0) + _ce([6.0, 1.5], 1)) / 2
    assert loss_fn(cos, torch.tensor([0, 1])).item() == pytest.approx(expected, abs=1e-9)


def test_combined_margin_special_cases_and_general_form() -> None:
    cos = torch.rand(5, 4, dtype=torch.float64) * 2 - 1
    labels = torch.tensor([0, 1, 2, 3, 1])
    arc = ArcFaceLoss(s=32, m=0.4)
    assert torch.allclose(CombinedMarginLoss(32, 1.0, 0.4, 0.0).margin_logits(cos, labels), arc.margin_logits(cos, labels))
    cosface = CosFaceLoss(s=32, m=0.3)
    assert torch.allclose(CombinedMarginLoss(32, 1.0, 0.0, 0.3).margin_logits(cos, labels), cosface.margin_logits(cos, labels))
    # SphereFace-style m1: cos(2 * theta) for small theta, linear continuation past pi
    sphere = CombinedMarginLoss(s=1.0, m1=2.0, m2=0.0, m3=0.0)
    c = torch.tensor([0.9, 0.0], dtype=torch.float64)
    out = sphere.target_logit(c)
    assert out[0].item() == pytest.approx(math.cos(2 * math.acos(0.9)), abs=1e-9)
    # theta = pi/2 is exactly where 2 * theta reaches pi: value -1, continuous on both sides
    assert out[1].item() == pytest.approx(-1.0, abs=1e-6)
    eps = 1e-6
    both = sphere.target_logit(torch.tensor([eps, -eps], dtype=torch.float64))
    assert both[0].item() == pytest.approx(-1.0, abs=1e-4) and both[1].item() == pytest.approx(-1.0 - eps, abs=1e-9)


def test_ignored_labels() -> None:
    cos = torch.tensor([[0.5, 0.1], [0.3, 0.2]])
    loss_fn = ArcFaceLoss()
    logits = loss_fn.margin_logits(cos, torch.tensor([-1, 0]))
    assert torch.allclose(logits[0], 64 * cos[0])  # no margin on an ignored row
    only = loss_fn(cos[1:], torch.tensor([0]))
    assert torch.allclose(loss_fn(cos, torch.tensor([-1, 0])), only)
    none = loss_fn(cos.clone().requires_grad_(), torch.tensor([-1, -1]))
    assert none.item() == 0.0


def test_bad_labels_are_refused() -> None:
    cos = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"labels must be in \[-1, 2\]"):
        ArcFaceLoss()(cos, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="integer"):
        ArcFaceLoss()(cos, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        CosFaceLoss()(cos, torch.tensor([0]))
    with pytest.raises(ValueError, match="margin m"):
        ArcFaceLoss(m=4.0)


def test_cosine_classifier_logits_are_cosines() -> None:
    clf = CosineClassifier(8, 5)
    x = torch.randn(3, 8) * 100
    logits = clf(x)
    expected = F.cosine_similarity(x[:, None, :], clf.weight[None, :, :], dim=-1)
    assert torch.allclose(logits, expected, atol=1e-6)
    assert logits.abs().max() <= 1 + 1e-6


def _autograd_per_sample(clf: CosineClassifier, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    loss_fn = ArcFaceLoss(s=16, m=0.3)
    grads = []
    for i in range(x.shape[0]):
        clf.zero_grad()
        loss_fn(clf(x[i : i + 1]), labels[i : i + 1]).backward()
        grads.append(clf.weight.grad.clone())
    return torch.stack(grads)


def test_per_sample_grad_function_matches_autograd() -> None:
    torch.manual_seed(0)
    clf = CosineClassifier(6, 7).double()
    with torch.no_grad():
        clf.weight[3].mul_(1e-14)  # a row below F.normalize's eps takes the other branch
    x = torch.randn(5, 6, dtype=torch.float64) * 3
    labels = torch.tensor([0, 3, 6, 3, 1])
    expected = _autograd_per_sample(clf, x, labels)

    # (activations, backprops) exactly as a hook sees them: input and dL_i/dlogits_i
    logits = clf(x).detach().requires_grad_()
    loss_fn = ArcFaceLoss(s=16, m=0.3)
    per_sample_loss = torch.stack([loss_fn(logits[i : i + 1], labels[i : i + 1]) for i in range(5)])
    (backprops,) = torch.autograd.grad(per_sample_loss.sum(), logits)
    got = cosine_classifier_grad_sample(clf, [x], backprops)[clf.weight]
    assert got.shape == (5, 7, 6)
    assert torch.allclose(got, expected, rtol=1e-9, atol=1e-9 * expected.abs().max().item())


def test_per_sample_grad_function_with_sequence_dims() -> None:
    torch.manual_seed(1)
    clf = CosineClassifier(4, 3).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64)  # B x N x D: gradients sum over N
    target = torch.randn(2, 5, 3, dtype=torch.float64)
    expected = []
    for i in range(2):
        clf.zero_grad()
        (clf(x[i : i + 1]) * target[i : i + 1]).sum().backward()
        expected.append(clf.weight.grad.clone())
    got = cosine_classifier_grad_sample(clf, x, target)[clf.weight]
    assert torch.allclose(got, torch.stack(expected), atol=1e-12)


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_grad_sampler_registers_with_opacus() -> None:
    opacus = pytest.importorskip("opacus")
    from opacus.grad_sample import register_grad_sampler

    register_grad_sampler(CosineClassifier)(cosine_classifier_grad_sample)
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), CosineClassifier(5, 4))
    x, labels = torch.randn(3, 6), torch.tensor([0, 2, 3])
    loss_fn = CosFaceLoss(s=8, m=0.2)
    ref = []
    for i in range(3):  # reference: one backward per sample, before Opacus hooks exist
        model.zero_grad()
        loss_fn(model(x[i : i + 1]), labels[i : i + 1]).backward()
        ref.append(model[1].weight.grad.clone())
    model.zero_grad()
    gsm = opacus.GradSampleModule(model, loss_reduction="sum")
    logits = gsm(x)
    sum(loss_fn(logits[i : i + 1], labels[i : i + 1]) for i in range(3)).backward()
    assert torch.allclose(model[1].weight.grad_sample, torch.stack(ref), rtol=1e-5, atol=1e-4)
    assert torch.allclose(model[1].weight.grad_sample.sum(0), model[1].weight.grad, rtol=1e-5, atol=1e-4)


def test_build_head_and_config_round_trip() -> None:
    head = build_head({"type": "softmax", "margin": "cosface", "s": 30, "m": 0.4}, 16, 10)
    assert isinstance(head, SoftmaxHead)
    assert head.config == {"type": "softmax", "margin": "cosface", "s": 30.0, "m": 0.4, "embedding_size": 16, "num_classes": 10}
    again = build_head(head.config, 16, 10)
    assert again.config == head.config
    pfc = build_head({"type": "partial_fc", "sample_rate": 0.5, "margin": "combined", "m1": 1.0, "m2": 0.3, "m3": 0.1}, 16, 10)
    assert isinstance(pfc, PartialFC) and build_head(pfc.config, 16, 10).config == pfc.config
    assert build_head({}, 16, 10).config["margin"] == "arcface"
    x, y = torch.randn(4, 16, requires_grad=True), torch.tensor([1, 2, 3, 9])
    loss = head(x, y)
    loss.backward()
    assert loss.ndim == 0 and x.grad is not None
    with pytest.raises(ValueError, match="unknown keys"):
        build_head({"type": "softmax", "sample_rate": 0.1}, 16, 10)
    with pytest.raises(ValueError, match="num_classes"):
        build_head(head.config, 16, 11)
    with pytest.raises(ValueError, match="unknown margin"):
        build_margin({"margin": "sphereface"})
