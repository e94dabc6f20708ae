"""PartialFace: coverage of the subset table, identity restriction, reproducibility, secure RNG."""

from __future__ import annotations

import pytest
import torch

from facepriv.frontends import PartialFace, block_dct, build_frontend
from facepriv.frontends import partial as partial_module

DEFAULT_PRUNED = {0, 1, 2, 3, 8, 9, 10, 16, 17, 24}


def faces(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(seed))


def identify_views(pf: PartialFace, images: torch.Tensor, out: torch.Tensor, views: int) -> list[tuple[int, int]]:
    """Recover (subset, permutation) of every output view by matching against the full DCT."""
    full = block_dct(images, pf.upsample)
    found = []
    for row in range(out.shape[0]):
        img = row // views
        matches = [
            (s, p)
            for s in range(pf.n_subsets)
            for p in range(pf.n_permutations)
            if torch.allclose(out[row], full[img, pf.subset_channels(torch.tensor([s]), torch.tensor([p]))[0]], atol=1e-3)
        ]
        assert len(matches) == 1, f"view {row} matches {matches}"
        found.append(matches[0])
    return found


def test_default_pruning_and_coverage() -> None:
    pf = PartialFace(secret_seed=123)
    assert set(pf.pruned) == DEFAULT_PRUNED and len(pf.kept) == 54
    table = pf.subset_table
    assert table.shape == (6, 9) and pf.out_channels == 27
    used = table.flatten().tolist()
    assert sorted(used) == sorted(pf.kept)  # every kept frequency used exactly once, none pruned
    assert not set(used) & DEFAULT_PRUNED


def test_channels_are_same_frequencies_from_y_cb_cr() -> None:
    pf = PartialFace(secret_seed=5)
    ch = pf.subset_channels(torch.tensor([2]), torch.tensor([1]))[0]
    y, cb, cr = ch[:9], ch[9:18], ch[18:]
    assert torch.equal(cb - 64, y) and torch.equal(cr - 128, y)
    assert sorted(y.tolist()) == sorted(pf.subset_table[2].tolist())


def test_secret_seed_determines_table() -> None:
    a, b, c = PartialFace(secret_seed=1), PartialFace(secret_seed=1), PartialFace(secret_seed=2)
    assert torch.equal(a.subset_table, b.subset_table) and torch.equal(a.permutations, b.permutations)
    assert not torch.equal(a.subset_table, c.subset_table)
    assert torch.equal(a.permutations[0], torch.arange(9))  # first permutation is the identity


def test_training_views_use_only_allowed_subsets_and_are_distinct() -> None:
    pf = PartialFace(secret_seed=7).train()
    images = faces(4)
    labels = torch.tensor([0, 13, 13, 41])
    out = pf(images, labels)
    assert out.shape == (12, 27, 112, 112)
    assert torch.equal(pf.expand_labels(labels), labels.repeat_interleave(3))
    views = identify_views(pf, images, out, views=3)
    allowed = pf.allowed_subsets(labels)
    for i in range(4):
        subsets = [views[3 * i + k][0] for k in range(3)]
        assert len(set(subsets)) == 3  # r distinct subsets per image
        assert set(subsets) <= set(allowed[i].tolist())
    # identities with the same label share their allowed subsets; 3 of 6 each
    assert torch.equal(allowed[1], allowed[2]) and allowed.shape == (4, 3)


def test_training_is_reproducible_and_resumable() -> None:
    images, labels = faces(2), torch.tensor([3, 4])
    a, b = PartialFace(secret_seed=9, train_seed=11).train(), PartialFace(secret_seed=9, train_seed=11).train()
    state = a.get_rng_state()
    first = a(images, labels)
    assert torch.equal(first, b(images, labels))
    a.set_rng_state(state)
    assert torch.equal(a(images, labels), first)


