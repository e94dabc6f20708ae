"""Learned-decoder checkpoints: an interrupted run resumes to exactly the uninterrupted result;
foreign, mismatched and pickled-code checkpoints are refused."""

from __future__ import annotations

import pytest
import torch

from facepriv.frontends import PartialFace

from facepriv.eval.attacks import AttackCheckpointError, LearnedConfig, build_view, safe_load, train_decoder


def _cfg(steps: int, **kw) -> LearnedConfig:
    return LearnedConfig(steps=steps, batch_size=4, width=4, depth=1, warmup=2, checkpoint_every=3, **kw)


@pytest.fixture(scope="module")
def view(aux_u8):
    # secret knowledge: exercises the true-table simulation and the hypothesis placement
    return build_view(PartialFace(secret_seed=11), "secret").fit(aux_u8)


def test_resume_matches_uninterrupted_training(tmp_path, aux_u8, view):
    full = train_decoder(view, aux_u8, _cfg(6), checkpoint=tmp_path / "a.pt", progress=False)
    # "crash" after 3 steps: a run whose budget ends there leaves its checkpoint at step 3 ...
    train_decoder(view, aux_u8, _cfg(3), checkpoint=tmp_path / "b.pt", progress=False)
    data = safe_load(tmp_path / "b.pt")
    assert data["step"] == 3
    # ... and a resumed run with the full budget must refuse it (different budget = different run) ...
    with pytest.raises(AttackCheckpointError, match="different settings"):
        train_decoder(view, aux_u8, _cfg(6), checkpoint=tmp_path / "b.pt", resume=True, progress=False)
    # ... while a real interruption (periodic checkpoint of the same run) resumes exactly
    mid = _interrupted(tmp_path, aux_u8, view)
    resumed = train_decoder(view, aux_u8, _cfg(6), checkpoint=mid, resume=True, progress=False)
    assert resumed.history["resumed_from"] == 3
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k


def _interrupted(tmp_path, aux_u8, view):
    """Run the 6-step job but stop it right after its step-3 checkpoint is written."""
    path = tmp_path / "mid.pt"

    class Stop(Exception):
        pass

    import facepriv.eval.attacks.learned as learned

    real = learned.atomic_save

    def save_then_stop(obj, p):
        real(obj, p)
        raise Stop

    learned.atomic_save = save_then_stop
    try:
        with pytest.raises(Stop):
            train_decoder(view, aux_u8, _cfg(6), checkpoint=path, progress=False)
    finally:
        learned.atomic_save = real
    assert safe_load(path)["step"] == 3
    return path


def test_finished_checkpoint_is_reused_without_training(tmp_path, aux_u8, view):
    first = train_decoder(view, aux_u8, _cfg(4), checkpoint=tmp_path / "d.pt", progress=False)
    again = train_decoder(view, aux_u8, _cfg(4), checkpoint=tmp_path / "d.pt", resume=True, progress=False)
    assert again.history["resumed_from"] == 4
    x = view.simulate(aux_u8[:2].float() / 255, torch.Generator().manual_seed(0))
    assert torch.equal(first.reconstruct(x), again.reconstruct(x))


def test_unsafe_or_foreign_checkpoints_are_refused(tmp_path, aux_u8, view):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, bad)
    with pytest.raises(AttackCheckpointError, match="refused"):
        train_decoder(view, aux_u8, _cfg(2), checkpoint=bad, resume=True, progress=False)
    other = tmp_path / "other.pt"
    torch.save({"format": "something.else", "version": 1}, other)
    with pytest.raises(AttackCheckpointError, match="not a facepriv attack-decoder"):
        train_decoder(view, aux_u8, _cfg(2), checkpoint=other, resume=True, progress=False)
    trunc = tmp_path / "trunc.pt"
    train_decoder(view, aux_u8, _cfg(2), checkpoint=trunc, progress=False)
    trunc.write_bytes(trunc.read_bytes()[:100])
    with pytest.raises(AttackCheckpointError):
        train_decoder(view, aux_u8, _cfg(2), checkpoint=trunc, resume=True, progress=False)


def test_secret_never_written_to_the_checkpoint(tmp_path, aux_u8, view):
    train_decoder(view, aux_u8, _cfg(1), checkpoint=tmp_path / "e.pt", progress=False)
    fp = safe_load(tmp_path / "e.pt")["fingerprint"]["frontend"]
    assert "secret_seed" not in fp or fp["secret_seed"] == "<secret>"
    assert len(fp["secret_digest"]) == 64
