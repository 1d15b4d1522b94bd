"""Airflow fixtures: a migrated metadata database (once per session), DAG loading, and the one
live Airflow stack (PostgreSQL) that tests/airflow/live and tests/airflow/browser share."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ephemeral.devstack import Stack

HERE = Path(__file__).resolve().parent
FAULT_MATRIX = HERE / "live" / "test_fault_matrix.py"
STOPS_THE_STACK = HERE / "test_devstack_orphans.py"  # it stops the shared stack: the very last


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A real Airflow (``ephemeral.devstack`` on PostgreSQL) for every test of this package
    that asks for it: started once, stopped after the last of them (they run together, see
    below) with a check that no process of it or of its clusters is left."""
    from tests.airflow.live.stack import shared_stack, stop_and_check

    s = shared_stack(tmp_path_factory.mktemp("live-airflow"))
    s.start()  # stops what it started when it fails
    try:
        yield s
    finally:
        stop_and_check(s)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Within tests/airflow: tests without the shared stack first (the package's stack starts
    at the first test that asks for it and stops when the package ends, so it idles through
    none of them), then the stack's tests, the fault matrix (it kills and restarts
    components), and last the test that stops the stack. The order outside tests/airflow is
    left as it is."""
    places = [i for i, item in enumerate(items) if item.path.is_relative_to(HERE)]

    def rank(item: pytest.Item) -> int:
        if "stack" not in getattr(item, "fixturenames", ()):
            return 0
        return {FAULT_MATRIX: 2, STOPS_THE_STACK: 3}.get(item.path, 1)

    ordered = sorted((items[i] for i in places), key=rank)
    for i, item in zip(places, ordered, strict=True):
        items[i] = item


@pytest.fixture(scope="session", autouse=True)
def dag_policy() -> None:
    """The DAG policy (``ephemeral.airflow.policy``) registered as an install of the package
    registers it (its ``airflow.policy`` entry point), whatever the metadata of the installed
    package says: the tests' DAGs parse as a deployment parses them."""
    from airflow import settings

    from ephemeral.airflow import policy

    manager = settings.get_policy_plugin_manager()
    if not manager.is_registered(policy):
        manager.register(policy)


@pytest.fixture(scope="session")
def airflow_db() -> str:
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True,
                   env=dict(os.environ))
    return os.environ["AIRFLOW_HOME"]


@pytest.fixture
def dagbag(airflow_db: str) -> Any:
    """Parsed afresh for every test: dag.test(run_conf=...) leaves the conf in the DAG's params."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert bag.import_errors == {}
    return bag


def task_states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id + ("" if ti.map_index < 0 else f"[{ti.map_index}]"): str(ti.state)
            for ti in dag_run.get_task_instances()}
