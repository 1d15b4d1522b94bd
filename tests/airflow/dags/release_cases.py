"""DAGs for ``delete_cluster_on_success`` where it must be refused before a job is submitted:
on the in-memory backend, since a refused job reaches no engine. Those whose shape alone shows
it fail to parse: they are in tests/airflow/wiring_cases.py."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from ephemeral.airflow.operators import (
    CreateClusterOperator,
    DeleteClusterOperator,
    RayJobOperator,
)

START = datetime(2026, 1, 1)
FAKE = {"backend": "fake", "deferrable": False, "poll_interval": 0.05}

with DAG(dag_id="release_of_another_handle", schedule=None, start_date=START, catchup=False,
         default_args={"retries": 0}) as release_of_another_handle:
    # The job's cluster has the setup's name but points elsewhere (another namespace).
    create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu@1", profile="ci-cpu",
                                   **FAKE)

    @task
    def elsewhere(handle: dict[str, Any]) -> dict[str, Any]:
        return {**handle, "namespace": "someone-else"}

    moved = elsewhere(create.output)
    job = RayJobOperator(task_id="job", cluster=moved, entrypoint="python x.py",
                         delete_cluster_on_success=True)
    delete = DeleteClusterOperator(task_id="delete", setup_task_id="create", cluster=create.output)
    create >> job >> delete.as_teardown(setups=create)

__all__ = ["release_of_another_handle"]
