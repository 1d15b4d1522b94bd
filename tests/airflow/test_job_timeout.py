"""A job operator's job_timeout: seconds above 0 or empty, else the task fails naming it; a
deferred Ray job's timeout is a deadline its trigger keeps across a restart or a move."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from ephemeral.airflow.operators import job_timeout_seconds


@pytest.mark.parametrize(("value", "seconds"), [(None, None), ("", None), ("None", None),
                                                (90, 90.0), ("1.5", 1.5)])
def test_a_number_of_seconds_or_nothing(value: Any, seconds: float | None) -> None:
    assert job_timeout_seconds(value) == seconds


@pytest.mark.parametrize("value", ["abc", -5, 0, "nan", "inf", float("-inf"), True, [1]])
def test_anything_else_fails_naming_the_field(value: Any) -> None:
    with pytest.raises(AirflowFailException, match="job_timeout: "):
        job_timeout_seconds(value)


def _running_job_trigger(poll_interval: float = 0.05, **kwargs: Any) -> Any:
    """A RayJobTrigger of a job that runs on and on (its log stream stays open); stops are
    recorded in ``trigger.stops``."""
    from ephemeral.airflow.triggers import RayJobTrigger
    from ephemeral.jobs.results import JobStatus

    class Client:
        async def tail_job_logs(self, _jid: str) -> Any:
            await asyncio.sleep(3600)
            yield ""

    stops: list[str] = []
    jobs = SimpleNamespace(status=lambda _jid, timeout=None: JobStatus.RUNNING, client=Client(),
                           head=None, stop=stops.append)
    trigger = RayJobTrigger(handle={"name": "eph-x"}, backend="kubernetes", job_id="j1",
                            poll_interval=poll_interval, **kwargs)
    trigger._jobs = lambda: jobs
    trigger.stops = stops
    return trigger


def _first_event(trigger: Any) -> dict[str, Any]:
    async def first() -> Any:
        return await anext(trigger.run())

    return dict(asyncio.run(asyncio.wait_for(first(), timeout=10)).payload)


def test_the_job_timeout_is_a_deadline_that_survives_a_triggerer_restart() -> None:
    """The triggerer restarts (or the trigger moves) past the job's timeout: the trigger it
    makes from the serialized one stops the job at once rather than start the timeout over."""
    from ephemeral.airflow.triggers import RayJobTrigger

    deferred = _running_job_trigger(timeout=60.0)
    _, kwargs = deferred.serialize()
    assert kwargs["deadline"] == pytest.approx(time.time() + 60.0, abs=5)
    assert RayJobTrigger(**kwargs).deadline == kwargs["deadline"]
    kwargs["deadline"] -= 60.0  # a minute later, the triggerer is restarted
    restarted = _running_job_trigger(timeout=kwargs["timeout"], deadline=kwargs["deadline"])
    started = time.monotonic()
    event = _first_event(restarted)
    assert (event["status"], event["message"]) == ("TIMEOUT", "stopped after 60s")
    assert restarted.stops == ["j1"]
    assert time.monotonic() - started < 5


def test_a_trigger_serialized_without_a_deadline_counts_from_its_start() -> None:
    old = _running_job_trigger(timeout=0.3)
    _, kwargs = old.serialize()
    del kwargs["deadline"]  # as an earlier version serialized it
    again = _running_job_trigger(timeout=kwargs["timeout"])
    assert again.deadline == pytest.approx(time.time() + 0.3, abs=0.2)
    assert _first_event(again)["status"] == "TIMEOUT"
    assert _running_job_trigger().deadline is None  # no job_timeout: no deadline


def test_a_long_poll_interval_does_not_overrun_the_timeout() -> None:
    """Looked at every 60 s, a job of timeout 0.5 s was stopped a minute late."""
    started = time.monotonic()
    trigger = _running_job_trigger(poll_interval=60.0, timeout=0.5)
    assert _first_event(trigger)["status"] == "TIMEOUT"  # (_first_event waits 10 s at most)
    assert trigger.stops == ["j1"]
    assert time.monotonic() - started < 5
