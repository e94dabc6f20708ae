"""torchrun / DDP on CPU (gloo): two processes agree with one process on the same global batch.

Why the comparison is meaningful: the sampler gives rank r the r-th half of every global
batch, flips depend only on (seed, epoch, sample index), and the backbone uses GroupNorm
(per-sample statistics). With BatchNorm each rank would normalise with the statistics of
its own half-batch, a genuinely different computation, so the check would need a loose
tolerance that hides real bugs. DDP averages the two half-batch mean gradients, which
equals the full-batch mean gradient; only float summation order differs, hence a tight
tolerance (1e-5 on weights of order 1; measured ~2e-7) rather than bitwise equality.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facepriv.models import FaceRecognizer
from facepriv.training.config import save_config
from facepriv.training.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def _torchrun(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "facepriv.training.cli", str(config), "--out", str(out), "-q", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_process_gloo_matches_single_process(tmp_path: Path, tiny_config) -> None:
    common = dict(schedule={"max_steps": 5, "warmup_steps": 1}, checkpoint={"every_steps": 0})
    ddp_cfg = tiny_config(data__batch_size=8, **common)          # 2 x 8 per step
    single_cfg = tiny_config(data__batch_size=16, **common)      # 1 x 16 per step
    save_config(ddp_cfg, tmp_path / "ddp.yaml")

    _torchrun(tmp_path / "ddp.yaml", tmp_path / "ddp")
    single = Trainer(single_cfg, run_dir=tmp_path / "single")
    init = {k: v.clone() for k, v in single.recognizer.state_dict().items()}
    single.fit()

    ddp = FaceRecognizer.load(tmp_path / "ddp" / "model.pt").state_dict()
    ref = FaceRecognizer.load(tmp_path / "single" / "model.pt").state_dict()
    assert ddp.keys() == ref.keys()
    moved = max(float((ref[k].float() - init[k].float()).abs().max()) for k in ref)
    assert moved > 1e-3, "training did not change the weights; the comparison would be vacuous"
    worst = max(float((ddp[k].float() - ref[k].float()).abs().max()) for k in ref)
    assert worst < 1e-5, f"DDP and single-process weights differ by {worst}"
    # both ranks wrote their own state (head, optimiser, RNG) into the final checkpoint
    last = tmp_path / "ddp" / "checkpoints" / "step_00000005"
    assert sorted(p.name for p in last.iterdir()) == ["model.pt", "rank_00000.pt", "rank_00001.pt", "shared.pt"]


def test_partial_fc_partialface_ddp_runs_and_resumes(tmp_path: Path, tiny_config) -> None:
    """Sharded class centres + per-rank frontend randomness, interrupted and resumed under torchrun."""
    cfg = tiny_config(
        frontend={"name": "partialface", "sample_multiplier": 2, "train_seed": 1},
        head={"type": "partial_fc", "margin": "cosface", "s": 16.0, "m": 0.2, "sample_rate": 0.5},
        input_norm={"calibration_batches": 1},
        schedule={"max_steps": 4}, checkpoint={"every_steps": 2},
    )
    save_config(cfg, tmp_path / "pfc.yaml")
    _torchrun(tmp_path / "pfc.yaml", tmp_path / "run", "--max-steps", "2")
    shards = [torch.load(tmp_path / "run" / "checkpoints" / "step_00000002" / f"rank_{r:05d}.pt", weights_only=True)
              for r in range(2)]
    assert [s["head"]["weight"].shape[0] for s in shards] == [4, 4]  # 8 identities split over 2 ranks
    assert not torch.equal(shards[0]["head"]["weight"], shards[1]["head"]["weight"])
    gens = [s["rng"]["generators"]["frontend:_train_generator"]["state"] for s in shards]
    assert not torch.equal(gens[0], gens[1]), "ranks must draw independent PartialFace subsets"
    _torchrun(tmp_path / "pfc.yaml", tmp_path / "run", "--resume")
    assert (tmp_path / "run" / "model.pt").is_file()
    rows = (tmp_path / "run" / "train_log.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    shutil.rmtree(tmp_path / "run" / "checkpoints")
