"""The attack suite reads MinusFace like PartialFace, against the residue: placement signatures,
simulated training data and the optimisation attack's forward model are residues of the
(public) generator, and only the secret seed separates the public from the secret view."""

from __future__ import annotations

import torch

from facepriv.frontends import MinusFace

from facepriv.eval.attacks import build_view, observe
from facepriv.eval.attacks.minusface_view import MinusFaceView
from facepriv.eval.attacks.optimisation import DataTerm


def _minusface(secret_seed: int = 3) -> MinusFace:
    """A MinusFace with a non-zero output head (as after training): its residue differs from the DCT."""
    fe = MinusFace(secret_seed=secret_seed, generator_width=4)
    g = torch.Generator().manual_seed(secret_seed)
    with torch.no_grad():
        fe.generator.head_weight.normal_(generator=g)
        fe.generator.head_bias.normal_(generator=g)
    return fe.eval()


def _residue_at(fe: MinusFace, images: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return fe.residue(images)[torch.arange(images.shape[0]).unsqueeze(1), channels]


def test_views_know_the_generator_and_only_the_secret_view_knows_the_table():
    fe = _minusface()
    public, secret = build_view(fe, "public"), build_view(fe, "secret")
    assert isinstance(public, MinusFaceView) and isinstance(secret, MinusFaceView)
    assert secret.frontend is fe
    assert public.frontend is not fe and not torch.equal(public.frontend.subset_table, fe.subset_table)
    for a, b in zip(public.frontend.generator.parameters(), fe.generator.parameters()):
        assert torch.equal(a, b)  # the generator ships with the client app: public
    assert "residues" in public.describe()["reads"]


def test_placed_tensors_hold_the_residue_and_the_secret_view_places_them(aux_u8, victims_f):
    fe = _minusface()
    prot, truth = observe(fe, victims_f, torch.Generator().manual_seed(0))
    view = build_view(fe, "secret").fit(aux_u8)
    true = view.place_true(prot, truth)
    rows = torch.arange(victims_f.shape[0]).unsqueeze(1)
    assert torch.allclose(true.values[rows, truth["channels"]], _residue_at(fe, victims_f, truth["channels"]), atol=1e-3)
    assert view.diagnostics(prot, truth)["query_exactly_placed"] >= 0.9  # signatures learned on residues


def test_simulated_training_data_are_residues_at_the_attackers_channels(aux_u8):
    view = build_view(_minusface(), "public")
    images = aux_u8[:4].float() / 255.0
    sim = view.simulate(images, torch.Generator().manual_seed(1))
    channels = view._random_channels(4, torch.Generator().manual_seed(1))
    assert torch.allclose(sim, _residue_at(view.frontend, images, channels), atol=1e-3)


def test_optimisation_data_term_is_zero_at_the_true_face(aux_u8, victims_f):
    """The optimisation attack's fast path predicts the residue (not the raw DCT) at the observed
    channels, so the true face explains its own tensor exactly; another face does not."""
    fe = _minusface()
    victims = victims_f[:4]
    prot, truth = observe(fe, victims, torch.Generator().manual_seed(0))
    view = build_view(fe, "secret").fit(aux_u8)
    term = DataTerm(view, view.place_true(prot, truth), view.stats)
    assert term.channels is not None  # the per-channel fast path is the one under test
    with torch.no_grad():
        at_truth, elsewhere = term(victims), term(victims.flip(0))
    assert float(at_truth.max()) < 1e-6 and float(elsewhere.min()) > 1e-3
    with torch.no_grad():
        assert torch.allclose(view.forward_selected(victims, truth["channels"]), prot, atol=1e-3)


def test_attack_cli_runs_every_attack_on_a_minusface_checkpoint(tmp_path, face_folders):
    """`facepriv attack --checkpoint` on a MinusFace model: the trained generator comes from the
    checkpoint, every attack runs at both knowledge levels, and the secret stays out of the report."""
    import json

    from facepriv.models import FaceRecognizer

    from facepriv.eval.attacks.cli import main

    model = FaceRecognizer.from_config({
        "frontend": _minusface(secret_seed=987654321).config,
        "backbone": {"name": "iresnet", "layers": [1, 1, 1, 1], "width": 0.125, "embedding_size": 16, "input_size": 32},
        "image_size": 32,
    })
    model.frontend.load_state_dict(_minusface(secret_seed=987654321).state_dict())
    ckpt = model.save(tmp_path / "minusface.pt")
    tiny = ["--image-size", "32", "--steps", "4", "--batch-size", "4", "--width", "4", "--depth", "1", "--opt-steps", "3",
            "--lstsq-iterations", "5", "--max-victims", "4", "--max-aux", "24", "--grid-victims", "2", "--no-progress"]
    rc = main(["--checkpoint", str(ckpt), "--aux", str(face_folders / "aux"), "--victims", str(face_folders / "victims"),
               "--judge", "none", "--out", str(tmp_path / "run"), *tiny])
    assert rc == 0
    text = (tmp_path / "run" / "attack.json").read_text()
    run = json.loads(text)["runs"][0]
    assert run["frontend"]["name"] == "minusface" and run["knowledge_levels"] == ["public", "secret"]
    rows = {(r["attack"], r["knowledge"]) for r in run["results"]}
    assert {("analytic/lstsq", "public"), ("learned", "secret"), ("optimisation", "public")} <= rows
    assert run["frontend"]["public_config"]["secret_seed"] == "<secret>" and "987654321" not in text
