"""Gradient inversion: what an honest-but-curious federated server recovers from one site's update.

Partner sites send model updates, not images; an update is still a function of the images.
Setting (facepriv's federated training, simulated here without importing
``facepriv.federated``, which sits above eval in the layers):

* **the site** holds a local batch of ``B`` faces of ``B`` people, runs ``local_steps`` plain
  SGD steps of its ``FaceRecognizer`` (frontend in training mode, as a site trains: PartialFace
  training views, DCTDP training noise) plus its margin head on that batch, and sends the
  change of the shared backbone weights. Optionally with DP-SGD-style protection: every
  image's gradient is clipped to ``clip`` and Gaussian noise of standard deviation
  ``noise_multiplier * clip`` is added to the sum at every step (the Opacus mechanism);
* **the server** knows the global weights it sent (so the whole model, the frontend's
  configuration and secret included: it builds the model), the training recipe, and the
  update. ``head="known"`` also gives it the site's head and labels (the setting of Geiping
  et al., "Inverting Gradients", 2020; facepriv keeps heads at the sites, so this is the
  pessimistic case); ``head="unknown"`` does not: the head is then replaced by a free
  per-view vector standing for the gradient the head sends back into the embedding (exact
  for one local step; for several steps the update is treated as one step's gradient).

The attack (Geiping et al.): optimise dummy inputs so that the update they would produce
points the same way as the observed one — ``1 - cos(update(dummy), observed)`` — plus a
total-variation prior, with Adam. The site's local steps are unrolled differentiably
(``torch.func.functional_call``); with DP the attacker applies the known clipping but cannot
know the noise. Where the dummies live depends on the frontend: for a frontend whose output
is a fixed function of the image (RGB, DCT) they are images (``sigmoid``-bounded, passed
through the differentiable frontend); for PartialFace (random training views) and DCTDP
(random noise) they are the protected tensor itself (one row per training view, a TV prior
on each standardised channel map), which the attacker then turns into a face through its
view of the frontend (placement, the views of one image merged) and the analytic ``lstsq``
inversion.

Reconstructions are judged like every other attack (PSNR/SSIM against the originals,
identity by the judge against the victims' galleries). Without labels (``head="unknown"``,
``B > 1``) the order of the dummies is arbitrary; they are matched to the originals by the
assignment with the lowest total MSE (evaluation-side alignment; it can only favour the
attacker).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from facepriv.eval.attacks.analytic import AnalyticConfig, analytic_invert
from facepriv.eval.attacks.metrics import psnr
from facepriv.eval.attacks.optimisation import total_variation
from facepriv.eval.attacks.views import AttackerView, Placed, build_view, has_secret

__all__ = ["DPSpec", "GradientConfig", "SiteSpec", "invert_update", "merge_views", "run_gradient_inversion",
           "site_model", "site_update"]

HEAD_KNOWLEDGE = ("known", "unknown")


@dataclass
class DPSpec:
    """DP-SGD-style protection of the site's update: per-image clipping and Gaussian noise."""

    clip: float = 1.0
    noise_multiplier: float = 1.0

    def __post_init__(self) -> None:
        if self.clip <= 0 or self.noise_multiplier < 0:
            raise ValueError(f"DP: clip must be > 0 and noise_multiplier >= 0, got {self.clip}, {self.noise_multiplier}")


@dataclass
class SiteSpec:
    """One site's local training: batch, steps, plain SGD learning rate, optional DP."""

    batch_size: int = 1
    local_steps: int = 1
    lr: float = 0.1
    dp: DPSpec | None = None

    def __post_init__(self) -> None:
        if isinstance(self.dp, dict):
            self.dp = DPSpec(**self.dp)
        if self.batch_size < 1 or self.local_steps < 1 or self.lr <= 0:
            raise ValueError(f"site: batch_size and local_steps must be >= 1 and lr > 0, got {self}")

    def label(self) -> str:
        dp = "no DP" if self.dp is None else f"DP clip {self.dp.clip:g}, noise x{self.dp.noise_multiplier:g}"
        return f"batch {self.batch_size}, {self.local_steps} local step(s), {dp}"


def _default_backbone() -> dict[str, Any]:
    # quarter-width IResNet-18 without BatchNorm (running statistics would leak on their own
    # and DP-SGD forbids them); the attack's CPU default
    return {"name": "iresnet18", "width": 0.25, "embedding_size": 128, "norm": "group", "norm_groups": 8}


