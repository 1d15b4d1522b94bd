"""jobs/train_ddp.py without Ray: the loss a run reports, and the arguments it refuses."""

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
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def train(args: Any) -> None:
        raise AssertionError("would have trained")

    monkeypatch.setattr(train_ddp, "run_ray", train)
    with pytest.raises(SystemExit) as exit_:
        train_ddp.main(["--run", "r", "--num-workers", "2", "--gpus-per-worker", "8"])
    assert exit_.value.code == 2  # argparse's usage error: the form's dry run shows it
    assert "argument --gpus-per-worker: '8' is more than 1: a worker trains on one device" \
        in capsys.readouterr().err
    with pytest.raises(AssertionError, match="would have trained"):
        train_ddp.main(["--run", "r", "--num-workers", "16", "--gpus-per-worker", "1"])


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        train_ddp.parse_args(["--run", "r", *argv])
    assert exit_.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize(("argv", "said"), [
    # Each of these failed only on the cluster: Ray Train with no worker, a ZeroDivisionError at
    # the first checkpoint, empty batches, a loss of nan, a seed numpy refuses.
    (["--num-workers", "0"], "argument --num-workers: '0' is not a whole number of 1 or more"),
    (["--num-workers", "-2"], "argument --num-workers: '-2' is not a whole number of 1 or more"),
    (["--checkpoint-every", "0"], "argument --checkpoint-every: '0' is not a whole number"),
    (["--steps", "0"], "argument --steps: '0' is not a whole number of 1 or more"),
    (["--batch-size", "0"], "argument --batch-size: '0' is not a whole number of 1 or more"),
    (["--hidden", "0"], "argument --hidden: '0' is not a whole number of 1 or more"),
    (["--rows", "0"], "argument --rows: '0' is not a whole number of 1 or more"),
    (["--seed", "-1"], "argument --seed: '-1' is not a whole number from 0 to 4294967295"),
    (["--gpus-per-worker", "nan"], "argument --gpus-per-worker: 'nan' is not a finite number "
                                   "of 0 or more"),
    (["--gpus-per-worker", "-1"], "argument --gpus-per-worker: '-1' is not a finite number"),
    (["--gpus-per-worker", "1.5"], "argument --gpus-per-worker: '1.5' is more than 1"),
    (["--gpus-per-worker", "inf"], "argument --gpus-per-worker: 'inf' is not a finite number"),
    (["--cpus-per-worker", "nan"], "argument --cpus-per-worker: 'nan' is not a finite number"),
    (["--cpus-per-worker", "-1"], "argument --cpus-per-worker: '-1' is not a finite number"),
    (["--lr", "nan"], "argument --lr: 'nan' is not a finite number of 0 or more"),
    (["--lr", "-0.1"], "argument --lr: '-0.1' is not a finite number of 0 or more"),
    (["--lr", "inf"], "argument --lr: 'inf' is not a finite number of 0 or more"),
    (["--steps", "abc"], "argument --steps: 'abc' is not a whole number of 1 or more"),
    # Each worker trains on its share of the generated rows: one with none fails its first step.
    (["--num-workers", "4", "--rows", "3"], "--rows 3 is fewer than the 4 workers"),
])
def test_what_training_would_fail_on_is_refused_while_parsing(
        argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert said in _refused(argv, capsys)


def test_the_edges_of_what_training_takes_pass() -> None:
    args = train_ddp.parse_args(["--run", "r", "--num-w", "1", "--gpus-per-worker", "0.5",
                                 "--cpus-per-worker", "0", "--lr", "0", "--rows", "1",
                                 "--steps", "1", "--checkpoint-every", "1", "--seed", "0"])
    assert (args.num_workers, args.gpus_per_worker, args.cpus_per_worker, args.lr) == \
        (1, 0.5, 0.0, 0.0)
    # With a dataset, --rows is not used: it need not cover the workers.
    assert train_ddp.parse_args(["--run", "r", "--num-workers", "4", "--rows", "1",
                                 "--data-uri", "s3://b/f"]).rows == 1
