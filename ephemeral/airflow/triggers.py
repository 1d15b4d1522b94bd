"""Triggers: waiting for a cluster to be ready, and for a Ray job to end, in the triggerer, so
no worker slot is held while pods pull images or a job trains.

Both stop their external work in ``on_kill`` (a user marked the deferred task failed, success
or cleared it): the cluster is deleted, the job stopped. Both time out by themselves and say so
in their event, so the operator can clean up: Airflow's own deferral timeout fails the task
without calling it back, which would leak the cluster of a failed setup.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from ephemeral.airflow.backends import task_backend
from ephemeral.backends import ClusterBackend, ClusterHandle, Phase
from ephemeral.errors import EphemeralError


def backoff(ceiling: float, first: float = 0.25) -> Iterator[float]:
    """Pauses between probes: short at first, since a cluster that is nearly ready idles (and
    costs) for every second it goes unnoticed, then growing to ``ceiling``."""
    pause = min(first, ceiling)
    while True:
        yield pause
        pause = min(pause * 2, ceiling)


class ClusterReadyTrigger(BaseTrigger):
    def __init__(self, *, backend: str, handle: dict[str, Any], timeout: float,
                 poll_interval: float = 2.0, kubernetes_conn_id: str | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.kubernetes_conn_id = kubernetes_conn_id
        self.handle = handle
        self.timeout = timeout
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("ephemeral.airflow.triggers.ClusterReadyTrigger",
                {"backend": self.backend, "handle": self.handle, "timeout": self.timeout,
                 "poll_interval": self.poll_interval,
                 "kubernetes_conn_id": self.kubernetes_conn_id})

    def _backend(self) -> ClusterBackend:
        return task_backend(self.backend, self.kubernetes_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        backend = await asyncio.to_thread(self._backend)  # a connection lookup blocks
        handle = ClusterHandle.model_validate(self.handle)
        deadline = time.monotonic() + self.timeout
        pauses = backoff(self.poll_interval)
        while True:
            try:
                status = await asyncio.to_thread(backend.wait_ready, handle, timeout=0)
            except EphemeralError as err:
                yield TriggerEvent({"status": "failed", "error": type(err).__name__,
                                    "message": str(err), "handle": self.handle})
                return
            self.log.info("cluster %s: %s (%d/%d nodes) %s", handle.name, status.phase.value,
                          status.nodes_ready, status.nodes_expected, status.message)
            if status.ready:
                yield TriggerEvent({"status": "ready", "message": status.message,
                                    "handle": self.handle})
                return
            if status.phase in (Phase.GONE, Phase.DELETING):
                yield TriggerEvent({"status": "failed", "handle": self.handle,
                                    "message": f"the cluster is {status.phase.value}"})
                return
            if time.monotonic() >= deadline:
                yield TriggerEvent({"status": "timeout", "handle": self.handle, "message":
                                    f"not ready after {self.timeout:.0f}s: {status.message}"})
                return
            await asyncio.sleep(next(pauses))

    async def on_kill(self) -> None:
        name = self.handle.get("name")
        self.log.warning("setup of %s was killed while waiting: deleting the cluster", name)
        backend = await asyncio.to_thread(self._backend)
        await asyncio.to_thread(backend.delete, str(name), wait=True)


class RayJobTrigger(BaseTrigger):
    def __init__(self, *, dashboard: str, job_id: str, cluster: str,
                 timeout: float | None = None, poll_interval: float = 1.0) -> None:
        super().__init__()
        self.dashboard = dashboard
        self.job_id = job_id
        self.cluster = cluster
        self.timeout = timeout
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("ephemeral.airflow.triggers.RayJobTrigger",
                {"dashboard": self.dashboard, "job_id": self.job_id, "cluster": self.cluster,
                 "timeout": self.timeout, "poll_interval": self.poll_interval})

    def _jobs(self) -> Any:
        from ephemeral.jobs.ray_jobs import RayJobs

        return RayJobs(self.dashboard, cluster=self.cluster)

    async def _stream_logs(self, jobs: Any) -> None:
        try:
            async for chunk in jobs.client.tail_job_logs(self.job_id):
                for line in chunk.splitlines():
                    self.log.info("[%s] %s", self.job_id, line)
        except Exception as err:  # noqa: BLE001 - logs are best effort; the status decides
            self.log.warning("log stream of %s ended: %s", self.job_id, err)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        jobs = await asyncio.to_thread(self._jobs)
        await asyncio.to_thread(lambda: jobs.client)  # its version check blocks: not on the loop
        streamer = asyncio.create_task(self._stream_logs(jobs))
        started = time.monotonic()
        after_stream = backoff(self.poll_interval, first=0.1)
        try:
            while True:
                try:
                    status = await asyncio.to_thread(jobs.status, self.job_id)
                except EphemeralError as err:
                    yield TriggerEvent({"status": "ERROR", "job_id": self.job_id,
                                        "message": str(err)})
                    return
                if status is None:
                    yield TriggerEvent({"status": "ERROR", "job_id": self.job_id,
                                        "message": f"no job {self.job_id} on the cluster"})
                    return
                if status.terminal:
                    yield TriggerEvent({"status": status.value, "job_id": self.job_id})
                    return
                if self.timeout is not None and time.monotonic() - started > self.timeout:
                    await asyncio.to_thread(jobs.stop, self.job_id)
                    yield TriggerEvent({"status": "TIMEOUT", "job_id": self.job_id,
                                        "message": f"stopped after {self.timeout:.0f}s"})
                    return
                # Ray closes the log stream when the job ends: look at once rather than at the
                # next poll, so the cluster does not sit idle until then.
                if streamer.done():  # ended, or broke: poll soon, then at the usual pace
                    await asyncio.sleep(next(after_stream))
                else:
                    await asyncio.wait({streamer}, timeout=self.poll_interval)
        finally:
            streamer.cancel()

    async def on_kill(self) -> None:
        self.log.warning("task killed: stopping Ray job %s", self.job_id)
        await asyncio.to_thread(self._jobs().stop, self.job_id)
