"""Federated distillation: each site distils from a teacher's embeddings of its own images,
computed once per site and cached; nothing about them leaves the site."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("flwr.app")
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict  # noqa: E402

from facepriv.federated.protocol import numpy_to_record, record_to_numpy  # noqa: E402


def test_sites_distil_from_their_own_cached_teacher_embeddings(task_identity, tmp_path):
    from facepriv.federated.arrays import shared_keys, shared_state, state_to_numpy
    from facepriv.federated.cli import default_train_config
    from facepriv.federated.client_app import train_round
    from facepriv.federated.server_app import FedSettings, build_global_model

    cfg = default_train_config(32, "partialface", "mobilefacenet", 0.0625, 4, 0.05, 0, "cpu")
    cfg["model"]["embedding_size"] = 16
    teacher_cfg = default_train_config(32, "rgb", "mobilefacenet", 0.0625, 4, 0.05, 0, "cpu")
    teacher_cfg["model"]["embedding_size"] = 16
    teacher, _ = build_global_model(FedSettings(train_config=teacher_cfg, out=str(tmp_path / "t")))
    teacher.save(tmp_path / "teacher.pt")
    cache = tmp_path / "teacher_cache"
    cfg["distill"] = {"enabled": True, "teacher": str(tmp_path / "teacher.pt"), "cache": str(cache) + "/",
                      "cosine_weight": 1.0, "head_weight": 0.1}
    model, cfg_dict = build_global_model(FedSettings(train_config=cfg, out=str(tmp_path), strategy="pfm"))
    assert cfg_dict["distill"]["enabled"]
    sent = state_to_numpy(shared_state(model))
    conf = ConfigRecord({"train-config": json.dumps(cfg_dict), "local-steps": 2, "strategy": "fedavg",
                         "data": json.dumps({"format": "synthetic", "ids_per_client": 3, "images_per_identity": 2})})
    contexts = {pid: Context(run_id=5, node_id=9 + pid, node_config={"partition-id": pid, "num-partitions": 2},
                             state=RecordDict(), run_config={}) for pid in (0, 1)}

    def round_at(pid):
        msg = Message(RecordDict({"arrays": numpy_to_record(sent), "config": conf}), dst_node_id=9 + pid,
                      message_type=MessageType.TRAIN)
        return train_round(msg, contexts[pid])

    for pid in (0, 1):
        reply = round_at(pid)
        assert set(reply["arrays"].keys()) == set(shared_keys(model)) and np.isfinite(reply["metrics"]["train-loss"])
    files = sorted(cache.glob("teacher_*.safetensors"))
    assert len(files) == 2  # one per site: each embedded its own 6 images
    keys = [f.with_suffix(".keys.txt").read_text().splitlines() for f in files]
    assert all(len(k) == 6 for k in keys) and not set(keys[0]) & set(keys[1])
    stamps = [f.stat().st_mtime_ns for f in files]
    sent = record_to_numpy(round_at(0)["arrays"])  # round 2 reads the cache instead of re-embedding
    assert [f.stat().st_mtime_ns for f in sorted(cache.glob("teacher_*.safetensors"))] == stamps
    assert all(np.isfinite(v).all() for v in sent.values() if v.dtype.kind == "f")
