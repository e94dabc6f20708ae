"""Backbones: shapes for every channel layout, parameter counts, norms, config round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facepriv.models import IResNet, MobileFaceNet, build_backbone, count_parameters
from facepriv.models.iresnet import IRESNET_LAYERS

CHANNELS = (3, 27, 189, 192)  # RGB, PartialFace, DCTDP, full DCT
NAMES = ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "mobilefacenet")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("name", NAMES)
def test_every_backbone_takes_every_channel_layout(name: str) -> None:
    # Slim widths and batch 1 keep this cheap; full-width sizes are checked by counting.
    # Only the stem depends on in_channels, so the deep models run one forward (192
    # channels, the widest stem) and are otherwise just built for each layout.
    deep = name in ("iresnet50", "iresnet100")
    for channels in CHANNELS:
        width = 0.0625 if name == "mobilefacenet" else 0.125  # oneDNN is oddly slow for mbf at 0.125
        model = build_backbone({"name": name, "in_channels": channels, "width": width}).eval()
        assert model.config["in_channels"] == channels
        stem = model.conv1 if isinstance(model, IResNet) else model.layers[0].conv
        assert stem.in_channels == channels
        if deep and channels != 192:
            continue
        with torch.no_grad():
            out = model(torch.randn(1, channels, 112, 112))
        assert out.shape == (1, 512)
        assert torch.isfinite(out).all()


def test_training_mode_batch_forward() -> None:
    model = build_backbone({"name": "iresnet18", "in_channels": 192, "width": 0.125}).train()
    out = model(torch.randn(2, 192, 112, 112))
    assert out.shape == (2, 512)
    # BatchNorm1d on the embedding: zero mean per feature over the batch in training mode
    assert torch.allclose(out.mean(0), torch.zeros(512), atol=1e-4)


def _iresnet_param_formula(layers: tuple[int, ...], c_in: int, emb: int = 512) -> int:
    """Independent count: stem, blocks, head of the insightface IResNet."""
    def bn(c: int) -> int:
        return 2 * c

    total = c_in * 64 * 9 + bn(64) + 64
    inplanes = 64
    for planes, n in zip((64, 128, 256, 512), layers):
        for i in range(n):
            cin = inplanes if i == 0 else planes
            total += bn(cin) + cin * planes * 9 + bn(planes) + planes + planes * planes * 9 + bn(planes)
            if i == 0:
                total += cin * planes + bn(planes)  # stride-2 1x1 downsample
        inplanes = planes
    total += bn(512) + 512 * 49 * emb + emb + bn(emb)
    return total


@pytest.mark.parametrize("name", list(IRESNET_LAYERS))
def test_iresnet_parameter_counts_match_the_architecture(name: str) -> None:
    model = build_backbone({"name": name})
    expected = _iresnet_param_formula(IRESNET_LAYERS[name], 3)
    assert count_parameters(model) == expected
    # insightface freezes the feature BN scale
    assert count_parameters(model, trainable_only=True) == expected - 512
    # a 192-channel stem only changes the first conv
    if name == "iresnet18":
        wide = build_backbone({"name": name, "in_channels": 192})
        assert count_parameters(wide) - count_parameters(model) == (192 - 3) * 64 * 9


def test_known_insightface_sizes() -> None:
    # Published sizes of insightface's arcface_torch models (millions, 3-channel input).
    for name, millions in (("iresnet18", 24.0), ("iresnet50", 43.6), ("iresnet100", 65.2)):
        assert round(count_parameters(build_backbone({"name": name})) / 1e6, 1) == millions


def test_iresnet_layout_reaches_7x7_before_fc() -> None:
    model = build_backbone({"name": "iresnet18", "width": 0.125})
    seen = {}
    model.layer4.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    model.eval()(torch.randn(1, 3, 112, 112))
    assert seen["shape"][-2:] == (7, 7)
    assert model.fc.in_features == 64 * 7 * 7
    # stride-1 stem keeps the full resolution
    assert model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)


def test_insightface_init() -> None:
    model = build_backbone({"name": "iresnet18", "width": 0.5})
    conv = model.layer2[0].conv1.weight
    assert abs(conv.std().item() - 0.1) < 0.01
    assert torch.equal(model.layer1[0].bn1.weight, torch.ones_like(model.layer1[0].bn1.weight))
    assert not model.features.weight.requires_grad


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet"])
def test_group_norm_variant_has_no_batchnorm(name: str) -> None:
    model = build_backbone({"name": name, "in_channels": 27, "width": 0.125, "norm": "group"})
    assert not _has_batchnorm(model)
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert model.config["feature_norm"] == "layer"
    # per-sample: a sample's embedding does not depend on the rest of the batch
    model.train()
    x = torch.randn(2, 27, 112, 112)
    with torch.no_grad():
        assert torch.allclose(model(x)[:1], model(x[:1]), atol=1e-5)
    assert _has_batchnorm(build_backbone({"name": name, "width": 0.25}))


def test_feature_norm_is_replaceable() -> None:
    model = build_backbone({"name": "iresnet18", "width": 0.25, "feature_norm": "none"})
    assert isinstance(model.features, nn.Identity)
    with pytest.raises(ValueError, match="feature_norm"):
        build_backbone({"name": "iresnet18", "feature_norm": "instance"})


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_group_norm_model_trains_under_opacus() -> None:
    opacus = pytest.importorskip("opacus")
    from opacus.validators import ModuleValidator

    model = build_backbone({"name": "iresnet18", "in_channels": 27, "width": 0.0625, "norm": "group"})
    assert ModuleValidator.validate(model, strict=False) == []
    bn_model = build_backbone({"name": "iresnet18", "width": 0.0625})
    assert ModuleValidator.validate(bn_model, strict=False)  # BatchNorm is reported
    gsm = opacus.GradSampleModule(model, loss_reduction="sum")
    x = torch.randn(2, 27, 112, 112)
    gsm(x).pow(2).sum().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad_sample is not None and p.grad_sample.shape[0] == 2, name
    # per-sample gradients sum to the batch gradient
    w = model.conv1.weight
    assert torch.allclose(w.grad_sample.sum(0), w.grad, atol=1e-4, rtol=1e-3)


def test_se_blocks_and_width() -> None:
    plain = build_backbone({"name": "iresnet18", "width": 0.25})
    se = build_backbone({"name": "iresnet18", "width": 0.25, "se": True})
    assert count_parameters(se) > count_parameters(plain)
    assert se.layer1[0].se is not None
    assert se.eval()(torch.randn(1, 3, 112, 112)).shape == (1, 512)
    half = build_backbone({"name": "iresnet18", "width": 0.5})
    assert half.layer4[0].conv2.out_channels == 256
    with pytest.raises(ValueError, match="se=True"):
        build_backbone({"name": "mobilefacenet", "se": True})


def test_config_round_trip_and_validation() -> None:
    for cfg in (
        {"name": "iresnet34", "in_channels": 189, "width": 0.25, "norm": "group", "dropout": 0.2, "se": True},
        {"name": "mobilefacenet", "in_channels": 192, "width": 0.5, "embedding_size": 128},
        {"name": "iresnet", "layers": [1, 1, 1, 1], "width": 0.25, "input_size": 64},
    ):
        model = build_backbone(cfg)
        assert isinstance(model, (IResNet, MobileFaceNet))
        for k, v in cfg.items():
            assert model.config[k] == v
        again = build_backbone(model.config)
        assert again.config == model.config
        assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    custom = build_backbone({"name": "iresnet", "layers": [1, 1, 1, 1], "width": 0.25, "input_size": 64})
    assert custom.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 512)
    with pytest.raises(ValueError, match="unknown config keys"):
        build_backbone({"name": "iresnet18", "widht": 0.5})
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone({"name": "resnet18"})
    with pytest.raises(ValueError, match="layers"):
        build_backbone({"name": "iresnet50", "layers": [2, 2, 2, 2]})
    with pytest.raises(ValueError, match="not divisible by 2"):
        build_backbone({"name": "iresnet18", "input_size": 100})


def test_wrong_input_gives_clear_errors() -> None:
    model = build_backbone({"name": "iresnet18", "in_channels": 27, "width": 0.25}).eval()
    with pytest.raises(ValueError, match="expected 27 input channels, got 3"):
        model(torch.randn(1, 3, 112, 112))
    with pytest.raises(ValueError, match="112 x 112"):
        model(torch.randn(1, 27, 96, 96))
    mbf = build_backbone({"name": "mobilefacenet", "width": 0.25}).eval()
    with pytest.raises(ValueError, match="B x C x H x W"):
        mbf(torch.randn(3, 112, 112))


def test_backward_reaches_the_stem() -> None:
    model = build_backbone({"name": "mobilefacenet", "in_channels": 189, "width": 0.0625, "dropout": 0.1})
    model.train()
    x = torch.randn(2, 189, 112, 112)
    model(x).sum().backward()
    stem = model.layers[0].conv.weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0


# --------------------------------------------------------------------------- compact frequency layouts


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet"])
@pytest.mark.parametrize("size, strided", [(112, 4), (56, 3), (28, 2), (14, 1)])
def test_compact_maps_end_at_7x7_with_the_same_weight_shapes(name: str, size: int, strided: int) -> None:
    """upsample 2/1 layouts give 28x28/14x14 maps: the first stages run at stride 1, so every
    weight has the TFace-layout shape (warm start transfers) and the map still ends at 7x7."""
    ref = build_backbone({"name": name, "in_channels": 192, "width": 0.25, "embedding_size": 64})
    model = build_backbone({"name": name, "in_channels": 192, "width": 0.25, "embedding_size": 64, "input_size": size})
    assert model.config["strided_stages"] == strided
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    seen: list[tuple[int, int]] = []
    last = model.layer4 if name == "iresnet18" else model.conv_sep
    handle = last.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
    out = model.eval()(torch.randn(2, 192, size, size))
    handle.remove()
    assert out.shape == (2, 64) and seen == [(7, 7)]
    assert build_backbone(model.config).config == model.config  # the resolved value round-trips


def test_tface_layout_is_unchanged_by_strided_stages() -> None:
    """112x112 keeps all four stride-2 stages: same modules, same init, same outputs as before
    (an explicit strided_stages=4 builds the identical network from the same seed)."""
    torch.manual_seed(0)
    a = build_backbone({"name": "iresnet18", "width": 0.25})
    torch.manual_seed(0)
    b = build_backbone({"name": "iresnet18", "width": 0.25, "strided_stages": 4})
    x = torch.randn(2, 3, 112, 112)
    assert torch.equal(a.eval()(x), b.eval()(x))
    assert [blk.conv2.stride for blk in (a.layer1[0], a.layer2[0], a.layer3[0], a.layer4[0])] == [(2, 2)] * 4


def test_strided_stages_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="strided_stages must be in 0..4"):
        build_backbone({"name": "iresnet18", "strided_stages": 5})
    with pytest.raises(ValueError, match="input_size 30 is not divisible by 2\\*\\*strided_stages = 4"):
        build_backbone({"name": "mobilefacenet", "input_size": 30, "strided_stages": 2})
