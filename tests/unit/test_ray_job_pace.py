"""A Ray job followed in the worker (``RayJobs.follow``, ``RayJobOperator`` not deferred) reads
its status at the pace ``poll_interval`` caps, as its trigger does in the triggerer: it slept a
fixed 0.25 s, whatever the task said. The default stays 0.25 s, and the log stream's end (Ray
closes it as the job ends) cuts a long pause short."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.backends.base import Endpoints, make_handle
from ephemeral.jobs import ray_jobs
from ephemeral.jobs.ray_jobs import RayJobs
from ephemeral.jobs.results import JobResult, JobStatus
from ephemeral.specs import ClusterIdentity, resolve


class Job(RayJobs):
    """A job that runs for ``reads`` status reads, then succeeds; no HTTP."""

    def __init__(self, reads: int = 10) -> None:
        super().__init__("http://jobs.invalid:8265", cluster="c")
        self.left = reads

    def status(self, job_id: str, *, timeout: float = 0) -> JobStatus | None:
        self.left -= 1
        return JobStatus.RUNNING if self.left >= 0 else JobStatus.SUCCEEDED

    def logs(self, job_id: str) -> str:
        return ""


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(ray_jobs.time, "sleep", slept.append)
    return slept


def test_poll_interval_caps_the_pause_between_reads(pauses: list[float]) -> None:
    assert Job().follow("j1", poll_interval=5.0).ok
    assert pauses == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0]


def test_the_default_pace_stays_fast(pauses: list[float]) -> None:
    assert Job().follow("j1").ok
    assert max(pauses) == ray_jobs.FOLLOW_PAUSE == 0.25


def test_a_short_poll_interval_is_kept_too(pauses: list[float]) -> None:
    assert Job(reads=4).follow("j1", poll_interval=0.05).ok
    assert pauses == [0.05] * 4


def test_the_end_of_the_log_stream_cuts_a_long_pause_short() -> None:
    ended = threading.Event()

    class Streamed(Job):
        def status(self, job_id: str, *, timeout: float = 0) -> JobStatus | None:
            return JobStatus.SUCCEEDED if ended.is_set() else JobStatus.RUNNING

        @property
        def client(self) -> Any:
            async def tail_job_logs(_jid: str) -> AsyncIterator[str]:
                await asyncio.sleep(0.3)
                yield "done\n"
                ended.set()

            return SimpleNamespace(tail_job_logs=tail_job_logs)

    lines: list[str] = []
    started = time.monotonic()
    assert Streamed().follow("j1", sink=lines.append, poll_interval=30.0).ok
    assert time.monotonic() - started < 5
    assert lines == ["done"]


def test_the_operator_in_the_worker_passes_its_poll_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.airflow import operators

    handle = make_handle(resolve("ray/adhoc-cpu", "ci-cpu"),
                         ClusterIdentity.manual("adhoc-cpu", "pace"), backend="fake",
                         endpoints=Endpoints(dashboard="http://127.0.0.1:1"))
    followed: dict[str, Any] = {}

    def follow(jid: str, **kwargs: Any) -> JobResult:
        followed.update(kwargs)
        return JobResult(job_id=jid, cluster="c", engine="ray", status=JobStatus.SUCCEEDED,
                         seconds=1.0)

    jobs = SimpleNamespace(submit_or_attach=lambda *_a, **_k: ("j1", False), follow=follow)
    monkeypatch.setattr(operators, "job_target", lambda *_a: (None, handle))
    monkeypatch.setattr(operators.RayJobOperator, "_jobs", lambda *_a: jobs)
    context = {"ti": SimpleNamespace(xcom_push=lambda **_k: None, try_number=1, task_id="train",
                                     map_index=-1),
               "dag": SimpleNamespace(dag_id="d"), "run_id": "r"}
    op = operators.RayJobOperator(task_id="train", cluster=handle.model_dump(mode="json"),
                                  entrypoint="python t.py", deferrable=False, poll_interval=30)
    op.execute(context)
    assert followed["poll_interval"] == 30.0


def test_a_long_poll_interval_does_not_overrun_the_timeout(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """A job of timeout 3 s looked at every 60 s was stopped 60 s late: the last pause ends
    just past the deadline instead."""
    from ephemeral.errors import JobTimeout

    clock = [1000.0]
    monkeypatch.setattr(ray_jobs.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(ray_jobs.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    stopped: list[str] = []
    job = Job(reads=100)
    monkeypatch.setattr(job, "stop", stopped.append)
    with pytest.raises(JobTimeout, match="did not finish in 3s; it was stopped"):
        job.follow("j1", poll_interval=60.0, timeout=3.0)
    assert stopped == ["j1"]
    assert clock[0] - 1000.0 < 3.1  # not 3 + a pause of up to 60 s
