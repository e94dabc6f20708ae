"""`facepriv eval subsets`: PartialFace scored with random vs fixed secret layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facepriv.eval.cli import main as eval_main
from facepriv.eval.subsets import subset_invariance
from facepriv.data import SyntheticFaces, make_pairs, write_bin
from facepriv.data.verification import ArrayImageSource, VerificationSet

SIZE = 16


def _set() -> VerificationSet:
    import cv2

    faces = SyntheticFaces(6, 4, seed=2, image_size=32)
    imgs = np.stack([cv2.resize(im, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for im in faces.as_array()])
    pairs, same, folds = make_pairs(faces.targets, n_folds=2, pairs_per_fold=10, seed=0)
    return VerificationSet("syn", ArrayImageSource(imgs), pairs, same, folds, image_size=None)


def test_reports_random_and_every_fixed_layout(tiny_model):
    model = tiny_model({"name": "partialface", "secret_seed": 5, "n_subsets": 3, "subsets_per_identity": 2,
                        "n_permutations": 2, "sample_multiplier": 1})
    out = subset_invariance(model, _set(), max_pairs=None)
    assert out["pairs"] == 20 and 0 < out["genuine"] < 20
    assert [(f["subset"], f["permutation"]) for f in out["fixed"]] == [(s, p) for p in range(2) for s in range(3)]
    for row in [out["random"], *out["fixed"]]:
        assert 0.0 <= row["auc"] <= 1.0 and -1.0 <= row["impostor_cosine"] <= 1.0
    assert out["fixed_auc_range"][0] <= out["fixed_auc_range"][1]
    # an untrained model's embedding depends on the layout: fixed layouts disagree with each other
    assert len({round(f["genuine_cosine"], 6) for f in out["fixed"]}) > 1
    assert len(subset_invariance(model, _set(), max_pairs=None, layouts=2)["fixed"]) == 2


def test_one_layout_makes_random_and_fixed_identical(tiny_model):
    """With a single subset and order, 'random' and 'fixed' protect every image identically."""
    model = tiny_model({"name": "partialface", "secret_seed": 5, "n_subsets": 1, "subsets_per_identity": 1,
                        "n_permutations": 1, "sample_multiplier": 1})
    out = subset_invariance(model, _set(), max_pairs=None)
    assert out["random"] == {k: v for k, v in out["fixed"][0].items() if k not in ("subset", "permutation")}
    assert out["invariance_gap_auc"] == pytest.approx(0.0, abs=1e-12)


def test_refuses_a_model_without_secret_layouts(tiny_model):
    with pytest.raises(ValueError, match="needs a PartialFace model"):
        subset_invariance(tiny_model({"name": "dct"}), _set())


def test_cli_writes_json(tmp_path, capsys, tiny_model):
    vset = _set()
    write_bin(tmp_path / "s.bin", [vset.load_image(int(i)) for ab in vset.pairs for i in ab], vset.issame)
    tiny_model({"name": "partialface", "secret_seed": 5, "n_subsets": 2, "subsets_per_identity": 1,
                "n_permutations": 1, "sample_multiplier": 1}).save(tmp_path / "pf.pt")
    rc = eval_main(["subsets", "-c", str(tmp_path / "pf.pt"), "-p", f"s={tmp_path / 's.bin'}", "-o", str(tmp_path / "o"),
                    "--max-pairs", "12", "--device", "cpu"])
    assert rc == 0
    data = json.loads((tmp_path / "o" / "subsets.json").read_text())
    assert data["pairs"] == 12 and len(data["fixed"]) == 2 and "random layouts: AUC" in capsys.readouterr().out
    rc = eval_main(["subsets", "-c", str(tmp_path / "missing.pt"), "-p", f"s={tmp_path / 's.bin'}", "-o", str(tmp_path / "o")])
    assert rc == 2
