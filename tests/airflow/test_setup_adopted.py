"""A setup try that adopted its cluster (an earlier try made it) does not delete it when its wait
fails or it is killed, in the worker, deferred or through the trigger's event: the rule of
``lifecycle.provision`` (``deletes_after_failure``). Clearing a work task clears its setup with
it, and the setup's new try adopts the cluster that other work of the run still runs on. A
cluster that failed itself (a node died) goes whoever made it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ephemeral.backends import ClusterHandle
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.specs import resolve
from tests.setups import setup_on, waiting_trigger


def _adopting(monkeypatch: pytest.MonkeyPatch, backend: InMemoryBackend,
              **kwargs: Any) -> tuple[Any, dict[str, Any], ClusterHandle]:
    """A setup whose cluster an earlier try of it made: its try adopts it."""
    from ephemeral.airflow.context import cluster_identity

    op, context = setup_on(monkeypatch, backend, **kwargs)
    first = backend.create(resolve("ray/adhoc-cpu", "ci-cpu"),
                           identity=cluster_identity(context, "adhoc-cpu"))
    return op, context, first


def _names(backend: InMemoryBackend) -> list[str]:
    return [h.name for h in backend.list_owned()]


def test_a_killed_try_that_adopted_the_cluster_leaves_it(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    from ephemeral.airflow.context import cluster_identity

    backend = InMemoryBackend()
    op, context, first = _adopting(monkeypatch, backend)
    # What execute has done when the kill comes: its create found the earlier try's cluster.
    op._created = backend.create(resolve("ray/adhoc-cpu", "ci-cpu"),
                                 identity=cluster_identity(context, "adhoc-cpu"))
    assert op._created.adopted
    op.on_kill()
    assert _names(backend) == [first.name]
    said = caplog.text + "".join(capfd.readouterr())
    assert "existed before this call (adopted): not deleted" in said


@pytest.mark.parametrize(("fail_nodes", "kept"), [(False, True), (True, False)])
def test_a_try_that_adopted_the_cluster_leaves_it_when_its_wait_fails_unless_it_failed(
        monkeypatch: pytest.MonkeyPatch, fail_nodes: bool, kept: bool) -> None:
    from ephemeral.errors import ClusterFailed, ReadinessTimeout

    backend = InMemoryBackend(ready_after_probes=10**9, fail_nodes=fail_nodes)
    op, context, first = _adopting(monkeypatch, backend, deferrable=False, ready_timeout=0.2,
                                   poll_interval=0.01)
    with pytest.raises(ClusterFailed if fail_nodes else ReadinessTimeout):
        op.execute(context)
    assert _names(backend) == ([first.name] if kept else [])


def test_a_deferred_try_tells_its_trigger_it_adopted_the_cluster(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    backend = InMemoryBackend(ready_after_probes=10**9)
    op, context, _ = _adopting(monkeypatch, backend, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    assert deferred.value.trigger.adopted is True


@pytest.mark.parametrize(("event", "kept"), [
    ({"status": "timeout", "error": "ReadinessTimeout", "adopted": True}, True),
    ({"status": "failed", "error": "ClusterFailed", "adopted": True}, False),
    ({"status": "timeout", "error": "ReadinessTimeout", "adopted": False}, False),
    ({"status": "timeout", "error": "ReadinessTimeout"}, False),  # an earlier version's event
])
def test_the_triggers_failure_event_follows_the_same_rule(
        monkeypatch: pytest.MonkeyPatch, event: dict[str, Any], kept: bool) -> None:
    from airflow.sdk.exceptions import AirflowException

    from ephemeral.airflow import operators

    backend = InMemoryBackend()
    op, context, first = _adopting(monkeypatch, backend)
    monkeypatch.setattr(operators, "task_backend", lambda *_a: backend)
    with pytest.raises(AirflowException, match="did not become ready"):
        op.execute_complete(context, {**event, "message": "no",
                                      "handle": first.model_dump(mode="json")})
    assert _names(backend) == ([first.name] if kept else [])


def test_a_killed_deferred_try_that_adopted_the_cluster_leaves_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.airflow.triggers import ClusterReadyTrigger

    backend = InMemoryBackend(ready_after_probes=10**9)
    made = waiting_trigger(monkeypatch, backend, "r1")
    _, kwargs = ClusterReadyTrigger(**{**made.serialize()[1], "adopted": True}).serialize()
    assert kwargs["adopted"] is True
    asyncio.run(ClusterReadyTrigger(**kwargs).on_kill())
    assert len(backend.list_owned()) == 1
    del kwargs["adopted"]  # serialized by an earlier version: as before, the kill deletes
    asyncio.run(ClusterReadyTrigger(**kwargs).on_kill())
    assert backend.list_owned() == []
