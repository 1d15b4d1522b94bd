"""DAGs of the fault matrix (tests/airflow/live/test_fault_matrix.py): one cluster per run, the
job's entrypoint taken from the run's conf so one DAG serves several faults."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task

from ephemeral.airflow.operators import (
    CreateClusterOperator,
    DeleteClusterOperator,
    RayJobOperator,
)
from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator

START = datetime(2026, 1, 1)
SMALL = {"workers": {"replicas": 1}}
HELLO = "python -c \"print('{\\\"ok\\\": 1}')\""
ENTRYPOINT = "{{ dag_run.conf.get('entrypoint') or params.hello }}"


def _dag(dag_id: str, retries: int = 0) -> DAG:
    return DAG(dag_id=dag_id, schedule=None, start_date=START, catchup=False,
               max_active_runs=8, params={"hello": HELLO},
               default_args={"retries": retries, "retry_delay": timedelta(seconds=1)})


def _create(engine: str) -> CreateClusterOperator:
    spec = "ray/adhoc-cpu@1" if engine == "ray" else "spark/etl@1"
    # One retry: on this shared 2-core host a Ray node sometimes times out while starting; the
    # faults under test come later. (A run marked failed is not retried.)
    return CreateClusterOperator(task_id="create", spec=spec, profile="ci-cpu", overrides=SMALL,
                                 poll_interval=0.5, retries=1)


def _teardown(create: CreateClusterOperator, cls: type[DeleteClusterOperator]
              = DeleteClusterOperator, **kwargs: Any) -> Any:
    return cls(task_id="delete", setup_task_id="create", cluster=create.output,
               **kwargs).as_teardown(setups=create, on_failure_fail_dagrun=True)


# Ray: create -> job -> delete. Faults 1, 3, 5 and 7.
with _dag("fm_ray") as fm_ray:
    ray_create = _create("ray")
    ray_work = RayJobOperator(task_id="work", cluster=ray_create.output, entrypoint=ENTRYPOINT,
                              poll_interval=0.5)
    ray_create >> ray_work >> _teardown(ray_create)

# Spark: create -> delete, the run marked failed while the setup waits (fault 1).
with _dag("fm_spark") as fm_spark:
    spark_create = _create("spark")
    spark_create >> _teardown(spark_create)


# Spark: create -> a slow application -> delete. The master is killed mid-job (fault 5).
SLOW_SPARK = str(Path(__file__).resolve().parents[1] / "apps" / "slow_spark.py")
with _dag("fm_spark_job") as fm_spark_job:
    spark_job_create = _create("spark")
    spark_job = EphemeralSparkSubmitOperator(
        task_id="work", cluster=spark_job_create.output, application=SLOW_SPARK,
        application_args=["{{ dag_run.conf.get('seconds', 30) }}"])
    spark_job_create >> spark_job >> _teardown(spark_job_create)


@task
def hold(**context: Any) -> None:
    """Keeps the teardown waiting (it waits for every task in its scope) until the test has
    asked the Jobs API, or for two minutes."""
    release = Path(context["dag_run"].conf.get("release", "/nonexistent"))
    deadline = time.monotonic() + 120
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.5)


# Fault 2: the job task is marked failed; its on_kill stops the Ray job while `hold` keeps the
# cluster up long enough for the test to see the job STOPPED in the Jobs API.
with _dag("fm_ray_job_marked_failed") as fm_ray_job_marked_failed:
    hold_create = _create("ray")
    hold_work = RayJobOperator(task_id="work", cluster=hold_create.output,
                               entrypoint=ENTRYPOINT, poll_interval=0.5)
    hold_create >> [hold_work, hold()] >> _teardown(hold_create)


class FailsOnce(DeleteClusterOperator):
    """A teardown whose first try fails as a backend outage would, before deleting anything."""

    def execute(self, context: Any) -> dict[str, Any]:
        if context["ti"].try_number == 1:
            raise RuntimeError("backend unavailable (injected on try 1)")
        return super().execute(context)


# Faults 4 and 6 in one run: the scheduler is killed while the job runs, then the teardown fails
# once and its retry deletes the cluster.
with _dag("fm_teardown_fails_once") as fm_teardown_fails_once:
    once_create = _create("ray")
    once_work = RayJobOperator(task_id="work", cluster=once_create.output,
                               entrypoint=ENTRYPOINT, poll_interval=0.5)
    once_create >> once_work >> _teardown(once_create, FailsOnce, retries=1,
                                          retry_delay=timedelta(seconds=1))
