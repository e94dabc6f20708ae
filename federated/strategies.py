"""Server strategies: robust FedAvg, FedAvgM (server momentum) and FedFace's PFM.

All three subclass Flower's Message-API ``flwr.serverapp.strategy.FedAvg`` and share one
``aggregate_train`` (``RobustFedAvg``) that

* drops replies that carry an error (client crashed, timed out, ran out of memory),
* screens every other reply with ``facepriv.federated.arrays.screen_update`` (NaN/inf, absurd
  norm, keys/dtypes/shapes other than those sent) and the strategy's own check of the reply's
  metrics (PFM: each ``lr-sum-*``), and logs + excludes the bad ones: they are never averaged in,
* bounds each site's aggregation weight: ``num-examples`` above ``max_examples`` (what a site
  can train on in one round) is clipped to it and recorded,
* keeps the previous global model when fewer than ``min_train_replies`` updates survive,
* combines the survivors with the configured aggregator (``facepriv.federated.aggregators``:
  the ``num-examples``-weighted mean, or coordinate-wise median / trimmed mean / norm
  clipping) and then applies the strategy's server update (identity, server momentum, or
  PFM's momentum estimate),
* records an exception in any of this as the round's ``error`` and keeps the previous model
  instead of ending the run.

PFM (Bai et al., FedFace, 2021) equations are in docs/federated.md; in short, with
``w`` the shared parameters, ``eta`` the client learning rate and ``mu`` the momentum::

    client k, round r:  buf <- m_r (broadcast);  for each local step: buf <- mu*buf + g_k;
                        w <- w - eta*buf
    server:             w_{r+1} = sum_k p_k w_k
                        m_{r+1} = (w_r - w_{r+1}) / L        (L = sum of the local lrs)

With one local step and full participation on IID data this *is* centralised momentum SGD
on the union batch (tested in tests/federated/test_fed_pfm.py).

Every strategy optionally runs FedFace's *federated validation* (``fv_candidates=K > 0``,
``facepriv.federated.fv``): K candidate weightings of the accepted updates are turned into K candidate
global models with the strategy's own (pure) ``server_step``, the contributing sites score
them on private validation identities in a ``query.fv`` message exchange, and the best
candidate is kept; only then is the strategy state (FedAvgM velocity, PFM momentum) of that
candidate committed (``commit_state``).
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from .aggregators import Aggregator
from .arrays import FRONTEND_PREFIX, is_float_array, screen_update
from .fv import FVRound, candidate_weights, combine_scores, parse_scores
from .protocol import (ARRAYS, CONFIG, FV_CANDIDATES, FV_MESSAGE_TYPE, LR_SUM_PREFIX, METRICS, MOMENTUM, NUM_EXAMPLES,
                       SERVER_ROUND, STRATEGY, candidate_key, numpy_to_record, record_to_numpy)

log = logging.getLogger(__name__)



def param_group_of(key: str) -> str:
    """The trainer's param group of a shared parameter (``facepriv.training.components.param_groups``)."""
    return "frontend" if key.startswith(FRONTEND_PREFIX) else "backbone"


@dataclass
class RoundReport:
    """What happened to each reply in one round (written to the server's metrics JSON)."""

    round: int
    accepted: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    update_norms: dict[int, float] = field(default_factory=dict)
    #: sites whose reported num-examples exceeded ``max_examples``: node -> the reported value
    #: (their weight this round was ``max_examples``).
    clipped_weights: dict[int, float] = field(default_factory=dict)
    kept_previous_model: bool = False
    #: an exception raised while aggregating this round (the round kept the previous model).
    error: str | None = None
    #: why the server step's result was refused (non-finite model), None when it was not.
    diverged: str | None = None
    #: federated validation of this round (None when FV is off or the round kept the model).
    fv: FVRound | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"round": self.round, "accepted": self.accepted, "rejected": {str(k): v for k, v in self.rejected.items()},
               "failed": {str(k): v for k, v in self.failed.items()},
               "update_norms": {str(k): v for k, v in self.update_norms.items()},
               "clipped_weights": {str(k): v for k, v in self.clipped_weights.items()},
               "kept_previous_model": self.kept_previous_model}
        if self.error is not None:
            out["error"] = self.error
        if self.fv is not None:
            out["fv"] = self.fv.as_dict()
        if self.diverged is not None:
            out["diverged"] = self.diverged
        return out


