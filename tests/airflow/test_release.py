"""``delete_cluster_on_success`` refused where the task is not its cluster's last user: the DAG's
parse refuses what its shape shows (tests/airflow/test_wiring.py), and the job task, before
submitting anything, refuses the rest and whatever a DAG changed since its parse shows, naming
what still uses the cluster; the teardown deletes the cluster as ever. Its accepted path runs
on real clusters in tests/airflow/test_dags.py (train_distributed, ray_job_adhoc,
per_dataset_clusters and job_fails set it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.airflow import wiring_cases
from tests.airflow.conftest import task_states

CASES = Path(__file__).parent / "dags" / "release_cases.py"


@pytest.fixture(scope="module")
def bag(airflow_db: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    found = DagBag(dag_folder=str(CASES))
    assert found.import_errors == {}
    return found


def test_a_job_given_another_handle_than_its_setups_may_not_release_it(
        bag: Any, ephemeral_home: Path, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    run = bag.get_dag("release_of_another_handle").test()
    states = task_states(run)
    assert states["job"] == "failed", states
    assert "its cluster argument is not what create pushed" in (caplog.text
                                                                + "".join(capfd.readouterr()))
    assert states["delete"] == "success", states


class _Ti:
    """What ``check_last_use`` asks of the running task instance: its id, its map index and
    the setup's XCom (an unmapped setup pushed at map index -1 only)."""

    def __init__(self, task_id: str, map_index: int, pushed: dict[str, Any]) -> None:
        self.task_id, self.map_index, self.pushed = task_id, map_index, pushed

    def xcom_pull(self, *, task_ids: str, map_indexes: int) -> Any:
        return self.pushed if map_indexes == -1 else None


@pytest.mark.parametrize(("dag", "task", "index", "message"), [
    (wiring_cases.release_not_last, "job", -1,
     "delete_cluster_on_success=True on job, but reads_endpoints also takes create's cluster c "
     "and does not run before it"),
    (wiring_cases.release_mapped_on_one_cluster, "trial", 1,
     "on trial[1], but its cluster c is not the output of a CreateClusterOperator directly "
     "upstream of it at the same map index"),
    (wiring_cases.release_spark_before_another, "first", -1,
     "delete_cluster_on_success=True on first, but second also takes create's cluster c"),
    (wiring_cases.release_after_an_eager_task, "job", -1,
     "gather (one_success) may start before all of their upstream tasks are done, so a task "
     "that uses create's cluster c could still be running"),
], ids=lambda v: getattr(v, "dag_id", None))
def test_the_job_refuses_at_run_time_what_the_parse_refuses(
        dag: Any, task: str, index: int, message: str) -> None:
    """A DAG that changed after it was parsed (its parse refuses these: test_wiring.py) is
    checked again by the job before it submits, with the same rule."""
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow.release import check_last_use
    from ephemeral.backends import ClusterHandle

    handle = ClusterHandle(name="c", backend="fake", engine="ray", spec_ref="ray/x@1",
                           spec_hash="h", created_at="2026-01-01T00:00:00Z",
                           expires_at="2026-01-01T06:00:00Z", labels={})
    context = {"dag": dag, "ti": _Ti(task, index, handle.model_dump(mode="json"))}
    with pytest.raises(AirflowFailException) as refused:
        check_last_use(dag.get_task(task), context, handle)
    assert message in str(refused.value)
