"""Identity judges: adapters return unit-length embeddings with the documented preprocessing,
and ``identity_leakage`` computes TPR@FPR and rank-1 correctly on constructed embeddings."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facepriv.judges import CheckpointJudge, JudgeError, OnnxJudge, build_judge, identity_leakage


def _faces(n: int = 5, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------ checkpoint
def test_checkpoint_judge_normalised_and_refuses_pickled_code(tmp_path):
    from facepriv.models import FaceRecognizer

    model = FaceRecognizer.from_config({
        "frontend": {"name": "rgb"},
        "backbone": {"name": "iresnet", "layers": [1, 1, 1, 1], "width": 0.125, "embedding_size": 16, "input_size": 32},
        "image_size": 32,
    })
    path = model.save(tmp_path / "judge.pt")
    judge = build_judge(str(path))
    assert isinstance(judge, CheckpointJudge) and judge.describe()["frontend"] == "rgb"
    e = judge.embed(_faces())
    assert e.shape == (5, 16) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(e, judge.embed(_faces()))  # deterministic

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"format": "facepriv.FaceRecognizer", "x": Evil()}, bad)
    with pytest.raises(JudgeError):
        build_judge(str(bad))


# ------------------------------------------------------------------------------ ONNX
def _tiny_onnx(path, normalise_inside: bool = False) -> np.ndarray:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    nodes, inits = [], [numpy_helper.from_array(w, "W")]
    src = "data"
    if normalise_inside:  # insightface-style graphs that normalise themselves: Sub then Mul first
        inits += [numpy_helper.from_array(np.array(127.5, np.float32), "mean"),
                  numpy_helper.from_array(np.array(1 / 127.5, np.float32), "scale")]
        nodes += [helper.make_node("Sub", ["data", "mean"], ["centred"], name="Sub_0"),
                  helper.make_node("Mul", ["centred", "scale"], ["normed"], name="Mul_1")]
        src = "normed"
    nodes += [
        helper.make_node("Conv", [src, "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["emb"], axis=1),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", 8])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w


def _reference(x: torch.Tensor, w: np.ndarray, bgr: bool) -> torch.Tensor:
    x = x * 255.0
    if bgr:
        x = x.flip(1)
    y = F.relu(F.conv2d((x - 127.5) / 127.5, torch.from_numpy(w), padding=1)).mean((-2, -1))
    return F.normalize(y, dim=1)


@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_onnx_judge_matches_arcface_preprocessing(tmp_path, order):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "tiny.onnx"
    w = _tiny_onnx(path)
    judge = build_judge(f"{path}:{order}" if order == "bgr" else str(path))
    assert isinstance(judge, OnnxJudge) and judge.normalisation == "arcface" and judge.channel_order == order
    x = _faces()
    e = judge.embed(x)
    assert torch.allclose(e.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(e, _reference(x, w, order == "bgr"), atol=1e-4)


def test_onnx_judge_detects_normalisation_inside_the_graph(tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "inside.onnx"
    w = _tiny_onnx(path, normalise_inside=True)
    judge = OnnxJudge(path)
    assert judge.normalisation == "none"  # raw 0-255 goes in, the graph normalises
    x = _faces()
    assert torch.allclose(judge.embed(x), _reference(x, w, False), atol=1e-4)


def test_build_judge_errors(tmp_path):
    with pytest.raises(JudgeError, match="not found"):
        build_judge(str(tmp_path / "missing.onnx"))
    with pytest.raises(JudgeError, match="not 'dlib'"):
        build_judge(str(tmp_path / "nothing_here"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(JudgeError):
        OnnxJudge(junk)


# ------------------------------------------------------------------------------ dlib
@pytest.mark.skipif(importlib.util.find_spec("dlib") is None or importlib.util.find_spec("face_recognition_models") is None,
                    reason="dlib / face_recognition_models not installed")
def test_dlib_judge_normalised_and_deterministic():
    from facepriv.data import SyntheticFaces

    x = torch.stack([SyntheticFaces(2, 2, seed=0, image_size=112)[i][0] for i in range(4)])
    judge = build_judge("dlib")
    e = judge.embed(x)
    assert e.shape == (4, 128)
    assert torch.allclose(e.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.equal(e, judge.embed(x))


# ------------------------------------------------------------------------------ leakage
def _unit(rows: list[list[float]]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=1)


def test_identity_leakage_perfect_and_confused():
    rng = np.random.default_rng(0)
    centres = F.normalize(torch.from_numpy(rng.standard_normal((40, 64))), dim=1)
    gallery_ids = torch.arange(40).repeat_interleave(3)
    gallery = F.normalize(centres[gallery_ids] + 0.05 * torch.from_numpy(rng.standard_normal((120, 64))), dim=1)
    probes = F.normalize(centres + 0.05 * torch.from_numpy(rng.standard_normal((40, 64))), dim=1)
    r = identity_leakage(probes, torch.arange(40), gallery, gallery_ids)
    assert r["n_genuine_pairs"] == 120 and r["n_impostor_pairs"] == 40 * 117
    assert r["rank1"] == 1.0 and r["tpr_at_fpr_1e-3"] == 1.0 and r["tpr_at_fpr_1e-2"] == 1.0
    # probes that look like the *next* identity: nothing verifies, nobody is identified
    wrong = F.normalize(centres.roll(1, 0) + 0.05 * torch.from_numpy(rng.standard_normal((40, 64))), dim=1)
    r2 = identity_leakage(wrong, torch.arange(40), gallery, gallery_ids)
    assert r2["rank1"] == 0.0 and r2["tpr_at_fpr_1e-2"] == 0.0
    assert r2["rank5"] < 0.5 and r2["chance_rank1"] == pytest.approx(1 / 40)


def test_identity_leakage_small_sets_and_bad_input():
    g = _unit([[1, 0], [0, 1], [1, 1]])
    r = identity_leakage(_unit([[1, 0.1]]), [0], g, [0, 1, 2])
    assert r["rank1"] == 1.0
    assert r["tpr_at_fpr_1e-3"] is None  # 2 impostor pairs cannot measure FPR = 1e-3
    assert r["verification"]["tpr_at_fpr_1e-3"]["measurable"] is False  # one key spelling, flat and nested
    with pytest.raises(ValueError, match="L2-normalised"):
        identity_leakage(torch.tensor([[2.0, 0.0]]), [0], g, [0, 1, 2])
    with pytest.raises(ValueError, match="no gallery image"):
        identity_leakage(_unit([[1, 0]]), [7], g, [0, 1, 2])


# ------------------------------------------------------------------------------ confidence intervals, fusion
def _noisy_set(noise: float, seed: int, n: int = 60, per: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    centres = F.normalize(torch.from_numpy(np.random.default_rng(0).standard_normal((n, 32))), dim=1)
    gallery_ids = torch.arange(n).repeat_interleave(per)
    gallery = F.normalize(centres[gallery_ids] + noise * torch.from_numpy(rng.standard_normal((n * per, 32))), dim=1)
    probes = F.normalize(centres + noise * torch.from_numpy(rng.standard_normal((n, 32))), dim=1)
    return probes, torch.arange(n), gallery, gallery_ids


def test_weighted_bootstrap_pairs_follow_the_tpr_at_fpr_rules():
    from facepriv.judges.leakage import _WeightedPairs, leakage_scores

    probes, pid, gallery, gid = _noisy_set(0.35, 1)
    pairs = _WeightedPairs(leakage_scores(probes, pid, gallery, gid))
    w = np.random.default_rng(3).multinomial(60, np.full(60, 1 / 60))
    idx = torch.from_numpy(np.repeat(np.arange(60), w))
    dup = identity_leakage(probes[idx], pid[idx], gallery, gid)  # the replicate, written out
    for target, key in ((1e-3, "tpr_at_fpr_1e-3"), (1e-2, "tpr_at_fpr_1e-2")):
        assert pairs.tpr(w, target) == dup[key]
        assert pairs.tpr(np.ones(60, dtype=np.int64), target) == identity_leakage(probes, pid, gallery, gid)[key]


def test_bootstrap_intervals_contain_the_estimate_and_narrow_with_victims():
    probes, pid, gallery, gid = _noisy_set(0.35, 2)
    r = identity_leakage(probes, pid, gallery, gid, bootstrap=300, seed=5)
    assert r["bootstrap"]["replicates"] == 300 and r["bootstrap"]["level"] == 0.95
    for key in ("tpr_at_fpr_1e-3", "tpr_at_fpr_1e-2", "rank1"):
        lo, hi = r["ci"][key]
        assert lo <= r[key] <= hi and hi > lo
    assert identity_leakage(probes, pid, gallery, gid, bootstrap=300, seed=5)["ci"] == r["ci"]  # seeded
    big = identity_leakage(*_noisy_set(0.35, 2, n=240), bootstrap=300, seed=5)
    width = lambda res: res["ci"]["rank1"][1] - res["ci"]["rank1"][0]  # noqa: E731
    assert width(big) < width(r)
    # a figure that is not measurable has no interval
    small = identity_leakage(*_noisy_set(0.35, 2, n=8), bootstrap=50)
    assert small["tpr_at_fpr_1e-3"] is None and small["ci"]["tpr_at_fpr_1e-3"] is None
    with pytest.raises(ValueError, match="bootstrap"):
        identity_leakage(probes, pid, gallery, gid, bootstrap=-1)


def test_best_attack_per_victim_fuses_at_an_honest_operating_point():
    from facepriv.judges.leakage import fuse_scores, fused_leakage, leakage_from_scores, leakage_scores

    a = leakage_scores(*_noisy_set(0.45, 3, n=200))
    b = leakage_scores(*_noisy_set(0.45, 4, n=200))  # as good, independent errors
    junk = leakage_scores(*_noisy_set(5.0, 5, n=200))  # a useless attack
    single = leakage_from_scores(a)
    # one attack: the rank transform keeps every decision, so nothing changes
    solo = fused_leakage({"a": a})
    for key in ("tpr_at_fpr_1e-3", "tpr_at_fpr_1e-2", "rank1"):
        assert solo[key] == single[key]
    both = fused_leakage({"a": a, "b": b})
    assert both["tpr_at_fpr_1e-2"] > max(single["tpr_at_fpr_1e-2"], leakage_from_scores(b)["tpr_at_fpr_1e-2"])
    assert both["best_attack_counts"]["a"] + both["best_attack_counts"]["b"] == 200
    # the union is held to the FPR: the fused operating point admits at most 1 % of impostors
    fused, _ = fuse_scores([a, b, junk])
    op = fused_leakage({"a": a, "b": b, "junk": junk})["verification"]["tpr_at_fpr_1e-2"]
    imp = fused.verification[~fused.same]
    assert (imp >= op["threshold"]).mean() <= 0.01
    with pytest.raises(ValueError, match="same probes"):
        fuse_scores([a, leakage_scores(*_noisy_set(0.45, 3, n=100))])
