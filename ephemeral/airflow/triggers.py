"""Triggers: waiting for a cluster to be ready, and for a Ray job to end, in the triggerer, so
no worker slot is held while pods pull images or a job trains.

Both stop their external work in ``on_kill`` (a user marked the deferred task failed, success
or cleared it): the cluster is deleted, the job stopped; not when Airflow merely moved the
trigger to another triggerer (``trigger_moves``). Both time out by themselves and say so
in their event, so the operator can clean up: Airflow's own deferral timeout fails the task
without calling it back, which would leak the cluster of a failed setup.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from airflow.triggers.base import TriggerEvent

from ephemeral.airflow.backends import task_backend
from ephemeral.airflow.settle import SettlingTrigger
from ephemeral.airflow.trigger_moves import still_deferred
from ephemeral.backends import ClusterBackend, ClusterHandle
from ephemeral.backends.fake import refuse_across_processes
from ephemeral.backends.readiness import Readiness, backoff
from ephemeral.errors import EphemeralError, ReadinessTimeout
from ephemeral.jobs.results import JobStatus

# Releases (delete_cluster_on_success) run here, apart from the threads the triggers' polls use.
RELEASES = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ephemeral-release")
# Ray job status reads and stops run here, not on the loop's default executor (a few threads
# on a small host) that every other trigger's blocking calls share: a read is bounded, but an
# unanswering dashboard holds its thread for READ_TIMEOUT (and the health check's as long),
# and a dozen such triggers would starve the rest. Threads start only as reads need them.
READS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="ephemeral-job-read")
STREAM_DRAIN = 0.5  # seconds a released job's log stream may take to deliver its last lines


class ClusterReadyTrigger(SettlingTrigger):
    """Waits with ``Readiness``, the loop every waiter shares. Whatever goes wrong in here (a
    connection that exists only in the worker's environment, a dashboard answering nonsense,
    a bug) becomes a failed event that carries the handle, so the operator deletes the
    cluster: an exception escaping a trigger would fail the task without calling it back."""

    def __init__(self, *, backend: str, handle: dict[str, Any], deadline: float | None = None,
                 timeout: float | None = None, poll_interval: float = 2.0,
                 conn_id: str | None = None, kubernetes_conn_id: str | None = None,
                 settles_at: float | None = None, adopted: bool = False) -> None:
        super().__init__()
        refuse_across_processes(backend, "ClusterReadyTrigger")  # the triggerer has none of it
        self.backend = backend
        # The connection the handle records (ephemeral or kubernetes); ``kubernetes_conn_id``
        # is how triggers serialized by earlier versions name it.
        self.conn_id = conn_id or kubernetes_conn_id
        self.handle = handle
        # An absolute deadline survives a triggerer restart; ``timeout`` is for callers that
        # have none (and for triggers serialized by earlier versions).
        self.deadline = deadline if deadline is not None else time.time() + (timeout or 900.0)
        self.poll_interval = poll_interval
        self.settles_at = settles_at
        # The setup found the cluster made already (``ClusterHandle.adopted``, which the
        # handle's dump leaves out): not its to delete when the wait fails or is killed.
        self.adopted = adopted

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("ephemeral.airflow.triggers.ClusterReadyTrigger",
                {"backend": self.backend, "handle": self.handle, "deadline": self.deadline,
                 "poll_interval": self.poll_interval, "conn_id": self.conn_id,
                 "settles_at": self.settles_at, "adopted": self.adopted})

    def _backend(self) -> ClusterBackend:
        return task_backend(self.backend, self.conn_id)

    def _event(self, status: str, message: str, error: str = "",
               **extra: Any) -> TriggerEvent:
        return TriggerEvent({"status": status, "message": message, "error": error,
                             "handle": self.handle, "adopted": self.adopted, **extra})

    async def events(self) -> AsyncGenerator[TriggerEvent, None]:
        try:
            backend = await asyncio.to_thread(self._backend)  # a connection lookup blocks
            handle = ClusterHandle.model_validate(self.handle)
            wait = Readiness(backend, handle, deadline=self.deadline,
                             poll_interval=self.poll_interval)
            while True:
                status = await asyncio.to_thread(wait.step)
                self.log.info("cluster %s: %s (%d/%d nodes) %s", handle.name,
                              status.phase.value, status.nodes_ready, status.nodes_expected,
                              status.message)
                if status.ready:
                    break
                await asyncio.sleep(wait.pause())
        except ReadinessTimeout as err:
            yield self._event("timeout", str(err), type(err).__name__)
            return
        except Exception as err:  # see the class docstring
            self.log.exception("waiting for cluster %s failed", self.handle.get("name"))
            yield self._event("failed", str(err), type(err).__name__)
            return
        yield self._event("ready", status.message, ready_ts=round(time.time(), 3))

    async def on_kill(self) -> None:
        name = self.handle.get("name")
        if await still_deferred(self):
            self.log.warning("the wait for %s moved to another triggerer: it goes on there, "
                             "nothing is deleted", name)
            return
        self.log.warning("setup of %s was killed while waiting", name)
        from ephemeral.lifecycle import delete_killed
        backend = await asyncio.to_thread(self._backend)
        handle = ClusterHandle.model_validate(self.handle).model_copy(
            update={"adopted": self.adopted})
        setup = handle.setup_task or "setup"
        await asyncio.to_thread(delete_killed, backend, handle, setup)


class RayJobTrigger(SettlingTrigger):
    """Waits for a Ray job. It serializes the handle, the backend's name and the connection
    id, never the cluster's token: the triggerer asks the backend for access itself.

    With ``release`` (who releases: ``ephemeral.airflow.release.released_by``), a job that
    succeeded has its result read and its cluster deleted here, the moment it ends, rather
    than after the task has been scheduled to resume; the event carries the result."""

    def __init__(self, *, handle: dict[str, Any], backend: str, job_id: str,
                 conn_id: str | None = None, kubernetes_conn_id: str | None = None,
                 timeout: float | None = None, deadline: float | None = None,
                 poll_interval: float = 1.0, release: dict[str, str] | None = None,
                 settles_at: float | None = None) -> None:
        super().__init__()
        refuse_across_processes(backend, "RayJobTrigger")  # the triggerer has none of it
        self.handle = handle
        self.backend = backend
        self.conn_id = conn_id or kubernetes_conn_id  # as in ClusterReadyTrigger
        self.job_id = job_id
        self.timeout = timeout  # the job_timeout, for the event's message
        # When the job is stopped (epoch seconds), set once as the task defers and serialized:
        # a restarted or moved trigger keeps it rather than start the timeout over. A trigger
        # serialized by an earlier version has none: it counts from its load, as it did.
        self.deadline = deadline if deadline is not None or timeout is None \
            else time.time() + timeout
        self.poll_interval = poll_interval
        self.release = release
        self.settles_at = settles_at

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("ephemeral.airflow.triggers.RayJobTrigger",
                {"handle": self.handle, "backend": self.backend,
                 "conn_id": self.conn_id, "job_id": self.job_id,
                 "timeout": self.timeout, "deadline": self.deadline,
                 "poll_interval": self.poll_interval,
                 "release": self.release, "settles_at": self.settles_at})

    def _jobs(self) -> Any:
        from ephemeral.jobs.ray_jobs import ray_jobs_for

        backend = task_backend(self.backend, self.conn_id)
        return ray_jobs_for(ClusterHandle.model_validate(self.handle), backend)

    def _released(self, jobs: Any) -> dict[str, Any]:
        """The succeeded job's result, read while its cluster is there, then the cluster
        deleted. Nothing when the result cannot be read: the task reads it and releases."""
        from ephemeral.airflow.release import release

        assert self.release is not None
        try:
            result = jobs.succeeded_result(self.job_id).model_dump(mode="json")
        except EphemeralError as err:
            self.log.warning("could not read the result of %s here (%s): the task will",
                             self.job_id, err)
            return {}
        try:
            done = release(task_backend(self.backend, self.conn_id),
                           ClusterHandle.model_validate(self.handle), self.release, result)
        except Exception as err:  # noqa: BLE001 - never out of the trigger: the job succeeded
            self.log.warning("could not release the cluster here (%s): its teardown deletes it",
                             err)
            done = None
        self.log.info("%s", done or "the cluster is left to the teardown")
        return {"result": result, "released": done}

    def _earlier(self) -> dict[str, Any] | None:
        """What this trigger recorded before it was restarted, if it released the cluster."""
        from ephemeral.airflow.release import earlier_result

        assert self.release is not None
        return earlier_result(ClusterHandle.model_validate(self.handle), self.release)

    async def _stream_logs(self, jobs: Any) -> None:
        try:
            async for chunk in jobs.client.tail_job_logs(self.job_id):
                for line in chunk.splitlines():
                    self.log.info("[%s] %s", self.job_id, line)
        except Exception as err:  # noqa: BLE001 - logs are best effort; the status decides
            self.log.warning("log stream of %s ended: %s", self.job_id, err)

    async def events(self) -> AsyncGenerator[TriggerEvent, None]:
        # Restarted after it released the cluster (the event was lost): the job succeeded and
        # the cluster is gone, so say so rather than ask a cluster that is no more.
        if self.release and (earlier := await asyncio.to_thread(self._earlier)) is not None:
            yield TriggerEvent({"status": JobStatus.SUCCEEDED.value, "job_id": self.job_id,
                                "result": earlier, "released": "released before a restart"})
            return
        try:  # a connection lookup and the client's version check block: not on the loop
            jobs = await asyncio.to_thread(self._jobs)
            await asyncio.to_thread(lambda: jobs.client)
        except Exception as err:  # noqa: BLE001 - any failure must reach the task as an event
            yield TriggerEvent({"status": "ERROR", "job_id": self.job_id,
                                "message": f"{type(err).__name__}: {err}"})
            return
        from ephemeral.jobs.ray_jobs import JobWatch, capped_wait

        streamer = asyncio.create_task(self._stream_logs(jobs))
        after_stream = backoff(self.poll_interval, first=0.1)
        # A failed read is waited out; a cluster whose Jobs API keeps failing (a dead GCS)
        # raises ClusterLost, the ERROR event fails the task and its teardown deletes it.
        watch = JobWatch(jobs, self.job_id, warn=self.log.warning, renew=self._jobs)
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    status = await loop.run_in_executor(READS, watch.status)
                except EphemeralError as err:
                    yield TriggerEvent({"status": "ERROR", "job_id": self.job_id,
                                        "message": str(err)})
                    return
                if status is None:
                    yield TriggerEvent({"status": "ERROR", "job_id": self.job_id,
                                        "message": f"no job {self.job_id} on the cluster"})
                    return
                if status.terminal:
                    event = {"status": status.value, "job_id": self.job_id}
                    if self.release and status is JobStatus.SUCCEEDED:
                        # The job's last log lines first (Ray closes the stream as the job
                        # ends): deleting the cluster would cut the stream mid-way.
                        await asyncio.wait({streamer}, timeout=STREAM_DRAIN)
                        streamer.cancel()
                        # On threads of their own: a deletion that waits for pods to go must
                        # not hold the threads every trigger's polls run on.
                        event |= await loop.run_in_executor(RELEASES, self._released, jobs)
                    yield TriggerEvent(event)
                    return
                if self.deadline is not None and time.time() > self.deadline:
                    after = (f"after {self.timeout:.0f}s" if self.timeout is not None
                             else "at its deadline")
                    message = f"stopped {after}"
                    try:
                        await loop.run_in_executor(READS, jobs.stop, self.job_id)
                    except EphemeralError as err:  # the teardown's deletion ends it anyway
                        message = f"timed out {after}; stopping it failed: {err}"
                    yield TriggerEvent({"status": "TIMEOUT", "job_id": self.job_id,
                                        "message": message})
                    return
                # Ray closes the log stream when the job ends: look at once rather than at the
                # next poll, so the cluster does not sit idle until then.
                # Never far past the deadline: a long poll_interval overran it by itself.
                left = math.inf if self.deadline is None else self.deadline - time.time()
                if streamer.done():  # ended, or broke: poll soon, then at the usual pace
                    await asyncio.sleep(capped_wait(next(after_stream), left))
                else:
                    await asyncio.wait({streamer}, timeout=capped_wait(self.poll_interval, left))
        finally:
            streamer.cancel()

    async def on_kill(self) -> None:
        if await still_deferred(self):
            self.log.warning("the wait for Ray job %s moved to another triggerer: it goes on "
                             "there, the job is not stopped", self.job_id)
            return
        self.log.warning("task killed: stopping Ray job %s", self.job_id)
        try:
            await asyncio.to_thread(lambda: self._jobs().stop(self.job_id))
        except EphemeralError as err:  # e.g. its cluster was released: nothing runs there
            self.log.warning("could not stop Ray job %s: %s", self.job_id, err)
