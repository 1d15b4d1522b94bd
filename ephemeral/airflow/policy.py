"""Wiring checks on each finished DAG, run by Airflow when it parses the DAG's file (a cluster
policy, ``dag_policy``): mistakes an operator's constructor cannot see, since they show only
once every task and edge exists. A mistake fails the file's import, naming the task and the
fix, before any cluster is made.

Airflow loads this module through the ``airflow.policy`` entry point (pyproject.toml) in every
process that parses DAG files: the DAG processor, ``airflow dags test``, ``dag.test()``. A
policy in ``airflow_local_settings`` still runs too: every policy hook runs.
"""

from __future__ import annotations

import sys
from typing import Any

from airflow.policies import hookimpl

# Nothing else at import: Airflow loads policies while ``import airflow`` initializes, in
# every component.
OPERATORS = "ephemeral.airflow.operators"


@hookimpl
def dag_policy(dag: Any) -> None:
    # A DAG with our tasks imported their module: other DAGs cost nothing, and the DAG
    # processor does not import ephemeral for them.
    if OPERATORS not in sys.modules:
        return
    from airflow.exceptions import AirflowClusterPolicyViolation

    if problems := wiring_problems(dag):
        raise AirflowClusterPolicyViolation(f"DAG {dag.dag_id}: " + " ".join(problems))


def wiring_problems(dag: Any) -> list[str]:
    from ephemeral.airflow.release import check_wiring

    return [*setups_without_teardown(dag), *check_wiring(dag)]


def setups_without_teardown(dag: Any) -> list[str]:
    """Each ``CreateClusterOperator`` with no ``DeleteClusterOperator`` teardown right
    downstream (where ``as_teardown(setups=create)`` puts it). A plain deletion is
    upstream_failed when a task before it fails: the cluster then runs through the rest of the
    run, until the run-end listener (on the default backend) or the reaper finds it."""
    from ephemeral.airflow.operators import CreateClusterOperator, DeleteClusterOperator
    from ephemeral.airflow.release import is_a

    problems = []
    for setup in dag.tasks:
        if not is_a(setup, CreateClusterOperator):
            continue
        if any(t.is_teardown for t in setup.downstream_list if is_a(t, DeleteClusterOperator)):
            continue
        plain = sorted(t for t in setup.get_flat_relative_ids(upstream=False)
                       if is_a(dag.get_task(t), DeleteClusterOperator)
                       and not dag.get_task(t).is_teardown)
        one = len(plain) == 1
        said = (f" ({', '.join(plain)} {'is a plain task' if one else 'are plain tasks'}: "
                f"{'its' if one else 'their'} .as_teardown was left out)" if plain else "")
        problems.append(
            f"{setup.task_id} makes clusters but no DeleteClusterOperator is its teardown{said}. "
            "A plain task after a failed one is upstream_failed, and the cluster runs on until "
            f"the run ends. Wire one with .as_teardown(setups=...) naming {setup.task_id}: "
            "create >> work >> delete.as_teardown(setups=create).")
    return problems
