"""``run_attacks``: every attack against one frontend, measured, as one JSON-able dict.

Pipeline for one frontend:

1. For PartialFace with ``recovered`` knowledge, the attacker first recovers the secret
   layouts from intercepted traffic (``facepriv.eval.attacks.recovery``), reported against
   the number of queries.
2. The attacker's view is fitted on the auxiliary faces (statistics, PartialFace frequency
   signatures) for each knowledge level; the learned decoder and the linkage network are
   trained (or resumed), each optionally until the budget-doubling convergence check passes.
3. Victims' probe images are protected by the *real* frontend (recording the per-query
   choices for scoring only), in chunks, so memory stays bounded whatever the number of
   victims (a 192-channel DCT of one 112 x 112 face is 9.6 MB).
4. Each chunk is read through the view and attacked: reconstructed (analytic, learned,
   optimisation) or embedded (linkage). For protected-to-protected linkage the victims'
   gallery is protected too.
5. Everything is scored (``facepriv.eval.attacks.scoring``): PSNR / SSIM against the
   originals, identity by the judge against the gallery (TPR@FPR, rank-1) with bootstrap
   confidence intervals over victims, next to the raw probes (upper bound) and the naive
   rendering of the protected tensor; per knowledge level, the best attack per victim.
6. ``gradient``: the federated-update inversion (``facepriv.eval.attacks.gradient``), on a
   model built around the frontend (or the one passed in).

The results script calls this once per frontend (RGB and DCT baselines included); the
``facepriv attack`` CLI wraps it. Attacks beyond the three reconstruction families are
opt-in (``attacks``, ``knowledge``), so existing callers get the same results as before,
plus confidence intervals.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from facepriv.eval.attacks.analytic import FILLS, AnalyticConfig, analytic_invert, fill_and_invert
from facepriv.eval.attacks.data import FaceSet, VictimSplit
from facepriv.eval.attacks.gradient import GradientConfig
from facepriv.eval.attacks.learned import LearnedConfig, train_decoder
from facepriv.eval.attacks.linkage import LinkageConfig
from facepriv.eval.attacks.optimisation import OptimConfig, optimise_inversion
from facepriv.eval.attacks.recovery import RecoveryConfig
from facepriv.eval.attacks.scoring import JudgeCache, Scorer, mean_ssim
from facepriv.eval.attacks.views import AttackerView, build_view, has_secret, observe

__all__ = ["ATTACKS", "DEFAULT_ATTACKS", "KNOWLEDGE_CHOICES", "AttackConfig", "JudgeCache", "run_attacks"]

ATTACKS = ("analytic", "learned", "optimisation", "linkage", "gradient")
#: what ``AttackConfig()`` runs: the reconstruction families (the others are opt-in)
DEFAULT_ATTACKS = ("analytic", "learned", "optimisation")
#: ``both`` = public + secret; ``all`` = public + recovered + secret; or a comma list of levels
KNOWLEDGE_CHOICES = ("public", "secret", "recovered", "both", "all")
_LEVEL_ORDER = ("public", "recovered", "secret")
_SUBCONFIGS = {"analytic": AnalyticConfig, "learned": LearnedConfig, "optimisation": OptimConfig,
               "linkage": LinkageConfig, "recovery": RecoveryConfig, "gradient": GradientConfig}


def requested_levels(knowledge: str) -> list[str]:
    """Knowledge levels named by ``knowledge`` (see ``KNOWLEDGE_CHOICES``), in report order."""
    names = {"both": ["public", "secret"], "all": list(_LEVEL_ORDER)}.get(knowledge)
    if names is None:
        names = [k.strip() for k in str(knowledge).split(",") if k.strip()]
    bad = sorted(set(names) - set(_LEVEL_ORDER))
    if bad or not names:
        raise ValueError(f"knowledge must be one of {KNOWLEDGE_CHOICES} or a comma list of {_LEVEL_ORDER}, "
                         f"got {knowledge!r}")
    return [k for k in _LEVEL_ORDER if k in names]


@dataclass
class AttackConfig:
    """Everything ``run_attacks`` needs besides data, frontend and judge (YAML-mappable)."""

    attacks: list[str] = field(default_factory=lambda: list(DEFAULT_ATTACKS))
    knowledge: str = "both"
    fills: list[str] = field(default_factory=lambda: list(FILLS))
    victim_batch: int = 16
    grid_victims: int = 8
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    progress: bool = True
    #: bootstrap replicates of every identity figure's confidence interval (0: none)
    bootstrap: int = 1000
    ci_level: float = 0.95
    #: the leakage figure the learned attacks' convergence check watches
    convergence_metric: str = "tpr_at_fpr_1e-3"
    analytic: AnalyticConfig = field(default_factory=AnalyticConfig)
    learned: LearnedConfig = field(default_factory=LearnedConfig)
    optimisation: OptimConfig = field(default_factory=OptimConfig)
    linkage: LinkageConfig = field(default_factory=LinkageConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    gradient: GradientConfig = field(default_factory=GradientConfig)

    def __post_init__(self) -> None:
        for key, cls in _SUBCONFIGS.items():  # YAML gives plain mappings
            value = getattr(self, key)
            if isinstance(value, dict):
                known = {f.name for f in fields(cls)}
                unknown = sorted(set(value) - known)
                if unknown:
                    raise ValueError(f"attack config: unknown {key} option(s) {unknown}; valid: {sorted(known)}")
                setattr(self, key, cls(**value))
        bad = sorted(set(self.attacks) - set(ATTACKS))
        if bad or not self.attacks:
            raise ValueError(f"attacks must be a non-empty subset of {ATTACKS}, got {self.attacks}")
        requested_levels(self.knowledge)
        bad = sorted(set(self.fills) - set(FILLS))
        if bad or not self.fills:
            raise ValueError(f"fills must be a non-empty subset of {FILLS}, got {self.fills}")
        if self.victim_batch < 1 or self.grid_victims < 0:
            raise ValueError("victim_batch must be >= 1 and grid_victims >= 0")
        if self.bootstrap < 0 or not 0 < self.ci_level < 1:
            raise ValueError(f"bootstrap must be >= 0 and ci_level in (0, 1), got {self.bootstrap}, {self.ci_level}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _levels(frontend: torch.nn.Module, knowledge: str) -> tuple[list[str], str | None]:
    wanted = requested_levels(knowledge)
    if not has_secret(frontend):
        note = None if wanted == ["public"] else (
            f"the {getattr(frontend, 'name', 'frontend')!r} frontend has no secret configuration; "
            "the stronger-knowledge variants are identical to the public one and were not run separately")
        return ["public"], note
    return wanted, None


def _check_sizes(frontend: torch.nn.Module, victims: VictimSplit, aux: FaceSet) -> None:
    vs, as_ = tuple(victims.probes.shape[-2:]), tuple(aux.images.shape[-2:])
    if vs != as_:
        raise ValueError(f"victim images are {vs[0]}x{vs[1]} but auxiliary images are {as_[0]}x{as_[1]}; use one image size")
    size = getattr(frontend, "input_size", None)
    if size is not None and vs != (size, size):
        raise ValueError(f"the {frontend.name!r} frontend was built for {size}x{size} faces, victims are {vs[0]}x{vs[1]}")


class _Victims:
    """The victims' protected tensors, regenerated on demand from seeded streams (memory stays bounded)."""

    def __init__(self, frontend: torch.nn.Module, victims: VictimSplit, cfg: AttackConfig, device: torch.device) -> None:
        self.frontend, self.victims, self.cfg, self.device = frontend, victims, cfg, device
        self.originals = victims.probes.float() / 255.0

    def probes(self) -> Iterator[tuple[int, Tensor, Tensor, dict[str, Tensor]]]:
        # one seeded stream per chunk: identical for every knowledge level and attack, so rows
        # of the report differ only by what the attacker knows
        for ci, i in enumerate(range(0, self.originals.shape[0], self.cfg.victim_batch)):
            x = self.originals[i : i + self.cfg.victim_batch].to(self.device)
            g = torch.Generator().manual_seed(self.cfg.seed * 7919 + 1000 + ci)
            prot, truth = observe(self.frontend, x, g)
            yield i, x, prot, truth

    def gallery(self) -> Iterator[Tensor]:
        """The gallery protected by the real frontend (fresh per-query choices: other sessions)."""
        gal = self.victims.gallery
        for ci, i in enumerate(range(0, gal.shape[0], self.cfg.victim_batch)):
            x = gal[i : i + self.cfg.victim_batch].float().div(255.0).to(self.device)
            g = torch.Generator().manual_seed(self.cfg.seed * 7919 + 500_000 + ci)
            yield observe(self.frontend, x, g)[0]


