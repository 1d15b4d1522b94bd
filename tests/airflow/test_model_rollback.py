"""The model_rollback DAG under Airflow 3.3 (dag.test) on a real MLflow store in EPHEMERAL_HOME:
the champion goes back one promotion, and a model with nothing to go back to fails the run."""

from __future__ import annotations

from typing import Any

import pytest

from ephemeral import registry
from tests.airflow.conftest import task_states


@pytest.fixture
def rollback_dag(dagbag: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """From the tests' DAG folder (a link to dags/model_rollback.py): dag.test() runs only DAGs
    of the configured bundle."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return dagbag.get_dag("model_rollback")


def test_the_form_asks_for_the_model_with_the_reference_dag_as_default(rollback_dag: Any
                                                                        ) -> None:
    assert rollback_dag.params["model"] == "train_distributed"
    assert rollback_dag.default_args["retries"] == 0  # a retry would roll back twice
    assert rollback_dag.max_active_runs == 1


def test_the_dag_rolls_the_champion_back_then_fails_when_there_is_nothing_before(
        rollback_dag: Any, capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    name = "train_distributed"
    v1 = registry.register(name, model_uri="file:///models/td/1")
    v2 = registry.register(name, model_uri="file:///models/td/2")
    registry.promote(name, v1)
    registry.promote(name, v2)

    run = rollback_dag.test()  # the default param: the reference DAG's model
    assert str(run.state) == "success", task_states(run)
    assert registry.champion(name) == v1
    logs = caplog.text + "".join(capfd.readouterr())
    assert f"rolled back {name}: champion {v2} -> {v1}" in logs

    run = rollback_dag.test(run_conf={"model": name})
    assert str(run.state) == "failed"
    assert task_states(run) == {"rollback": "failed"}
    assert registry.champion(name) == v1
    logs = caplog.text + "".join(capfd.readouterr())
    assert f"model {name!r} has no previous champion" in logs