@dataclass
class GradientConfig:
    """The federated setting attacked and the attacker's budget (``facepriv attack --attacks gradient``)."""

    backbone: dict[str, Any] = field(default_factory=_default_backbone)
    head: dict[str, Any] = field(default_factory=lambda: {"margin": "arcface", "s": 32.0, "m": 0.3})
    #: every combination of these is attacked
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4])
    local_steps: list[int] = field(default_factory=lambda: [1])
    dp: list[DPSpec | None] = field(default_factory=lambda: [None, DPSpec(1.0, 1.0)])
    site_lr: float = 0.1
    #: identities in the site's head (its local people); the batch holds the first ``B`` of them
    site_classes: int = 16
    head_knowledge: str = "known"
    max_victims: int = 8
    steps: int = 300
    lr: float = 0.1
    tv_weight: float = 1e-2
    seed: int = 0

    def __post_init__(self) -> None:
        self.dp = [DPSpec(**d) if isinstance(d, dict) else d for d in self.dp]
        if self.head_knowledge not in HEAD_KNOWLEDGE:
            raise ValueError(f"gradient: head_knowledge must be one of {HEAD_KNOWLEDGE}, got {self.head_knowledge!r}")
        if not self.batch_sizes or min(self.batch_sizes) < 1 or not self.local_steps or min(self.local_steps) < 1:
            raise ValueError(f"gradient: batch_sizes and local_steps must be non-empty lists of counts >= 1, got "
                             f"{self.batch_sizes}, {self.local_steps}")
        if not self.dp:
            raise ValueError("gradient: dp must list at least one setting (null for no DP)")
        if self.site_classes < max(2, max(self.batch_sizes)):
            raise ValueError(f"gradient: site_classes ({self.site_classes}) must be >= 2 and >= the largest batch "
                             f"({max(self.batch_sizes)}): every image of a batch is a different person of the site")
        if self.max_victims < 1 or self.steps < 0 or self.lr <= 0 or self.tv_weight < 0 or self.site_lr <= 0:
            raise ValueError(f"gradient: invalid budget {self}")

    def sites(self) -> list[SiteSpec]:
        return [SiteSpec(b, t, self.site_lr, d) for d in self.dp for t in self.local_steps for b in self.batch_sizes]


