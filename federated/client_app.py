"""The Flower ClientApp a partner site runs: local training with the facepriv trainer.

One train message = one round at this site::

    receive shared arrays (+ PFM momentum) -> load into a FaceRecognizer built from the
    run's config (+ this site's frontend calibration from earlier rounds) -> training.Trainer
    on this site's data (frontend -> protected tensors -> backbone -> site-local margin head)
    -> restore head / optimiser / schedule / data order / RNG / accountant from
    Context.state -> install momentum (PFM: global; else reset) -> ``local-steps`` trainer
    steps -> reply with shared arrays + metrics

With federated validation on, a ``query.fv`` message carries K candidate global models;
``validate_round`` embeds this site's held-out validation identities with each and replies
K scalar scores (``facepriv.federated.fv.separation_score``) and the number of images: no image,
embedding or array leaves the site.

The head (``Trainer.head``) is never put into a reply; it lives in ``Context.state`` (and
``state-dir`` on disk). There is no second training loop: every step is
``Trainer.train_step``, so DP-SGD (Opacus), AMP, clipping and non-finite-step handling are
the central trainer's.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from . import protocol as P
from .arrays import load_frontend_buffers, load_shared_state, shared_keys, shared_state
from .fv import separation_score
from .momentum import group_lrs, install_momentum, require_pfm_optimizer, shared_parameters
from .protocol import message_config, numpy_to_record, record_to_numpy
from .site import (HEAD_KEY, SITE_KEY, SITE_STATE_VERSION, load_site_state, pack, save_site_state, site_dataset,
                   site_validation_images, state_file, unpack)

log = logging.getLogger(__name__)


def build_site_trainer(cfg_dict: dict[str, Any], data_spec: dict[str, Any], context: Context,
                       arrays: dict[str, Any], *, val_identities: int = 0) -> tuple[Any, int]:
    """A Trainer on this site's data whose recognizer holds the received global arrays
    (``val_identities``: identities held out for federated validation, never trained on),
    continuing this site's state from earlier rounds: head, optimiser, schedule, data order,
    RNG, accountant, and the frontend's buffers, so a frontend calibrated on the site's data
    (DCTDP ``clip: calibrated``) is not calibrated again."""
    from facepriv.frontends import build_frontend
    from facepriv.training.components import build_recognizer
    from facepriv.training.config import config_from_dict
    from facepriv.training.distributed import DistEnv
    from facepriv.training.rng import derive_seed
    from facepriv.training.trainer import Trainer

    cfg = config_from_dict(cfg_dict)
    dataset, site = site_dataset(data_spec, context.node_config, cfg.data.image_size, val_identities=val_identities)
    cfg.seed = derive_seed("site", cfg.seed, site) % (2**31)  # own data order / noise per site
    cfg.checkpoint.every_steps = 0
    cfg.logging.progress = False
    cfg.eval.sets = []
    cfg.data.num_workers = 0
    recognizer = build_recognizer(cfg, build_frontend(dict(cfg.frontend)))
    load_shared_state(recognizer, arrays)  # before Trainer: a calibrated input norm is not re-calibrated
    if cfg.dp.enabled:
        refuse_unaccounted_statistics(recognizer, dict(cfg.frontend))
    state = _site_state(context)
    if state and state.get("frontend_buffers"):
        load_frontend_buffers(recognizer.frontend, state["frontend_buffers"])  # likewise the site's frontend calibration
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device(cfg.device if cfg.device != "auto" else "cpu"))
    trainer = Trainer(cfg, dataset=dataset, recognizer=recognizer, dist_env=env)
    try:
        _restore(trainer, state)
    except BaseException:
        trainer.close()
        raise
    return trainer, site


def refuse_unaccounted_statistics(recognizer: Any, frontend_cfg: dict[str, Any]) -> None:
    """Under DP-SGD, refuse to compute statistics of this site's images that the DP-SGD
    accounting does not cover: the trainer would otherwise calibrate an uncalibrated input
    standardiser on them (and the mean/std would travel to the server with the update) or
    fit DCTDP's clipping bounds to them. The facepriv server calibrates the standardiser on
    generated faces under DP (``server_app.calibrate_on_public_faces``) and refuses
    ``clip: calibrated``; this is the site's own guard against a server that does not."""
    norm = getattr(recognizer, "input_norm", None)
    if norm is not None and hasattr(norm, "calibrated") and not bool(norm.calibrated):
        raise ValueError("dp.enabled: the received model's input standardiser is uncalibrated, and calibrating it "
                         "here would send per-channel statistics of this site's images outside the DP-SGD "
                         "accounting. The server must calibrate it on public data (facepriv's server does).")
    if frontend_cfg.get("clip") == "calibrated":
        raise ValueError("dp.enabled with frontend.clip: calibrated: the clipping bounds would be fitted to this "
                         "site's images outside the DP-SGD accounting; use clip: analytic")


