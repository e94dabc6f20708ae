"""``run_attacks``: every attack against one frontend, measured, as one JSON-able dict.

Pipeline for one frontend:

1. The attacker's view is fitted on the auxiliary faces (statistics, PartialFace frequency
   signatures) for each knowledge level; the learned decoder is trained (or resumed).
2. Victims' probe images are protected by the *real* frontend (recording the per-query
   choices for scoring only), in chunks, so memory stays bounded whatever the number of
   victims (a 192-channel DCT of one 112 x 112 face is 9.6 MB).
3. Each chunk is read through the view and reconstructed by every requested attack.
4. Reconstructions are scored against the originals (PSNR, SSIM) and by the identity judge
   against the gallery (TPR@FPR, rank-1), next to the raw probes (upper bound) and the naive
   rendering of the protected tensor (``block_idct`` with zeros for what is missing, at the
   true placement).

The results script calls this once per frontend (RGB and DCT baselines included); the
``facepriv attack`` CLI wraps it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from facepriv.eval.attacks.analytic import FILLS, AnalyticConfig, analytic_invert, fill_and_invert
from facepriv.eval.attacks.data import FaceSet, VictimSplit
from facepriv.eval.attacks.learned import LearnedConfig, train_decoder
from facepriv.eval.attacks.metrics import image_metrics
from facepriv.eval.attacks.optimisation import OptimConfig, optimise_inversion
from facepriv.eval.attacks.views import build_view, has_secret, observe

__all__ = ["ATTACKS", "AttackConfig", "JudgeCache", "run_attacks"]

ATTACKS = ("analytic", "learned", "optimisation")


@dataclass
class AttackConfig:
    """Everything ``run_attacks`` needs besides data, frontend and judge (YAML-mappable)."""

    attacks: list[str] = field(default_factory=lambda: list(ATTACKS))
    knowledge: str = "both"
    fills: list[str] = field(default_factory=lambda: list(FILLS))
    victim_batch: int = 16
    grid_victims: int = 8
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    progress: bool = True
    analytic: AnalyticConfig = field(default_factory=AnalyticConfig)
    learned: LearnedConfig = field(default_factory=LearnedConfig)
    optimisation: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        bad = sorted(set(self.attacks) - set(ATTACKS))
        if bad or not self.attacks:
            raise ValueError(f"attacks must be a non-empty subset of {ATTACKS}, got {self.attacks}")
        if self.knowledge not in {"public", "secret", "both"}:
            raise ValueError(f"knowledge must be 'public', 'secret' or 'both', got {self.knowledge!r}")
        bad = sorted(set(self.fills) - set(FILLS))
        if bad or not self.fills:
            raise ValueError(f"fills must be a non-empty subset of {FILLS}, got {self.fills}")
        if self.victim_batch < 1 or self.grid_victims < 0:
            raise ValueError("victim_batch must be >= 1 and grid_victims >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JudgeCache:
    """Judge embeddings of the raw probes and the gallery, shared by all frontends of a run."""

    def __init__(self, judge: Any) -> None:
        self.judge = judge
        self._store: dict[tuple[Any, ...], Tensor] = {}

    def embed(self, key: str, images_u8: Tensor, progress: bool) -> Tensor:
        # keyed by the tensor too, so a cache shared across calls never mixes victim sets
        full = (key, id(images_u8), tuple(images_u8.shape))
        if full not in self._store:
            self._store[full] = self.judge.embed(images_u8.float() / 255.0, progress=progress, desc=f"judge {key}")
        return self._store[full]


def _levels(frontend: torch.nn.Module, knowledge: str) -> tuple[list[str], str | None]:
    if not has_secret(frontend):
        note = None if knowledge == "public" else (
            f"the {getattr(frontend, 'name', 'frontend')!r} frontend has no secret configuration; "
            "the stronger-knowledge variant is identical to the public one and was not run separately")
        return ["public"], note
    return (["public", "secret"] if knowledge == "both" else [knowledge]), None


def _score(recon: Tensor, originals: Tensor, judge_cache: JudgeCache | None, victims: VictimSplit, progress: bool,
           label: str) -> dict[str, Any]:
    from facepriv.judges import identity_leakage

    out: dict[str, Any] = {"image": image_metrics(recon, originals)}
    if judge_cache is not None:
        gallery = judge_cache.embed("gallery", victims.gallery, progress)
        emb = judge_cache.judge.embed(recon.clamp(0, 1), progress=progress, desc=f"judge {label}")
        out["identity"] = identity_leakage(emb, victims.probe_ids, gallery, victims.gallery_ids)
    return out


def _check_sizes(frontend: torch.nn.Module, victims: VictimSplit, aux: FaceSet) -> None:
    vs, as_ = tuple(victims.probes.shape[-2:]), tuple(aux.images.shape[-2:])
    if vs != as_:
        raise ValueError(f"victim images are {vs[0]}x{vs[1]} but auxiliary images are {as_[0]}x{as_[1]}; use one image size")
    size = getattr(frontend, "input_size", None)
    if size is not None and vs != (size, size):
        raise ValueError(f"the {frontend.name!r} frontend was built for {size}x{size} faces, victims are {vs[0]}x{vs[1]}")


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
) -> dict[str, Any]:
    """Run the configured attacks against ``frontend``; returns results (and writes grids/checkpoints to ``out``).

    ``judge``: an ``facepriv.judges.Judge`` (or pass a shared ``judge_cache``); ``None`` skips the
    identity metrics. ``out``: folder for decoder checkpoints and PNG grids (``None``: no files).
    ``on_samples(originals, columns)``: called with the grid's victims and their images per
    column (``naive`` and each attack), for callers that compose their own figures.
    """
    cfg = config or AttackConfig()
    _check_sizes(frontend, victims, aux)
    if judge_cache is None and judge is not None:
        judge_cache = JudgeCache(judge)
    device = torch.device(cfg.device)
    frontend = frontend.to(device).eval()
    out_dir = Path(out) if out is not None else None
    levels, level_note = _levels(frontend, cfg.knowledge)
    originals = victims.probes.float() / 255.0
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

    # victims' protected tensors come from one seeded stream per chunk: identical for every
    # knowledge level and attack, so rows of the report differ only by what the attacker knows
    def chunks():
        for ci, i in enumerate(range(0, n, cfg.victim_batch)):
            x = originals[i : i + cfg.victim_batch].to(device)
            g = torch.Generator().manual_seed(cfg.seed * 7919 + 1000 + ci)
            prot, truth = observe(frontend, x, g)
            yield i, x, prot, truth

    samples: dict[str, Tensor] = {}
    grid_n = min(cfg.grid_victims, n)

    # ---------------------------------------------------------------- naive rendering
    t0 = time.perf_counter()
    naive_view = build_view(frontend, "secret" if has_secret(frontend) else "public")
    naive = []
    for _, _, prot, truth in chunks():
        naive.append(fill_and_invert(naive_view.place_true(prot, truth), "zeros", upsample=naive_view.upsample).cpu())
    naive_t = torch.cat(naive)
    samples["naive"] = naive_t[:grid_n]
    result["baselines"]["naive_rendering"] = {
        "description": "block_idct (exact inverse) of the protected tensor at its true placement, zeros for what is missing"
        if naive_view.domain == "dct" else "the transmitted image itself",
        **_score(naive_t, originals, judge_cache, victims, cfg.progress, "naive"),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if judge_cache is not None:
        from facepriv.judges import identity_leakage

        raw = judge_cache.embed("probes", victims.probes, cfg.progress)
        gallery = judge_cache.embed("gallery", victims.gallery, cfg.progress)
        result["baselines"]["raw_images"] = {
            "description": "the unprotected probe images (upper bound on identity leakage)",
            "identity": identity_leakage(raw, victims.probe_ids, gallery, victims.gallery_ids),
        }
        result["judge"] = judge_cache.judge.describe()

    # ---------------------------------------------------------------- attacks
    for level in levels:
        view = build_view(frontend, level, attacker_seed=cfg.seed + 17)
        tv = time.perf_counter()
        view.fit(aux.images, 64, device)
        result["views"][level] = {**view.describe(), "fit_seconds": round(time.perf_counter() - tv, 2),
                                  "aux_images": len(aux)}
        inverter = None
        learn_info: dict[str, Any] = {}
        if "learned" in cfg.attacks:
            ckpt = out_dir / f"decoder_{level}.pt" if out_dir is not None else None
            inverter = train_decoder(view, aux.images, cfg.learned, checkpoint=ckpt, resume=cfg.resume,
                                     device=device, progress=cfg.progress)
            learn_info = inverter.history
        recon: dict[str, list[Tensor]] = {}
        seconds: dict[str, float] = {}
        extra: dict[str, dict[str, Any]] = {}
        diags: list[dict[str, Any]] = []

        def add(name: str, images: Tensor, t: float) -> None:
            recon.setdefault(name, []).append(images.detach().float().cpu().clamp(0, 1))
            seconds[name] = seconds.get(name, 0.0) + t

        from tqdm import tqdm

        for i, x, prot, truth in tqdm(list(chunks()), desc=f"attacks[{view.name}/{level}]", unit="chunk",
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

        if diags:
            tot = sum(d["n"] for d in diags)
            agg = {k: sum(d[k] * d["n"] for d in diags) / tot for k in diags[0] if isinstance(diags[0][k], float)}
            agg["placement"] = diags[0]["placement"]
            result["views"][level]["diagnostics"] = agg
        for name, parts in recon.items():
            images = torch.cat(parts)
            samples[f"{name} [{level}]" if len(levels) > 1 else name] = images[:grid_n]
            row = {"attack": name, "knowledge": level, **_score(images, originals, judge_cache, victims, cfg.progress, name),
                   "seconds": round(seconds[name], 2)}
            if name == "learned":
                row["training"] = learn_info
            if name in extra:
                row["details"] = extra[name]
            result["results"].append(row)

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