# ------------------------------------------------------------------------------ the site
def site_model(frontend: nn.Module, cfg: GradientConfig, calibration: Tensor | None = None,
               image_size: int = 112) -> nn.Module:
    """The global model the server sends: ``frontend`` (a private copy) + input standardisation
    + the configured backbone, seeded; standardisation fitted on ``calibration`` images."""
    from facepriv.models import ChannelStandardize, FaceRecognizer, build_backbone

    fe = copy.deepcopy(frontend).cpu()
    for p in fe.parameters():
        p.requires_grad_(False)  # the site trains the backbone (and its head); the frontend is fixed
    h, w = fe.output_size(image_size, image_size)
    bcfg = {**cfg.backbone, "in_channels": int(fe.out_channels), "input_size": int(h)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = FaceRecognizer(fe, build_backbone(bcfg), ChannelStandardize(int(fe.out_channels)), image_size=image_size)
    if calibration is not None:
        fe.eval()
        model.calibrate_input_norm([calibration])
    return model


def image_space(frontend: nn.Module) -> bool:
    """Can dummies be images? Only when the frontend's training-mode output is a fixed
    function of the image (RGB, DCT); PartialFace's training views and DCTDP's noise are
    random draws of the site, so their dummies live in the protected tensor instead."""
    from facepriv.frontends import DCTFrontend, RGBFrontend

    return isinstance(frontend, (RGBFrontend, DCTFrontend))


def _head(cfg: GradientConfig, dim: int, classes: int) -> nn.Module:
    from facepriv.models import build_head

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        return build_head({"type": "softmax", **cfg.head}, dim, classes)


def _shared(model: nn.Module) -> dict[str, Tensor]:
    """The weights a site sends back: the backbone's (the head stays at the site)."""
    return {n: p for n, p in model.named_parameters() if n.startswith("backbone.")}


#: ``loss(params, head_params, inputs_of_one_sample_group, labels) -> scalar``
_LossFn = Callable[[dict[str, Tensor], dict[str, Tensor], Tensor, Tensor], Tensor]


def _unrolled_update(loss: _LossFn, params: dict[str, Tensor], head_params: dict[str, Tensor], inputs: Tensor,
                     labels: Tensor, site: SiteSpec, *, groups: int, create_graph: bool,
                     noise: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """``local_steps`` SGD steps from ``params``; returns the change of the shared weights.

    ``inputs`` / ``labels`` hold ``groups`` samples (rows of one image are one sample: a
    PartialFace image's training views share one clipping). With DP the per-sample
    gradients are clipped and ``noise`` (the site only) is added to their sum.
    """
    p, hp = dict(params), dict(head_params)
    names, hnames = list(p), list(hp)
    per = inputs.shape[0] // groups
    for _ in range(site.local_steps):
        if site.dp is None:
            grads = torch.autograd.grad(loss(p, hp, inputs, labels), [*p.values(), *hp.values()], create_graph=create_graph)
        else:
            total: list[Tensor] | None = None
            for i in range(groups):
                sl = slice(i * per, (i + 1) * per)
                g = torch.autograd.grad(loss(p, hp, inputs[sl], labels[sl]), [*p.values(), *hp.values()],
                                        create_graph=create_graph)
                norm = torch.sqrt(sum((t.pow(2).sum() for t in g), torch.zeros((), dtype=g[0].dtype)))
                scale = torch.clamp(site.dp.clip / (norm + 1e-12), max=1.0)
                g = [t * scale for t in g]
                total = g if total is None else [a + b for a, b in zip(total, g)]
            assert total is not None
            if noise is not None:
                total = [t + noise(t) for t in total]
            grads = tuple(t / groups for t in total)
        p = {n: p[n] - site.lr * g for n, g in zip(names, grads[: len(names)])}
        hp = {n: hp[n] - site.lr * g for n, g in zip(hnames, grads[len(names):])}
    return {n: p[n] - params[n] for n in names}


def _recognition_loss(model: nn.Module, head: nn.Module, protected: bool) -> _LossFn:
    """Margin loss of the site's model with backbone weights ``p`` and head weights ``hp``, on
    protected rows (``protected=True``) or on images through the whole model (RGB dummies)."""
    def loss(p: dict[str, Tensor], hp: dict[str, Tensor], x: Tensor, labels: Tensor) -> Tensor:
        emb = _embed_protected(model, p, x) if protected else functional_call(model, p, (x,))
        return functional_call(head, hp, (emb, labels))
    return loss


def _embed_protected(model: nn.Module, p: dict[str, Tensor], z: Tensor) -> Tensor:
    """The server half of the model (standardisation + backbone) with backbone weights ``p``."""
    x = model.input_norm(z) if model.input_norm is not None else z
    return functional_call(model.backbone, {n[len("backbone."):]: t for n, t in p.items()}, (x,))


def site_update(model: nn.Module, head: nn.Module, images: Tensor, labels: Tensor, site: SiteSpec,
                g: torch.Generator) -> tuple[dict[str, Tensor], Tensor]:
    """What the site sends (the change of the backbone weights) and the protected rows its
    model actually trained on (for scoring only). ``g`` draws the DP noise."""
    model.train()
    head.train()
    with torch.no_grad():
        # the frontend's training-mode output (views, noise), computed on the CPU where its
        # generators live, then moved to the model's device
        fe, dev = model.frontend, images.device
        rows = fe.cpu()(images.cpu(), labels.cpu()).to(dev)
        fe.to(dev)
    row_labels = model.expand_labels(labels)
    params = {n: t.detach() for n, t in _shared(model).items()}
    for t in params.values():
        t.requires_grad_(True)
    hparams = {n: t.detach().requires_grad_(True) for n, t in head.named_parameters()}
    loss = _recognition_loss(model, head, protected=True)

    def noise(t: Tensor) -> Tensor:
        assert site.dp is not None
        # drawn on the CPU from g (the same stream on any device), then moved
        return torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device) * (site.dp.noise_multiplier * site.dp.clip)

    delta = _unrolled_update(loss, params, hparams, rows, row_labels, site, groups=images.shape[0],
                             create_graph=False, noise=noise)
    out = {n: d.detach() for n, d in delta.items()}
    if not any(bool(d.ne(0).any()) for d in out.values()):
        raise ValueError("gradient inversion: the site's update is exactly zero (nothing to invert); check the "
                         "head's classes and the learning rate")
    return out, rows


# ------------------------------------------------------------------------------ the attack
def _cosine_distance(a: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
    dot = sum((a[n] * b[n]).sum() for n in b)
    na = torch.sqrt(sum(a[n].pow(2).sum() for n in b))
    nb = torch.sqrt(sum(b[n].pow(2).sum() for n in b))
    return 1 - dot / (na * nb + 1e-12)


def _normalised_tv(z: Tensor) -> Tensor:
    """TV of each channel map relative to its spread: a smoothness prior for tensor-space dummies."""
    scale = z.detach().flatten(2).std(-1).clamp(min=1e-6).view(*z.shape[:2], 1, 1)
    return total_variation(z / scale)


def invert_update(model: nn.Module, head: nn.Module | None, observed: dict[str, Tensor], site: SiteSpec,
                  n_images: int, views: int, labels: Tensor | None, cfg: GradientConfig, *, image_domain: bool,
                  row_shape: tuple[int, ...], image_size: int, progress: bool = False) -> tuple[Tensor, dict[str, Any]]:
    """Dummy inputs whose simulated update matches ``observed`` (module docstring).

    Returns the optimised dummies — images ``(n, 3, H, W)`` in [0, 1] when ``image_domain``,
    else protected rows ``(n * views, *row_shape)`` — and loss information.
    """
    g = torch.Generator().manual_seed(cfg.seed * 7919 + 11)
    dev = next(model.parameters()).device
    params = {n: t.detach().requires_grad_(True) for n, t in _shared(model).items()}
    known = head is not None
    hparams = {n: t.detach().requires_grad_(True) for n, t in head.named_parameters()} if known else {}
    rows = n_images * views
    if image_domain:
        w = (torch.randn(n_images, 3, image_size, image_size, generator=g) * 0.1).to(dev).requires_grad_(True)
    else:
        scale = model.input_norm.std.detach().view(1, -1, 1, 1) if model.input_norm is not None else 1.0
        mean = model.input_norm.mean.detach().view(1, -1, 1, 1) if model.input_norm is not None else 0.0
        w = (torch.randn(rows, *row_shape, generator=g) * 0.5).to(dev).requires_grad_(True)  # standardised units
    free = [w]
    if not known:
        gvec = torch.randn(rows, int(model.backbone.config["embedding_size"]), generator=g).to(dev).requires_grad_(True)
        free.append(gvec)
    opt = torch.optim.Adam(free, lr=cfg.lr)
    model.train()
    if known:
        loss = _recognition_loss(model, head, protected=not image_domain)
        row_labels = labels.repeat_interleave(views) if views > 1 else labels
    last: dict[str, float] = {}
    from tqdm import tqdm

    def dummies() -> Tensor:
        return torch.sigmoid(w) if image_domain else w * scale + mean

    for step in tqdm(range(cfg.steps), desc="gradient inversion", unit="step", disable=not progress, leave=False):
        lr_now = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, cfg.steps)))
        for group in opt.param_groups:
            group["lr"] = lr_now
        x = dummies()
        if known:
            inputs = x
            delta = _unrolled_update(loss, params, hparams, inputs, row_labels if not image_domain else labels,
                                     site, groups=n_images, create_graph=True)
        else:
            emb = functional_call(model, params, (x,)) if image_domain else _embed_protected(model, params, x)
            surrogate = (emb * gvec).sum()
            grads = torch.autograd.grad(surrogate, list(params.values()), create_graph=True)
            delta = {n: -gr for n, gr in zip(params, grads)}
        match = _cosine_distance(delta, observed)
        prior = total_variation(x).mean() if image_domain else _normalised_tv(w).mean()
        objective = match + cfg.tv_weight * prior
        opt.zero_grad(set_to_none=True)
        objective.backward()
        opt.step()
        last = {"cosine_distance": float(match.detach()), "tv": float(prior.detach())}
    return dummies().detach(), {"final": last, "steps": cfg.steps}


