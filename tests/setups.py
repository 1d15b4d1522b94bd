"""A CreateClusterOperator run in-process on a given backend, its Airflow context faked."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.backends import ClusterBackend


def setup_on(monkeypatch: pytest.MonkeyPatch, backend: ClusterBackend,
             **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """The operator (spec ray/adhoc-cpu, profile ci-cpu, ``kwargs``) and a context to execute
    it in; its trigger, if it defers, is a plain namespace of its arguments."""
    from ephemeral.airflow import operators

    monkeypatch.setattr(operators, "resolve_target", lambda *_a: SimpleNamespace(
        backend=backend, instance=None, connection=None))
    monkeypatch.setattr(operators, "ClusterReadyTrigger", lambda **kw: SimpleNamespace(**kw))
    op = operators.CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu",
                                         profile="ci-cpu", **kwargs)
    context = {"ti": SimpleNamespace(xcom_push=lambda **_k: None, task_id="create",
                                     map_index=-1),
               "dag": SimpleNamespace(dag_id="d"), "run_id": "r"}
    return op, context
