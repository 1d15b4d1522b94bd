"""DAGs wired wrongly in ways their shape shows: the DAG policy (ephemeral.airflow.policy)
refuses each when its file is parsed, so they live outside the tests' DAG folder. The release
cases are also what the job task refuses at run time (``release.check_last_use``), for a DAG
that changed after it was parsed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from ephemeral.airflow.operators import (
    CreateClusterOperator,
    DeleteClusterOperator,
    RayJobOperator,
)
from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator

START = datetime(2026, 1, 1)
FAKE = {"backend": "fake", "deferrable": False, "poll_interval": 0.05}

with DAG(dag_id="forgot_as_teardown", schedule=None, start_date=START, catchup=False,
         default_args={"retries": 0}) as forgot_as_teardown:
    # A plain deletion: upstream_failed when work fails, and the cluster runs on.
    create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu@1", profile="ci-cpu",
                                   **FAKE)

    @task
    def work(handle: dict[str, Any]) -> None:
        raise RuntimeError("the job failed")

    delete = DeleteClusterOperator(task_id="delete", cluster=create.output)
    work(create.output) >> delete

with DAG(dag_id="no_teardown", schedule=None, start_date=START, catchup=False,
         default_args={"retries": 0}) as no_teardown:
    CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu@1", profile="ci-cpu", **FAKE)

with DAG(dag_id="teardown_named_beyond_its_setups", schedule=None, start_date=START,
         catchup=False, default_args={"retries": 0}) as teardown_named_beyond_its_setups:
    # delete_a names create_a, upstream only through create_b, another teardown's setup: no
    # teardown of create_a's own, refused at parse. Its execute still takes create_a, as a DAG
    # changed after it was parsed needs (tests/airflow/test_teardown.py).
    create_a = CreateClusterOperator(task_id="create_a", spec="ray/adhoc-cpu@1",
                                     profile="ci-cpu", **FAKE)
    create_b = CreateClusterOperator(task_id="create_b", spec="ray/adhoc-cpu@1",
                                     profile="ci-cpu", **FAKE)
    delete_b = DeleteClusterOperator(task_id="delete_b")
    delete_a = DeleteClusterOperator(task_id="delete_a", setup_task_id="create_a")
    create_a >> create_b >> delete_b.as_teardown(setups=create_b)
    create_b >> delete_a

with DAG(dag_id="release_not_last", schedule=None, start_date=START, catchup=False,
         default_args={"retries": 0}) as release_not_last:
    # The Ray job claims to be the last, but a task beside it still takes the cluster.
    create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu@1", profile="ci-cpu",
                                   **FAKE)
    job = RayJobOperator(task_id="job", cluster=create.output, entrypoint="python x.py",
                         delete_cluster_on_success=True)

    @task
    def reads_endpoints(handle: dict[str, Any]) -> str:
        return str(handle["endpoints"]["dashboard"])

    delete = DeleteClusterOperator(task_id="delete", setup_task_id="create", cluster=create.output)
    create >> [job, reads_endpoints(create.output)] >> delete.as_teardown(setups=create)

with DAG(dag_id="release_mapped_on_one_cluster", schedule=None, start_date=START,
         catchup=False, default_args={"retries": 0}) as release_mapped_on_one_cluster:
    # Every map index shares the one cluster: none of them is its last work.
    create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu@1", profile="ci-cpu",
                                   **FAKE)
    trials = RayJobOperator.partial(task_id="trial", cluster=create.output,
                                    delete_cluster_on_success=True).expand(
        entrypoint=["python a.py", "python b.py"])
    delete = DeleteClusterOperator(task_id="delete", setup_task_id="create", cluster=create.output)
    create >> trials >> delete.as_teardown(setups=create)

with DAG(dag_id="release_spark_before_another", schedule=None, start_date=START,
         catchup=False, default_args={"retries": 0}) as release_spark_before_another:
    # Two applications in a row on one cluster; the first claims to be the last.
    create = CreateClusterOperator(task_id="create", spec="spark/etl@1", profile="ci-cpu",
                                   overrides={"connect": False}, **FAKE)
    first = EphemeralSparkSubmitOperator(task_id="first", cluster=create.output,
                                         application=__file__, delete_cluster_on_success=True)
    second = EphemeralSparkSubmitOperator(task_id="second", cluster=create.output,
                                          application=__file__)
    delete = DeleteClusterOperator(task_id="delete", setup_task_id="create", cluster=create.output)
    create >> first >> second >> delete.as_teardown(setups=create)

with DAG(dag_id="release_after_an_eager_task", schedule=None, start_date=START, catchup=False,
         default_args={"retries": 0}) as release_after_an_eager_task:
    # Both readers run before the job, but the task between starts once one of them is done:
    # the other could still use the cluster when the job deletes it.
    create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu@1", profile="ci-cpu",
                                   **FAKE)

    @task
    def reader(handle: dict[str, Any]) -> str:
        return str(handle["name"])

    @task(trigger_rule="one_success")
    def gather() -> None:
        return None

    job = RayJobOperator(task_id="job", cluster=create.output, entrypoint="python x.py",
                         delete_cluster_on_success=True)
    delete = DeleteClusterOperator(task_id="delete", setup_task_id="create", cluster=create.output)
    readers = [reader.override(task_id="fast")(create.output),
               reader.override(task_id="slow")(create.output)]
    readers >> gather() >> job >> delete.as_teardown(setups=create)

__all__ = ["forgot_as_teardown", "no_teardown", "release_after_an_eager_task",
           "release_mapped_on_one_cluster", "release_not_last", "release_spark_before_another",
           "teardown_named_beyond_its_setups"]
