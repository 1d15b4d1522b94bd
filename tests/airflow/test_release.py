"""``delete_cluster_on_success`` refused where the task is not its cluster's last user: the job
task fails before submitting anything, naming what still uses the cluster, and the teardown
deletes the cluster as ever. Its accepted path runs on real clusters in tests/airflow/test_dags.py
(train_distributed, ray_job_adhoc, per_dataset_clusters and job_fails set it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.airflow.conftest import task_states

CASES = Path(__file__).parent / "dags" / "release_cases.py"


@pytest.fixture(scope="module")
def bag(airflow_db: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    found = DagBag(dag_folder=str(CASES))
    assert found.import_errors == {}
    return found


@pytest.mark.parametrize(("dag_id", "refused", "message"), [
    ("release_not_last", ["job"],
     "delete_cluster_on_success=True on job, but reads_endpoints also takes create's cluster"),
    ("release_mapped_on_one_cluster", ["trial[0]", "trial[1]"],
     "the map indexes of a mapped job share its cluster"),
    ("release_spark_before_another", ["first"],
     "delete_cluster_on_success=True on first, but second also takes create's cluster"),
    ("release_after_an_eager_task", ["job"],
     "gather (one_success) may start before all of their upstream tasks are done"),
    ("release_of_another_handle", ["job"],
     "its cluster argument is not what create pushed"),
])
def test_a_task_that_is_not_the_last_user_may_not_release_the_cluster(
        bag: Any, dag_id: str, refused: list[str], message: str, ephemeral_home: Path,
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    run = bag.get_dag(dag_id).test()
    states = task_states(run)
    for task in refused:
        assert states[task] == "failed", states
    assert message in caplog.text + "".join(capfd.readouterr())
    assert states["delete"] == "success", states