def merge_views(placed: Placed, views: int) -> Placed:
    """One observation per image from its ``views`` consecutive rows (PartialFace training
    views hold different subsets): the union of observed channels, averaged where they overlap."""
    if views == 1:
        return placed
    b = placed.values.shape[0] // views
    m = placed.mask.view(b, views, -1)
    v = placed.values.view(b, views, *placed.values.shape[1:])
    count = m.sum(1)
    values = (v * m.view(b, views, -1, 1, 1)).sum(1) / count.clamp(min=1).view(b, -1, 1, 1)
    inv = placed.inv_scale
    if inv is not None and inv.shape[0] == placed.values.shape[0]:
        inv = inv.view(b, views, *inv.shape[1:])[:, 0]
    return Placed(placed.domain, values, (count > 0).to(placed.mask.dtype), inv, placed.clip)


def _align(recon: Tensor, originals: Tensor) -> Tensor:
    """Reorder ``recon`` to the originals by the lowest-total-MSE assignment."""
    from scipy.optimize import linear_sum_assignment

    cost = (recon.unsqueeze(1) - originals.unsqueeze(0)).pow(2).flatten(2).mean(-1)  # (recon, original)
    r, c = linear_sum_assignment(cost.numpy())
    out = torch.empty_like(recon)
    out[torch.as_tensor(c)] = recon[torch.as_tensor(r)]
    return out


