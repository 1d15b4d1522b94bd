"""A CreateClusterOperator run in-process on a given backend, its Airflow context faked; the
readiness trigger of a cluster made on such a backend."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.backends import ClusterBackend
from ephemeral.specs import ClusterIdentity, resolve


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


def waiting_trigger(monkeypatch: pytest.MonkeyPatch, backend: ClusterBackend,
                    run_id: str) -> Any:
    """A ClusterReadyTrigger waiting for a cluster (ray/adhoc-cpu, ci-cpu) that ``backend``
    made for task ``create`` of run ``run_id`` of DAG ``d``, run in this process."""
    import ephemeral.airflow.triggers as triggers

    handle = backend.create(resolve("ray/adhoc-cpu", "ci-cpu"), identity=ClusterIdentity(
        spec_name="adhoc-cpu", dag_id="d", run_id=run_id, task_id="create"))
    monkeypatch.setattr(triggers, "refuse_across_processes", lambda *a: None)  # one process
    monkeypatch.setattr(triggers, "task_backend", lambda name, conn=None: backend)
    return triggers.ClusterReadyTrigger(backend=backend.name,
                                        handle=handle.model_dump(mode="json"))
