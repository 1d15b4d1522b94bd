"""Airflow fixtures: a migrated metadata database (once per session) and DAG loading."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


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