def run_attacks(
    frontend: torch.nn.Module,
    aux: FaceSet,
    victims: VictimSplit,
    *,
    judge: Any | None = None,
    judge_cache: JudgeCache | None = None,
    config: AttackConfig | None = None,
    out: str | Path | None = None,
    on_samples: Callable[[Tensor, dict[str, Tensor]], None] | None = None,
    model: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Run the configured attacks against ``frontend``; returns results (and writes grids/checkpoints to ``out``).

    ``judge``: an ``facepriv.judges.Judge`` (or pass a shared ``judge_cache``); ``None`` skips the
    identity metrics (and the linkage attack, which needs one). ``out``: folder for network
    checkpoints and PNG grids (``None``: no files). ``on_samples(originals, columns)``: called
    with the grid's victims and their images per column (``naive`` and each attack), for
    callers that compose their own figures. ``model``: the ``FaceRecognizer`` whose federated
    update the ``gradient`` attack inverts (default: one built from ``config.gradient``).
    """
    cfg = config or AttackConfig()
    _check_sizes(frontend, victims, aux)
    if judge_cache is None and judge is not None:
        judge_cache = JudgeCache(judge)
    if "linkage" in cfg.attacks and judge_cache is None:
        raise ValueError("the linkage attack regresses a judge's embeddings: it needs an identity judge (--judge)")
    device = torch.device(cfg.device)
    frontend = frontend.to(device).eval()
    out_dir = Path(out) if out is not None else None
    levels, level_note = _levels(frontend, cfg.knowledge)
    stream = _Victims(frontend, victims, cfg, device)
    originals = stream.originals
    scorer = Scorer(judge_cache, victims, bootstrap=cfg.bootstrap, level=cfg.ci_level, seed=cfg.seed,
                    progress=cfg.progress)
    n = originals.shape[0]
    t_start = time.perf_counter()

    result: dict[str, Any] = {
        "frontend": {"name": getattr(frontend, "name", type(frontend).__name__),
                     "public_config": frontend.public_config() if hasattr(frontend, "public_config") else {},
                     "privacy_report": frontend.privacy_report() if hasattr(frontend, "privacy_report") else {}},
        "knowledge_levels": levels,
        "notes": [level_note] if level_note else [],
        "data": {"aux": aux.summary(), "victims": victims.summary()},
        "baselines": {},
        "results": [],
        "views": {},
    }
    samples: dict[str, Tensor] = {}
    grid_n = min(cfg.grid_victims, n)

    # ---------------------------------------------------------------- reference rows
    t0 = time.perf_counter()
    naive_view = build_view(frontend, "secret" if has_secret(frontend) else "public")
    naive_t = torch.cat([fill_and_invert(naive_view.place_true(prot, truth), "zeros", upsample=naive_view.upsample).cpu()
                         for _, _, prot, truth in stream.probes()])
    samples["naive"] = naive_t[:grid_n]
    result["baselines"]["naive_rendering"] = {
        "description": "block_idct (exact inverse) of the protected tensor at its true placement, zeros for what is missing"
        if naive_view.domain == "dct" else "the transmitted image itself",
        **scorer.images(naive_t, originals, "naive"),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if judge_cache is not None:
        raw = judge_cache.embed("probes", victims.probes, cfg.progress)
        result["baselines"]["raw_images"] = {
            "description": "the unprotected probe images (upper bound on identity leakage)",
            "identity": scorer.identity(raw)[0],
        }
        result["judge"] = judge_cache.judge.describe()

    # ---------------------------------------------------------------- table recovery
    recovered = None
    if "recovered" in levels:
        recovered = _recover_table(frontend, aux, cfg, result)

    # ---------------------------------------------------------------- attacks per knowledge level
    for level in levels:
        _attack_level(level, frontend, aux, stream, scorer, cfg, result, samples, out_dir, len(levels) > 1,
                      recovered, grid_n)
        best = scorer.best_per_victim(level)
        if best is not None:
            result.setdefault("best_per_victim", {})[level] = best

    # ---------------------------------------------------------------- federated updates
    if "gradient" in cfg.attacks:
        from facepriv.eval.attacks.gradient import run_gradient_inversion

        def score(recon: Tensor, orig: Tensor, label: str) -> dict[str, Any]:
            return scorer.images(recon, orig, label, probes=slice(0, recon.shape[0]))

        grad = run_gradient_inversion(frontend, victims, cfg.gradient, aux_images=aux.images, score=score, model=model,
                                      analytic=cfg.analytic, device=device, progress=cfg.progress)
        grad_samples = grad.pop("_samples", {})
        result["gradient"] = grad
        if out_dir is not None and grid_n and grad_samples:
            from facepriv.eval.attacks.report import save_grid

            k = min(grid_n, min(v.shape[0] for v in grad_samples.values()))
            grad["grid"] = str(save_grid(out_dir / "gradient.png", originals[:k], {s: v[:k] for s, v in grad_samples.items()},
                                         title=f"{result['frontend']['name']}: gradient inversion of one site's update"))

    result["seconds"] = round(time.perf_counter() - t_start, 2)
    result["config"] = cfg.to_dict()
    if on_samples is not None and grid_n:
        on_samples(originals[:grid_n], dict(samples))
    if out_dir is not None and grid_n:
        from facepriv.eval.attacks.report import save_grid

        grid = save_grid(out_dir / "grid.png", originals[:grid_n], samples,
                         title=f"{result['frontend']['name']}: reconstructions of {grid_n} victims",
                         row_labels=[Path(p).parent.name for p in victims.probe_paths[:grid_n]])
        result["grid"] = str(grid)
    return result


def _recover_table(frontend: torch.nn.Module, aux: FaceSet, cfg: AttackConfig, result: dict[str, Any]) -> Any:
    """Recover PartialFace's layouts from simulated intercepted traffic; records the curve."""
    from facepriv.eval.attacks.recovery import recovery_curve

    t = time.perf_counter()
    # the public view's frequency signatures (fitted on auxiliary faces, no secret) score the traffic
    public = build_view(frontend, "public", attacker_seed=cfg.seed + 17).fit(aux.images, 64, torch.device(cfg.device))
    curve, fed = recovery_curve(frontend, public.profile, aux.images, cfg.recovery, progress=cfg.progress)
    result["table_recovery"] = {
        "description": "the secret layouts estimated from N intercepted queries alone (no secret, no faces); "
                       "traffic simulated by protecting auxiliary faces with the real frontend",
        "curve": curve, "fed_queries": cfg.recovery.fed_queries, "fed": fed.describe(),
        "fed_score": next((r for r in curve if r["n_queries"] == cfg.recovery.fed_queries), None),
        "seconds": round(time.perf_counter() - t, 2),
    }
    return fed


def _convergence_eval(kind: str, view: AttackerView, stream: _Victims, scorer: Scorer,
                      cfg: AttackConfig) -> Callable[[Any], tuple[str, float | None]] | None:
    """The measurement the budget-doubling check watches: the leakage the report will show
    (for a decoder without a judge, the mean SSIM of its reconstructions)."""
    budget = cfg.learned if kind == "learned" else cfg.linkage
    if not budget.max_doublings:
        return None

    def evaluate(net: Any) -> tuple[str, float | None]:
        parts = []
        for _, _, prot, _ in stream.probes():
            placed = view.place(prot)
            parts.append(net.reconstruct_placed(placed) if kind == "learned" else net.embed_placed(placed))
        out = torch.cat(parts)
        if kind == "learned":
            if not scorer.has_judge:
                return "ssim_luma", mean_ssim(out, stream.originals)
            assert scorer.cache is not None
            out = scorer.cache.judge.embed(out, progress=False)
        return scorer.measure(out, cfg.convergence_metric)

    return evaluate


def _attack_level(level: str, frontend: torch.nn.Module, aux: FaceSet, stream: _Victims, scorer: Scorer,
                  cfg: AttackConfig, result: dict[str, Any], samples: dict[str, Tensor], out_dir: Path | None,
                  several: bool, recovered: Any, grid_n: int) -> None:
    """Every reconstruction and linkage attack at one knowledge level, scored into ``result``."""
    device = stream.device
    hyp = recovered.hypotheses if level == "recovered" and recovered is not None else None
    view = build_view(frontend, level, attacker_seed=cfg.seed + 17, hypotheses=hyp)
    tv = time.perf_counter()
    view.fit(aux.images, 64, device)
    result["views"][level] = {**view.describe(), "fit_seconds": round(time.perf_counter() - tv, 2),
                              "aux_images": len(aux)}
    inverter = linker = None
    if "learned" in cfg.attacks:
        ckpt = out_dir / f"decoder_{level}.pt" if out_dir is not None else None
        inverter = train_decoder(view, aux.images, cfg.learned, checkpoint=ckpt, resume=cfg.resume, device=device,
                                 progress=cfg.progress, evaluate=_convergence_eval("learned", view, stream, scorer, cfg))
    if "linkage" in cfg.attacks:
        from facepriv.eval.attacks.linkage import train_linkage

        assert scorer.cache is not None
        targets = scorer.cache.embed("aux", aux.images, cfg.progress)
        flipped = scorer.cache.embed("aux", aux.images, cfg.progress, flip=True) if cfg.linkage.flip else None
        ckpt = out_dir / f"linkage_{level}.pt" if out_dir is not None else None
        linker = train_linkage(view, aux.images, targets, cfg.linkage, targets_flipped=flipped, checkpoint=ckpt,
                               resume=cfg.resume, device=device, progress=cfg.progress,
                               evaluate=_convergence_eval("linkage", view, stream, scorer, cfg))
    recon: dict[str, list[Tensor]] = {}
    link: list[Tensor] = []
    seconds: dict[str, float] = {}
    extra: dict[str, dict[str, Any]] = {}
    diags: list[dict[str, Any]] = []

    def add(name: str, images: Tensor, t: float) -> None:
        recon.setdefault(name, []).append(images.detach().float().cpu().clamp(0, 1))
        seconds[name] = seconds.get(name, 0.0) + t

    from tqdm import tqdm

    for i, x, prot, truth in tqdm(list(stream.probes()), desc=f"attacks[{view.name}/{level}]", unit="chunk",
                                  disable=not cfg.progress, leave=False):
        t = time.perf_counter()
        placed = view.place(prot)
        place_t = time.perf_counter() - t
        d = view.diagnostics(prot, truth)
        if d:
            d["n"] = x.shape[0]
            diags.append(d)
        analytic_out: dict[str, Tensor] = {}
        if "analytic" in cfg.attacks:
            for fill in cfg.fills:
                t = time.perf_counter()
                r = analytic_invert(placed, fill, view.stats, cfg.analytic)
                analytic_out[fill] = r
                add(f"analytic/{fill}", r, time.perf_counter() - t + place_t)
        learned_out = None
        if inverter is not None:
            t = time.perf_counter()
            learned_out = inverter.reconstruct_placed(placed)
            add("learned", learned_out, time.perf_counter() - t + place_t)
        if "optimisation" in cfg.attacks:
            t = time.perf_counter()
            wins, init = _pick_init(cfg.optimisation.init, learned_out, analytic_out, view, placed, cfg)
            r, info = optimise_inversion(view, placed, init, cfg.optimisation, progress=False)
            add("optimisation", r, time.perf_counter() - t + place_t)
            prev = extra.get("optimisation", {}).get("init_wins", {})
            extra["optimisation"] = {**info, "init": cfg.optimisation.init,
                                     "init_wins": {k: prev.get(k, 0) + wins.get(k, 0) for k in {*prev, *wins}}}
        if linker is not None:
            t = time.perf_counter()
            link.append(linker.embed_placed(placed))
            seconds["linkage"] = seconds.get("linkage", 0.0) + time.perf_counter() - t + place_t

    if diags:
        tot = sum(d["n"] for d in diags)
        agg = {k: sum(d[k] * d["n"] for d in diags) / tot for k in diags[0] if isinstance(diags[0][k], float)}
        agg["placement"] = diags[0]["placement"]
        result["views"][level]["diagnostics"] = agg
    for name, parts in recon.items():
        images = torch.cat(parts)
        samples[f"{name} [{level}]" if several else name] = images[:grid_n]
        row = {"attack": name, "knowledge": level, "task": "probe vs raw gallery",
               **scorer.images(images, stream.originals, name, fuse_as=(level, name)), "seconds": round(seconds[name], 2)}
        if name == "learned" and inverter is not None:
            row["training"] = inverter.history
        if name in extra:
            row["details"] = extra[name]
        result["results"].append(row)
    if linker is not None:
        emb = torch.cat(link)
        result["results"].append({"attack": "linkage", "knowledge": level, "task": "probe vs raw gallery",
                                  **scorer.embeddings(emb, fuse_as=(level, "linkage")),
                                  "judge_agreement": scorer.agreement(emb),
                                  "seconds": round(seconds["linkage"], 2), "training": linker.history})
        if cfg.linkage.protected_gallery:
            t = time.perf_counter()
            gal = torch.cat([linker.embed_placed(view.place(p)) for p in stream.gallery()])
            result["results"].append({
                "attack": "linkage/protected", "knowledge": level,
                "task": "protected probe vs protected gallery (no raw face on either side)",
                **scorer.embeddings(emb, gallery=gal), "seconds": round(time.perf_counter() - t + seconds["linkage"], 2)})


def _pick_init(mode: str, learned: Tensor | None, analytic: dict[str, Tensor], view: Any, placed: Any,
               cfg: AttackConfig) -> tuple[dict[str, int], Tensor]:
    """Optimisation start and how many images started from each candidate. ``auto``: per
    image, the best-fitting of the learned output, the analytic ``lstsq`` estimate and the
    mean face (``optimisation.best_start``); otherwise the named one."""
    from facepriv.eval.attacks.optimisation import best_start

    dev = placed.values.device
    b = placed.values.shape[0]
    mean = view.stats.mean_image.unsqueeze(0).expand(b, -1, -1, -1).to(dev)
    if mode == "auto":
        cands = {"mean": mean}
        if "lstsq" in analytic:
            cands["analytic/lstsq"] = analytic["lstsq"]
        if learned is not None:
            cands["learned"] = learned
        init, wins = best_start(view, placed, cands)
        return wins, init
    if mode == "learned":
        if learned is None:
            raise ValueError("optimisation init 'learned' needs the learned attack in --attacks")
        return {"learned": b}, learned.to(dev)
    if mode == "analytic":
        init = analytic["lstsq"] if "lstsq" in analytic else analytic_invert(placed, "lstsq", view.stats, cfg.analytic)
        return {"analytic/lstsq": b}, init.to(dev)
    return {"mean": b}, mean
