"""The attacks do what they claim: exact inversion of an unprotected DCT, a learned decoder
that recovers it on held-out faces and does measurably worse on PartialFace, secret-aware
placement, and an optimisation attack that refines its start and keeps pixels in [0, 1]."""

from __future__ import annotations

import torch

from facepriv.frontends import DCTDP, DCTFrontend, PartialFace, RGBFrontend

from facepriv.eval.attacks import (
    AnalyticConfig,
    LearnedConfig,
    OptimConfig,
    analytic_invert,
    build_view,
    observe,
    optimise_inversion,
    psnr,
    ssim,
    train_decoder,
)

SIZE = 32


def _observe(frontend, victims, seed=0):
    return observe(frontend, victims, torch.Generator().manual_seed(seed))


def test_analytic_inverse_is_exact_for_dct_and_rgb(aux_u8, victims_f):
    for fe in (DCTFrontend(), RGBFrontend()):
        view = build_view(fe, "public").fit(aux_u8)
        prot, _ = _observe(fe, victims_f)
        placed = view.place(prot)
        for fill in ("zeros", "lstsq"):
            rec = analytic_invert(placed, fill, view.stats, AnalyticConfig(iterations=50))
            assert psnr(rec, victims_f).min() > 60, (fe.name, fill)


def test_analytic_is_much_worse_on_protected_frontends(aux_u8, victims_f):
    out = {}
    for fe in (PartialFace(secret_seed=1), DCTDP(input_size=SIZE)):
        view = build_view(fe, "public").fit(aux_u8)
        prot, _ = _observe(fe, victims_f)
        out[fe.name] = psnr(analytic_invert(view.place(prot), "lstsq", view.stats, AnalyticConfig(iterations=100)), victims_f)
    assert out["partialface"].mean() < 25 and out["dctdp"].mean() < 20


def test_placement_secret_identifies_queries_public_estimates_better_than_chance(aux_u8, victims_f):
    fe = PartialFace(secret_seed=3)
    prot, truth = _observe(fe, victims_f)
    secret = build_view(fe, "secret").fit(aux_u8)
    public = build_view(fe, "public").fit(aux_u8)
    ds = secret.diagnostics(prot, truth)
    dp = public.diagnostics(prot, truth)
    assert ds["query_exactly_placed"] >= 0.9
    assert dp["position_accuracy"] > 5 / len(fe.kept)  # chance is 1/54 per position
    # the public view works on a copy built from the public config with the attacker's own seed
    assert public.frontend is not fe and public.frontend.secret_seed != fe.secret_seed
    assert not torch.equal(public.frontend.subset_table, fe.subset_table)


def test_secret_placement_puts_channels_exactly(aux_u8, victims_f):
    fe = PartialFace(secret_seed=4)
    prot, truth = _observe(fe, victims_f)
    view = build_view(fe, "secret").fit(aux_u8)
    placed, true = view.place(prot), view.place_true(prot, truth)
    ok = (view.channels_for(prot) == truth["channels"]).all(1)
    assert torch.equal(placed.values[ok], true.values[ok])
    assert placed.mask.sum(1).eq(27).all()


def test_learned_recovers_dct_and_is_worse_on_partialface(aux_u8, victims_f):
    cfg = LearnedConfig(steps=100, batch_size=8, width=8, depth=2, lr=5e-3, warmup=10, checkpoint_every=0)
    scores = {}
    for fe in (DCTFrontend(), PartialFace(secret_seed=5)):
        view = build_view(fe, "public").fit(aux_u8)
        inv = train_decoder(view, aux_u8, cfg, progress=False)
        prot, _ = _observe(fe, victims_f)
        rec = inv.reconstruct(prot)
        assert rec.shape == victims_f.shape and rec.min() >= 0 and rec.max() <= 1
        scores[fe.name] = (psnr(rec, victims_f).mean().item(), ssim(rec, victims_f).mean().item())
    assert scores["dct"][0] > 25, scores  # held-out faces, 100 steps: the unprotected DCT is invertible
    assert scores["partialface"][0] < scores["dct"][0] - 5, scores
    assert scores["partialface"][1] < scores["dct"][1] - 0.1, scores


def test_optimisation_refines_its_start_and_stays_in_range(aux_u8, victims_f):
    fe = DCTFrontend()
    view = build_view(fe, "public").fit(aux_u8)
    prot, _ = _observe(fe, victims_f[:4])
    placed = view.place(prot)
    init = view.stats.mean_image.expand(4, -1, -1, -1)
    rec, info = optimise_inversion(view, placed, init, OptimConfig(steps=80, lr=0.1, tv_weight=0.0))
    assert rec.min() >= 0 and rec.max() <= 1
    assert psnr(rec, victims_f[:4]).mean() > psnr(init, victims_f[:4]).mean() + 10
    assert info["final_loss"]["data"] < 0.05


def test_optimisation_uses_laplace_likelihood_for_dctdp(aux_u8, victims_f):
    fe = DCTDP(input_size=SIZE, epsilon_mean=1e4)  # large budget: little noise, the data should win
    view = build_view(fe, "public").fit(aux_u8)
    prot, _ = _observe(fe, victims_f[:4])
    placed = view.place(prot)
    assert placed.inv_scale is not None and placed.mask[:, 0].eq(0).all()  # DC never observed
    init = view.stats.mean_image.expand(4, -1, -1, -1)
    rec, _ = optimise_inversion(view, placed, init, OptimConfig(steps=60, lr=0.1, tv_weight=0.0))
    assert ssim(rec, victims_f[:4]).mean() > ssim(init, victims_f[:4]).mean() + 0.2


def test_auto_start_picks_the_candidate_that_fits_the_observation(aux_u8, victims_f):
    from facepriv.eval.attacks.optimisation import best_start

    fe = PartialFace(secret_seed=6)
    view = build_view(fe, "secret").fit(aux_u8)
    prot, _ = _observe(fe, victims_f[:6])
    placed = view.place(prot)
    mean = view.stats.mean_image.expand(6, -1, -1, -1)
    mixed = torch.where(torch.arange(6).view(-1, 1, 1, 1) % 2 == 0, victims_f[:6], mean)  # truth for even images
    start, wins = best_start(view, placed, {"mean": mean, "mixed": mixed})
    assert torch.equal(start[::2], victims_f[:6:2])  # the true face fits its own tensor best
    assert wins == {"mean": 3, "mixed": 3}  # odd images: identical candidates, the first one wins the tie
