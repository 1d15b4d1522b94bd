"""A trigger's on_kill acts on a user's kill, not on Airflow moving the trigger to another
triggerer (apache/airflow#73454: the same cancel, while the task is still deferred). The state
read is replaced here; tests/airflow/live/test_live_stack.py moves a live trigger for real."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.backends.fake import InMemoryBackend
from tests.setups import waiting_trigger

TI = SimpleNamespace(dag_id="d", run_id="r1", task_id="create", map_index=-1)


def _state_is(monkeypatch: pytest.MonkeyPatch, state: str | Exception) -> list[Any]:
    import ephemeral.airflow.trigger_moves as moves

    asked: list[Any] = []

    def read(ti: Any) -> str:
        asked.append(ti)
        if isinstance(state, Exception):
            raise state
        return state

    monkeypatch.setattr(moves, "_state", read)
    return asked


def _setup_trigger(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, InMemoryBackend]:
    backend = InMemoryBackend(ready_after_probes=10**9)
    trigger = waiting_trigger(monkeypatch, backend, "r1")
    trigger.task_instance = TI
    return trigger, backend


def test_a_moved_setup_wait_deletes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _state_is(monkeypatch, "deferred")
    trigger, backend = _setup_trigger(monkeypatch)
    asyncio.run(trigger.on_kill())
    assert asked == [TI]
    assert len(backend.list_owned()) == 1


@pytest.mark.parametrize("state", ["failed", "success", "scheduled", "up_for_retry",
                                   RuntimeError("API server down")])
def test_a_killed_setup_wait_deletes_its_cluster(monkeypatch: pytest.MonkeyPatch,
                                                 state: str | Exception) -> None:
    """Marked failed or success, cleared (the task is scheduled again), or not known: a kill."""
    _state_is(monkeypatch, state)
    trigger, backend = _setup_trigger(monkeypatch)
    asyncio.run(trigger.on_kill())
    assert backend.list_owned() == []


def test_in_dag_test_there_is_no_task_instance_and_a_kill_is_a_kill(
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _state_is(monkeypatch, "deferred")
    trigger, backend = _setup_trigger(monkeypatch)
    trigger.task_instance = None
    asyncio.run(trigger.on_kill())
    assert asked == []
    assert backend.list_owned() == []


@pytest.mark.parametrize(("state", "stopped"), [("deferred", []), ("failed", ["raysubmit_1"])])
def test_a_moved_job_wait_does_not_stop_the_job(monkeypatch: pytest.MonkeyPatch, state: str,
                                                stopped: list[str]) -> None:
    import ephemeral.airflow.triggers as triggers

    _state_is(monkeypatch, state)
    monkeypatch.setattr(triggers, "refuse_across_processes", lambda *a: None)
    calls: list[str] = []
    trigger = triggers.RayJobTrigger(handle={"name": "c"}, backend="fake", job_id="raysubmit_1")
    monkeypatch.setattr(trigger, "_jobs", lambda: SimpleNamespace(stop=calls.append))
    trigger.task_instance = SimpleNamespace(dag_id="d", run_id="r1", task_id="work",
                                            map_index=2)
    asyncio.run(trigger.on_kill())
    assert calls == stopped


@pytest.mark.parametrize(("map_index", "key"), [(-1, "work"), (3, "work_3")])
def test_the_state_is_read_for_the_triggers_own_task_instance(
        monkeypatch: pytest.MonkeyPatch, map_index: int, key: str) -> None:
    """Airflow's execution API answers {run_id: {task_id or task_id_<map index>: state}}."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    from ephemeral.airflow.trigger_moves import _state

    asked: list[dict[str, Any]] = []

    def states(**kw: Any) -> dict[str, dict[str, str]]:
        asked.append(kw)
        return {"r1": {key: "deferred", "work_9": "failed"}}

    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states", staticmethod(states))
    ti = SimpleNamespace(dag_id="d", run_id="r1", task_id="work", map_index=map_index)
    assert _state(ti) == "deferred"
    assert asked == [{"dag_id": "d", "task_ids": ["work"], "run_ids": ["r1"],
                      "map_index": map_index}]
