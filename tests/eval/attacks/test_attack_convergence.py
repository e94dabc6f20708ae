"""The learned attacks' budget-doubling convergence check: it doubles until one doubling moves
the measured leakage by less than the tolerance, records what it did, resumes exactly after an
interruption, and leaves fixed-budget runs (and their old checkpoints) as they were."""

from __future__ import annotations

import pytest
import torch

from facepriv.frontends import DCTFrontend

from facepriv.eval.attacks import LearnedConfig, build_view, safe_load, train_decoder
from facepriv.eval.attacks.learned import _lr_at


def _cfg(**kw) -> LearnedConfig:
    base = dict(steps=4, batch_size=4, width=4, depth=1, warmup=2, checkpoint_every=3)
    return LearnedConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def view(aux_u8):
    return build_view(DCTFrontend(), "public").fit(aux_u8)


class Measure:
    """A scripted leakage measurement (the check only needs numbers)."""

    def __init__(self, values):
        self.values, self.calls = list(values), 0

    def __call__(self, net):
        self.calls += 1
        return "tpr_at_fpr_1e-3", self.values[self.calls - 1]


def test_doubling_stops_once_the_leakage_settles(aux_u8, view):
    m = Measure([0.10, 0.50, 0.51, 0.9])
    net = train_decoder(view, aux_u8, _cfg(max_doublings=3), evaluate=m, progress=False)
    conv = net.history["convergence"]
    assert m.calls == 3 and conv["budgets"] == [4, 8, 16] and conv["converged"]
    assert conv["values"] == [0.10, 0.50, 0.51] and conv["final_change"] == pytest.approx(0.01)
    assert net.history["steps"] == 16 and "budget doubling" in conv["check"]


def test_doubling_reports_a_budget_bound_attack(aux_u8, view):
    m = Measure([0.1, 0.3])
    net = train_decoder(view, aux_u8, _cfg(max_doublings=1), evaluate=m, progress=False)
    conv = net.history["convergence"]
    assert conv["budgets"] == [4, 8] and not conv["converged"]
    # no measurement available: the check cannot run and says so
    net = train_decoder(view, aux_u8, _cfg(max_doublings=1), progress=False)
    assert net.history["convergence"]["check"] == "none" and "needs a measurement" in net.history["convergence"]["note"]
    assert net.history["steps"] == 4


def test_interrupted_doubling_resumes_exactly(tmp_path, aux_u8, view):
    full = train_decoder(view, aux_u8, _cfg(max_doublings=2), checkpoint=tmp_path / "full.pt",
                         evaluate=Measure([0.1, 0.2, 0.21]), progress=False)

    class Stop(Exception):
        pass

    import facepriv.eval.attacks.learned as learned

    real, saves = learned.atomic_save, []

    def save_then_maybe_stop(obj, p):
        real(obj, p)
        saves.append(obj["step"])
        if obj["step"] == 6:  # a periodic checkpoint inside the second budget
            raise Stop

    learned.atomic_save = save_then_maybe_stop
    try:
        with pytest.raises(Stop):
            train_decoder(view, aux_u8, _cfg(max_doublings=2), checkpoint=tmp_path / "cut.pt",
                          evaluate=Measure([0.1, 0.2, 0.21]), progress=False)
    finally:
        learned.atomic_save = real
    assert safe_load(tmp_path / "cut.pt")["checks"] == [{"steps": 4, "metric": "tpr_at_fpr_1e-3", "value": 0.1}]
    m = Measure([0.2, 0.21])  # the first measurement is in the checkpoint, not taken again
    resumed = train_decoder(view, aux_u8, _cfg(max_doublings=2), checkpoint=tmp_path / "cut.pt", resume=True,
                            evaluate=m, progress=False)
    assert m.calls == 2 and resumed.history["resumed_from"] == 6
    assert resumed.history["convergence"] == full.history["convergence"]
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    again = train_decoder(view, aux_u8, _cfg(max_doublings=2), checkpoint=tmp_path / "cut.pt", resume=True,
                          evaluate=Measure([]), progress=False)  # finished: nothing trained or measured
    assert again.history["resumed_from"] == 16


def test_schedule_restarts_at_half_the_peak_and_is_unchanged_without_the_check():
    fixed, checked = _cfg(steps=10, warmup=2, lr=1.0), _cfg(steps=10, warmup=2, lr=1.0, max_doublings=2)
    assert [_lr_at(s, fixed) for s in range(10)] == [_lr_at(s, checked) for s in range(10)]
    assert _lr_at(10, checked) == pytest.approx(0.5) and _lr_at(20, checked) == pytest.approx(0.25)
    assert _lr_at(19, checked) < 0.05 and _lr_at(15, checked) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="max_doublings"):
        LearnedConfig(max_doublings=-1)


def test_checkpoints_from_before_the_check_still_resume(tmp_path, aux_u8, view):
    path = tmp_path / "old.pt"
    train_decoder(view, aux_u8, _cfg(), checkpoint=path, progress=False)
    data = safe_load(path)
    assert "max_doublings" not in data["fingerprint"]["config"]  # defaults stay out of the fingerprint
    for key in ("checks", "finished"):  # what an older checkpoint lacked
        data.pop(key)
    torch.save(data, path)
    again = train_decoder(view, aux_u8, _cfg(), checkpoint=path, resume=True, progress=False)
    assert again.history["resumed_from"] == 4 and again.history["steps"] == 4
