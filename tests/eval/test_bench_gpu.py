"""`facepriv data bundle` packs and `facepriv bench gpu`'s CPU smoke path (the GPU window's
command must not die on a typo): generated faces only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from facepriv.data import write_folder
from facepriv.data.pack import Pack, PackError, write_pack
from facepriv.data.verification import pairs_txt_for_folder

SIZE = 32


def toy_teacher(images: torch.Tensor) -> torch.Tensor:
    """A fixed random projection of 4x4-pooled faces: deterministic, identity-correlated."""
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(48, 128, generator=g)
    return torch.nn.functional.adaptive_avg_pool2d(images, 4).flatten(1) @ proj


@pytest.fixture(scope="module")
def pack_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bundle")
    write_folder(root / "train", 12, 6, seed=0, image_size=SIZE, progress=False)
    write_folder(root / "test", 10, 4, seed=0, image_size=SIZE, first_identity=500, progress=False)
    pairs = pairs_txt_for_folder(root / "test", root / "pairs.txt", n_folds=2, per_fold=10)
    write_pack(root / "pack", root / "train", pairs, root / "test", teacher=toy_teacher,
               teacher_info={"kind": "toy"}, quality=80, progress=False)
    return root / "pack"


def test_pack_round_trip(pack_dir: Path) -> None:
    pack = Pack(pack_dir)
    m = pack.manifest
    assert (m["train"]["images"], m["train"]["identities"], m["test"]["pairs"]) == (72, 12, 40)
    assert m["image_size"] == [SIZE, SIZE] and m["teacher"]["dim"] == 128
    ds = pack.train_dataset(dtype="uint8")
    assert len(ds) == 72 and ds[0][0].shape == (3, SIZE, SIZE)
    emb = pack.teacher_embeddings()
    assert emb.shape == (72, 128) and torch.allclose(emb.norm(dim=1), torch.ones(72), atol=1e-3)
    # rows follow the records: record 1 is the first image of the sorted first identity
    img = ds[0][0].float().unsqueeze(0) / 255.0
    assert torch.nn.functional.cosine_similarity(toy_teacher(img), emb[:1]).item() > 0.99
    test = pack.test_set()
    assert test.num_pairs == 40 and test.issame.sum() == 20 and test.load_image(0).shape == (SIZE, SIZE, 3)
    assert pack.teacher_id.startswith("pack:") and m["files"]["train.rec"]["sha256"] in pack.teacher_id


def test_damaged_packs_are_refused_by_name(pack_dir: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(pack_dir, bad)
    data = bytearray((bad / "train.rec").read_bytes())
    data[100] ^= 0xFF
    (bad / "train.rec").write_bytes(bytes(data))
    with pytest.raises(PackError, match="train.rec: SHA-256 differs"):
        Pack(bad)
    (bad / "teacher.safetensors").write_bytes((bad / "teacher.safetensors").read_bytes()[:-10])
    with pytest.raises(PackError, match="teacher.safetensors: .* bytes, manifest says"):
        Pack(bad, verify=False)
    (bad / "manifest.json").unlink()
    with pytest.raises(PackError, match="no manifest.json"):
        Pack(bad)


def test_pack_over_budget_fails_but_keeps_its_files(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", 3, 2, seed=0, image_size=SIZE, progress=False)
    write_folder(tmp_path / "test", 4, 3, seed=0, image_size=SIZE, first_identity=50, progress=False)
    pairs = pairs_txt_for_folder(tmp_path / "test", tmp_path / "pairs.txt", n_folds=1, per_fold=2)
    with pytest.raises(PackError, match="over the 0.001 MB budget; lower --quality"):
        write_pack(tmp_path / "p", tmp_path / "train", pairs, tmp_path / "test", teacher=None, max_mb=0.001,
                   progress=False)
    assert (tmp_path / "p" / "manifest.json").is_file()
    with pytest.raises(PackError, match="no teacher embeddings"):
        Pack(tmp_path / "p").teacher_embeddings()


def test_bench_gpu_cpu_tiny_runs_every_section(pack_dir: Path, tmp_path: Path) -> None:
    from facepriv.eval.bench import main

    out = tmp_path / "bench"
    rc = main(["gpu", "--device", "cpu", "--tiny", "--out", str(out), "--pack", str(pack_dir),
               "--models", "iresnet18", "--real-frontends", "rgb,dct@1", "--budget-s", "300"])
    assert rc == 0
    res = json.loads((out / "gpu.json").read_text())
    sec = res["sections"]
    assert set(sec) == {"correctness", "ddp", "throughput", "real"}
    failed = {k: v for k, v in sec["correctness"].items() if isinstance(v, dict) and not v.get("ok")}
    assert not failed, failed
    assert sec["ddp"]["ok"], sec["ddp"]
    assert {"iresnet18/rgb", "iresnet18/dctdp", "iresnet18/partialface"} <= set(sec["throughput"]["training_step"])
    assert all("faces_per_second" in r for r in sec["throughput"]["training_step"].values())
    rows = sec["real"]["rows"]
    assert 0.0 <= rows["rgb"]["accuracy"] <= 1.0 and rows["rgb"]["pairs"] == 40
    assert rows["dct@1"]["warm_start_from"] == "rgb"  # the compact layout warm-starts from the 112 px RGB model
    saved = torch.load(out / "real_frontends.pt", weights_only=True)  # the rows' frontends, for CPU attacks
    assert set(saved) == {"rgb", "dct@1"} and json.loads(saved["dct@1"]["config"])["upsample"] == 1
    md = (out / "gpu.md").read_text()
    assert "## Correctness" in md and "## Training throughput" in md and "## Short real run" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_bench_gpu_refuses_without_cuda(tmp_path: Path) -> None:
    from facepriv.eval.bench import main

    with pytest.raises(SystemExit, match="no CUDA device .* --device cpu --tiny"):
        main(["gpu", "--out", str(tmp_path)])


def test_gpu_window_script_is_valid_bash() -> None:
    import shutil
    import subprocess

    script = Path(__file__).resolve().parents[2] / ".ci" / "gpu_window.sh"
    bash = shutil.which("bash")
    if bash is None:
        pytest.fail("bash is needed to check .ci/gpu_window.sh")
    proc = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "facepriv" in script.read_text() and "bench gpu" in script.read_text()


def test_bench_gpu_refuses_a_bad_real_row_before_any_section(tmp_path: Path) -> None:
    from facepriv.eval.bench import main

    with pytest.raises(SystemExit, match="--real-frontends: .*'partialface@3'.*NAME@UPSAMPLE"):
        main(["gpu", "--device", "cpu", "--tiny", "--out", str(tmp_path / "b"), "--real-frontends", "rgb,partialface@3"])
    assert not (tmp_path / "b" / "gpu.json").exists()  # nothing ran
