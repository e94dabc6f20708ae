"""ChannelStandardize: streaming float64 calibration, fixed buffers, no batch statistics."""

from __future__ import annotations

import pytest
import torch

from facepriv.models import ChannelStandardize, PerSampleStandardize, build_input_norm


def _dct_like(n: int, seed: int) -> torch.Tensor:
    """DC channel around 1000 with spread 300, AC channels of unit-ish scale, one constant."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 6, 6, generator=g)
    x[:, 0] = x[:, 0] * 300 + 1000
    x[:, 1] = x[:, 1] * 0.5 - 2
    x[:, 3] = 7.0  # e.g. a channel a frontend zeroes out
    return x


def test_calibrate_matches_population_statistics_and_standardises() -> None:
    data = _dct_like(40, 0)
    norm = ChannelStandardize(4)
    assert not bool(norm.calibrated)
    norm.calibrate([data[i : i + 7] for i in range(0, 40, 7)])  # uneven last batch
    ref = data.double().transpose(0, 1).reshape(4, -1)
    assert torch.allclose(norm.mean.double(), ref.mean(1), rtol=1e-6)
    assert torch.allclose(norm.std[:3].double(), ref[:3].std(1, unbiased=False), rtol=1e-6)
    assert norm.std[3].item() == 1.0  # constant channel: centred, not blown up
    assert bool(norm.calibrated)
    y = norm(data)
    flat = y.transpose(0, 1).reshape(4, -1)
    assert torch.allclose(flat[:3].mean(1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(flat[:3].std(1, unbiased=False), torch.ones(3), atol=1e-4)
    assert torch.all(flat[3] == 0)


def test_streaming_is_numerically_stable() -> None:
    # A huge offset with a tiny spread: the naive float32 E[x^2] - E[x]^2 gives garbage.
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2000, 1, 4, 4, generator=g, dtype=torch.float64) * 0.01 + 1e6).float()
    norm = ChannelStandardize(1).calibrate(x.split(3))
    exact = x.double().std(unbiased=False)
    assert norm.std.item() == pytest.approx(exact.item(), rel=1e-6)
    naive = (x.pow(2).mean() - x.mean() ** 2).clamp_min(0).sqrt()
    assert abs(naive.item() - exact.item()) > 0.1 * exact.item()  # the naive way is indeed wrong


def test_no_trainable_parameters_and_no_batch_dependence() -> None:
    norm = ChannelStandardize(4).calibrate([_dct_like(8, 2)])
    assert list(norm.parameters()) == []
    norm.train()
    x = _dct_like(5, 3)
    assert torch.allclose(norm(x)[:1], norm(x[:1]))  # training mode uses the fixed buffers
    assert set(norm.state_dict()) == {"mean", "std", "calibrated"}


def test_state_dict_round_trip_and_tuple_batches() -> None:
    data = _dct_like(10, 4)
    a = ChannelStandardize(4).calibrate([(data, torch.zeros(10))])  # DataLoader-style tuples
    b = ChannelStandardize(4)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(data), b(data)) and bool(b.calibrated)


def test_bad_input() -> None:
    norm = ChannelStandardize(4)
    with pytest.raises(ValueError, match="NaN"):
        bad = _dct_like(2, 5)
        bad[0, 1, 0, 0] = float("nan")
        norm.calibrate([bad])
    with pytest.raises(ValueError, match="batch 1: expected B x 4"):
        norm.calibrate([_dct_like(2, 5), torch.zeros(2, 3, 4, 4)])
    with pytest.raises(ValueError, match="no data"):
        norm.calibrate([])
    with pytest.raises(ValueError, match="expected B x 4"):
        norm(torch.zeros(2, 5, 3, 3))
    with pytest.raises(ValueError, match="finite"):
        norm.set_statistics(torch.zeros(4), torch.tensor([1.0, float("inf"), 1.0, 1.0]))


def test_max_batches() -> None:
    first, second = _dct_like(4, 6), _dct_like(4, 7) * 10
    a = ChannelStandardize(4).calibrate([first, second], max_batches=1)
    b = ChannelStandardize(4).calibrate([first])
    assert torch.equal(a.mean, b.mean)


def test_per_sample_standardize_removes_the_scale_of_each_channel_of_each_sample() -> None:
    """A channel scaled by 1000 in one sample (a low frequency landing in that channel
    position for that query) comes out the same as unscaled: the subset cue is gone."""
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    y = x.clone()
    y[1, 2] = y[1, 2] * 1000 + 7
    norm = PerSampleStandardize(4, eps=0.0)
    torch.testing.assert_close(norm(x), norm(y))
    out = norm(x)
    torch.testing.assert_close(out.mean(dim=(2, 3)), torch.zeros(3, 4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.var(dim=(2, 3), unbiased=False), torch.ones(3, 4, dtype=torch.float64))
    # no sample mixing: a sample's output does not depend on the rest of the batch
    torch.testing.assert_close(norm(x[:1]), out[:1])
    assert not list(norm.parameters()) and not list(norm.buffers())
    with pytest.raises(ValueError, match="expected B x 4"):
        norm(torch.zeros(2, 5, 3, 3))


def test_build_input_norm_from_checkpoint_configs() -> None:
    assert build_input_norm(None) is None
    assert isinstance(build_input_norm({"num_channels": 3}), ChannelStandardize)  # configs written before "kind"
    built = build_input_norm(PerSampleStandardize(27).config)
    assert isinstance(built, PerSampleStandardize) and built.num_channels == 27
    with pytest.raises(ValueError, match="unknown input_norm kind"):
        build_input_norm({"kind": "batchnorm", "num_channels": 3})