def test_inference_uses_secure_rng_unless_seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_randbelow(n: int, size: int) -> list[int]:
        calls.append((n, size))
        return [1] * size

    monkeypatch.setattr(partial_module, "secure_randbelow", fake_randbelow)
    pf = PartialFace(secret_seed=3).eval()
    images = faces(3)
    out = pf(images)
    assert out.shape == (3, 27, 112, 112)
    assert (6, 3) in calls and (3, 3) in calls  # subset and permutation drawn from the CSPRNG
    assert identify_views(pf, images, out, 1) == [(1, 1)] * 3

    calls.clear()
    seeded = PartialFace(secret_seed=3, inference_seed=5).eval()
    again = PartialFace(secret_seed=3, inference_seed=5).eval()
    assert torch.equal(seeded(images), again(images)) and not calls


def test_inference_choices_vary_per_query() -> None:
    pf = PartialFace(secret_seed=3).eval()
    image = faces(1).expand(24, 3, 112, 112).contiguous()
    views = identify_views(pf, image, pf(image), 1)
    assert len({s for s, _ in views}) > 1  # P(all 24 equal) = 6**-23


def test_explicit_subset() -> None:
    pf = PartialFace(secret_seed=3).eval()
    images = faces(2)
    out = pf(images, subset=4, permutation=2)
    assert identify_views(pf, images, out, 1) == [(4, 2), (4, 2)]
    with pytest.raises(ValueError, match="subset ids"):
        pf(images, subset=6)


def test_config_round_trip_and_public_config() -> None:
    pf = PartialFace(n_subsets=3, subsets_per_identity=2, sample_multiplier=2, n_permutations=1)
    clone = build_frontend(pf.config)
    assert clone.config == pf.config and torch.equal(clone.subset_table, pf.subset_table)
    assert pf.out_channels == 54  # 54 kept / 3 subsets = 18 per colour
    public = pf.public_config()
    assert public["secret_seed"] == "<secret>" and public["n_subsets"] == 3
    with pytest.raises(ValueError, match="redacted"):
        build_frontend(public)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_subsets": 5}, "equal subsets"),
        ({"subsets_per_identity": 7}, "subsets_per_identity"),
        ({"sample_multiplier": 4}, "sample_multiplier"),
        ({"pruned": [64]}, "pruned"),
        ({"upsample": 3}, "upsample must be one of 1, 2, 4, 8"),
    ],
)
def test_bad_configuration(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PartialFace(**kwargs)


def test_bad_labels() -> None:
    pf = PartialFace().train()
    with pytest.raises(ValueError, match="labels"):
        pf(faces(2))
    with pytest.raises(ValueError, match="non-negative integers"):
        pf(faces(2), torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="non-negative integers"):
        pf(faces(2), torch.tensor([1, 2, 3]))


def test_privacy_report_states_what_attacks_found() -> None:
    """Regression: the report gave only "fraction of spectrum sent 0.14", which reads as if 86 % of
    the image stayed hidden; one subset in fact pins down nearly the whole image."""
    from facepriv.frontends.partial import subset_rank

    pf = PartialFace(secret_seed=1)
    report = pf.privacy_report()
    assert "fraction_of_spectrum_sent_per_query" not in report
    assert report["measurements_per_unknown_pixel_value"] == 9.0
    assert "86%" in report["what_attacks_found"] and "docs/attacks.md" in report["what_attacks_found"]
    ranks = [subset_rank(tuple(row), 8) for row in pf.subset_table.tolist()]
    assert min(r / n for r, n in ranks) > 0.8  # one subset determines > 80 % of a colour plane's unknowns
    assert report["one_subset_determines"].startswith(f"at least {min(r / n for r, n in ranks):.0%}")
    assert subset_rank(tuple(pf.pruned), 1) == (40, 256)  # without up-sampling: 10 frequencies x 4 blocks


@pytest.mark.parametrize("upsample, measurements", [(2, 0.5625), (1, 0.140625)])
def test_compact_layout_report_does_not_borrow_the_x8_findings(upsample: int, measurements: float) -> None:
    """Regression: the report quoted the x8 attack results (86 % of victims identified) for every
    layout, a claim nobody measured for the compact ones."""
    report = PartialFace(upsample=upsample, secret_seed=1).privacy_report()
    assert report["measurements_per_unknown_pixel_value"] == measurements
    found = report["what_attacks_found"]
    assert "86%" not in found and f"x{upsample}" in found and "do not apply here" in found
    assert "fewer than one" in found and "buys little" not in report["note"]
