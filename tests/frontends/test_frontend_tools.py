"""Registry, CLI commands, `facepriv protect` and device export."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from facepriv.cli import main as cli_main
from facepriv.frontends import DCTDP, DCTFrontend, PartialFace, RGBFrontend, build_frontend
from facepriv.frontends.export import device_module, example_inputs, export_frontend
from facepriv.frontends.protect import protect_folder


def write_faces(root: Path, n: int = 3, size: int = 112) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        (root / f"person{i % 2}").mkdir(parents=True, exist_ok=True)
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        cv2.imwrite(str(root / f"person{i % 2}" / f"img{i}.png"), img)


@pytest.mark.parametrize("frontend", [RGBFrontend(), DCTFrontend(upsample=1), PartialFace(secret_seed=4), DCTDP(input_size=16)])
def test_config_round_trip(frontend) -> None:
    clone = build_frontend(frontend.config)
    assert type(clone) is type(frontend) and clone.config == frontend.config
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert clone.eval()(x).shape[1] == frontend.out_channels


def test_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown frontend"):
        build_frontend({"name": "jpeg"})
    with pytest.raises(ValueError, match="no option"):
        build_frontend({"name": "dctdp", "epsilon": 1})
    cfg = tmp_path / "f.yaml"
    cfg.write_text(yaml.safe_dump({"frontend": {"name": "partialface", "secret_seed": 9}}))
    assert build_frontend(cfg).secret_seed == 9
    (tmp_path / "bad.yaml").write_text("- just a list")
    with pytest.raises(ValueError, match="mapping"):
        build_frontend(tmp_path / "bad.yaml")


def test_protect_writes_tensors_and_manifest_without_secrets(tmp_path: Path) -> None:
    src, out = tmp_path / "faces", tmp_path / "protected"
    write_faces(src)
    (src / "person0" / "broken.jpg").write_bytes(b"\xff\xd8not really a jpeg")
    cv2.imwrite(str(src / "person1" / "small.png"), np.zeros((50, 50, 3), np.uint8))
    pf = PartialFace(secret_seed=1234)
    manifest = protect_folder(pf, src, out, progress=False)
    assert manifest["counts"] == {"found": 5, "protected": 3, "failed": 2}
    mapping = json.loads((tmp_path / "protected.local-mapping.json").read_text())
    reasons = {f["source"]: f["reason"] for f in mapping["failed"]}
    assert "truncated JPEG" in reasons["person0/broken.jpg"] and "expected an aligned 112x112" in reasons["person1/small.png"]
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["frontend"]["secret_seed"] == "<secret>" and "1234" not in (out / "manifest.json").read_text()
    entry = saved["files"][0]
    tensor = load_file(str(out / entry["file"]))["protected"]
    assert list(tensor.shape) == entry["shape"] == [27, 112, 112]
    assert not list(out.rglob("*.png")) and not list(out.rglob("*.jpg"))  # no raw pixels leave


def test_protect_names_say_nothing_about_the_sources(tmp_path: Path) -> None:
    """Regression: outputs and manifest used to copy the source names (person/person_0001 -> identity leak)."""
    src, out = tmp_path / "faces", tmp_path / "protected"
    write_faces(src, 4)
    manifest = protect_folder(DCTDP(), src, out, progress=False)
    sent = [p for p in out.rglob("*") if p.is_file()]
    assert {p.parent for p in sent} == {out}  # flat: no identity folders
    names = [p.stem for p in sent if p.suffix == ".safetensors"]
    assert len(names) == 4 and all(len(n) == 32 and int(n, 16) >= 0 for n in names)  # 128-bit random hex
    text = (out / "manifest.json").read_text()
    assert not any(s in text for s in ("person0", "person1", "img0", "img1", "img2", "img3", "\"source\""))
    assert [f["file"] for f in manifest["files"]] == sorted(f["file"] for f in manifest["files"])
    mapping = json.loads((tmp_path / "protected.local-mapping.json").read_text())
    assert sorted(mapping["outputs"]) == ["person0/img0.png", "person0/img2.png", "person1/img1.png", "person1/img3.png"]
    assert sorted(mapping["outputs"].values()) == sorted(f"{n}.safetensors" for n in names)
    assert "LOCAL ONLY" in mapping["warning"]
    again = protect_folder(DCTDP(), src, tmp_path / "second", progress=False)
    assert not {f["file"] for f in again["files"]} & {f["file"] for f in manifest["files"]}  # fresh names each run
    with pytest.raises(ValueError, match="inside the output folder"):
        protect_folder(DCTDP(), src, out, progress=False, mapping_path=out / "map.json")


def test_fixed_inference_seed_is_refused_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "faces"
    write_faces(src, 1)
    seeded = DCTDP(inference_seed=7)
    with pytest.raises(ValueError, match="fixed inference_seed"):
        protect_folder(seeded, src, tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="fixed inference_seed"):
        export_frontend(PartialFace(secret_seed=2, inference_seed=3), tmp_path / "e", "torchscript", size=32)
    assert protect_folder(seeded, src, tmp_path / "forced", progress=False, allow_fixed_inference_seed=True)
    args = ["protect", "--frontend", "dctdp", "--option", "inference_seed=7", "--input", str(src)]
    with pytest.raises(SystemExit, match="--drop-inference-seed"):
        cli_main([*args, "--out", str(tmp_path / "c1")])
    assert not (tmp_path / "c1").exists()
    assert cli_main([*args, "--out", str(tmp_path / "c2"), "--drop-inference-seed"]) == 0
    manifest = json.loads((tmp_path / "c2" / "manifest.json").read_text())
    assert "OS CSPRNG" in manifest["privacy_report"]["noise_source"]
    assert cli_main([*args, "--out", str(tmp_path / "c3"), "--allow-fixed-inference-seed"]) == 0
    with pytest.raises(SystemExit, match="fixed inference_seed"):
        cli_main(["export", "--frontend", "dctdp", "--option", "inference_seed=7", "--out", str(tmp_path / "e2")])


def test_protect_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "faces"
    write_faces(src, 2)
    code = cli_main(["protect", "--frontend", "dctdp", "--option", "epsilon_mean=0.5", "--input", str(src),
                     "--out", str(tmp_path / "o"), "--dtype", "float16"])
    assert code == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["dtype"] == "float16" and manifest["out_channels"] == 189
    assert manifest["privacy_report"]["epsilon_per_image"] == pytest.approx(0.5 * 189 * 112 * 112)
    assert "keep it on this device" in capsys.readouterr().out
    assert cli_main(["protect", "--frontend", "rgb", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2


def test_frontends_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["frontends"]) == 0
    assert "partialface" in capsys.readouterr().out
    assert cli_main(["frontends", "show", "--frontend", "partialface", "--option", "secret_seed=77"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config"]["secret_seed"] == "<secret>" and shown["out_channels"] == 27
    assert cli_main(["--help"]) == 0


@pytest.mark.parametrize("frontend", [DCTFrontend(), PartialFace(secret_seed=2), DCTDP(input_size=32)])
def test_device_module_matches_frontend(frontend) -> None:
    frontend.eval()
    module, names, _ = device_module(frontend)
    inputs = example_inputs(frontend, 2, 32)
    got = module(*inputs)
    if isinstance(frontend, PartialFace):
        want = frontend(inputs[0], subset=inputs[1], permutation=inputs[2])
    elif isinstance(frontend, DCTDP):
        with torch.no_grad():
            want = frontend(inputs[0], noise_grid=inputs[1])
        steps = ((got - want).abs() / frontend.release_parameters()["grid"].float()).round()
        assert float((steps > 0).float().mean()) < 0.02 and steps.max() <= 1  # a rounding tie flips one step
        got, want = got[steps == 0], want[steps == 0]
    else:
        want = frontend(inputs[0])
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_runs_and_matches(tmp_path: Path, fmt: str) -> None:
    info = export_frontend(PartialFace(secret_seed=2), tmp_path, fmt, size=32)
    assert (tmp_path / info["file"]).exists() and info["max_abs_difference_vs_pytorch"] < 1e-3
    assert "subset_ids" in info["inputs"] and info["frontend"]["secret_seed"] == "<secret>"


def test_dctdp_onnx_export_matches_pytorch(tmp_path: Path) -> None:
    dp = DCTDP(input_size=32)
    info = export_frontend(dp, tmp_path, "onnx", size=32)
    assert "noise_grid" in info["inputs"] and "discrete Laplace" in info["randomness"]
    # where the two runtimes' DCTs (1e-6 apart) straddle a grid-cell edge, the integer differs by one
    # step; fine grids (tiny exact bounds at high frequencies) make that ~1 % of elements. The release
    # stays exactly DP either way (any deterministic coefficient is clamped to [-D, D]).
    assert info["grid_step_flips"] <= 0.02 * 2 * 189 * 32 * 32
    assert info["max_abs_difference_vs_pytorch"] < 1e-4 * info["output_max_abs"]


def test_checkpoint_with_a_fixed_inference_seed_is_refused(tmp_path: Path) -> None:
    """Regression: a checkpoint's evaluation seed reached `facepriv protect` silently (a warning at most)."""
    from facepriv.models import FaceRecognizer

    model = FaceRecognizer.from_config({"frontend": {"name": "partialface", "secret_seed": 5, "inference_seed": 3},
                                        "backbone": {"name": "iresnet18", "embedding_size": 16, "width": 0.125},
                                        "input_norm": False})
    ckpt = model.save(tmp_path / "model.pt")
    src = tmp_path / "faces"
    write_faces(src, 2)
    with pytest.raises(SystemExit, match=f"checkpoint {ckpt}.*fixed inference_seed"):
        cli_main(["protect", "--checkpoint", str(ckpt), "--input", str(src), "--out", str(tmp_path / "o")])
    assert cli_main(["protect", "--checkpoint", str(ckpt), "--input", str(src), "--out", str(tmp_path / "o"),
                     "--drop-inference-seed"]) == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["privacy_report"]["inference_randomness"] == "OS CSPRNG (secrets)"


