"""`facepriv attack` end to end on generated faces: report files, overlap refusal, bad files."""

from __future__ import annotations

import json
import shutil

import pytest

from facepriv.eval.attacks import check_disjoint, load_victims
from facepriv.eval.attacks.cli import main

TINY = ["--image-size", "32", "--steps", "4", "--batch-size", "4", "--width", "4", "--depth", "1",
        "--opt-steps", "3", "--lstsq-iterations", "5", "--max-victims", "6", "--max-aux", "40",
        "--grid-victims", "3", "--link-steps", "4", "--link-width", "4", "--bootstrap", "50", "--no-progress"]


@pytest.fixture(scope="module")
def judge_ckpt(tmp_path_factory):
    from facepriv.models import FaceRecognizer

    model = FaceRecognizer.from_config({
        "frontend": {"name": "rgb"},
        "backbone": {"name": "iresnet", "layers": [1, 1, 1, 1], "width": 0.125, "embedding_size": 16, "input_size": 32},
        "image_size": 32,
    })
    return str(model.save(tmp_path_factory.mktemp("judge") / "judge.pt"))


def test_cli_writes_json_markdown_and_grids(tmp_path, face_folders, judge_ckpt):
    # a truncated image among the victims must be skipped and reported, not crash the run
    bad = face_folders / "victims" / "synth_000500" / "synth_000500_0009.jpg"
    good = next((face_folders / "victims" / "synth_000500").glob("*.jpg"))
    bad.write_bytes(good.read_bytes()[:200])
    try:
        out = tmp_path / "run"
        rc = main(["--frontend", "partialface", "--frontend", "dct", "--aux", str(face_folders / "aux"),
                   "--victims", str(face_folders / "victims"), "--judge", judge_ckpt, "--out", str(out), *TINY])
        assert rc == 0
        report = json.loads((out / "attack.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
        names = [r["frontend"]["name"] for r in report["runs"]]
        assert names == ["partialface", "dct"]
        pf, dct = report["runs"]
        assert pf["knowledge_levels"] == ["public", "secret"] and dct["knowledge_levels"] == ["public"]
        rows = {(r["attack"], r["knowledge"]) for r in pf["results"]}
        assert {("analytic/lstsq", "public"), ("learned", "secret"), ("optimisation", "public")} <= rows
        # with a judge, the default attacks include identity linkage (no image, identity only)
        assert {("linkage", "public"), ("linkage/protected", "secret")} <= rows
        for r in pf["results"] + dct["results"]:
            assert "rank1" in r["identity"] and r["identity"]["ci"]["rank1"] is not None  # bootstrap interval
            if r["attack"].startswith("linkage"):
                assert r["image"] is None
            else:
                assert r["image"]["psnr_db"]["mean"] is not None
        # the headline: best attack per victim, per knowledge level, fusing reconstructions and linkage
        best = pf["best_per_victim"]
        assert set(best) == {"public", "secret"} and "linkage" in best["public"]["attacks"]
        assert "linkage/protected" not in best["public"]["attacks"]
        assert pf["baselines"]["raw_images"]["identity"]["n_probes"] == 6
        assert pf["data"]["victims"]["skipped_files"] == 1
        assert "secret_seed" not in json.dumps(pf["frontend"]["public_config"]).replace('"secret_seed": "<secret>"', "")
        md = (out / "attack.md").read_text()
        assert "| Attack | Knowledge | PSNR (dB) | SSIM (luma) | TPR@FPR=1e-3 | TPR@FPR=1e-2 | Rank-1 |" in md
        assert "raw images (upper bound)" in md and "naive rendering" in md and "Worst case" in md
        assert "Headline: best attack per victim" in md and "Convergence check: none" in md
        for sub in ("partialface", "dct"):
            assert (out / sub / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert (out / sub / "decoder_public.pt").is_file()
        assert (out / "partialface" / "decoder_secret.pt").is_file()
        # resuming a finished run reuses the decoders instead of training again
        assert main(["--frontend", "dct", "--aux", str(face_folders / "aux"), "--victims", str(face_folders / "victims"),
                     "--judge", "none", "--attacks", "learned", "--resume", "--out", str(out), *TINY]) == 0
        again = json.loads((out / "attack.json").read_text())["runs"][0]["results"][0]
        assert again["training"]["resumed_from"] == 4 and "identity" not in again
    finally:
        bad.unlink()


def test_overlapping_identities_are_refused(tmp_path, face_folders, capsys):
    victims = tmp_path / "victims"
    shutil.copytree(face_folders / "victims", victims)
    shutil.copytree(face_folders / "aux" / "synth_000003", victims / "synth_000003")
    with pytest.raises(ValueError, match="both the auxiliary set"):
        check_disjoint(face_folders / "aux", victims)
    rc = main(["--frontend", "dct", "--aux", str(face_folders / "aux"), "--victims", str(victims),
               "--judge", "none", "--out", str(tmp_path / "o"), *TINY])
    assert rc == 2 and "synth_000003" in capsys.readouterr().err
    with pytest.raises(ValueError, match="same folder"):
        check_disjoint(face_folders / "aux", face_folders / "aux")


def test_victim_split_holds_out_the_probe(face_folders):
    split = load_victims(face_folders / "victims", image_size=32, max_victims=4, seed=1)
    assert split.probes.shape[0] == 4 and split.gallery.shape[0] == 8
    assert sorted(set(split.gallery_ids.tolist())) == [0, 1, 2, 3]
    assert all(p.endswith("_0001.jpg") for p in split.probe_paths)


def test_cli_help_and_bad_arguments(capsys, face_folders, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--knowledge" in capsys.readouterr().out
    rc = main(["--aux", str(face_folders / "aux"), "--victims", str(face_folders / "victims"), "--out", str(tmp_path),
               "--judge", "none", "--attacks", "analytic,telepathy", *TINY, "--frontend", "dct"])
    assert rc == 2 and "telepathy" in capsys.readouterr().err


def test_yaml_config_and_checkpoint_target(tmp_path, face_folders):
    from facepriv.models import FaceRecognizer

    from facepriv.eval.attacks.cli import _config, _frontends, build_parser

    model = FaceRecognizer.from_config({
        "frontend": {"name": "partialface", "secret_seed": 99},
        "backbone": {"name": "iresnet", "layers": [1, 1, 1, 1], "width": 0.125, "embedding_size": 16,
                     "input_size": 32, "norm": "group", "norm_groups": 4},
        "image_size": 32,
    })
    ckpt = model.save(tmp_path / "pf.pt")
    yml = tmp_path / "attack.yaml"
    yml.write_text("victim_batch: 4\nlearned:\n  steps: 7\n  width: 6\noptimisation:\n  tv_weight: 0.5\n")
    base = ["--aux", str(face_folders / "aux"), "--victims", str(face_folders / "victims"), "--out", str(tmp_path)]
    args = build_parser().parse_args([*base, "--checkpoint", str(ckpt), "--config", str(yml), "--width", "5"])
    cfg = _config(args)
    assert cfg.victim_batch == 4 and cfg.learned.steps == 7 and cfg.learned.width == 5  # flag beats YAML
    assert cfg.optimisation.tv_weight == 0.5
    (label, frontend, note, model), = _frontends(args, 32)
    assert label == "partialface" and frontend.secret_seed == 99 and "checkpoint" in note
    assert model is not None and model.frontend is frontend  # the gradient attack inverts this model's updates
    yml.write_text("learned:\n  stepz: 7\n")
    with pytest.raises(ValueError, match="stepz"):
        _config(build_parser().parse_args([*base, "--config", str(yml)]))
