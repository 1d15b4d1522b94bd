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

    return check_wiring(dag)
