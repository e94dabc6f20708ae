"""End-to-end tests of `facepriv eval verify` on generated data (tiny models, 16x16 faces).

What is pinned down: the deployed protocol (every image its own query with its own frontend
randomness, also across repetitions and for the flipped copy), reproducibility with a seed,
R = 1 for deterministic frontends, correct cosine scores, the output files, and one-line
errors (exit code 2) that name the offending file.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import facepriv.verification.protocols as protocols
from facepriv.eval.cli import main as eval_main
from facepriv.verification.protocols import embed_protected_set, pair_slots, repetition_seeds
from facepriv.eval.verify import load_set, parse_set_spec, verify
from facepriv.data import SyntheticFaces, identity_name, make_pairs, pairs_txt_for_folder, write_bin, write_image
from facepriv.data.verification import ArrayImageSource, VerificationSet
from facepriv.frontends import PartialFace
from facepriv.models import FaceRecognizer

SIZE = 16
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _faces(n_ids: int, per_id: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, list[int]]:
    """Synthetic faces (rendered at 32x32, the renderer's minimum) shrunk to ``size``."""
    faces = SyntheticFaces(n_ids, per_id, seed=seed, image_size=32)
    imgs = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in faces.as_array()])
    return imgs, faces.targets


def _write_face_folder(root: Path, n_ids: int, per_id: int, seed: int) -> None:
    """LFW layout ``<name>/<name>_NNNN.jpg``, as facepriv.data.write_folder writes it."""
    imgs, labels = _faces(n_ids, per_id, seed)
    for k, (img, label) in enumerate(zip(imgs, labels)):
        name = identity_name(label)
        write_image(root / name / f"{name}_{k % per_id + 1:04d}.jpg", img)


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_model) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("verify")
    images, targets = _faces(10, 3, seed=3)
    pairs, same, _ = make_pairs(targets, n_folds=2, pairs_per_fold=12, seed=0)
    write_bin(d / "tiny.bin", [images[i] for ab in pairs for i in ab], same)
    _write_face_folder(d / "faces", 10, 3, seed=4)
    pairs_txt_for_folder(d / "faces", d / "pairs.txt", n_folds=2, per_fold=5, seed=1)
    tiny_model({"name": "rgb"}).save(d / "rgb.pt")
    tiny_model({"name": "partialface", "secret_seed": 11}).save(d / "pf.safetensors")
    # 48x48 faces: a set the 16x16 checkpoints were not built for
    big, _ = _faces(4, 2, seed=5, size=48)
    write_bin(d / "big.bin", list(big), [True, False, True, False])
    return {
        "dir": d, "bin": d / "tiny.bin", "pairs": d / "pairs.txt", "faces": d / "faces", "rgb": d / "rgb.pt",
        "pf": d / "pf.safetensors", "big": d / "big.bin",
    }


def _array_set(n_images: int = 16, seed: int = 0) -> VerificationSet:
    """Random-texture images, every image in two pairs, one self-pair (image 0 with itself)."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n_images, SIZE, SIZE, 3), dtype=np.uint8)
    a = np.arange(n_images)
    pairs = np.concatenate([np.stack([a, np.roll(a, 1)], 1), np.stack([a, np.roll(a, 5)], 1), [[0, 0]]])
    issame = np.arange(len(pairs)) % 2 == 0
    return VerificationSet("arr", ArrayImageSource(imgs), pairs, issame, np.arange(len(pairs)) % 2, image_size=None)


class ChoiceSpy:
    """Records PartialFace's inference subset/permutation draws, per frontend instance."""

    def __init__(self, monkeypatch):
        self.calls: dict[int, list[np.ndarray]] = defaultdict(list)
        original = PartialFace._inference_choices

        def spy(frontend, b):
            subset, perm = original(frontend, b)
            self.calls[id(frontend)].append((subset * 10 + perm).numpy().copy())
            return subset, perm

        monkeypatch.setattr(PartialFace, "_inference_choices", spy)
        # the stochasticity probe draws too; it is tested separately, skip it here
        monkeypatch.setattr(protocols, "probe_stochastic", lambda frontend, images: True)

    def per_frontend(self) -> list[list[np.ndarray]]:
        return list(self.calls.values())