@pytest.mark.parametrize("frontend", [PartialFace(upsample=1, secret_seed=2), PartialFace(upsample=2, secret_seed=2),
                                      DCTDP(upsample=1, input_size=32), DCTFrontend(upsample=2)],
                         ids=["partialface_x1", "partialface_x2", "dctdp_x1", "dct_x2"])
def test_compact_layouts_export_to_onnx_with_parity(tmp_path: Path, frontend) -> None:
    """The compact layouts ship to devices like the TFace one: ONNX graph, randomness as inputs,
    parity with the PyTorch frontend (DCTDP: up to rare one-step grid flips at cell edges)."""
    info = export_frontend(frontend, tmp_path, "onnx", size=32)
    ort = pytest.importorskip("onnxruntime")  # an optional extra, not an in-tree module
    out_hw = 32 * frontend.upsample // 8
    session = ort.InferenceSession(str(tmp_path / info["file"]), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), example_inputs(frontend, 2, 32))}
    assert session.run(None, feeds)[0].shape[-2:] == (out_hw, out_hw)
    if isinstance(frontend, DCTDP):
        assert info["grid_step_flips"] <= 0.02 * 2 * 189 * out_hw * out_hw
    else:
        assert info["max_abs_difference_vs_pytorch"] < 1e-4 * info["output_max_abs"]
