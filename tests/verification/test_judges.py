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
    assert r["verification"]["tpr_at_fpr_0.001"]["measurable"] is False
    with pytest.raises(ValueError, match="L2-normalised"):
        identity_leakage(torch.tensor([[2.0, 0.0]]), [0], g, [0, 1, 2])
    with pytest.raises(ValueError, match="no gallery image"):
        identity_leakage(_unit([[1, 0]]), [7], g, [0, 1, 2])
