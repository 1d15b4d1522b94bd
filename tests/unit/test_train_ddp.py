"""jobs/train_ddp.py without Ray: the loss a run reports, and the scaling it refuses."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs"))
import train_ddp


def test_a_rerun_that_trains_no_step_reports_the_checkpoints_loss() -> None:
    # Resumed from the final checkpoint (after the trials were cleared): no step left to train.
    assert train_ddp._loss_summary([], {"loss": 0.25, "first_loss": 0.7}) == \
        {"loss": 0.25, "first_loss": 0.7}
    # A checkpoint from before losses were carried: None, as before (best_trial ranks it last).
    assert train_ddp._loss_summary([], {}) == {"loss": None, "first_loss": None}


def test_the_loss_is_this_attempts_and_the_first_loss_the_runs() -> None:
    losses = [1.0] * 20 + [0.5] * 20
    assert train_ddp._loss_summary(losses, {}) == {"loss": 0.5, "first_loss": 1.0}
    assert train_ddp._loss_summary(losses, {"loss": 0.8, "first_loss": 2.0}) == \
        {"loss": 0.5, "first_loss": 2.0}


def test_more_than_one_gpu_per_worker_is_refused_before_training(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def train(args: Any) -> None:
        raise AssertionError("would have trained")

    monkeypatch.setattr(train_ddp, "run_ray", train)
    with pytest.raises(SystemExit, match=r"--gpus-per-worker 8: a worker trains on one device"):
        train_ddp.main(["--run", "r", "--num-workers", "2", "--gpus-per-worker", "8"])
    with pytest.raises(AssertionError, match="would have trained"):
        train_ddp.main(["--run", "r", "--num-workers", "16", "--gpus-per-worker", "1"])
