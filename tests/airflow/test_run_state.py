"""A failed job must fail its run. Airflow 3.3 decides a run's state from its "effective
leaves", and a teardown with on_failure_fail_dagrun=True is one: when it is the only task after
the work, it hides the work's failure and the run ends `success`. Every DAG the project ships
keeps a leaf after each job that is not a teardown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ephemeral.airflow.operators import RayJobOperator
from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator

DAGS = Path(__file__).resolve().parents[2] / "dags"


def effective_leaves(dag: Any) -> set[str]:
    """The tasks whose states make the run's state (as DagRun._tis_for_dagrun_state)."""
    def leaf(task: Any) -> bool:
        for down in task.downstream_list:
            if not down.is_teardown or down.on_failure_fail_dagrun:
                return False
        return not task.is_teardown or task.on_failure_fail_dagrun

    return {t.task_id for t in dag.tasks if leaf(t)}


def shows_in_run_state(dag: Any, task: Any, leaves: set[str]) -> bool:
    """Whether a failure of ``task`` reaches a leaf other than a teardown."""
    seen, todo = set(), [task]
    while todo:
        t = todo.pop()
        if t.task_id in seen:
            continue
        seen.add(t.task_id)
        if t.task_id in leaves and not t.is_teardown:
            return True
        todo += [d for d in t.downstream_list if not d.is_teardown]
    return False


def shipped_dags() -> list[Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return [d for d in bag.dags.values() if any(t.is_teardown for t in d.tasks)]


@pytest.mark.usefixtures("airflow_db")
def test_every_job_of_a_shipped_dag_fails_its_run_when_it_fails() -> None:
    dags = shipped_dags()
    assert {d.dag_id for d in dags} >= {"train_distributed", "ray_job_adhoc",
                                        "per_dataset_clusters", "kubernetes_smoke"}
    hidden = []
    for dag in dags:
        leaves = effective_leaves(dag)
        for task in dag.tasks:
            is_job = isinstance(task, RayJobOperator | EphemeralSparkSubmitOperator) or \
                getattr(task, "operator_class", None) in (RayJobOperator, EphemeralSparkSubmitOperator)
            if is_job and not shows_in_run_state(dag, task, leaves):
                hidden.append(f"{dag.dag_id}.{task.task_id}")
    assert hidden == []


def test_the_rule_sees_a_hidden_failure() -> None:
    """The check itself: a job followed only by a failing-the-run teardown is caught."""
    from datetime import datetime

    from airflow.sdk import DAG

    from ephemeral.airflow.operators import CreateClusterOperator, DeleteClusterOperator

    with DAG("hidden", start_date=datetime(2026, 1, 1), schedule=None) as dag:
        create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu")
        job = RayJobOperator(task_id="job", cluster=create.output, entrypoint="python x.py")
        delete = DeleteClusterOperator(task_id="delete", setup_task_id="create")
        create >> job >> delete.as_teardown(setups=create, on_failure_fail_dagrun=True)
    assert effective_leaves(dag) == {"delete"}
    assert not shows_in_run_state(dag, dag.get_task("job"), effective_leaves(dag))
