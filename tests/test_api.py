"""The top-level API: ``facepriv.load`` -> protect / embed / verify, and train / evaluate / attack.

Pinned down: ``dir(facepriv)`` is exactly the API; the deployed split (client protects,
server embeds) gives the same embeddings as the model's own full pipeline; the server half
refuses pixels; a fixed inference seed is refused for release; ``facepriv.train`` is the
``facepriv train`` code path (a shipped config by name, a model that ``facepriv.load`` reads).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import facepriv
from facepriv.models import FaceRecognizer

BACKBONE = {"name": "mobilefacenet", "width": 0.0625}


def _saved(tmp_path, frontend: dict, name: str = "model.pt"):
    torch.manual_seed(0)
    model = FaceRecognizer.from_config({"frontend": frontend, "backbone": BACKBONE, "input_norm": True})
    return model, model.save(tmp_path / name)


def _faces(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(1))


def test_dir_shows_only_the_api() -> None:
    assert dir(facepriv) == ["Recognizer", "__version__", "attack", "evaluate", "load", "train"]
    from facepriv.frontends import PartialFace  # the subpackages stay importable

    assert PartialFace is not None


def test_import_facepriv_stays_light() -> None:
    code = "import sys, facepriv; facepriv.__dir__(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_client_protects_server_embeds_matches_the_full_pipeline(tmp_path) -> None:
    model, path = _saved(tmp_path, {"name": "dct"})
    rec = facepriv.load(path)
    faces = _faces()
    protected = rec.protect(faces)                   # client
    assert protected.shape[1] == model.frontend.out_channels
    emb = rec.embed(protected)                       # server
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(faces)), atol=1e-5)
    assert torch.allclose(emb, FaceRecognizer.load(path).embed(faces), atol=1e-5)
    assert torch.allclose(rec.embed(protected, batch_size=3), emb, atol=1e-5)
    scores = rec.verify(emb[:2], emb[2:])
    assert torch.allclose(scores, (emb[:2] * emb[2:]).sum(1), atol=1e-5)
    assert rec.verify(emb, emb, threshold=0.999).all()


def test_partialface_release_is_one_secure_view_per_image(tmp_path) -> None:
    _, path = _saved(tmp_path, {"name": "partialface"})
    rec = facepriv.load(path)
    a, b = rec.protect(_faces(2)), rec.protect(_faces(2))
    assert a.shape == (2, 27, 112, 112) and not torch.equal(a, b)  # fresh randomness per call
    assert rec.embed(a).shape[0] == 2


def test_server_half_refuses_pixels_and_bad_shapes(tmp_path) -> None:
    _, path = _saved(tmp_path, {"name": "partialface"})
    rec = facepriv.load(path)
    with pytest.raises(ValueError, match=r"protected tensors of shape B x 27"):
        rec.embed(_faces(2))
    with pytest.raises(ValueError, match="112x112"):
        rec.protect(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="one shape"):
        rec.verify(torch.rand(2, 8), torch.rand(3, 8))


def test_fixed_inference_seed_is_refused_for_release(tmp_path) -> None:
    _, path = _saved(tmp_path, {"name": "dctdp", "inference_seed": 3})
    with pytest.raises(ValueError, match="inference_seed"):
        facepriv.load(path).protect(_faces(1))
    assert facepriv.load(path, allow_fixed_inference_seed=True).protect(_faces(1)).shape[0] == 1


def test_train_is_the_cli_code_path(tmp_path) -> None:
    run_dir, summary = facepriv.train("tiny_cpu", out=tmp_path / "run", max_steps=2, quiet=True,
                                      overrides=["eval.every_steps=0"])
    assert summary["step"] == 2 and run_dir == tmp_path / "run"
    from facepriv.training.config import load_config
    from facepriv.training.shipped import resolve_config

    with pytest.raises(ValueError, match="overrides"):
        facepriv.train(load_config(resolve_config("tiny_cpu")), overrides=["optim.lr=1"])
    rec = facepriv.load(run_dir / "checkpoints" / "step_00000002" / "model.pt")  # stopped early: the step's model
    assert rec.embed(rec.protect(torch.rand(2, 3, rec.model.image_size, rec.model.image_size))).shape[0] == 2


def test_readme_deployed_path_snippet_runs(tmp_path) -> None:
    """The README's Python block with ``facepriv.load`` runs as written (checkpoint path swapped in)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "facepriv.load(" in b]
    assert len(blocks) == 1, "the README shows the deployed path once"
    _, path = _saved(tmp_path, {"name": "partialface"})
    assert '"runs/pf/model.pt"' in blocks[0]
    scope: dict = {}
    exec(compile(blocks[0].replace('"runs/pf/model.pt"', repr(str(path))), "README.md", "exec"), scope)
    assert scope["emb"].shape[0] == 2 and scope["score"].shape == (1,)
    for step in ("rec.protect(faces)", "rec.embed(protected)", "rec.verify("):
        assert step in blocks[0]


def test_attack_api_checks_identity_disjointness_like_the_cli(tmp_path) -> None:
    """facepriv.attack loads its data through the CLI's loader: overlapping people are refused."""
    import pytest

    import facepriv
    from facepriv.data import write_folder

    write_folder(tmp_path / "aux", 3, 2, seed=0, image_size=32, progress=False)
    write_folder(tmp_path / "victims", 3, 2, seed=0, image_size=32, progress=False)  # the same identities
    from facepriv.frontends import build_frontend

    with pytest.raises(ValueError, match="identities appear in both"):
        facepriv.attack(build_frontend("dct"), tmp_path / "aux", tmp_path / "victims", image_size=32)