class RobustFedAvg(FedAvg):
    """FedAvg that survives failed, poisoned or broken clients (see module docstring).

    Args (beyond Flower's FedAvg):
        min_train_replies: valid updates needed to change the global model this round.
        max_update_norm: reject updates whose L2 distance to the sent model exceeds this
            (None: only NaN/inf and ``max_abs_value`` are checked).
        max_abs_value: reject any update with a float entry above this in magnitude (or an
            integer entry that changed by more).
        max_examples: largest aggregation weight (``num-examples``) one site gets per round;
            larger reports are clipped to it and recorded (None: no bound).
        aggregator: ``mean`` | ``median`` | ``trimmed-mean`` | ``norm-clip``
            (``facepriv.federated.aggregators``); ``trim_fraction`` / ``clip_norm`` parametrise them.
        fv_candidates: federated validation with this many candidate weightings (0: off;
            1: only the sample-count weights, i.e. FedAvg plus a validation score).
        fv_concentration: spread of the Dirichlet candidates (``facepriv.federated.fv.candidate_weights``).
        fv_seed: seed of the candidate draws (combined with the round number).
        fv_timeout: seconds to wait for FV replies (None: Flower's default, wait for all).
        param_keys: which shared arrays are trainable parameters. The momentum strategies
            (FedAvgM, PFM) apply momentum to these only; buffers such as BatchNorm
            statistics take the plain average. Unused by FedAvg itself.
    """

    name = "fedavg"

    def __init__(self, *, min_train_replies: int = 1, max_update_norm: float | None = None,
                 max_abs_value: float = 1e6, max_examples: float | None = None, aggregator: str = "mean",
                 trim_fraction: float = 0.2, clip_norm: float | None = None, fv_candidates: int = 0,
                 fv_concentration: float = 2.0, fv_seed: int = 0, fv_timeout: float | None = None,
                 param_keys: Sequence[str] = (), **kwargs: Any) -> None:
        # the message keys are the protocol's (Flower's defaults today, pinned here so they cannot drift)
        kwargs.setdefault("weighted_by_key", NUM_EXAMPLES)
        kwargs.setdefault("arrayrecord_key", ARRAYS)
        kwargs.setdefault("configrecord_key", CONFIG)
        super().__init__(**kwargs)
        if min_train_replies < 1:
            raise ValueError("min_train_replies must be >= 1")
        if fv_candidates < 0:
            raise ValueError(f"fv_candidates must be >= 0 (0 = off), got {fv_candidates}")
        if max_examples is not None and not (math.isfinite(max_examples) and max_examples > 0):
            raise ValueError(f"max_examples must be a finite number > 0 (or None), got {max_examples}")
        self.aggregator = Aggregator(aggregator, float(trim_fraction), clip_norm)
        if fv_candidates > 0 and not self.aggregator.weighted:
            raise ValueError(f"federated validation chooses among weightings of the updates; aggregator "
                             f"{aggregator!r} ignores weights. Use mean or norm-clip with fv_candidates > 0.")
        self.min_train_replies = int(min_train_replies)
        self.max_update_norm = max_update_norm
        self.max_abs_value = float(max_abs_value)
        self.max_examples = None if max_examples is None else float(max_examples)
        self.fv_candidates = int(fv_candidates)
        self.fv_concentration = float(fv_concentration)
        self.fv_seed = int(fv_seed)
        self.fv_timeout = fv_timeout
        self.param_keys = list(param_keys)
        self.sent: dict[str, np.ndarray] | None = None
        self.reports: list[RoundReport] = []
        # the round's Grid and train config, kept by configure_train for the FV exchange
        self._grid: Grid | None = None
        self._round_config: dict[str, Any] = {}

    # ------------------------------------------------------------------ configure

    def extra_train_records(self, server_round: int) -> dict[str, ArrayRecord | ConfigRecord]:
        """Records added to every train message (PFM: the global momentum)."""
        return {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self.sent = record_to_numpy(arrays)
        config[STRATEGY] = self.name
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._grid = grid
        self._round_config = dict(config)
        extra = self.extra_train_records(server_round)
        if extra:
            for msg in messages:
                for k, rec in extra.items():
                    msg.content[k] = rec
        return messages

    # ------------------------------------------------------------------ aggregate

    def server_step(self, server_round: int, old: Mapping[str, np.ndarray], averaged: dict[str, np.ndarray],
                    metrics: list[Mapping[str, Any]], weights: Sequence[float]) -> tuple[dict[str, np.ndarray], Any]:
        """Map (previous global, ``weights``-average of accepted updates) to the new global model
        and the strategy state it implies. Pure (nothing is stored): FV calls it once per
        candidate and commits the state of the kept one with ``commit_state``."""
        return averaged, None

    def commit_state(self, state: Any) -> None:
        """Adopt the state ``server_step`` returned for the model that became global."""

    def screen_metrics(self, metrics: Mapping[str, Any]) -> str | None:
        """Why a reply's metrics make it unusable for this strategy (None: usable)."""
        return None

    def combine(self, accepted: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> dict[str, np.ndarray]:
        """The configured aggregator over the accepted updates (``self.sent`` is the reference)."""
        assert self.sent is not None  # screening refuses every update without it
        return self.aggregator(accepted, weights, self.sent)

    def aggregation_weight(self, node: int, metrics: Mapping[str, Any], report: RoundReport) -> float | str:
        """This reply's aggregation weight, or why it has none: ``num-examples``, finite and
        > 0, clipped to ``max_examples`` (the clipping is recorded in ``report``)."""
        raw = metrics.get(self.weighted_by_key)
        if isinstance(raw, bool) or not isinstance(raw, numbers.Real):
            return f"invalid {self.weighted_by_key}={raw!r} (not a number)"
        weight = float(raw)
        if not (math.isfinite(weight) and weight > 0):
            return f"invalid {self.weighted_by_key}={weight}"
        if self.max_examples is not None and weight > self.max_examples:
            report.clipped_weights[node] = weight
            log.warning("round %d: node %d reported %s=%g > max_examples=%g; its weight is clipped",
                        report.round, node, self.weighted_by_key, weight, self.max_examples)
            weight = self.max_examples
        return weight

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen, combine, step (see module docstring). Never raises: an exception is
        recorded as the round's ``error`` and the previous global model is kept."""
        report = RoundReport(round=server_round)
        try:
            return self._aggregate_train(server_round, replies, report)
        except Exception as exc:  # noqa: BLE001 - one broken round must not end a federation
            report.kept_previous_model = True
            report.error = f"{type(exc).__name__}: {exc}"
            log.exception("round %d: aggregation failed; keeping the previous global model", server_round)
            if not self.reports or self.reports[-1] is not report:
                self.reports.append(report)
            return None, MetricRecord({"clients-accepted": len(report.accepted), "clients-rejected": len(report.rejected),
                                       "clients-failed": len(report.failed), "aggregation-error": 1})

    def _aggregate_train(self, server_round: int, replies: Iterable[Message],
                         report: RoundReport) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted: list[dict[str, np.ndarray]] = []
        weights: list[float] = []
        metric_list: list[Mapping[str, Any]] = []
        contents: list[RecordDict] = []
        seen: set[int] = set()
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if node in seen:  # one vote per site and round, whatever the transport delivers
                log.warning("round %d: a second reply from node %d ignored", server_round, node)
                continue
            seen.add(node)
            if msg.has_error():
                report.failed[node] = str(msg.error.reason)
                log.warning("round %d: node %d failed: %s", server_round, node, msg.error.reason)
                continue
            try:
                arrays = record_to_numpy(msg.content[self.arrayrecord_key])
                metrics = dict(msg.content.metric_records.get(METRICS, MetricRecord()))
            except Exception as exc:  # noqa: BLE001 - malformed reply: exclude, never crash
                report.rejected[node] = f"malformed reply: {exc}"
                log.warning("round %d: node %d sent a malformed reply (%s); excluded", server_round, node, exc)
                continue
            weight = self.aggregation_weight(node, metrics, report)
            reason = weight if isinstance(weight, str) else self.screen_metrics(metrics)
            if reason is None:
                check = screen_update(arrays, self.sent, max_update_norm=self.max_update_norm,
                                      max_abs_value=self.max_abs_value)
                reason = None if check.ok else check.reason
            if reason is not None:
                report.rejected[node] = reason
                report.clipped_weights.pop(node, None)
                log.warning("round %d: rejected update of node %d: %s", server_round, node, reason)
                continue
            assert not isinstance(weight, str)
            report.accepted.append(node)
            report.update_norms[node] = check.update_norm
            accepted.append(arrays)
            weights.append(weight)
            metric_list.append(metrics)
            contents.append(msg.content)
        self.reports.append(report)

        summary = MetricRecord({"clients-accepted": len(accepted), "clients-rejected": len(report.rejected),
                                "clients-failed": len(report.failed)})
        if len(accepted) < self.min_train_replies:
            report.kept_previous_model = True
            log.warning("round %d: %d valid updates < min_train_replies=%d; keeping the previous global model",
                        server_round, len(accepted), self.min_train_replies)
            return None, summary
        old = self.sent
        assert old is not None  # screening accepted nothing without it
        if self.fv_candidates > 0:
            new, state, fv = self.federated_validation(server_round, old, accepted, weights, metric_list, report.accepted)
            report.fv = fv
            summary["fv-chosen"] = fv.chosen
            summary["fv-sites"] = len(fv.scores)
            if fv.aggregate is not None:
                summary["fv-score"] = fv.aggregate[fv.chosen]
        else:
            new, state = self.server_step(server_round, old, self.combine(accepted, weights), metric_list, weights)
        bad = [k for k, v in new.items() if is_float_array(v) and not np.all(np.isfinite(v))]
        if bad:
            report.kept_previous_model = True
            report.diverged = f"non-finite aggregate in {len(bad)} arrays (first {bad[0]!r})"
            log.error("round %d: the %s server step produced a non-finite model (%s); keeping the previous global "
                      "model and strategy state. Lower the learning rate or the server momentum.",
                      server_round, self.name, report.diverged)
            summary["diverged"] = 1
            return None, summary
        self.commit_state(state)
        try:
            agg = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
            for k, v in agg.items():
                summary[k] = v
        except Exception as exc:  # noqa: BLE001 - metrics are informational
            log.warning("round %d: could not aggregate client metrics: %s", server_round, exc)
        return numpy_to_record(new), summary

    # ------------------------------------------------------------------ federated validation

    def federated_validation(self, server_round: int, old: Mapping[str, np.ndarray], accepted: list[dict[str, np.ndarray]],
                             weights: Sequence[float], metrics: list[Mapping[str, Any]],
                             nodes: list[int]) -> tuple[dict[str, np.ndarray], Any, FVRound]:
        """Build the candidate global models, let the contributing sites score them, keep the best.

        Returns ``(new global arrays, strategy state to commit, FVRound)``. Never raises for
        site problems: failed, late, NaN or malformed FV replies are ignored (and recorded);
        with no usable reply the sample-count candidate (plain FedAvg) is kept and logged.
        Candidate 0 is computed from the raw sample weights exactly as without FV, so K=1
        reproduces the strategy bit for bit.
        """
        q = candidate_weights(weights, self.fv_candidates, seed=(self.fv_seed, server_round),
                              concentration=self.fv_concentration)
        proposals: list[tuple[dict[str, np.ndarray], Any]] = []
        for j, row in enumerate(q):
            wj: Sequence[float] = weights if j == 0 else [float(x) for x in row]
            proposals.append(self.server_step(server_round, old, self.combine(accepted, wj), metrics, wj))
        fv = FVRound(candidates=[[float(x) for x in row] for row in q], nodes=list(nodes))
        k = len(proposals)
        pending = set(nodes)
        try:
            replies = self._exchange_fv(server_round, [p[0] for p in proposals], nodes)
        except Exception as exc:  # noqa: BLE001 - the exchange failing must not kill the round
            log.warning("round %d: federated validation exchange failed: %s", server_round, exc)
            replies = []
            for n in nodes:
                fv.ignored[n] = f"exchange failed: {exc}"
            pending.clear()
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if node not in pending:
                log.warning("round %d: unexpected or duplicate FV reply from node %d ignored", server_round, node)
                continue
            pending.discard(node)
            if msg.has_error():
                fv.ignored[node] = f"error: {msg.error.reason}"
                log.warning("round %d: node %d failed federated validation: %s", server_round, node, msg.error.reason)
                continue
            try:
                scores, n_val = parse_scores(dict(msg.content.metric_records.get(METRICS, MetricRecord())), k)
            except Exception as exc:  # noqa: BLE001 - a bad reply is ignored, never fatal
                fv.ignored[node] = str(exc)
                log.warning("round %d: FV reply of node %d ignored: %s", server_round, node, exc)
                continue
            fv.scores[node] = scores
            fv.val_examples[node] = n_val
        for node in pending:
            fv.ignored[node] = "no FV reply within the timeout"
        result = combine_scores(fv.scores, fv.val_examples, k)
        if result is None:
            fv.fallback = True
            fv.chosen = 0
            log.warning("round %d: no usable federated-validation reply (%d sites asked); keeping the sample-count "
                        "weighting", server_round, len(nodes))
        else:
            fv.aggregate, fv.chosen = result
            log.info("round %d: FV chose candidate %d of %d (scores %s, weights %s)", server_round, fv.chosen, k,
                     np.round(fv.aggregate, 4).tolist(), np.round(q[fv.chosen], 3).tolist())
        new, state = proposals[fv.chosen]
        return new, state, fv

    def _exchange_fv(self, server_round: int, candidates: list[dict[str, np.ndarray]], nodes: list[int]) -> list[Message]:
        """One ``query.fv`` message per contributing site carrying all K candidate models."""
        if self._grid is None:
            raise RuntimeError("federated validation needs the Grid given to configure_train")
        config = ConfigRecord({**self._round_config, SERVER_ROUND: server_round, FV_CANDIDATES: len(candidates)})
        content = RecordDict({candidate_key(j): numpy_to_record(c) for j, c in enumerate(candidates)})
        content[self.configrecord_key] = config
        messages = [Message(content=content, message_type=FV_MESSAGE_TYPE, dst_node_id=int(n)) for n in nodes]
        return list(self._grid.send_and_receive(messages, timeout=self.fv_timeout))


class RobustFedAvgM(RobustFedAvg):
    """FedAvgM (Hsu et al. 2019): server momentum on the pseudo-gradient ``w_r - avg``::

        v <- beta * v + (w_r - avg);   w_{r+1} = w_r - server_lr * v

    Only trainable parameters (``param_keys``) get the momentum. Buffers (BatchNorm running
    statistics, counters) take the plain average: extrapolating a running variance along
    its own history drives it negative within a few rounds, and every embedding turns NaN.
    With ``param_keys`` empty (a caller that cannot tell), every float array gets momentum.
    """

    name = "fedavgm"

    def __init__(self, *, server_momentum: float = 0.9, server_learning_rate: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server_momentum = float(server_momentum)
        self.server_learning_rate = float(server_learning_rate)
        self.velocity: dict[str, np.ndarray] | None = None

    def server_step(self, server_round, old, averaged, metrics, weights):  # type: ignore[override]
        new: dict[str, np.ndarray] = {}
        velocity = dict(self.velocity or {})  # a copy: FV evaluates several candidates
        params = set(self.param_keys)
        for k, avg in averaged.items():
            if not is_float_array(avg) or (params and k not in params):
                new[k] = avg
                continue
            pseudo = np.asarray(old[k], np.float64) - avg.astype(np.float64)
            v = self.server_momentum * velocity[k] + pseudo if k in velocity else pseudo
            velocity[k] = v
            with np.errstate(over="ignore"):  # an overflow is caught as a non-finite model by aggregate_train
                new[k] = (np.asarray(old[k], np.float64) - self.server_learning_rate * v).astype(avg.dtype)
        return new, velocity

    def commit_state(self, state: Any) -> None:
        self.velocity = state

    def state_dict(self) -> dict[str, Any]:
        return {"velocity": self.velocity}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.velocity = state.get("velocity")


class PFM(RobustFedAvg):
    """Partially Federated Momentum (FedFace): the server estimates the global momentum of the
    shared parameters from the aggregated round update and broadcasts it; clients start
    their shared-parameter momentum buffers from it. The site-local head keeps ordinary
    local momentum (it never leaves the site, so there is nothing to federate).

    ``param_keys`` is required here: without it there is no parameter to estimate momentum
    for. They must be the parameters the *sites* train (the server leaves out a frontend
    that DP-SGD freezes at the sites, ``server_app.site_param_keys``): every reply must
    report ``lr-sum-<group>`` for each of their param groups.

    ``max_lr_sum`` (group -> local steps x the group's peak learning rate, from the run's
    train config) bounds each site's reported lr sum. Every reply's lr sums are checked
    before it is accepted (``screen_metrics``): a missing, non-numeric, NaN, non-positive or
    too large value excludes that reply (recorded with the reason) instead of raising out
    of the server step or, worse, silently scaling the global momentum (one site reporting
    1e9 used to shrink it by a factor of about 1e10).
    """

    name = "pfm"

    def __init__(self, *, param_keys: Sequence[str], max_lr_sum: Mapping[str, float] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(param_keys=param_keys, **kwargs)
        self.momentum: dict[str, np.ndarray] | None = None
        self.lr_groups = sorted({param_group_of(k) for k in self.param_keys})
        self.max_lr_sum = {str(k): float(v) for k, v in (max_lr_sum or {}).items()}

    def extra_train_records(self, server_round: int) -> dict[str, ArrayRecord | ConfigRecord]:
        if self.momentum is None:  # round 1: fresh buffers (torch's buf = g, i.e. centralised step 1)
            return {}
        return {MOMENTUM: numpy_to_record(self.momentum)}

    def screen_metrics(self, metrics: Mapping[str, Any]) -> str | None:
        for group in self.lr_groups:
            key = LR_SUM_PREFIX + group
            if key not in metrics:
                return f"no {key} reported (PFM turns the round update into a momentum with it)"
            raw = metrics[key]
            if isinstance(raw, bool) or not isinstance(raw, numbers.Real):
                return f"{key}={raw!r} is not a number"
            value = float(raw)
            if not (math.isfinite(value) and value > 0):
                return f"{key}={value} (must be finite and > 0)"
            bound = self.max_lr_sum.get(group)
            if bound is not None and value > bound * (1 + 1e-6):
                return f"{key}={value:.6g} exceeds local-steps x peak lr = {bound:.6g}"
        return None

    def server_step(self, server_round, old, averaged, metrics, weights):  # type: ignore[override]
        """``m = (w_r - w_{r+1}) / L`` per param group, with ``L`` the sites' lr sums combined
        like their updates (weighted mean; the median for median / trimmed-mean aggregation)."""
        w = np.asarray(weights, np.float64) / float(np.sum(weights))
        lr_sum: dict[str, float] = {}
        for group in self.lr_groups:
            vals = np.asarray([float(m[LR_SUM_PREFIX + group]) for m in metrics], np.float64)
            lr_sum[group] = float(np.dot(w, vals)) if self.aggregator.weighted else float(np.median(vals))
        momentum: dict[str, np.ndarray] = {}
        for k in self.param_keys:
            if k not in averaged or not is_float_array(averaged[k]):
                continue
            L = lr_sum[param_group_of(k)]
            if not (math.isfinite(L) and L > 0):  # screen_metrics makes this unreachable
                raise ValueError(f"PFM: {LR_SUM_PREFIX}{param_group_of(k)} of the round is {L}")
            momentum[k] = ((np.asarray(old[k], np.float64) - averaged[k].astype(np.float64)) / L).astype(averaged[k].dtype)
        return averaged, momentum

    def commit_state(self, state: Any) -> None:
        self.momentum = state

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.momentum}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.momentum = state.get("momentum")


STRATEGIES: dict[str, type[RobustFedAvg]] = {"fedavg": RobustFedAvg, "fedavgm": RobustFedAvgM, "pfm": PFM}


def build_strategy(name: str, *, param_keys: Sequence[str] = (), **kwargs: Any) -> RobustFedAvg:
    """``fedavg`` | ``fedavgm`` | ``pfm`` with the robust aggregation."""
    name = name.lower()
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)}")
    if name != "fedavgm":
        kwargs.pop("server_momentum", None)
        kwargs.pop("server_learning_rate", None)
    if name != "pfm":
        kwargs.pop("max_lr_sum", None)
    return STRATEGIES[name](param_keys=param_keys, **kwargs)


def strategy_state(strategy: Any) -> dict[str, Any]:
    fn: Callable[[], dict[str, Any]] | None = getattr(strategy, "state_dict", None)
    return fn() if callable(fn) else {}
