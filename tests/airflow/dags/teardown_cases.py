"""Teardowns that must find every cluster of their setup in the run: a mapped setup, a task
group's prefixed ids, a handle list. On the in-memory backend: no engine runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, TaskGroup

from ephemeral.airflow.operators import CreateClusterOperator, DeleteClusterOperator

START = datetime(2026, 1, 1)
FAKE = {"backend": "fake", "deferrable": False, "poll_interval": 0.05}


def _mapped_setup() -> Any:
    return CreateClusterOperator.partial(task_id="create", spec="ray/adhoc-cpu@1",
                                         **FAKE).expand(profile=["ci-cpu", "ci-cpu"])


with DAG(dag_id="teardown_mapped_no_handle", schedule=None, start_date=START, catchup=False,
         default_args={"retries": 0}) as teardown_mapped_no_handle:
    create = _mapped_setup()
    delete = DeleteClusterOperator(task_id="delete", setup_task_id="create")
    create >> delete.as_teardown(setups=create)

with DAG(dag_id="teardown_mapped_handles", schedule=None, start_date=START, catchup=False,
         default_args={"retries": 0}) as teardown_mapped_handles:
    create = _mapped_setup()
    delete = DeleteClusterOperator(task_id="delete", cluster=create.output)
    create >> delete.as_teardown(setups=create)

with DAG(dag_id="teardown_mapped_per_index", schedule=None, start_date=START, catchup=False,
         default_args={"retries": 0}) as teardown_mapped_per_index:
    create = _mapped_setup()
    delete = DeleteClusterOperator.partial(task_id="delete").expand(cluster=create.output)
    create >> delete.as_teardown(setups=create)

with DAG(dag_id="teardown_in_group", schedule=None, start_date=START, catchup=False,
         default_args={"retries": 0}) as teardown_in_group:
    with TaskGroup("g"):
        create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu@1",
                                       profile="ci-cpu", **FAKE)
        delete = DeleteClusterOperator(task_id="delete", cluster=create.output)
        create >> delete.as_teardown(setups=create)

with DAG(dag_id="teardown_unprefixed_mapped", schedule=None, start_date=START, catchup=False,
         default_args={"retries": 0}) as teardown_unprefixed_mapped:
    # A mapped teardown has no parse-time check (Airflow's own as_teardown): refused at execute.
    with TaskGroup("g"):
        create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu@1",
                                       profile="ci-cpu", **FAKE)
        delete = DeleteClusterOperator.partial(task_id="delete", setup_task_id="create").expand(
            cluster=[create.output])
        create >> delete.as_teardown(setups=create)

with DAG(dag_id="teardown_mapped_after_a_failed_setup", schedule=None, start_date=START,
         catchup=False, default_args={"retries": 0}) as teardown_mapped_after_a_failed_setup:
    # create[0] fails (no such profile) and pushes nothing: Airflow expands the teardown over
    # the one handle pushed, so delete[0] gets create[1]'s.
    create = CreateClusterOperator.partial(task_id="create", spec="ray/adhoc-cpu@1",
                                           **FAKE).expand(profile=["no-such-profile", "ci-cpu"])
    delete = DeleteClusterOperator.partial(task_id="delete").expand(cluster=create.output)
    create >> delete.as_teardown(setups=create)
