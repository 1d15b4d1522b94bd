"""A ready cluster is noticed within its backend's probe interval, and the run report's
"starting" ends when it was seen ready, not when the setup task got to run again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ephemeral.airflow.triggers import ClusterReadyTrigger
from ephemeral.backends import ClusterHandle
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.backends.kubernetes.backend import KubernetesBackend
from ephemeral.backends.local.backend import LocalBackend
from ephemeral.backends.readiness import Readiness
from ephemeral.specs.identity import ClusterIdentity
from ephemeral.specs.resolve import resolve


def _pauses(wait: Readiness, n: int = 8) -> list[float]:
    return [round(next(wait._pauses), 3) for _ in range(n)]


def test_local_clusters_are_probed_at_least_every_half_second() -> None:
    assert LocalBackend.probe_interval == 0.5
    backend = InMemoryBackend()
    backend.probe_interval = LocalBackend.probe_interval
    handle = backend.create(resolve("ray/adhoc-cpu@1", "ci-cpu"),
                            identity=ClusterIdentity.manual("adhoc-cpu"))
    pauses = _pauses(Readiness.within(backend, handle, timeout=60))
    assert pauses[0] == 0.25
    assert max(pauses) == 0.5


def test_an_api_server_is_asked_less_often_and_a_set_interval_wins() -> None:
    assert KubernetesBackend.probe_interval == 2.0
    backend = InMemoryBackend()
    handle = backend.create(resolve("ray/adhoc-cpu@1", "ci-cpu"),
                            identity=ClusterIdentity.manual("adhoc-cpu"))
    assert max(_pauses(Readiness.within(backend, handle, timeout=60))) == 2.0
    assert max(_pauses(Readiness.within(backend, handle, timeout=60, poll_interval=1.0))) == 1.0


def test_the_trigger_says_when_it_saw_the_cluster_ready(monkeypatch: Any) -> None:
    backend = InMemoryBackend(ready_after_probes=2)
    backend.probe_interval = 0.01
    handle = backend.create(resolve("ray/adhoc-cpu@1", "ci-cpu"),
                            identity=ClusterIdentity.manual("adhoc-cpu"))
    monkeypatch.setattr("ephemeral.airflow.triggers.task_backend", lambda *_: backend)
    monkeypatch.setattr("ephemeral.airflow.triggers.refuse_across_processes", lambda *_: None)
    trigger = ClusterReadyTrigger(backend="fake", handle=handle.model_dump(mode="json"),
                                  timeout=30, poll_interval=0.01)
    before = time.time()

    async def first() -> Any:
        return await anext(trigger.run())

    event = asyncio.run(first()).payload
    assert event["status"] == "ready"
    assert before <= event["ready_ts"] <= time.time()

    from ephemeral.airflow.operators import CreateClusterOperator

    op = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu@1")
    later = op.execute_complete({}, event)
    assert ClusterHandle.model_validate(later).ready_ts == event["ready_ts"]
