"""The reap_orphans DAG notifies when it fails, as every reference DAG does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

DAG_FILE = Path(__file__).parents[2] / "dags" / "reap_orphans.py"


def quiet(_context: dict[str, Any]) -> None:
    """A notifier that tells nobody."""


def parse(monkeypatch: pytest.MonkeyPatch, notifier: str | None) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    if notifier:
        monkeypatch.setenv("EPHEMERAL_NOTIFIER", notifier)
    else:
        monkeypatch.delenv("EPHEMERAL_NOTIFIER", raising=False)
    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    return bag.get_dag("reap_orphans").get_task("reap")


def test_a_failed_reap_notifies_through_the_deployments_notifier(
        airflow_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    task = parse(monkeypatch, f"{__name__}.quiet")
    callbacks = task.on_failure_callback
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    assert [c.__qualname__ for c in callbacks if c] == ["failure_callbacks.<locals>.on_failure"]
    assert not parse(monkeypatch, None).on_failure_callback  # no notifier: no callback
