"""MinusFace: the residue of a learned regeneration, selected like PartialFace.

Small faces (32 px) and a narrow generator keep every test well under a second or two on one
CPU thread; the trainer tests use the tiny training config of tests/training.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from facepriv.cli import main as cli_main
from facepriv.frontends import MinusFace, PartialFace, block_dct, block_idct, build_frontend
from facepriv.frontends import partial as partial_module
from facepriv.frontends.export import device_module, example_inputs, export_frontend
from facepriv.frontends.minusface import channel_gain

SIZE = 32


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def faces(n: int = 4, seed: int = 0, size: int | tuple[int, int] = SIZE) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def trained_like(seed: int = 0, **kwargs) -> MinusFace:
    """A MinusFace whose output head is non-zero (as after training), so g actually subtracts."""
    kwargs = {"secret_seed": 5, "generator_width": 4, **kwargs}
    mf = MinusFace(**kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mf.generator.head_weight.normal_(generator=g)
        mf.generator.head_bias.normal_(generator=g)
    return mf


def residue_at(mf: MinusFace, images: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Reference: all 192 residue channels E(x) - g(x), then each sample's channels."""
    full = block_dct(images, mf.upsample) - mf.generator.full(mf.generator.features(images))
    return full[torch.arange(images.shape[0]).unsqueeze(1), channels]


# ---------------------------------------------------------------------------------- the residue


def test_untrained_minusface_sends_exactly_what_partialface_sends() -> None:
    """The output head starts at zero: same secret -> bit-identical tensors, train and eval."""
    images, labels = faces(3), torch.tensor([0, 4, 4])
    mf, pf = MinusFace(secret_seed=8, generator_width=4, train_seed=2), PartialFace(secret_seed=8, train_seed=2)
    assert torch.equal(mf.subset_table, pf.subset_table) and mf.out_channels == pf.out_channels == 27
    assert torch.equal(mf.train()(images, labels), pf.train()(images, labels))
    assert torch.equal(mf.eval()(images, subset=2, permutation=1), pf.eval()(images, subset=2, permutation=1))
    assert not mf.privacy_report()["generator"]["regeneration_active"]


def test_sent_values_are_the_residue_at_the_chosen_channels() -> None:
    mf = trained_like().eval()
    images = faces(3)
    subset, perm = torch.tensor([0, 5, 2]), torch.tensor([2, 0, 1])
    out = mf(images, subset=subset, permutation=perm)
    channels = mf.subset_channels(subset, perm)
    ref = residue_at(mf, images, channels)
    assert out.shape == (3, 27, SIZE, SIZE)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(out, block_dct(images)[torch.arange(3).unsqueeze(1), channels], atol=1.0)  # g subtracts
    assert torch.allclose(mf.residue(images), block_dct(images) - mf.generator(images), atol=1e-4)


def test_training_views_are_residues_of_allowed_subsets() -> None:
    mf = trained_like().train()
    images, labels = faces(2), torch.tensor([3, 17])
    out = mf(images, labels)
    assert out.shape == (6, 27, SIZE, SIZE) and torch.equal(mf.expand_labels(labels), labels.repeat_interleave(3))
    allowed = mf.allowed_subsets(labels)
    for row in range(6):
        img = row // 3
        hits = [(s, p) for s in range(6) for p in range(3)
                if torch.allclose(out[row], residue_at(mf, images[img:img + 1], mf.subset_channels(
                    torch.tensor([s]), torch.tensor([p])))[0], atol=1e-3)]
        assert len(hits) == 1 and hits[0][0] in allowed[img].tolist()