# --------------------------------------------------------------------------- protocol


def test_pair_slots_embed_each_image_once_and_self_pairs_twice():
    s = pair_slots(np.array([[3, 5], [5, 7], [3, 3], [7, 3]]))
    assert s.images.tolist() == [3, 5, 7, 3]  # unique images, then a second query for the self-paired 3
    assert s.pairs.tolist() == [[0, 1], [1, 2], [0, 3], [2, 0]]


def test_each_image_and_each_repetition_draws_independently(monkeypatch, tiny_model):
    spy = ChoiceSpy(monkeypatch)
    vset = _array_set()
    model = tiny_model({"name": "partialface", "secret_seed": 2})
    emb = embed_protected_set(model, vset, repetitions=3, batch_size=8, seed=0, progress=False)
    fronts = spy.per_frontend()
    assert emb.repetitions == 3 and len(fronts) == 3  # one frontend (one random stream) per repetition
    draws = np.stack([np.concatenate(calls) for calls in fronts])  # (R, slots): one draw per slot per repetition
    assert draws.shape == (3, emb.slots.n_slots) == (3, vset.num_images + 1)
    # two sides of a pair are separate queries: with 6 subsets x 3 orders they agree ~1/18 of the time
    p = emb.slots.pairs
    same_in_pair = (draws[:, p[:, 0]] == draws[:, p[:, 1]]).mean()
    assert same_in_pair < 0.4
    assert draws[0, 0] != draws[0, -1] or draws[1, 0] != draws[1, -1]  # the self-pair's two queries
    # the same image in two repetitions is a new query too
    assert (draws[0] == draws[1]).mean() < 0.4 and (draws[1] == draws[2]).mean() < 0.4
    # every image uses several different subsets over the repetitions of a larger run
    assert len(np.unique(draws // 10)) > 1


def test_flipped_copy_is_its_own_query(monkeypatch, tiny_model):
    spy = ChoiceSpy(monkeypatch)
    vset = _array_set()
    model = tiny_model({"name": "partialface", "secret_seed": 2})
    embed_protected_set(model, vset, repetitions=1, flip=True, batch_size=100, seed=1, progress=False)
    (calls,) = spy.per_frontend()
    assert len(calls) == 2  # original then mirrored, one batch
    assert (calls[0] == calls[1]).mean() < 0.4


def test_seeded_runs_reproduce_and_follow_the_derived_seeds(tiny_model):
    vset = _array_set()
    model = tiny_model({"name": "partialface", "secret_seed": 2})
    a = embed_protected_set(model, vset, repetitions=2, batch_size=7, seed=5, progress=False)
    b = embed_protected_set(model, vset, repetitions=2, batch_size=7, seed=5, progress=False)
    c = embed_protected_set(model, vset, repetitions=2, batch_size=7, seed=6, progress=False)
    assert torch.equal(a.embeddings, b.embeddings)
    assert not torch.equal(a.embeddings, c.embeddings)
    assert not torch.equal(a.embeddings[0], a.embeddings[1])
    assert a.inference_seeds == repetition_seeds(5, 2)
    # repetition 1 is exactly "the frontend with inference_seed = repetition_seeds(5, 2)[1]"
    ref = tiny_model({"name": "partialface", "secret_seed": 2, "inference_seed": repetition_seeds(5, 2)[1]})
    ref.load_state_dict(model.state_dict())
    x = torch.stack([torch.from_numpy(vset.load_image(int(i)).transpose(2, 0, 1).copy()).float() / 255
                     for i in a.slots.images])
    manual = torch.cat([ref.embed(x[s : s + 7]) for s in range(0, len(x), 7)])
    torch.testing.assert_close(a.embeddings[1], manual)
    # without a seed the draws come from the secure source and differ between runs
    d = embed_protected_set(model, vset, repetitions=1, batch_size=7, seed=None, progress=False)
    e = embed_protected_set(model, vset, repetitions=1, batch_size=7, seed=None, progress=False)
    assert d.inference_seeds is None and "CSPRNG" in d.randomness
    assert not torch.equal(d.embeddings, e.embeddings)


def test_deterministic_frontend_is_scored_once_and_scores_are_cosines(assets):
    res = verify([assets["rgb"]], {"t": str(assets["bin"])}, repetitions=4, seed=0, progress=False, keep_scores=True)
    (r,) = res["results"]
    assert r["stochastic"] is False and r["repetitions"] == 1 and len(r["per_repetition"]) == 1
    assert "R = 1" in r["repetitions_note"]
    vset = load_set(parse_set_spec("t", str(assets["bin"])))
    model = FaceRecognizer.load(assets["rgb"])
    x = torch.stack([torch.from_numpy(vset.load_image(i).transpose(2, 0, 1).copy()).float() / 255
                     for i in range(vset.num_images)])
    e = model.embed(x)
    manual = (e[vset.pairs[:, 0]] * e[vset.pairs[:, 1]]).sum(1).double().numpy()
    np.testing.assert_allclose(r["scores"][0], manual, rtol=1e-5, atol=1e-6)
    assert r["n_pairs"] == 24 and r["summary"]["accuracy"]["std"] is None


def test_probe_finds_partialface_random_and_rgb_deterministic(tiny_model):
    x = torch.rand(2, 3, SIZE, SIZE)
    assert protocols.probe_stochastic(tiny_model({"name": "partialface", "secret_seed": 1}).frontend, x)
    assert not protocols.probe_stochastic(tiny_model({"name": "rgb"}).frontend, x)
    # one subset and one channel order: nothing random left, so R = 1 is correct
    pf1 = tiny_model({"name": "partialface", "secret_seed": 1, "n_subsets": 1, "subsets_per_identity": 1,
                      "sample_multiplier": 1, "n_permutations": 1}).frontend
    assert not protocols.probe_stochastic(pf1, x)


# --------------------------------------------------------------------------- CLI end to end


def test_cli_end_to_end_writes_reports(assets, tmp_path, capsys):
    from facepriv.cli import main as facepriv_main

    out = tmp_path / "eval"
    common = ["--checkpoint", str(assets["rgb"]), "--checkpoint", str(assets["pf"]),
              "--pairs", f"tiny={assets['bin']}", "--pairs", f"mine={assets['pairs']}:{assets['faces']}",
              "--repetitions", "2", "--seed", "3", "--batch-size", "16", "--device", "cpu", "-q"]
    argv = ["eval", "verify", *common, "--out", str(out)]
    assert facepriv_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {(r["checkpoint_name"], r["set"]): r for r in metrics["results"]}
    assert set(rows) == {("rgb", "tiny"), ("rgb", "mine"), ("pf", "tiny"), ("pf", "mine")}
    assert rows["rgb", "mine"]["repetitions"] == 1 and rows["pf", "mine"]["repetitions"] == 2
    assert rows["pf", "mine"]["n_pairs"] == 20 and rows["pf", "tiny"]["n_pairs"] == 24
    assert rows["pf", "tiny"]["frontend"]["secret_seed"] == "<secret>"  # reports never carry the key
    pf = rows["pf", "tiny"]["summary"]
    assert pf["accuracy"]["std"] is not None and len(pf["auc"]["per_repetition"]) == 2
    assert pf["tpr_at_fpr"]["tpr_at_fpr_1e-3"]["measurable"] is False  # one spelling: facepriv.verification.fpr_key
    assert pf["tpr_at_fpr"]["tpr_at_fpr_1e-1"]["measurable"] is True
    summary = (out / "summary.md").read_text()
    assert summary.count("| rgb | tiny |") == 1 and summary.count("| pf | mine |") == 1 and "n/m" in summary and "±" in summary
    for name in ("roc_tiny.png", "roc_mine.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    # same seed, same numbers
    out2 = tmp_path / "again"
    assert eval_main(["verify", *common, "--no-plots", "--out", str(out2)]) == 0
    assert not list(out2.glob("*.png"))
    again = {(r["checkpoint_name"], r["set"]): r["summary"] for r in json.loads((out2 / "metrics.json").read_text())["results"]}
    assert again["pf", "tiny"]["auc"] == pf["auc"] and again["pf", "mine"] == rows["pf", "mine"]["summary"]


def test_help_is_there(capsys):
    assert eval_main(["verify", "--help"], prog="facepriv eval") == 0
    text = capsys.readouterr().out
    assert "--checkpoint" in text and "pairs.txt:image_dir" in text and "metrics.json" in text


def _run_error(argv, capsys) -> str:
    code = eval_main(argv, prog="facepriv eval")
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_error_missing_image_names_the_file(assets, tmp_path, capsys):
    faces = tmp_path / "faces"
    _write_face_folder(faces, 4, 2, seed=0)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\t2\nsynth_000000\t1\t2\nsynth_000001\t1\t9\nsynth_000000\t1\tsynth_000002\t1\n"
                     "synth_000001\t2\tsynth_000003\t1\n")
    err = _run_error(["verify", "-c", str(assets["rgb"]), "-p", f"m={pairs}:{faces}", "-o", str(tmp_path / "o")], capsys)
    assert "synth_000001_0009.jpg" in err and str(pairs) in err


def test_error_not_a_bin(assets, tmp_path, capsys):
    fake = tmp_path / "lfw.bin"
    fake.write_text("this is not a pickle\n")
    err = _run_error(["verify", "-c", str(assets["rgb"]), "-p", f"lfw={fake}", "-o", str(tmp_path / "o")], capsys)
    assert str(fake) in err


def test_error_not_a_checkpoint(assets, tmp_path, capsys):
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"\x00" * 64)
    err = _run_error(["verify", "-c", str(fake), "-p", f"t={assets['bin']}", "-o", str(tmp_path / "o")], capsys)
    assert str(fake) in err and "checkpoint" in err


def test_error_image_size_does_not_fit_checkpoint(assets, tmp_path, capsys):
    err = _run_error(["verify", "-c", str(assets["pf"]), "-p", f"big={assets['big']}", "-o", str(tmp_path / "o")], capsys)
    assert str(assets["big"]) in err and "48x48" in err and "16x16" in err and str(assets["pf"]) in err
    assert "8 of 8 images" in err and "--resize" in err


def test_error_pairs_without_folder(assets, tmp_path, capsys):
    err = _run_error(["verify", "-c", str(assets["rgb"]), "-p", f"m={assets['pairs']}", "-o", str(tmp_path / "o")], capsys)
    assert str(assets["pairs"]) in err and "image folder" in err


# --------------------------------------------------------------------------- no lost work, --resize, --pairs


def _bin_with_bad_images(path: Path, bad: tuple[int, ...]) -> None:
    """A 16x16 .bin of 12 images (6 pairs) whose images ``bad`` are corrupt JPEGs."""
    from facepriv.data.images import encode_image

    images, targets = _faces(6, 2, seed=8)
    blobs = [encode_image(im, ".png") for im in images]
    for i in bad:
        blobs[i] = b"\xff\xd8\xff\xe0 cut short"
    write_bin(path, blobs, [True, False] * 3)


def test_unreadable_images_are_all_reported_before_anything_runs(assets, tmp_path, capsys, monkeypatch):
    import facepriv.eval.verify as verify_mod

    calls = []
    real = verify_mod.embed_protected_set
    monkeypatch.setattr(verify_mod, "embed_protected_set", lambda *a, **k: calls.append(1) or real(*a, **k))
    bad = tmp_path / "late.bin"
    _bin_with_bad_images(bad, (9, 11))  # late in the set: the old run failed there, after the good set
    err = _run_error(["verify", "-c", str(assets["rgb"]), "-c", str(assets["pf"]), "-p", f"good={assets['bin']}",
                      "-p", f"late={bad}", "-o", str(tmp_path / "o"), "-q"], capsys)
    assert f"{bad}#image9" in err and f"{bad}#image11" in err and "2 of 12 images are unreadable" in err
    assert calls == []  # nothing embedded: the check ran first
    assert not (tmp_path / "o" / "metrics.json").exists()


def _nan_checkpoint(tiny_model, path: Path) -> Path:
    model = tiny_model({"name": "rgb"})
    with torch.no_grad():
        next(model.backbone.parameters()).fill_(float("nan"))  # diverged weights
    model.save(path)
    return path


def test_finished_results_survive_a_later_failure(assets, tmp_path, capsys, tiny_model):
    nan = _nan_checkpoint(tiny_model, tmp_path / "diverged.pt")
    out = tmp_path / "o"
    err = _run_error(["verify", "-c", str(assets["rgb"]), "-c", str(nan), "-p", f"tiny={assets['bin']}",
                      "-p", f"mine={assets['pairs']}:{assets['faces']}", "-o", str(out), "-q"], capsys)
    assert "NaN/inf embeddings" in err and "2 of 4 checkpoint x set results were finished" in err
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["complete"] is False and [(r["checkpoint_name"], r["set"]) for r in doc["results"]] == [
        ("rgb", "tiny"), ("rgb", "mine")]
    assert doc["pending"] == [{"checkpoint_name": "diverged", "set": "tiny"}, {"checkpoint_name": "diverged", "set": "mine"}]
    assert "diverged x tiny" in doc["error"] and "NaN" in doc["error"]
    summary = (out / "summary.md").read_text()
    assert "Incomplete: 2 of 4" in summary and "| rgb | mine |" in summary and "diverged x mine" in summary
    # the finished numbers are the ones a clean run gives
    clean = verify([assets["rgb"]], {"tiny": str(assets["bin"])}, progress=False)
    assert doc["results"][0]["summary"]["auc"] == clean["results"][0]["summary"]["auc"]


def test_resize_tries_a_checkpoint_on_faces_of_another_size(assets, tmp_path, capsys):
    from facepriv.data.images import encode_image, resize_to

    out = tmp_path / "o"
    assert eval_main(["verify", "-c", str(assets["rgb"]), "-p", f"big={assets['big']}", "--resize", "--no-plots",
                      "-o", str(out), "-q"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    (r,) = doc["results"]
    assert doc["settings"]["resize"] is True and doc["complete"] is True
    assert r["resized"]["to"] == "16x16" and r["resized"]["from"] == {"48x48": 8} and r["resized"]["stretched"] == 0
    summary = (out / "summary.md").read_text()
    assert "| rgb | big (resized) |" in summary and "not comparable" in summary
    # the scores are those of the same faces resized beforehand (lossless), so the resize is real
    big = load_set(parse_set_spec("big", str(assets["big"])))
    small = [encode_image(resize_to(big.load_image(i), (16, 16)), ".png") for i in range(big.num_images)]
    write_bin(tmp_path / "small.bin", small, big.issame.tolist())
    a = verify([assets["rgb"]], {"big": str(assets["big"])}, resize=True, progress=False, keep_scores=True)
    b = verify([assets["rgb"]], {"small": str(tmp_path / "small.bin")}, progress=False, keep_scores=True)
    np.testing.assert_allclose(a["results"][0]["scores"], b["results"][0]["scores"], rtol=0, atol=1e-12)
    assert "resized" not in b["results"][0]


def test_pairs_replaces_set_which_still_works_with_a_warning(assets, tmp_path, capsys):
    base = ["verify", "-c", str(assets["rgb"]), "--no-plots", "-q"]
    assert eval_main([*base, "--pairs", f"t={assets['bin']}", "-o", str(tmp_path / "new")]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert eval_main([*base, "--set", f"t={assets['bin']}", "-o", str(tmp_path / "old")]) == 0
    assert "--set/-s for verification sets is deprecated" in capsys.readouterr().err
    new, old = (json.loads((tmp_path / d / "metrics.json").read_text())["results"][0]["summary"] for d in ("new", "old"))
    assert new == old
    err = _run_error([*base, "-o", str(tmp_path / "none")], capsys)
    assert "--pairs" in err
    assert eval_main(["verify", "--help"]) == 0
    assert "--pairs NAME=SPEC" in capsys.readouterr().out
    from facepriv.eval.cli import build_parser  # eval subsets takes the same spelling

    for flag, deprecated in (("--pairs", False), ("-s", True)):
        args = build_parser().parse_args(["subsets", "-c", "m.pt", flag, "s=a.bin", "-o", "o"])
        assert args.set == ("s", "a.bin") and args.deprecated_set is deprecated
