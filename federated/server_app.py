"""The Flower ServerApp: rounds, robust aggregation, per-round checkpoints and resume.

Why our own round loop instead of ``Strategy.start``: Flower's loop always starts at round
1 and keeps nothing on disk. A partner-site federation runs for days; a restarted server
must continue from its last round with the same global model *and* the strategy's state
(FedAvgM velocity, PFM global momentum). The loop below calls the strategy's own
``configure_train`` / ``aggregate_train`` (so Flower's DP wrappers compose with it) and
after every round atomically writes

* ``<out>/checkpoints/global_round{r:04d}.pt``: the global FaceRecognizer (``FaceRecognizer.save``
  format, loadable by ``facepriv eval``) and ``<out>/global.pt`` (latest copy);
* ``<out>/checkpoints/server_state.pt``: round number + strategy state; written last, so
  it is the commit marker a restart reads;
* ``<out>/metrics.json`` and ``<out>/verification.png`` (when held-out data is configured).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from facepriv.io import atomic_path, atomic_write
from facepriv.verification.keys import fpr_key, parse_fpr_key

from . import protocol as P
from .arrays import FRONTEND_PREFIX, load_shared_state, shared_keys, shared_state, state_to_numpy
from .protocol import numpy_to_record, record_to_numpy
from .settings import FedSettings, settings_from_run_config
from .site import pack, unpack
from .strategies import build_strategy

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- model / eval


def build_global_model(settings: FedSettings) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The server's FaceRecognizer and the train config sent to sites (frontend as built,
    so every site builds the same frontend, secrets included)."""
    from facepriv.frontends import build_frontend
    from facepriv.training.components import build_recognizer, frontend_config
    from facepriv.training.config import config_from_dict, config_to_dict

    cfg = config_from_dict(settings.train_config)
    torch.manual_seed(settings.seed)
    frontend = build_frontend(frontend_config(cfg))
    cfg_dict = config_to_dict(cfg)
    cfg_dict["frontend"] = dict(frontend.config)
    model = build_recognizer(cfg, frontend)
    if dp_mode(settings):
        calibrate_on_public_faces(model, cfg.data.image_size, cfg.data.batch_size, cfg.input_norm.calibration_batches,
                                  seed=settings.seed)
    return model, cfg_dict


def dp_mode(settings: FedSettings) -> bool:
    """Whether a DP guarantee covers what the sites send: DP-SGD inside every site
    (``dp.enabled`` in the train config) or Flower's client-level DP."""
    return bool((settings.train_config.get("dp") or {}).get("enabled")) or settings.client_dp_noise is not None