def _site_state(context: Context) -> dict[str, Any] | None:
    """This site's state from earlier rounds: ``Context.state`` first, else ``state-dir`` on disk."""
    if SITE_KEY in context.state:
        return unpack(bytes(context.state[SITE_KEY]["blob"]), "Context.state")
    return load_site_state(state_file(context.node_config, str(context.run_id)))


def _restore(trainer: Any, state: dict[str, Any] | None) -> None:
    """Continue from this site's private state (``Trainer.load_state_dict``): head, optimiser,
    schedule, position, RNG states and DP-SGD's accountant with its secret noise/sampling
    state, so round r+1 continues the site's own DP randomness instead of drawing anything
    from the server's seed."""
    if state is None:
        return
    state = dict(state)
    version = int(state.pop("site_state_version", 1))
    if version == 1 and isinstance(state.get("progress"), (list, tuple)):  # written before Trainer.state_dict
        step, epoch, batch = state["progress"]
        state["progress"] = {"step": step, "epoch": epoch, "batch_in_epoch": batch}
    elif version not in (1, SITE_STATE_VERSION):
        raise ValueError(f"site state: version {version}, this facepriv reads versions 1-{SITE_STATE_VERSION} "
                         "(written by a newer facepriv? upgrade this site, or remove the site's state-dir file to "
                         "start the site afresh, which loses its head and DP accountant)")
    trainer.load_state_dict(state, where="site state")


def _persist(trainer: Any, context: Context) -> None:
    """Keep ``Trainer.state_dict()`` (secrets included) and the frontend's buffers in the
    site's private state: ``Context.state`` and, with ``state-dir``, a file at the site.
    Nothing of it is ever put into a reply."""
    state = {**trainer.state_dict(), "site_state_version": SITE_STATE_VERSION,
             "frontend_buffers": {k: v.detach().cpu() for k, v in trainer.recognizer.frontend.named_buffers()}}
    context.state[HEAD_KEY] = ArrayRecord(torch_state_dict={k: v.detach().cpu() for k, v in trainer.head.state_dict().items()})
    context.state[SITE_KEY] = ConfigRecord({"blob": pack(state)})
    save_site_state(state, state_file(context.node_config, str(context.run_id)))


def train_round(msg: Message, context: Context) -> RecordDict:
    """Run this site's local training for one round; returns the reply content."""
    conf = message_config(msg)
    cfg_dict = json.loads(str(conf[P.TRAIN_CONFIG]))
    data_spec = json.loads(str(conf.get(P.DATA, "{}")))
    steps = int(conf.get(P.LOCAL_STEPS, 1))
    strategy = str(conf.get(P.STRATEGY, "fedavg"))
    arrays = record_to_numpy(msg.content[P.ARRAYS])
    t0 = time.perf_counter()
    trainer, site = build_site_trainer(cfg_dict, data_spec, context, arrays,
                                       val_identities=int(conf.get(P.FV_VAL_IDENTITIES, 0)))
    try:
        if strategy == "pfm":
            require_pfm_optimizer(trainer.optimizer)  # also in round 1, before any momentum arrives
        params = shared_parameters(trainer.recognizer, shared_keys(trainer.recognizer))
        momentum = record_to_numpy(msg.content[P.MOMENTUM]) if (strategy == "pfm" and P.MOMENTUM in msg.content) else None
        install_momentum(trainer.optimizer, params, momentum)
        lr_sums: dict[str, float] = {}
        losses: list[float] = []
        samples = skipped = 0
        t_steps = time.perf_counter()
        for _ in range(steps):
            lrs = group_lrs(trainer.optimizer)
            result = trainer.train_step(trainer.next_batch())
            samples += result.samples
            if result.skipped:
                skipped += 1
                continue
            losses.append(float(result.loss))
            for g, lr in lrs.items():
                lr_sums[g] = lr_sums.get(g, 0.0) + lr
        step_time = time.perf_counter() - t_steps
        _persist(trainer, context)
        metrics: dict[str, Any] = {
            P.NUM_EXAMPLES: int(samples), P.TRAIN_LOSS: float(sum(losses) / len(losses)) if losses else math.nan,
            P.SKIPPED_STEPS: int(skipped), P.LOCAL_STEPS: int(steps),
            P.TRAIN_TIME_S: time.perf_counter() - t0, P.STEP_TIME_S: step_time,
        }
        for g, v in lr_sums.items():
            metrics[P.LR_SUM_PREFIX + g] = v
        # 1 when this site calibrated the input standardiser on its own images this round (its
        # mean/std travel in the reply); 0 when it arrived calibrated (under DP: by the server)
        received = arrays.get("input_norm.calibrated")
        metrics[P.INPUT_NORM_FROM_SITE] = int(received is not None and not bool(received)
                                                   and bool(trainer.recognizer.input_norm.calibrated))
        eps = trainer.epsilon()
        if eps is not None:
            metrics[P.DP_EPSILON] = float(eps)  # record-level epsilon spent at this site so far
        reply = shared_state(trainer.recognizer)
        return RecordDict({P.ARRAYS: numpy_to_record({k: v.numpy() for k, v in reply.items()}),
                           P.METRICS: MetricRecord(metrics)})
    finally:
        trainer.close()


