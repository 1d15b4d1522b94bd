"""DAGs for the run report tests, on the in-memory backend (no processes): two clusters with
their own teardowns, mapped trials sized from their cluster, and a job that fails."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from ephemeral.airflow.operators import (
    CreateClusterOperator,
    DeleteClusterOperator,
    RayJobOperator,
)
from ephemeral.backends import ClusterHandle
from ephemeral.jobs.results import JobResult, JobStatus
from ephemeral.jobs.scaling import ddp_args
from ephemeral.notify import failure_callbacks
from ephemeral.trials import gpu_pool

START = datetime(2026, 1, 1)
SCALING = "{{ ddp_args(ti.xcom_pull(task_ids='create_ray')) }}"


class RecordedRayJob(RayJobOperator):
    """A RayJobOperator that submits nothing: it returns what a Ray job returns, with the
    entrypoint it rendered, so the report's wiring runs on the in-memory backend. The job
    fails when its entrypoint says ``--fail``."""

    def execute(self, context: Any) -> dict[str, Any]:
        handle = ClusterHandle.model_validate(self.cluster)
        index = context["ti"].map_index
        if "--fail" in self.entrypoint:
            raise RuntimeError("training diverged")
        return JobResult(job_id=f"raysubmit_{index}", cluster=handle.name, engine="ray",
                         status=JobStatus.SUCCEEDED, seconds=0.25,
                         result={"artifact_uri": f"file:///models/{index}.pt",
                                 "entrypoint": self.entrypoint}).model_dump(mode="json")


def clusters(dag_id: str, trials: list[str]) -> DAG:
    with DAG(dag_id=dag_id, schedule=None, start_date=START, catchup=False,
             default_args={"retries": 0, "on_failure_callback": failure_callbacks()},
             user_defined_macros={"ddp_args": ddp_args}) as dag:
        fake = {"backend": "fake", "deferrable": False, "poll_interval": 0.05}
        create_ray = CreateClusterOperator(task_id="create_ray", spec="ray/train-gpu@1", **fake)
        create_spark = CreateClusterOperator(task_id="create_spark", spec="spark/etl@1",
                                             profile="ci-cpu", overrides={"connect": False},
                                             **fake)
        runs = RecordedRayJob.partial(task_id="trial", cluster=create_ray.output,
                                      pool=gpu_pool()).expand(
            entrypoint=[f"python train_ddp.py {t} {SCALING}" for t in trials])

        @task
        def etl(handle: dict[str, Any]) -> str:
            return str(handle["name"])

        delete_ray = DeleteClusterOperator(task_id="delete_ray", setup_task_id="create_ray",
                                           cluster=create_ray.output)
        delete_spark = DeleteClusterOperator(task_id="delete_spark",
                                             setup_task_id="create_spark",
                                             cluster=create_spark.output)
        create_ray >> runs >> delete_ray.as_teardown(setups=create_ray)
        create_spark >> etl(create_spark.output) >> delete_spark.as_teardown(setups=create_spark)
    return dag


report_two_clusters = clusters("report_two_clusters", ["--lr 0.1", "--lr 0.02"])
report_job_fails = clusters("report_job_fails", ["--lr 0.1 --fail"])

__all__ = ["report_job_fails", "report_two_clusters"]