@torch.no_grad()
def calibrate_on_public_faces(model: torch.nn.Module, image_size: int, batch_size: int, batches: int, *,
                              seed: int) -> bool:
    """Calibrate ``model``'s input standardiser on generated faces at the server.

    Why: left uncalibrated, every site calibrates it on its own images in round 1 and sends
    the per-channel mean/std with its update. Those are statistics of private data that no
    DP accounting covers (DP-SGD clips and noises gradients, not buffers). Calibrated here
    (``facepriv.data.SyntheticFaces``, no site image involved), the model arrives at the
    sites with ``calibrated = True`` and no site ever computes them. Returns whether a
    calibration happened (False: no fixed-statistics standardiser, or one already calibrated).
    """
    from facepriv.data import SyntheticFaces
    from facepriv.models.input_norm import ChannelStandardize

    norm = getattr(model, "input_norm", None)
    if not isinstance(norm, ChannelStandardize) or bool(norm.calibrated):
        return False
    n = max(1, int(batches)) * max(1, int(batch_size))
    per_identity = 4
    faces = SyntheticFaces(max(2, -(-n // per_identity)), per_identity, seed=seed, image_size=image_size,
                           first_identity=10**7, dtype="float")
    items = [faces[i] for i in range(min(n, len(faces)))]
    images = torch.stack([torch.as_tensor(x) for x, _ in items]).float()
    labels = torch.tensor([int(y) for _, y in items])
    was = model.frontend.training
    model.frontend.train()  # training-mode output (noise, views) is what the backbone sees at the sites
    try:
        step = max(1, int(batch_size))
        model.calibrate_input_norm([(images[i:i + step], labels[i:i + step]) for i in range(0, len(images), step)])
    finally:
        model.frontend.train(was)
    return True


class HeldOutVerifier:
    """Verification of the global model on identities no site trains on: all genuine and
    impostor pairs of a small held-out set, TPR@FPR / AUC / EER via facepriv.verification.metrics."""

    def __init__(self, spec: dict[str, Any], image_size: int) -> None:
        fmt = spec.get("format", "synthetic")
        if fmt == "synthetic":
            from facepriv.data import SyntheticFaces

            ds = SyntheticFaces(int(spec.get("identities", 16)), int(spec.get("images_per_identity", 4)),
                                seed=int(spec.get("seed", 0)), image_size=image_size,
                                first_identity=int(spec.get("first_identity", 100000)), dtype="float",
                                difficulty=float(spec.get("difficulty", 1.0)))
        elif fmt == "folder":
            from facepriv.data import ImageFolderDataset

            ds = ImageFolderDataset(spec["path"], identities=spec.get("identities_list"), image_size=image_size,
                                    dtype="float", min_images=2)
        else:
            raise ValueError(f"unknown eval data format {fmt!r}")
        items = [ds[i] for i in range(len(ds))]
        self.images = torch.stack([x for x, _ in items]).float()
        self.labels = torch.tensor([int(y) for _, y in items])

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, Any]:
        from facepriv.verification.metrics import verification_report

        model.eval()
        emb = model.embed(self.images) if hasattr(model, "embed") else model(self.images)
        emb = emb.float()
        bad = int((~torch.isfinite(emb)).any(dim=1).sum())
        if bad:  # a diverged global model: say so in the history instead of ending the run
            msg = f"global model gives non-finite embeddings for {bad} of {len(emb)} held-out faces (diverged)"
            log.error(msg)
            return {"flat": {"error": msg}, "report": {"error": msg}}
        emb = torch.nn.functional.normalize(emb, dim=1)
        iu = torch.triu_indices(len(self.labels), len(self.labels), offset=1)
        scores = (emb[iu[0]] * emb[iu[1]]).sum(1).numpy().astype(np.float64)
        same = (self.labels[iu[0]] == self.labels[iu[1]]).numpy()
        report = verification_report(scores, same, folds=0)
        flat = {"auc": report["auc"], "eer": report["eer"]["eer"]}
        for row in report["tpr_at_fpr"]:
            if row["measurable"]:
                flat[fpr_key(row["fpr_target"])] = row["tpr"]
        return {"flat": flat, "report": report}


# --------------------------------------------------------------------------- persistence


def save_round(out: Path, rnd: int, model: torch.nn.Module, strategy: Any, history: list[dict[str, Any]]) -> Path:
    """Atomic per-round checkpoint; ``server_state.pt`` is written last (the commit marker)."""
    ckdir = out / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    path = ckdir / f"global_round{rnd:04d}.pt"
    model.save(path, extra={"federated_round": rnd, "strategy": getattr(strategy, "name", type(strategy).__name__)})
    with atomic_path(out / "global.pt", mode=0o600) as tmp:  # the global model carries no site secret, but
        shutil.copyfile(path, tmp)                            # its frontend config may: owner-only like checkpoints
    from .strategies import strategy_state

    state = {"round": rnd, "model": path.name, "strategy": _np_to_torch(strategy_state(_inner(strategy))),
             "history": json.dumps(history, default=_jsonable)}
    atomic_write(ckdir / "server_state.pt", pack(state), fsync=True)
    return path


def load_last_round(out: Path) -> dict[str, Any] | None:
    marker = out / "checkpoints" / "server_state.pt"
    if not marker.exists():
        return None
    state = unpack(marker.read_bytes(), str(marker))
    state["model_path"] = out / "checkpoints" / state["model"]
    state["history"] = json.loads(state["history"])
    state["strategy"] = _torch_to_np(state["strategy"])
    return state


def _inner(strategy: Any) -> Any:
    """The robust strategy under a Flower DP wrapper (which keeps it as ``.strategy``)."""
    return getattr(strategy, "strategy", strategy)


def _np_to_torch(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _np_to_torch(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    return obj


def _torch_to_np(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _torch_to_np(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    return obj


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return str(x)


# --------------------------------------------------------------------------- the loop


def site_param_keys(train_config: dict[str, Any], model: torch.nn.Module) -> list[str]:
    """Shared parameters the *sites* train: trainable on ``model``, minus the frontend's
    under DP-SGD (``facepriv.training.dp_sgd`` freezes it, and the site's optimiser then has
    no frontend param group and reports no ``lr-sum-frontend``)."""
    keys = set(shared_keys(model))
    frozen_frontend = bool((train_config.get("dp") or {}).get("enabled"))
    return [n for n, p in model.named_parameters()
            if n in keys and p.requires_grad and not (frozen_frontend and n.startswith(FRONTEND_PREFIX))]


def peak_lr_sums(train_config: dict[str, Any], local_steps: int) -> dict[str, float]:
    """Per param group, the largest lr sum one site can report for a round: local steps x the
    group's peak lr (warm-up, poly, step and constant schedules never exceed ``optim.lr`` /
    ``optim.frontend_lr``)."""
    optim = train_config.get("optim") or {}
    lr = float(optim.get("lr", 0.1))
    frontend_lr = optim.get("frontend_lr")
    return {"backbone": local_steps * lr, "frontend": local_steps * float(lr if frontend_lr is None else frontend_lr)}


def normalized_train_config(settings: FedSettings) -> dict[str, Any]:
    """``settings.train_config`` with every default filled in (a CLI config is partial)."""
    from facepriv.training.config import config_from_dict, config_to_dict

    return config_to_dict(config_from_dict(settings.train_config))


def check_settings(settings: FedSettings) -> None:
    """Refuse combinations that would run but silently void a result or a guarantee."""
    cfg = normalized_train_config(settings)
    optim = cfg.get("optim") or {}
    if settings.strategy == "pfm":
        if str(optim.get("name", "sgd")) != "sgd":
            raise ValueError(f"PFM needs optim.name: sgd (it federates SGD momentum buffers), got {optim.get('name')!r}")
        if bool(optim.get("nesterov", False)):
            raise ValueError("PFM with optim.nesterov: true is refused: PFM estimates the global momentum as "
                             "(w_r - w_{r+1}) / L, which holds for heavy-ball momentum (w -= lr * b) only; with "
                             "Nesterov (w -= lr * (g + mu * b)) the estimate is wrong every round. Set nesterov: false.")
    frontend = cfg.get("frontend") or {}
    if bool((cfg.get("dp") or {}).get("enabled")) and frontend.get("clip") == "calibrated":
        raise ValueError("frontend.clip: calibrated with dp.enabled is refused in federated training: each site "
                         "would fit the clipping bounds to its own images, a statistic of every training image "
                         "that the DP-SGD accounting does not cover. Use clip: analytic.")
    if settings.client_dp_noise is not None and settings.aggregator in ("median", "trimmed-mean"):
        raise ValueError(f"client-level DP with aggregator {settings.aggregator!r} is refused: Flower's DP wrapper "
                         "calibrates its noise to the mean of clipped updates, and one site moves a median or "
                         "trimmed mean by more than that. Use mean or norm-clip.")
    if settings.local_steps < 1:
        raise ValueError(f"local_steps must be >= 1, got {settings.local_steps}")


def default_max_examples(cfg: dict[str, Any], settings: FedSettings) -> float:
    """What one site can train on in a round: ``local_steps x batch_size`` images; under
    DP-SGD's Poisson sampling (batch sizes vary around ``batch_size``) four standard
    deviations more, so an honest site is practically never clipped."""
    n = settings.local_steps * int(cfg["data"]["batch_size"])
    return float(n + (math.ceil(4 * math.sqrt(n)) if bool(cfg["dp"]["enabled"]) else 0))


def make_strategy(settings: FedSettings, model: torch.nn.Module) -> Any:
    check_settings(settings)
    cfg = normalized_train_config(settings)
    param_keys = site_param_keys(cfg, model)
    max_examples = settings.max_examples if settings.max_examples is not None else default_max_examples(cfg, settings)
    strategy = build_strategy(
        settings.strategy, param_keys=param_keys, fraction_train=settings.fraction_train, fraction_evaluate=0.0,
        min_train_nodes=settings.min_train_nodes, min_available_nodes=settings.min_available_nodes,
        min_train_replies=settings.min_train_replies, max_update_norm=settings.max_update_norm,
        max_examples=max_examples, aggregator=settings.aggregator, trim_fraction=settings.trim_fraction,
        clip_norm=settings.clip_norm, max_lr_sum=peak_lr_sums(cfg, settings.local_steps),
        server_momentum=settings.server_momentum, server_learning_rate=settings.server_learning_rate,
        fv_candidates=settings.fv_candidates, fv_concentration=settings.fv_concentration, fv_seed=settings.seed,
        fv_timeout=settings.round_timeout,
    )
    if settings.fv_candidates > 0 and settings.fv_val_identities < 2:
        raise ValueError(f"federated validation needs fv_val_identities >= 2 per site (genuine and impostor pairs), "
                         f"got {settings.fv_val_identities}")
    if settings.client_dp_noise is not None:
        if settings.fv_candidates > 0:
            raise ValueError("client-level DP and federated validation do not compose: the DP wrapper noises the one "
                             "aggregate of aggregate_train, and a data-dependent choice among K weightings is not "
                             "covered by its accounting. Use one or the other.")
        if settings.strategy == "pfm":
            raise ValueError("client-level DP (fixedclipping_mod) needs exactly one ArrayRecord per message; "
                             "PFM also sends the global momentum. Use fedavg/fedavgm with client DP.")
        from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy, noise_multiplier=settings.client_dp_noise, clipping_norm=settings.client_dp_clip,
            num_sampled_clients=settings.min_train_nodes)
    return strategy


def run_server(grid: Grid, settings: FedSettings) -> list[dict[str, Any]]:
    """All rounds; returns the per-round history (also in ``<out>/metrics.json``)."""
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    model, cfg_dict = build_global_model(settings)
    strategy = make_strategy(settings, model)
    history: list[dict[str, Any]] = []
    start = 1
    last = load_last_round(out) if settings.resume else None
    if last is not None:
        from facepriv.models import FaceRecognizer

        model = FaceRecognizer.load(last["model_path"])
        cfg_dict["frontend"] = dict(model.frontend.config)
        load = getattr(_inner(strategy), "load_state_dict", None)
        if callable(load):
            load(last["strategy"])
        history = list(last["history"])
        start = int(last["round"]) + 1
        log.info("resuming federated run in %s after round %d", out, last["round"])
    verifier = HeldOutVerifier(settings.eval_data, int(cfg_dict["data"]["image_size"])) if settings.eval_data else None
    if verifier is not None and start == 1:
        history.append({"round": 0, "verification": verifier(model)["flat"]})

    base_config = {P.TRAIN_CONFIG: json.dumps(cfg_dict), P.DATA: json.dumps(settings.data),
                   P.LOCAL_STEPS: int(settings.local_steps),
                   P.FV_VAL_IDENTITIES: int(settings.fv_val_identities) if settings.fv_candidates > 0 else 0}
    for rnd in range(start, settings.rounds + 1):
        row = run_round(grid, strategy, model, rnd, base_config, settings.round_timeout)
        if verifier is not None:
            row["verification"] = verifier(model)["flat"]
        history.append(row)
        save_round(out, rnd, model, strategy, history)
        write_metrics(out, history, settings)
        log.info("round %d done in %.1fs: %s", rnd, row["round_time_s"], row.get("verification", row["train"]))
    write_metrics(out, history, settings)
    return history


def run_round(grid: Grid, strategy: Any, model: torch.nn.Module, rnd: int, base_config: dict[str, Any],
              timeout: float) -> dict[str, Any]:
    """One round: configure, exchange, aggregate, load the new global model into ``model``.

    Never raises: an exception anywhere in the round (the Grid, the strategy, a Flower DP
    wrapper, loading the aggregate) is recorded in the row's ``error`` and the round keeps
    the previous global model; the federation continues with the next round.
    """
    t0 = time.perf_counter()
    inner = _inner(strategy)
    n_reports = len(getattr(inner, "reports", []))
    row: dict[str, Any] = {"round": rnd, "sent": 0, "replies": 0, "train": {}}
    try:
        arrays = numpy_to_record(state_to_numpy(shared_state(model)))
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(dict(base_config)), grid))
        row["sent"] = len(messages)
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        row["replies"] = len(replies)
        new, metrics = strategy.aggregate_train(rnd, replies)
        row["train"] = dict(metrics) if metrics is not None else {}
        if new is not None:
            load_shared_state(model, record_to_numpy(new))
    except Exception as exc:  # noqa: BLE001 - one broken round must not end a federation
        row["error"] = f"{type(exc).__name__}: {exc}"
        log.exception("round %d failed; keeping the previous global model", rnd)
    reports = getattr(inner, "reports", [])
    row["aggregation"] = reports[-1].as_dict() if len(reports) > n_reports else {}
    if "error" in row:
        row["aggregation"]["kept_previous_model"] = True
    row["round_time_s"] = time.perf_counter() - t0
    return row


def privacy_notes(settings: FedSettings) -> dict[str, str]:
    """What the run releases beyond the trained shared arrays, for metrics.json."""
    dp_sgd = bool((settings.train_config.get("dp") or {}).get("enabled"))
    notes = {
        "input_norm": ("calibrated by the server on generated faces before round 1; no site computes or sends "
                       "statistics of its images" if dp_mode(settings) else
                       "calibrated by each site on its own images in its first round and sent with its update "
                       "(not covered by any DP guarantee: no DP mode is on)"),
        "frontend_buffers": "never sent (site-local: secrets and data-calibrated clipping bounds)",
    }
    if dp_sgd:
        notes["dp_sgd"] = ("record-level DP-SGD at every site; noise and Poisson sampling from the site's OS CSPRNG "
                           "(never from the server's seed), state kept in the site's private state only; "
                           "dp-epsilon in each site's reply covers its training records")
    return notes


def write_metrics(out: Path, history: list[dict[str, Any]], settings: FedSettings) -> None:
    meta = {k: v for k, v in asdict(settings).items() if k != "train_config"}
    (out / "metrics.json").write_text(json.dumps({"settings": meta, "privacy": privacy_notes(settings),
                                                  "rounds": history}, indent=2, default=_jsonable))
    series: dict[str, dict[int, float]] = {}
    for row in history:
        for k, v in (row.get("verification") or {}).items():
            target = parse_fpr_key(k)  # any spelling: histories written before fpr_key say tpr@fpr=...
            if k == "auc" or target is not None:
                series.setdefault(k if target is None else fpr_key(target), {})[int(row["round"])] = float(v)
        for key in (P.TRAIN_LOSS, "fv-score"):
            value = (row.get("train") or {}).get(key)
            if value is not None:
                series.setdefault(key, {})[int(row["round"])] = float(value)
    if series:
        from facepriv.verification.plots import plot_metric_curves

        plot_metric_curves(series, out / "verification.png", xlabel="round", ylabel="metric",
                           title=f"federated {settings.strategy}")


def make_server_app(settings: FedSettings) -> ServerApp:
    """A ServerApp bound to ``settings`` (simulation and tests)."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_server(grid, settings)

    return app


app = ServerApp()


@app.main()
def _deployment_main(grid: Grid, context: Context) -> None:
    run_server(grid, settings_from_run_config(dict(context.run_config)))