def evaluate_round(msg: Message, context: Context) -> RecordDict:
    """Mean training-objective loss of the global backbone with this site's head, on a few
    local batches (no update): a cheap health signal when the server holds no data."""
    conf = message_config(msg)
    if P.TRAIN_CONFIG not in conf:
        raise ValueError(f"evaluate message carries no {P.TRAIN_CONFIG}")
    trainer, site = build_site_trainer(json.loads(str(conf[P.TRAIN_CONFIG])), json.loads(str(conf.get(P.DATA, "{}"))),
                                       context, record_to_numpy(msg.content[P.ARRAYS]),
                                       val_identities=int(conf.get(P.FV_VAL_IDENTITIES, 0)))
    try:
        batches = int(conf.get(P.EVAL_BATCHES, 2))
        total, n = 0.0, 0
        for _ in range(batches):
            loss, count = trainer.batch_loss(trainer.next_batch())  # eval mode, no gradients, no step
            total += float(loss) * count
            n += count
        return RecordDict({P.METRICS: MetricRecord({P.NUM_EXAMPLES: max(n, 1), P.EVAL_LOSS: total / max(n, 1),
                                                       P.SITE: site})})
    finally:
        trainer.close()


def validate_round(msg: Message, context: Context) -> RecordDict:
    """Federated validation at this site: score each candidate global model in ``msg`` on
    this site's validation identities; reply K scalar scores + the image count only.

    The candidates share the frontend built from the run's config (as in training) and are
    embedded in eval mode, exactly as a deployed model would embed enrolled faces. The
    global torch RNG is forked and seeded per (run seed, site, round), so scoring neither
    disturbs nor depends on the site's training randomness.
    """
    from facepriv.frontends import build_frontend
    from facepriv.training.batches import images_to_float
    from facepriv.training.components import build_recognizer
    from facepriv.training.config import config_from_dict
    from facepriv.training.rng import derive_seed

    conf = message_config(msg)
    if P.TRAIN_CONFIG not in conf:
        raise ValueError(f"federated-validation message carries no {P.TRAIN_CONFIG}")
    k = int(conf.get(P.FV_CANDIDATES, 0))
    missing = [j for j in range(k) if P.candidate_key(j) not in msg.content]
    if k < 1 or missing:
        raise ValueError(f"federated-validation message: {P.FV_CANDIDATES}={k}, missing candidate records {missing[:5]}")
    cfg = config_from_dict(json.loads(str(conf[P.TRAIN_CONFIG])))
    val_ids = int(conf.get(P.FV_VAL_IDENTITIES, 0))
    images, labels, site = site_validation_images(json.loads(str(conf.get(P.DATA, "{}"))), context.node_config,
                                                  cfg.data.image_size, val_ids)
    device = torch.device(cfg.device if cfg.device != "auto" else "cpu")
    seed = derive_seed("fv", cfg.seed, site, int(conf.get(P.SERVER_ROUND, 0))) % (2**31)
    scores: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_recognizer(cfg, build_frontend(dict(cfg.frontend)))
        saved = (_site_state(context) or {}).get("frontend_buffers")
        if saved:  # score with the frontend this site trains with (its calibrated clipping bounds)
            load_frontend_buffers(model.frontend, saved)
        model = model.to(device)
        x = images_to_float(images.to(device))
        y = labels.to(device)
        for j in range(k):
            load_shared_state(model, record_to_numpy(msg.content[P.candidate_key(j)]))
            torch.manual_seed(seed)  # same global-RNG randomness for every candidate
            scores.append(separation_score(model.embed(x, batch_size=max(1, int(cfg.data.batch_size))), y))
    return RecordDict({P.METRICS: MetricRecord({P.FV_SCORES: scores, P.NUM_EXAMPLES: int(labels.numel()), P.SITE: site})})


def make_client_app(*, client_dp: bool = False) -> ClientApp:
    """The ClientApp; ``client_dp`` adds Flower's ``fixedclipping_mod`` to train messages
    (pair it with the server's ``DifferentialPrivacyClientSideFixedClipping``)."""
    app = ClientApp()
    mods = []
    if client_dp:
        from flwr.clientapp.mod import fixedclipping_mod

        mods.append(fixedclipping_mod)

    @app.train(mods=mods or None)
    def _train(msg: Message, context: Context) -> Message:
        return Message(train_round(msg, context), reply_to=msg)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return Message(evaluate_round(msg, context), reply_to=msg)

    @app.query(P.FV_ACTION)
    def _validate(msg: Message, context: Context) -> Message:
        return Message(validate_round(msg, context), reply_to=msg)

    return app


#: Deployment entry points (``federated/app/pyproject.toml``: clientapp = "facepriv.federated.client_app:app").
#: ``app_dp`` adds fixedclipping_mod; use it when the server runs with client-level DP
#: (the mod and the server wrapper must be switched on together).
app = make_client_app()
app_dp = make_client_app(client_dp=True)
