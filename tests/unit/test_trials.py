"""best_trial ranks on the losses that are there: pick_best must not fail on a trial without one."""

from __future__ import annotations

from typing import Any

import pytest

from ephemeral.trials import best_trial


def _results(*losses: Any) -> list[dict[str, Any]]:
    return [{"job_id": f"j{i}", "result": {"loss": loss, "artifact_uri": f"file:///m{i}.pt"}}
            for i, loss in enumerate(losses)]


def test_a_trial_without_a_loss_ranks_last() -> None:
    # j0 resumed from its final checkpoint and reported loss None (train_ddp.py).
    assert best_trial(_results(None, 0.3, 0.2)) == {"job_id": "j2", "model_uri": "file:///m2.pt",
                                                    "loss": 0.2}
    assert best_trial(_results(float("nan"), 0.5))["job_id"] == "j1"


def test_no_trial_with_a_loss_is_an_error_naming_the_trials() -> None:
    with pytest.raises(ValueError, match=r"no trial reported a finite loss.*j0 \(loss None\), "
                                         r"j1 \(loss None\)"):
        best_trial(_results(None, None))
    with pytest.raises(ValueError, match="no trial reported a finite loss"):
        best_trial([])
