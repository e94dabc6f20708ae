"""Partial FC: sampling keeps positives, equals full softmax, and 2 ranks equal 1 process."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from facepriv.models import ArcFaceLoss, CosFaceLoss, PartialFC, SoftmaxHead


def _pair(num_classes: int, dim: int, sample_rate: float, margin=None, seed: int = 0) -> tuple[PartialFC, SoftmaxHead]:
    margin = margin or ArcFaceLoss(s=32.0, m=0.4)
    pfc = PartialFC(margin, dim, num_classes, sample_rate, seed=seed, distributed=False)
    full = SoftmaxHead(margin, dim, num_classes)
    with torch.no_grad():
        full.classifier.weight.copy_(pfc.weight)
    return pfc, full


def test_sample_rate_one_matches_full_softmax() -> None:
    torch.manual_seed(0)
    pfc, full = _pair(13, 16, 1.0)
    x = torch.randn(7, 16) * 3
    labels = torch.tensor([0, 5, 5, 12, -1, 7, 3])
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    l_pfc, l_full = pfc(x1, labels), full(x2, labels)
    l_pfc.backward()
    l_full.backward()
    assert torch.allclose(l_pfc, l_full, atol=1e-5)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)
    assert torch.allclose(pfc.weight.grad, full.classifier.weight.grad, rtol=1e-4, atol=1e-5)
    assert pfc.sampled_index.tolist() == list(range(13))


def test_exact_loss_where_probabilities_underflow() -> None:
    # s = 64 and confidently wrong samples: p(target) < float32's smallest normal, so a
    # log(clamp(p)) formulation would saturate; the log-sum-exp form stays exact.
    torch.manual_seed(1)
    pfc, full = _pair(4, 8, 1.0, margin=CosFaceLoss(s=64.0, m=0.35))
    with torch.no_grad():
        pfc.weight.copy_(torch.eye(4, 8))
        full.classifier.weight.copy_(pfc.weight)
    x = torch.eye(4, 8)[[1, 2]] * 5  # each sample sits on another class's centre
    labels = torch.tensor([0, 3])
    loss = pfc(x, labels)
    assert loss.item() > 80  # well beyond -log(1e-30) = 69
    assert torch.allclose(loss, full(x, labels), rtol=1e-6)


def test_sampling_keeps_every_positive() -> None:
    torch.manual_seed(2)
    pfc, full = _pair(40, 8, 0.1)  # num_sample = 4 ...
    labels = torch.tensor([1, 9, 9, 17, 25, 33, 39, -1])  # ... but 6 distinct positives
    x = torch.randn(8, 8, requires_grad=True)
    loss = pfc(x, labels)
    sampled = pfc.sampled_classes.tolist()
    assert set(labels[labels >= 0].tolist()) <= set(sampled)
    assert len(sampled) == 6 and sampled == sorted(sampled)

    pfc2, _ = _pair(40, 8, 0.5)
    labels2 = torch.tensor([3, 3, 30])
    pfc2(torch.randn(3, 8), labels2)
    assert len(pfc2.sampled_index) == 20 and {3, 30} <= set(pfc2.sampled_classes.tolist())

    # the sampled loss is the full-softmax loss restricted to the sampled centres
    index = pfc.sampled_index
    remap = {c: i for i, c in enumerate(index.tolist())}
    local = torch.tensor([remap.get(int(c), -1) for c in labels])
    cos = F.linear(F.normalize(x), F.normalize(full.classifier.weight[index]))
    ref = full.margin_loss(cos, local)
    assert torch.allclose(loss, ref, atol=1e-5)
    loss.backward()
    unsampled = torch.ones(40, dtype=torch.bool)
    unsampled[index] = False
    assert pfc.weight.grad[unsampled].abs().max() == 0  # exactly zero gradient off the sample
    assert pfc.weight.grad[index].abs().sum() > 0


def test_sampling_is_seeded_and_off_in_eval() -> None:
    labels = torch.tensor([4, 8])
    a, _ = _pair(50, 8, 0.2, seed=7)
    b, _ = _pair(50, 8, 0.2, seed=7)
    c, _ = _pair(50, 8, 0.2, seed=8)
    x = torch.randn(2, 8)
    a(x, labels), b(x, labels), c(x, labels)
    assert torch.equal(a.sampled_index, b.sampled_index)
    assert not torch.equal(a.sampled_index, c.sampled_index)
    a(x, labels)
    assert not torch.equal(a.sampled_index, b.sampled_index)  # fresh negatives every step
    a.eval()
    a(x, labels)
    assert len(a.sampled_index) == 50


def test_validation() -> None:
    pfc, _ = _pair(10, 8, 1.0)
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        pfc(torch.randn(2, 9), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must be in"):
        pfc(torch.randn(2, 8), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(ArcFaceLoss(), 8, 10, 0.0, distributed=False)
    assert pfc(torch.randn(2, 8), torch.tensor([-1, -1])).item() == 0.0


def test_two_processes_match_single_process_full_softmax(tmp_path: Path) -> None:
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    # spawned children unpickle the worker by module name, with the parent's sys.path
    here = str(Path(__file__).parent)
    sys.path.insert(0, here)
    try:
        worker = importlib.import_module("_models_pfc_worker")
        mp.spawn(worker.run, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=worker.WORLD, join=True)
    finally:
        sys.path.remove(here)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(worker.WORLD)]
    data = worker.problem()
    rows = [slice(0, 3), slice(3, 5)]

    # reference: one process, full softmax on the concatenated batch
    full = SoftmaxHead(worker.margin(), worker.DIM, worker.CLASSES).double()
    with torch.no_grad():
        full.classifier.weight.copy_(data["weight"])
    emb = data["embeddings"].clone().requires_grad_()
    ref_loss = full(emb, data["labels"])
    ref_loss.backward()

    res = [r["full"] for r in results]
    for r in res:  # every rank reports the global loss
        assert torch.allclose(r["loss"], ref_loss, atol=1e-12)
        assert torch.allclose(r["gathered_weight"], data["weight"])
    assert [int(r["class_start"]) for r in res] == [0, 6]
    for rank, r in enumerate(res):
        assert torch.allclose(r["emb_grad"], emb.grad[rows[rank]], atol=1e-12)
    shard_grads = torch.cat([r["weight_grad"] for r in res])
    assert torch.allclose(shard_grads, full.classifier.weight.grad, atol=1e-12)

    # sampled: each rank keeps its positives; the loss is the full softmax over the union
    sam = [r["sampled"] for r in results]
    union = torch.cat([r["sampled_classes"] for r in sam])
    assert len(union) < worker.CLASSES
    positives = set(data["labels"][data["labels"] >= 0].tolist())
    assert positives <= set(union.tolist())
    remap = {c: i for i, c in enumerate(union.tolist())}
    local = torch.tensor([remap.get(int(c), -1) for c in data["labels"]])
    emb2 = data["embeddings"].clone().requires_grad_()
    cos = F.linear(F.normalize(emb2), F.normalize(data["weight"][union]))
    ref2 = worker.margin()(cos, local)
    ref2.backward()
    for rank, r in enumerate(sam):
        assert torch.allclose(r["loss"], ref2, atol=1e-12)
        assert torch.allclose(r["emb_grad"], emb2.grad[rows[rank]], atol=1e-12)

    # distributed calibration of ChannelStandardize equals calibration on all the data
    allx = data["calib"]
    mean = allx.mean(dim=(0, 2, 3))
    std = allx.transpose(0, 1).reshape(4, -1).std(dim=1, unbiased=False)
    for r in results:
        assert torch.allclose(r["calib"]["mean"].double(), mean, rtol=1e-6)
        assert torch.allclose(r["calib"]["std"].double(), std, rtol=1e-5)
    assert torch.equal(results[0]["calib"]["std"], results[1]["calib"]["std"])
