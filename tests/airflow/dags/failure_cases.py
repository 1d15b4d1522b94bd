"""DAGs for the failure tests: each is a small cluster lifecycle that goes wrong on purpose."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task

from ephemeral.airflow.operators import (
    CreateClusterOperator,
    DeleteClusterOperator,
    RayJobOperator,
)

SMALL_RAY = {"workers": {"replicas": 1}}
START = datetime(2026, 1, 1)


def lifecycle(dag_id: str, *, entrypoint: str = "python -c \"print('{\\\"ok\\\": 1}')\"",
              setup: dict[str, Any] | None = None, release: bool = False,
              **dag_args: Any) -> DAG:
    with DAG(dag_id=dag_id, schedule=None, start_date=START, catchup=False,
             default_args={"retries": 0}, **dag_args) as dag:
        create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu@1", profile="ci-cpu",
                                       **({"overrides": SMALL_RAY} | (setup or {})))
        work = RayJobOperator(task_id="work", cluster=create.output, entrypoint=entrypoint,
                              delete_cluster_on_success=release)
        delete = DeleteClusterOperator(task_id="delete", setup_task_id="create",
                                       cluster=create.output)
        create >> work >> delete.as_teardown(setups=create)
    return dag


# A failed job keeps its cluster for a retry, delete_cluster_on_success or not: the teardown
# deletes it.
job_fails = lifecycle("job_fails", entrypoint="python -c \"print('training diverged'); "
                                              "raise SystemExit(5)\"", release=True)
setup_times_out = lifecycle("setup_times_out", setup={"ready_timeout": 0.5,
                                                      "poll_interval": 0.2})
setup_bad_input = lifecycle("setup_bad_input", setup={"overrides": {"workers": {"replicas": 0}}})
happy_path = lifecycle("happy_path")
# A job that outlasts the test: the run is stopped by Ctrl-C while the job's wait runs in line.
interrupted = lifecycle("interrupted", entrypoint="python -c \"import time; time.sleep(600)\"")

def fail_first_try(context: Any, result: Any = None) -> None:
    if context["ti"].try_number == 1:
        raise RuntimeError("publishing failed after the job succeeded")


with DAG(dag_id="release_then_retry", schedule=None, start_date=START, catchup=False,
         default_args={"retries": 0}) as release_then_retry:
    # The job succeeds and releases its cluster, then the task fails after it (its
    # post_execute): the retry must return the job's result, not reach for the gone cluster.
    create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu@1", profile="ci-cpu",
                                   overrides=SMALL_RAY)
    work = RayJobOperator(task_id="work", cluster=create.output,
                          entrypoint="python -c \"print('{\\\"ok\\\": 1}')\"",
                          delete_cluster_on_success=True, post_execute=fail_first_try,
                          retries=1, retry_delay=timedelta(seconds=0))
    delete = DeleteClusterOperator(task_id="delete", setup_task_id="create", cluster=create.output)
    create >> work >> delete.as_teardown(setups=create)

with DAG(dag_id="xcom_too_big", schedule=None, start_date=START, catchup=False,
         default_args={"retries": 0}) as xcom_too_big:
    @task
    def big() -> str:
        return "x" * 100_000

    @task
    def small() -> dict[str, str]:
        return {"artifact_uri": "file:///tmp/a", "job_id": "raysubmit_1"}

    big()
    small()



# The Kubernetes backend configured from an Airflow connection (the tests point it at the
# strict API mock): setup, a check of the handle, teardown.
with DAG(dag_id="kubernetes_via_connection", schedule=None, start_date=START, catchup=False,
         default_args={"retries": 0}) as kubernetes_via_connection:
    k8s_create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu@1", profile="ci-cpu",
                                       overrides=SMALL_RAY, kubernetes_conn_id="k8s_test",
                                       poll_interval=0.1)

    @task
    def check(handle: dict[str, Any]) -> str:
        if handle["backend"] != "kubernetes":
            raise ValueError(f"not a Kubernetes cluster: {handle}")
        return str(handle["endpoints"]["dashboard"])

    k8s_delete = DeleteClusterOperator(task_id="delete", setup_task_id="create",
                                       cluster=k8s_create.output, kubernetes_conn_id="k8s_test")
    k8s_create >> check(k8s_create.output) >> k8s_delete.as_teardown(setups=k8s_create)

__all__ = ["happy_path", "job_fails", "kubernetes_via_connection", "release_then_retry",
           "setup_bad_input", "setup_times_out", "xcom_too_big"]
