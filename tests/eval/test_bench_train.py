"""`facepriv bench train`: JSON structure of a tiny run, and the cached-frontend step that the
frontend-share measurement rests on."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from facepriv.eval.bench import main as bench_main
from facepriv.eval.benchmarks import train as bench_train

TINY = ["--width", "0.125", "--image-size", "32", "--batch-size", "4", "--steps", "2", "--warmup", "1",
        "--num-classes", "16", "--no-isolate", "--frontends", "rgb,partialface,dctdp"]


def _finite_positive(value: float, where: str) -> None:
    assert isinstance(value, float) and math.isfinite(value) and value > 0, f"{where} = {value!r}"


def test_tiny_run_writes_complete_json(tmp_path) -> None:
    assert bench_main(["train", "--out", str(tmp_path), *TINY]) == 0
    result = json.loads((tmp_path / "train.json").read_text())
    assert result["benchmark"] == "train"
    assert set(result["frontends"]) == {"rgb", "partialface", "dctdp"}
    assert result["config"]["batch_size"] == 4 and result["config"]["image_size"] == 32
    assert "frontend_share" in result["method"]
    for name, r in result["frontends"].items():
        for key in ("faces_per_second", "faces_per_second_best", "backbone_samples_per_second"):
            _finite_positive(r[key], f"{name}.{key}")
        for key in ("median", "best", "mean"):
            _finite_positive(r["step_seconds"][key], f"{name}.step_seconds.{key}")
            _finite_positive(r["cached_frontend_step_seconds"][key], f"{name}.cached.{key}")
            _finite_positive(r["frontend_seconds_per_step"]["forward_alone"][key], f"{name}.forward.{key}")
        assert r["step_seconds"]["best"] <= r["step_seconds"]["median"]
        assert 0.0 <= r["frontend_share_of_step"] <= 1.0
        assert 0.0 <= r["frontend_share_of_step_from_best"] <= 1.0
        assert math.isfinite(r["frontend_share_of_step_raw"])
        _finite_positive(r["frontend_forward_share_of_step"], f"{name}.forward_share")
        assert r["loss"]["all_finite"] and r["skipped_steps"] == 0
        assert r["peak_memory"]["bytes"] >= 0 and "ru_maxrss" in r["peak_memory"]["kind"]
        assert math.isclose(r["faces_per_second"], 4 / r["step_seconds"]["median"])
    pf, dp = result["frontends"]["partialface"], result["frontends"]["dctdp"]
    assert pf["views_per_face"] == 3 and pf["backbone_samples_per_step"] == 12 and pf["out_channels"] == 27
    assert math.isclose(pf["backbone_samples_per_second"], 3 * pf["faces_per_second"])
    assert "secret_seed" not in pf["frontend_config"]
    assert dp["views_per_face"] == 1 and dp["out_channels"] == 189
    assert dp["trainable_frontend_parameters"] > 0  # DCTDP's budget logits
    _finite_positive(dp["frontend_seconds_per_step"]["forward_backward_alone"]["median"], "dctdp.forward_backward")
    assert result["frontends"]["rgb"]["frontend_seconds_per_step"]["forward_backward_alone"] is None
    assert set(result["goals_met"]) == {f"{n} frontend < 5% of a training step" for n in ("partialface", "dctdp")}
    assert all(isinstance(v, bool) for v in result["goals_met"].values())
    assert set(result["summary"]) == set(result["frontends"]) and result["summary"]["rgb"]["faces_per_second_vs_rgb"] == 1.0


def test_cached_step_bypasses_the_frontend_and_restores_it() -> None:
    from facepriv.training.distributed import DistEnv
    from facepriv.training.trainer import Trainer

    s = bench_train.TrainBenchSettings(width=0.125, image_size=32, batch_size=4, num_classes=8)
    images, labels = bench_train.synthetic_batch(s)
    trainer = Trainer(bench_train.train_config("partialface", s), dataset=bench_train.FixedImages(images, labels, 8),
                      dist_env=DistEnv(device=torch.device("cpu")))
    real = trainer.recognizer.frontend
    calls: list[int] = []
    real.register_forward_hook(lambda module, inputs, output: calls.append(output.shape[0]))
    trainer.train_step((images, labels))
    assert calls == [12]  # 3 PartialFace views per face
    with torch.no_grad():
        output = real(images.float() / 255, labels)
    calls.clear()
    cached = bench_train._cached_frontend_class()(real, output)
    before = output.clone()
    with bench_train.frontend_replaced(trainer, cached):
        assert trainer.recognizer.frontend is cached and trainer.frontend is cached
        result = trainer.train_step((images, labels))
    assert calls == [] and math.isfinite(float(result.loss)) and not result.skipped
    assert torch.equal(output, before)  # the step never writes into the cached input
    assert trainer.recognizer.frontend is real and trainer.frontend is real
    assert not any(p is q for p in cached.parameters() for q in real.parameters())
    trainer.close()


@pytest.mark.parametrize("argv, message", [
    (["--image-size", "30"], "multiple of 8"),
    (["--steps", "0"], ">= 1"),
    (["--width", "0"], "--width"),
])
def test_bad_settings_are_named(argv: list[str], message: str) -> None:
    parser = argparse.ArgumentParser()
    bench_train.add_arguments(parser)
    with pytest.raises(ValueError, match=message):
        bench_train.settings_from_args(parser.parse_args(argv))


def test_unknown_frontend_is_named() -> None:
    with pytest.raises(ValueError, match="mystery"):
        bench_train.parse_frontends("rgb,mystery")
    assert bench_train.parse_frontends(" RGB , dctdp,rgb") == ["rgb", "dctdp"]
    parser = argparse.ArgumentParser()
    bench_train.add_arguments(parser)
    assert bench_train.parse_frontends(parser.parse_args([]).frontends) == ["rgb", "partialface", "dctdp", "dct"]


def test_compact_layouts_are_measured_beside_the_tface_layout(tmp_path) -> None:
    """``NAME@U`` trains the frontend at ``upsample: U`` with the matching backbone, and the
    summary gives its speed relative to the same frontend's TFace layout from the same run."""
    argv = [a if a != "rgb,partialface,dctdp" else "partialface,partialface@2,dctdp@1" for a in TINY]
    assert bench_main(["train", "--out", str(tmp_path), *argv]) == 0
    result = json.loads((tmp_path / "train.json").read_text())
    compact = result["frontends"]["partialface@2"]
    assert compact["frontend_config"]["upsample"] == 2 and result["frontends"]["dctdp@1"]["frontend_config"]["upsample"] == 1
    summary = result["summary"]
    assert summary["partialface@2"]["faces_per_second_vs_tface_layout"] == round(
        compact["faces_per_second"] / result["frontends"]["partialface"]["faces_per_second"], 3)
    assert summary["partialface"]["faces_per_second_vs_tface_layout"] is None
    assert summary["dctdp@1"]["faces_per_second_vs_tface_layout"] is None  # no TFace dctdp in this run
    with pytest.raises(ValueError, match="NAME@UPSAMPLE"):
        bench_train.parse_frontends("partialface@3")