@pytest.mark.parametrize("upsample, size", [(8, SIZE), (4, (SIZE, 48)), (2, SIZE), (1, (48, SIZE))])
def test_shapes_for_every_upsample_and_non_square_faces(upsample: int, size) -> None:
    mf = trained_like(upsample=upsample).eval()
    images = faces(2, size=size)
    h, w = mf.output_size(*images.shape[-2:])
    out = mf(images, subset=1)
    assert out.shape == (2, 27, h, w) and (h, w) == (images.shape[-2] * upsample // 8, images.shape[-1] * upsample // 8)
    assert torch.allclose(out, residue_at(mf, images, mf.subset_channels(torch.tensor([1, 1]), torch.tensor([0, 0]))),
                          atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("upsample, size", [(8, SIZE), (4, (SIZE, 48)), (1, (48, SIZE))])
def test_fast_regeneration_equals_block_idct_of_the_full_head(upsample: int, size) -> None:
    """The reconstruction loss decodes X' through the banded adjoint; it must be block_idct exactly."""
    mf = trained_like(upsample=upsample)
    features = mf.generator.features(faces(2, size=size))
    fast = mf.generator.regeneration(features)
    ref = block_idct(mf.generator.full(features), upsample)
    assert fast.shape == ref.shape == (2, 3, *faces(1, size=size).shape[-2:])
    assert torch.allclose(fast, ref, atol=1e-4), float((fast - ref).abs().max())


@pytest.mark.parametrize("upsample", [1, 8])
def test_channel_gain_is_the_rms_of_white_noise_coefficients(upsample: int) -> None:
    size = 48 if upsample == 8 else 112  # enough blocks per image for a tight estimate at each factor
    noise = torch.rand(48, 3, size, size, generator=torch.Generator().manual_seed(1))
    full = block_dct(noise, upsample).double()
    rms = (full - full.mean((0, 2, 3), keepdim=True)).pow(2).mean((0, 2, 3)).sqrt()
    gain = channel_gain(upsample, size)
    assert gain.shape == (192,) and float((rms.float() / gain - 1).abs().max()) < 0.05


# ---------------------------------------------------------------------------------- seeds, randomness


def test_generator_init_comes_from_train_seed_not_the_global_rng() -> None:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = MinusFace(secret_seed=1, generator_width=4, train_seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # building it draws nothing from torch's global RNG
    torch.manual_seed(123)
    b = MinusFace(secret_seed=1, generator_width=4, train_seed=3)
    c = MinusFace(secret_seed=1, generator_width=4, train_seed=4)
    for (name, pa), pb, pc in zip(a.generator.named_parameters(), b.generator.parameters(), c.generator.parameters()):
        assert torch.equal(pa, pb), name
        if name.startswith(("enc", "down", "mid", "up", "fuse")) and name.endswith("weight"):
            assert not torch.equal(pa, pc), name


def test_training_is_reproducible_and_resumable() -> None:
    images, labels = faces(2), torch.tensor([3, 4])
    a, b = trained_like(train_seed=11).train(), trained_like(train_seed=11).train()
    state = a.get_rng_state()
    first = a(images, labels)
    assert torch.equal(first, b(images, labels))
    a.set_rng_state(state)
    assert torch.equal(a(images, labels), first)


def test_inference_uses_the_os_csprng_unless_seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_randbelow(n: int, size: int) -> list[int]:
        calls.append((n, size))
        return [n - 1] * size

    monkeypatch.setattr(partial_module, "secure_randbelow", fake_randbelow)
    mf = trained_like().eval()
    images = faces(3)
    out = mf(images)
    assert (6, 3) in calls and (3, 3) in calls  # subset and permutation from the CSPRNG
    assert torch.allclose(out, mf(images, subset=5, permutation=2), atol=1e-5)
    calls.clear()
    seeded, again = trained_like(inference_seed=5).eval(), trained_like(inference_seed=5).eval()
    assert torch.equal(seeded(images), again(images)) and not calls


# ---------------------------------------------------------------------------------- gradients, aux loss


def test_recognition_gradients_reach_every_generator_parameter() -> None:
    mf = trained_like().train()
    out = mf(faces(2), torch.tensor([0, 1]))
    out.pow(2).mean().backward()
    for name, p in mf.generator.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_reconstruction_loss_value_gradients_and_collection() -> None:
    mf = trained_like(reconstruction_weight=2.5).train()
    images = faces(2)
    mf(images, torch.tensor([0, 1]))
    loss = mf.auxiliary_loss()
    regenerated = block_idct(mf.generator(images), 8)
    assert loss is not None and math.isclose(float(loss), 2.5 * float((2 * regenerated - 2 * images).abs().mean()), rel_tol=1e-4)
    assert mf.auxiliary_loss() is None  # collected once per forward
    loss.backward()
    assert all(p.grad is not None for p in mf.generator.parameters())
    # a deep copy (experiments copy frontends) drops a pending loss instead of failing on its graph
    mf(images, torch.tensor([0, 1]))
    clone = copy.deepcopy(mf)
    assert clone.auxiliary_loss() is None and mf.auxiliary_loss() is not None


def test_no_reconstruction_loss_when_it_cannot_train_the_generator() -> None:
    images, labels = faces(2), torch.tensor([0, 1])
    mf = trained_like()
    mf.eval()(images)
    assert mf.auxiliary_loss() is None  # eval mode
    with torch.no_grad():
        mf.train()(images, labels)
    assert mf.auxiliary_loss() is None  # no gradients
    mf.generator.requires_grad_(False)  # frozen (DP-SGD freezes the frontend)
    mf(images, labels)
    assert mf.auxiliary_loss() is None
    off = trained_like(reconstruction_weight=0.0).train()
    off(images, labels)
    assert off.auxiliary_loss() is None


# ---------------------------------------------------------------------------------- config, report, errors


def test_config_round_trip_state_dict_and_public_config() -> None:
    mf = trained_like(n_subsets=3, subsets_per_identity=2, sample_multiplier=2, n_permutations=1, reconstruction_weight=1.5)
    clone = build_frontend(mf.config)
    assert type(clone) is MinusFace and clone.config == mf.config and clone.out_channels == 54
    assert torch.equal(clone.subset_table, mf.subset_table)
    # learned weights travel in the state dict (only g's parameters: tables and gains are re-derived)
    assert set(mf.state_dict()) == {f"generator.{k}" for k, _ in mf.generator.named_parameters()}
    clone.load_state_dict(mf.state_dict())
    images = faces(2)
    assert torch.equal(clone.eval()(images, subset=1), mf.eval()(images, subset=1))
    public = mf.public_config()
    assert public["secret_seed"] == "<secret>" and public["generator_width"] == 4
    with pytest.raises(ValueError, match="redacted"):
        build_frontend(public)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"upsample": 3}, "upsample must be one of"),
        ({"generator_width": 0}, "generator_width"),
        ({"generator_width": 2.5}, "generator_width"),
        ({"generator_width": True}, "generator_width"),
        ({"reconstruction_weight": -1.0}, "reconstruction_weight"),
        ({"reconstruction_weight": float("nan")}, "reconstruction_weight"),
        ({"reconstruction_weight": "5"}, "reconstruction_weight"),
        ({"n_subsets": 5}, "equal subsets"),
        ({"sample_multiplier": 4}, "sample_multiplier"),
    ],
)
def test_bad_configuration(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MinusFace(**kwargs)


def test_bad_options_inputs_and_labels() -> None:
    with pytest.raises(ValueError, match="no option"):
        build_frontend({"name": "minusface", "generator_depth": 3})
    mf = trained_like().train()
    with pytest.raises(ValueError, match="labels"):
        mf(faces(2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mf(faces(2) * 255, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="subset ids"):
        mf.eval()(faces(2), subset=6)


def test_privacy_report_and_cli(capsys: pytest.CaptureFixture[str]) -> None:
    report = trained_like().privacy_report()
    gen = report["generator"]
    assert report["frontend"] == "minusface" and report["formal_guarantee"] is None
    assert gen["regeneration_active"] and gen["weights_secret"] is False
    # PartialFace's linear-rank analysis and measured leakage describe E alone, not a residue
    assert "one_subset_determines" not in report and "No MinusFace attack result" in report["what_attacks_found"]
    assert gen["parameters"] == sum(p.numel() for p in trained_like().generator.parameters())
    assert cli_main(["frontends"]) == 0 and "minusface" in capsys.readouterr().out
    assert cli_main(["frontends", "show", "--frontend", "minusface", "--option", "secret_seed=77"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config"]["secret_seed"] == "<secret>" and shown["out_channels"] == 27
    assert shown["privacy_report"]["generator"]["width"] == 16


# ---------------------------------------------------------------------------------- export


def test_device_module_matches_the_frontend() -> None:
    mf = trained_like().eval()
    module, names, randomness = device_module(mf)
    inputs = example_inputs(mf, 2, SIZE)
    assert names == ["images", "subset_ids", "permutation_ids"] and "CSPRNG" in randomness
    want = mf(inputs[0], subset=inputs[1], permutation=inputs[2])
    assert torch.allclose(module(*inputs), want, atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_parity_with_the_frontend(tmp_path: Path, fmt: str) -> None:
    """The exported graph (onnxruntime / TorchScript) reproduces MinusFace.forward to 1e-4,
    including at a batch size other than the one it was traced with."""
    mf = trained_like().eval()
    info = export_frontend(mf, tmp_path, fmt, size=SIZE)
    assert info["max_abs_difference_vs_pytorch"] < 1e-4 and info["frontend"]["secret_seed"] == "<secret>"
    images = faces(3, seed=9)
    subset, perm = torch.tensor([0, 5, 2]), torch.tensor([2, 0, 1])
    with torch.no_grad():
        want = mf(images, subset=subset, permutation=perm)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(tmp_path / info["file"]), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"images": images.numpy(), "subset_ids": subset.numpy(),
                                                  "permutation_ids": perm.numpy()})[0])
    else:
        got = torch.jit.load(str(tmp_path / info["file"]))(images, subset, perm)
    assert got.shape == want.shape and float((got - want).abs().max()) < 1e-4


# ---------------------------------------------------------------------------------- training


TINY_FRONTEND = {"name": "minusface", "secret_seed": 3, "train_seed": 1, "sample_multiplier": 2, "generator_width": 4}


def _tiny_cfg(**kw):
    """32 px synthetic faces, a 1/16-width IResNet-18 (GroupNorm): a few steps take seconds."""
    from facepriv.training.config import config_from_dict

    return config_from_dict({
        "name": "tiny-minusface", "seed": 7, "device": "cpu",
        "data": {"format": "synthetic", "synthetic": {"n_identities": 8, "images_per_identity": 8, "cache": True},
                 "image_size": SIZE, "batch_size": 8, "num_workers": 0},
        "frontend": dict(TINY_FRONTEND),
        "model": {"name": "iresnet18", "width": 0.0625, "embedding_size": 16, "norm": "group", "norm_groups": 2},
        "input_norm": {"calibration_batches": 1},
        "head": {"type": "softmax", "margin": "arcface", "s": 16.0, "m": 0.2},
        "optim": {"lr": 0.05, "frontend_lr": 0.02},
        "logging": {"every_steps": 1, "progress": False},
        **kw,
    })


def test_trainer_trains_the_generator_jointly(tmp_path: Path) -> None:
    """The generator's parameters form the frontend param group, the reconstruction loss joins the
    training loss, the generator learns, and its trained weights are in the saved model."""
    from facepriv.models import FaceRecognizer
    from facepriv.training.trainer import Trainer

    trainer = Trainer(_tiny_cfg(schedule={"max_steps": 3, "warmup_steps": 0}, checkpoint={"every_steps": 3}),
                      run_dir=tmp_path)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    gen_ids = {id(p) for p in trainer.recognizer.frontend.generator.parameters()}
    assert {id(p) for p in groups["frontend"]["params"]} == gen_ids and groups["frontend"]["lr"] == pytest.approx(0.02)
    before = {k: v.clone() for k, v in trainer.recognizer.frontend.generator.state_dict().items()}
    results = []
    original = trainer.train_step
    trainer.train_step = lambda batch: results.append(original(batch)) or results[-1]  # type: ignore[method-assign]
    trainer.fit()
    assert len(results) == 3 and all("frontend_aux" in r.parts and float(r.parts["frontend_aux"]) > 0 for r in results)
    after = trainer.recognizer.frontend.generator.state_dict()
    assert not torch.equal(after["head_weight"], before["head_weight"])
    saved = FaceRecognizer.load(next(tmp_path.rglob("model.pt")))
    assert saved.frontend.name == "minusface" and saved.frontend.config["secret_seed"] == 3
    assert torch.equal(saved.frontend.generator.head_weight, after["head_weight"].cpu())


def test_dp_sgd_refuses_several_views_of_one_image() -> None:
    """r views of one face would be r DP-SGD samples of one privacy unit: only r = 1 is accounted right."""
    from facepriv.training.config import ConfigError
    from facepriv.training.dp_sgd import adapt_config_for_dp

    with pytest.raises(ConfigError, match="minusface needs frontend.sample_multiplier: 1"):
        _tiny_cfg(dp={"enabled": True})  # checked when the config is loaded
    single = _tiny_cfg(dp={"enabled": True}, frontend={**TINY_FRONTEND, "sample_multiplier": 1})
    assert adapt_config_for_dp(single).frontend["sample_multiplier"] == 1


def test_interrupted_training_resumes_bit_identically(tmp_path: Path) -> None:
    """Generator weights, their optimiser state and the subset draws all resume exactly."""
    from facepriv.training.trainer import Trainer

    def cfg(**kw):
        return _tiny_cfg(schedule={"max_steps": 4, "warmup_steps": 1}, **kw)

    full = Trainer(cfg(), run_dir=tmp_path / "full")
    full.fit()
    crashing = Trainer(cfg(checkpoint={"every_steps": 2}), run_dir=tmp_path / "crash")
    original = crashing.train_step

    def crash_at_3(batch):
        if crashing.step == 3:
            raise KeyboardInterrupt("simulated preemption")
        return original(batch)

    crashing.train_step = crash_at_3  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        crashing.fit()
    resumed = Trainer(cfg(checkpoint={"every_steps": 2}), run_dir=tmp_path / "crash", resume="auto")
    assert resumed.step == 2
    resumed.fit()
    want, got = full.recognizer.state_dict(), resumed.recognizer.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert torch.equal(want["frontend.generator.head_weight"], got["frontend.generator.head_weight"])