def run_gradient_inversion(frontend: nn.Module, victims: Any, cfg: GradientConfig, *, aux_images: Tensor,
                           score: Callable[[Tensor, Tensor, str], dict[str, Any]], model: nn.Module | None = None,
                           analytic: AnalyticConfig | None = None, device: str | torch.device = "cpu",
                           progress: bool = False) -> dict[str, Any]:
    """Attack one site's update for every configured setting; returns JSON-able results.

    ``victims``: a ``VictimSplit`` (its first ``cfg.max_victims`` probes are the sites'
    local images); ``aux_images``: the attacker's faces (uint8), for the input
    standardisation and the view; ``score(reconstructions, originals_index, label)``: the
    runner's scorer (image metrics and identity with confidence intervals). ``device``:
    where the site's training and the attack's unrolled copies of it run.
    """
    n = min(cfg.max_victims, int(victims.probes.shape[0]))
    originals = victims.probes[:n].float() / 255.0
    size = int(originals.shape[-1])
    calib = aux_images[: min(64, aux_images.shape[0])].float() / 255.0
    # a private copy: the site trains (and moves) it, the caller's model and frontend stay as they are
    model = copy.deepcopy(model) if model is not None else site_model(frontend, cfg, calib, size)
    dev = torch.device(device)
    model = model.to(dev)
    level = "secret" if has_secret(frontend) else "public"  # the server builds the model: it knows the secret
    view: AttackerView = build_view(model.frontend, level).fit(aux_images)
    image_domain = image_space(model.frontend)
    out: dict[str, Any] = {
        "threat_model": ("honest-but-curious federated server: knows the global model (frontend secret included), "
                         "the training recipe and one site's update" + ("; also the site's head and labels"
                         if cfg.head_knowledge == "known" else "; not the site's head or labels")),
        "config": _config_dict(cfg), "victims": n, "view": level, "dummies": "image" if image_domain else "protected tensor",
        "settings": [],
    }
    g = torch.Generator().manual_seed(cfg.seed * 104729 + 7)
    for site in cfg.sites():
        t0 = time.perf_counter()
        recon_parts, infos = [], []
        for start in range(0, n, site.batch_size):
            x = originals[start : start + site.batch_size]
            b = x.shape[0]
            labels = torch.arange(b, device=dev)
            x = x.to(dev)
            head = _head(cfg, int(model.backbone.config["embedding_size"]), cfg.site_classes)
            observed, rows = site_update(model, head, x, labels, site, g)
            views = rows.shape[0] // b
            dummies, info = invert_update(
                model, head if cfg.head_knowledge == "known" else None, observed, site, b, views, labels, cfg,
                image_domain=image_domain, row_shape=tuple(rows.shape[1:]), image_size=size, progress=progress)
            if image_domain:
                rec = dummies
            else:
                placed = merge_views(view.place(dummies), views)
                rec = analytic_invert(placed, "lstsq", view.stats, analytic or AnalyticConfig())
            if cfg.head_knowledge == "unknown" and b > 1:
                rec = _align(rec.cpu(), x.cpu())
            recon_parts.append(rec.detach().cpu().clamp(0, 1))
            infos.append(info["final"])
        recon = torch.cat(recon_parts)
        row = {"site": {**asdict(site), "label": site.label()}, **score(recon, originals, f"gradient[{site.label()}]"),
               "seconds": round(time.perf_counter() - t0, 2),
               "final_cosine_distance": sum(i.get("cosine_distance", 0.0) for i in infos) / max(1, len(infos)),
               "psnr_per_image": [float(v) for v in psnr(recon, originals)]}
        out["settings"].append(row)
        out.setdefault("_samples", {})[site.label()] = recon
    return out


def _config_dict(cfg: GradientConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["dp"] = [None if x is None else asdict(x) for x in cfg.dp]
    return d
