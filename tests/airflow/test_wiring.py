"""The DAG policy (``ephemeral.airflow.policy``): wiring that only the finished DAG shows fails
the DAG file's import, before any cluster exists. The DAGs: tests/airflow/wiring_cases.py."""

from __future__ import annotations

import importlib
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.airflow import wiring_cases

ROOT = Path(__file__).resolve().parents[2]
NOT_A_TEARDOWN = ("no DeleteClusterOperator is its teardown", ".as_teardown(setups=...)")


@pytest.mark.parametrize(("dag", "said"), [
    (wiring_cases.forgot_as_teardown,
     ["create makes clusters", "(delete is a plain task: its .as_teardown was left out)",
      *NOT_A_TEARDOWN]),
    (wiring_cases.no_teardown, ["create makes clusters", *NOT_A_TEARDOWN]),
    (wiring_cases.teardown_named_beyond_its_setups,
     ["create_a makes clusters", "(delete_a is a plain task", *NOT_A_TEARDOWN]),
    (wiring_cases.release_not_last,
     ["delete_cluster_on_success=True on job, but reads_endpoints also takes create's cluster "
      "and does not run before it"]),
    (wiring_cases.release_mapped_on_one_cluster,
     ["delete_cluster_on_success=True on trial, but",
      "the map indexes of a mapped job share its cluster"]),
    (wiring_cases.release_spark_before_another,
     ["delete_cluster_on_success=True on first, but second also takes create's cluster"]),
    (wiring_cases.release_after_an_eager_task,
     ["delete_cluster_on_success=True on job, but gather (one_success) may start before all of "
      "their upstream tasks are done"]),
], ids=lambda v: getattr(v, "dag_id", None))
def test_a_wiring_mistake_fails_the_dag_policy(airflow_db: str, dag: Any,
                                               said: list[str]) -> None:
    from airflow import settings
    from airflow.exceptions import AirflowClusterPolicyViolation

    with pytest.raises(AirflowClusterPolicyViolation) as refused:
        settings.dag_policy(dag)  # every registered policy, as the DagBag calls them
    message = str(refused.value)
    assert message.startswith(f"DAG {dag.dag_id}: ")
    for part in said:
        assert part in message


def test_the_refusal_is_the_dag_files_import_error(airflow_db: str, tmp_path: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    shutil.copy(Path(wiring_cases.__file__), tmp_path / "cases.py")
    bag = DagBag(dag_folder=str(tmp_path))
    assert not set(bag.dags) & set(wiring_cases.__all__)  # none of them is scheduled
    [error] = bag.import_errors.values()
    assert "AirflowClusterPolicyViolation" in error


def test_a_parse_check_passes_a_release_it_cannot_judge(airflow_db: str) -> None:
    """A job given a handle another task made from the setup's: which cluster it is shows only
    when the run gives it; the job's run-time check refuses it (test_release.py)."""
    from ephemeral.airflow.policy import wiring_problems
    from tests.airflow.dags.release_cases import release_of_another_handle

    assert wiring_problems(release_of_another_handle) == []


def test_the_policy_is_declared_for_airflow_to_load(airflow_db: str) -> None:
    """What an install registers: the entry point's module, as Airflow's plugin manager loads
    it (``load_setuptools_entrypoints("airflow.policy")``)."""
    import pluggy
    from airflow import policies

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [(name, module)] = project["entry-points"]["airflow.policy"].items()
    manager = pluggy.PluginManager("airflow.policy")
    manager.add_hookspecs(policies)
    manager.register(importlib.import_module(module), name=name)
    assert [i.plugin_name for i in manager.hook.dag_policy.get_hookimpls()] == [name]
