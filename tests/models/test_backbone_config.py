"""Backbone ``config`` lives once (layers.BackboneConfigMixin) and the checkpoint format is unchanged."""

from __future__ import annotations

import pytest
import torch

from facepriv.models import IResNet, MobileFaceNet, build_backbone
from facepriv.models.layers import BackboneConfigMixin

TINY = {
    "iresnet": {"name": "iresnet", "layers": [1, 1, 1, 1], "width": 0.125, "embedding_size": 8, "input_size": 16},
    "mobilefacenet": {"name": "mobilefacenet", "blocks": [1, 1, 1, 1], "width": 0.125, "embedding_size": 8,
                      "input_size": 16, "in_channels": 5},
}


@pytest.mark.parametrize("cls", [IResNet, MobileFaceNet])
def test_config_is_defined_once(cls) -> None:
    assert issubclass(cls, BackboneConfigMixin)
    assert "config" not in vars(cls)  # inherited, not re-declared
    assert cls.config is BackboneConfigMixin.config


@pytest.mark.parametrize("kind", sorted(TINY))
def test_config_round_trip_and_state_dict(kind: str) -> None:
    torch.manual_seed(0)
    model = build_backbone(TINY[kind])
    cfg = model.config
    assert cfg["name"] == kind and cfg["input_size"] == 16
    cfg["width"] = 9.0  # a copy: editing it does not change the model
    cfg[next(k for k, v in cfg.items() if isinstance(v, list))].append(7)
    assert model.config != cfg
    clone = build_backbone(model.config)
    assert clone.config == model.config
    assert list(clone.state_dict()) == list(model.state_dict())
    assert not any("config" in k for k in model.state_dict())  # config never enters the weights
    clone.load_state_dict(model.state_dict(), strict=True)
    model.eval(), clone.eval()
    x = torch.rand(2, model.config["in_channels"], 16, 16)
    assert torch.equal(model(x), clone(x))


@pytest.mark.parametrize("kind", sorted(TINY))
def test_input_check_through_the_mixin(kind: str) -> None:
    model = build_backbone(TINY[kind]).eval()
    c = model.config["in_channels"]
    with pytest.raises(ValueError, match=rf"{kind}: expected {c} input channels"):
        model(torch.rand(1, c + 1, 16, 16))
    with pytest.raises(ValueError, match="expected 16 x 16 inputs"):
        model(torch.rand(1, c, 32, 32))
