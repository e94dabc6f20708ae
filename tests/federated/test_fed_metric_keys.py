"""The server's history names TPR@FPR figures with the one spelling (``fpr_key``), and its
plot still reads histories written with the old ``tpr@fpr=...`` keys (a resumed run's
earlier rounds), drawing one line per target whatever the spelling."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr.app")


def test_held_out_verification_writes_fpr_key_spelling(tmp_path, tiny_cfg):
    from facepriv.federated.server_app import FedSettings, HeldOutVerifier, build_global_model
    from facepriv.verification.keys import FPR_KEY_PREFIX, fpr_key, parse_fpr_key

    model, cfg_dict = build_global_model(FedSettings(train_config=tiny_cfg(), out=str(tmp_path)))
    verifier = HeldOutVerifier({"format": "synthetic", "identities": 6, "images_per_identity": 3},
                               int(cfg_dict["data"]["image_size"]))
    flat = verifier(model)["flat"]
    tpr_keys = [k for k in flat if parse_fpr_key(k) is not None]
    assert tpr_keys and {"auc", "eer"} <= set(flat)
    assert all(k.startswith(FPR_KEY_PREFIX) and k == fpr_key(parse_fpr_key(k)) for k in tpr_keys), tpr_keys
    assert not [k for k in flat if k.startswith("tpr@")]


def test_history_plot_reads_old_and_new_spellings(tmp_path, tiny_cfg, monkeypatch):
    from facepriv.federated import server_app
    from facepriv.verification import plots

    seen = {}
    monkeypatch.setattr(plots, "plot_metric_curves", lambda series, path, **kw: seen.update(series))
    history = [{"round": 1, "verification": {"auc": 0.6, "eer": 0.4, "tpr@fpr=0.001": 0.1}},  # written before fpr_key
               {"round": 2, "verification": {"auc": 0.7, "eer": 0.3, "tpr_at_fpr_1e-3": 0.2}}]
    server_app.write_metrics(tmp_path, history, server_app.FedSettings(train_config=tiny_cfg(), out=str(tmp_path)))
    assert seen == {"auc": {1: 0.6, 2: 0.7}, "tpr_at_fpr_1e-3": {1: 0.1, 2: 0.2}}  # one line per target
