"""per_dataset_clusters: N independent clusters in one run, one per dataset.

A mapped task group gives every dataset its own setup -> training -> teardown. A failure in one
group leaves the others alone and still tears its own cluster down (mapping the setups directly
would upstream-fail every index's work when one setup fails).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, task, task_group

from ephemeral.airflow.operators import (
    CreateClusterOperator,
    DeleteClusterOperator,
    RayJobOperator,
)
from ephemeral.jobs.artifacts import run_folder
from ephemeral.notify import failure_callbacks

JOBS = str(Path(__file__).resolve().parent.parent / "jobs")

with DAG(
    dag_id="per_dataset_clusters",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 0, "on_failure_callback": failure_callbacks()},
    params={"datasets": Param(["eu", "us"], type="array", items={"type": "string",
                                                                  "pattern": "^[a-z0-9-]+$"},
                              minItems=1, maxItems=16),
            "profile": Param("ci-cpu", type=["null", "string"], enum=[None, "ci-cpu"])},
    tags=["ephemeral", "example"],
) as dag:

    @task
    def datasets(params: dict | None = None) -> list[str]:  # type: ignore[type-arg]
        return list((params or {})["datasets"])

    @task
    def entrypoint(dataset: str, dag: Any = None, run_id: str | None = None) -> list[str]:
        # argv: the dataset (a param) is one quoted word, never shell text.
        return ["python", "train_ddp.py", "--run", f"{run_folder(dag.dag_id, str(run_id))}/{dataset}",
                "--num-workers", "1", "--steps", "100", "--checkpoint-every", "1000"]

    @task
    def trained(result: dict) -> dict:  # type: ignore[type-arg]
        """The training job's result, as a leaf the run's state follows (a teardown with
        on_failure_fail_dagrun is a leaf too and would hide a failed job)."""
        return result

    @task_group
    def per_dataset(dataset: str) -> None:
        create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu@1",
                                       profile="{{ params.profile }}",
                                       overrides={"workers": {"replicas": 1}})
        # One cluster per dataset, deleted the moment its training succeeds.
        train = RayJobOperator(task_id="train", cluster=create.output, working_dir=JOBS,
                               entrypoint=entrypoint(dataset), delete_cluster_on_success=True)
        delete = DeleteClusterOperator(task_id="delete", setup_task_id="per_dataset.create",
                                       cluster=create.output)
        create >> train >> delete.as_teardown(setups=create, on_failure_fail_dagrun=True)
        trained(train.output)  # a leaf after the work: its failure fails the run

    per_dataset.expand(dataset=datasets())
