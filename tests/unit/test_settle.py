"""A trigger run by the triggerer holds its event until its deferral has settled, so Airflow
3.3 does not take the executor's late report of the deferral's exit for a task that died
(ephemeral.airflow.settle). In line (``dag.test()``), and once settled, nothing is held."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.airflow.settle import LONGEST, MARGIN, settles_at
from ephemeral.airflow.triggers import ClusterReadyTrigger
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.specs.identity import ClusterIdentity
from ephemeral.specs.resolve import resolve


@pytest.mark.parametrize(("interval", "hold"), [("1", 1 + MARGIN), ("5", 5 + MARGIN),
                                                 ("0", MARGIN), ("600", LONGEST)])
def test_a_deferral_settles_after_the_workers_wake_up_interval(
        monkeypatch: pytest.MonkeyPatch, interval: str, hold: float) -> None:
    monkeypatch.setenv("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", interval)
    assert settles_at(1000.0) == 1000.0 + hold


def ready_trigger(monkeypatch: pytest.MonkeyPatch, settle: float | None) -> ClusterReadyTrigger:
    """A setup's trigger on a cluster that is ready at the first look."""
    backend = InMemoryBackend(ready_after_probes=0)
    handle = backend.create(resolve("ray/adhoc-cpu@1", "ci-cpu"),
                            identity=ClusterIdentity.manual("adhoc-cpu"))
    monkeypatch.setattr("ephemeral.airflow.triggers.task_backend", lambda *_: backend)
    monkeypatch.setattr("ephemeral.airflow.triggers.refuse_across_processes", lambda *_: None)
    trigger = ClusterReadyTrigger(backend="fake", handle=handle.model_dump(mode="json"),
                                  timeout=30, poll_interval=0.01, settles_at=settle)
    return ClusterReadyTrigger(**trigger.serialize()[1])  # as the triggerer makes it


def first_event(trigger: ClusterReadyTrigger) -> tuple[dict[str, Any], float]:
    """The trigger's first event and when it came (epoch seconds)."""
    async def first() -> Any:
        return await anext(trigger.run())

    event = asyncio.run(first())
    return dict(event.payload), time.time()


def for_a_task(trigger: ClusterReadyTrigger) -> ClusterReadyTrigger:
    trigger.task_instance = SimpleNamespace(task_id="create")  # what the triggerer sets
    return trigger


def test_the_triggerer_holds_an_event_until_the_deferral_has_settled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    settle = time.time() + 1.5
    event, at = first_event(for_a_task(ready_trigger(monkeypatch, settle)))
    assert event["status"] == "ready"
    assert at >= settle
    assert event["ready_ts"] < settle - 1.0  # seen ready at once; only the event waited


def test_nothing_is_held_in_line_once_settled_or_for_an_earlier_trigger(
        monkeypatch: pytest.MonkeyPatch) -> None:
    start = time.time()
    cases = {
        "dag.test() runs it in line": ready_trigger(monkeypatch, start + 20),
        "settled before the trigger ran": for_a_task(ready_trigger(monkeypatch, start - 1)),
        "serialized before settles_at existed": for_a_task(ready_trigger(monkeypatch, None)),
    }
    for case, trigger in cases.items():
        t0 = time.time()
        event, at = first_event(trigger)
        assert event["status"] == "ready", case
        assert at - t0 < 1.0, case


def in_line(trigger: Any) -> Any:
    """The trigger run as ``dag.test()`` and ``airflow dags/tasks test`` run it: Airflow's own
    in-line runner (``asyncio.run`` of the trigger's first event)."""
    import uuid

    from airflow.sdk.definitions.dag import _run_inline_trigger

    return _run_inline_trigger(trigger, SimpleNamespace(id=uuid.uuid4()))


def test_in_line_the_event_is_taken_and_nothing_is_killed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio.run closes the generator after its first event with a cancel: that is no kill
    (it stopped finished Ray jobs and went for the ready cluster of every dag.test setup)."""
    trigger = ready_trigger(monkeypatch, settle=None)
    kills: list[str] = []

    async def on_kill() -> None:
        kills.append("on_kill")

    monkeypatch.setattr(trigger, "on_kill", on_kill)
    event = in_line(trigger)
    assert event.payload["status"] == "ready"
    assert kills == []


def test_in_line_ctrl_c_before_the_event_is_a_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during the wait: no triggerer calls on_kill in line, so the trigger does, and
    the setup's cluster is deleted (the wait would otherwise end with it left running)."""
    import os
    import signal
    import threading

    from tests.setups import waiting_trigger

    backend = InMemoryBackend(ready_after_probes=10**6)  # never ready
    trigger = waiting_trigger(monkeypatch, backend, "r1")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        in_line(trigger)
    assert backend.list_owned() == []
