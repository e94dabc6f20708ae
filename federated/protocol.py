"""The federated message protocol: every key a server and a site exchange, and the one
conversion between Flower's ``ArrayRecord`` and numpy arrays.

Why a module of its own: a key spelled differently on the two sides of a message is not an
error anywhere, it is a silently missing value (``conf.get("local-step", 1)`` trains one
step). With every key defined here once, server (``server_app``, ``strategies``, ``fv``) and
site (``client_app``) cannot drift apart, and a reader finds the whole wire format in one
place. Free of the trainer, torch and (until a record is converted) Flower, so ``fv`` stays
pure numpy.

Messages (``RecordDict`` keys in brackets)::

    train      server -> site  [CONFIG] config keys below, [ARRAYS] shared arrays,
                               [MOMENTUM] PFM's global momentum (PFM, round >= 2)
               site -> server  [ARRAYS] shared arrays, [METRICS] reply metrics below
    evaluate   server -> site  [CONFIG], [ARRAYS];  site -> server [METRICS]
    query.fv   server -> site  [CONFIG] (+ SERVER_ROUND, FV_CANDIDATES), candidate_key(j)
                               for j < K;  site -> server [METRICS] FV_SCORES, NUM_EXAMPLES
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # flwr only where a record is built: fv and the key constants stay Flower-free
    from flwr.app import ArrayRecord, Message

# ------------------------------------------------------------------ RecordDict keys
#: the round's ConfigRecord.
CONFIG = "config"
#: the shared arrays (global model to the site, its update back).
ARRAYS = "arrays"
#: the reply's MetricRecord.
METRICS = "metrics"
#: PFM's broadcast global momentum (train messages only).
MOMENTUM = "pfm-momentum"
#: candidate ``j`` of a federated-validation message is ``f"{CANDIDATE_PREFIX}{j}"``.
CANDIDATE_PREFIX = "fv-candidate-"

# ------------------------------------------------------------------ message types
#: FV exchange: routed to ``@app.query(FV_ACTION)`` on the sites.
FV_ACTION = "fv"
FV_MESSAGE_TYPE = f"query.{FV_ACTION}"

# ------------------------------------------------------------------ ConfigRecord keys
#: the training config (JSON) every site builds its trainer from.
TRAIN_CONFIG = "train-config"
#: the data spec (JSON): simulation partitions; deployed sites use node-config data-path.
DATA = "data"
#: trainer steps per site per round (also echoed in the reply metrics).
LOCAL_STEPS = "local-steps"
#: the strategy's name (``fedavg``, ``fedavgm``, ``pfm``): PFM sites install the momentum.
STRATEGY = "strategy"
#: the round number (FV messages: seeds the scoring).
SERVER_ROUND = "server-round"
#: number of candidates K in an FV message.
FV_CANDIDATES = "fv-candidates"
#: validation identities each site holds out of training (0: FV off, train on all).
FV_VAL_IDENTITIES = "fv-val-identities"
#: batches an evaluate message scores.
EVAL_BATCHES = "eval-batches"

# ------------------------------------------------------------------ MetricRecord keys (replies)
#: aggregation weight: images trained on (train) or scored (evaluate, FV).
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
SKIPPED_STEPS = "skipped-steps"
#: seconds of the whole site round (trainer build, state, steps) and of its trainer steps alone.
TRAIN_TIME_S = "train-time-s"
STEP_TIME_S = "step-time-s"
#: per param group ``g``: ``LR_SUM_PREFIX + g`` = sum of the lr over the local steps (PFM).
LR_SUM_PREFIX = "lr-sum-"
#: 1 when the site calibrated the input standardiser on its own images this round.
INPUT_NORM_FROM_SITE = "input-norm-from-site-data"
#: record-level epsilon spent at the site so far (DP-SGD).
DP_EPSILON = "dp-epsilon"
EVAL_LOSS = "eval-loss"
SITE = "site"
#: K candidate scores of an FV reply (higher is better).
FV_SCORES = "fv-scores"


def candidate_key(j: int) -> str:
    """RecordDict key of FV candidate ``j``."""
    return f"{CANDIDATE_PREFIX}{j}"


def record_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """A received ArrayRecord as numpy arrays (names kept)."""
    return {k: np.asarray(v.numpy()) for k, v in record.items()}


def numpy_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """``arrays`` as C-contiguous Flower Arrays, 0-d arrays kept 0-d.

    ``np.ascontiguousarray`` would turn a 0-d array (``input_norm.calibrated``, BatchNorm's
    ``num_batches_tracked``) into shape ``(1,)``, and the site's ``load_shared_state`` then
    (rightly) refuses the shape change.
    """
    from flwr.app import Array, ArrayRecord

    return ArrayRecord(array_dict={k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})


def message_config(msg: Message) -> dict[str, Any]:
    """The ConfigRecord of ``msg`` as a dict (empty when the message carries none)."""
    return dict(msg.content.config_records.get(CONFIG, {}))
