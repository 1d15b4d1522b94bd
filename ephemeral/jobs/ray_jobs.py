"""Ray jobs through the Ray Jobs SDK (``JobSubmissionClient`` against the dashboard endpoint).

Job ids are deterministic per (cluster, task, attempt), so a retried task finds the job an
earlier attempt started: it attaches to it while it runs, and reuses its result when it
succeeded, instead of training twice.

Every call authenticates with the cluster's Ray token (``headers``): get a client with
``ray_jobs_for(handle, backend)``, which asks the backend for it in the calling process, so no
token is ever stored in a handle, a trigger or XCom.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from ephemeral.errors import JobError, JobFailed, JobSubmissionFailed, JobTimeout
from ephemeral.jobs.results import JobResult, JobStatus, parse_result_line, submission_id, tail

if TYPE_CHECKING:
    from ephemeral.backends.base import ClusterBackend, ClusterHandle

LogSink = Callable[[str], None]
T = TypeVar("T")
log = logging.getLogger(__name__)

# How a waiter tells a lost cluster from a dashboard hiccup. With its GCS gone, Ray 2.60's
# dashboard holds a job read for the 60 s its GCS client retries (gcs_rpc_server_reconnect_
# timeout_s), answers 500, exits and then refuses; the raylets exit after that minute too, but
# the nodes (a GPU node's reservation) stay until the cluster is deleted. A healthy dashboard
# answers in milliseconds, and a hiccup (one slow or refused read, a module restarting on a
# loaded host) is over within a read or two. So each read is bounded, and the cluster counts
# as lost only when every read has failed for LOST_GRACE seconds in a row, at least LOST_READS
# of them: 10 s when the dashboard refuses, about 14 s when it holds the reads (3 x 4 s).
READ_TIMEOUT = 4.0
# A stop request does more than a read (the job manager signals the job's supervisor), so it
# gets a longer bound; a lost cluster's stop then fails in seconds, not Ray's minute.
STOP_TIMEOUT = 15.0
LOST_GRACE = 10.0
LOST_READS = 3


class ClusterLost(JobError):
    """The cluster's Jobs API failed every read for the grace: the job cannot be followed and
    the cluster is half dead (a dead Ray GCS), so the waiter gives up and its teardown runs."""


def _transport_errors(*, runtime: bool = False) -> tuple[type[Exception], ...]:
    """What the Jobs SDK lets escape when the dashboard cannot be reached or answers badly
    (``runtime``: also the RuntimeError it raises for any refused request)."""
    import requests

    errors: tuple[type[Exception], ...] = (OSError, ValueError, requests.RequestException)
    return (*errors, RuntimeError) if runtime else errors


def ray_jobs_for(handle: ClusterHandle, backend: ClusterBackend) -> RayJobs:
    """The Jobs API client of ``handle``'s cluster, with the URL and credentials its backend
    gives this process (``ClusterBackend.access``)."""
    access = backend.access(handle)
    if handle.engine != "ray" or not access.dashboard:
        raise JobSubmissionFailed(f"cluster {handle.name} is not a Ray cluster")
    return RayJobs(access.dashboard, cluster=handle.name, headers=access.headers,
                   verify=access.verify)


class RayJobs:
    def __init__(self, dashboard: str, *, cluster: str = "",
                 headers: Mapping[str, str] | None = None, verify: bool | str = True) -> None:
        self.dashboard = dashboard
        self.cluster = cluster
        self._headers = dict(headers or {})  # credentials: never logged
        self._verify = verify
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            try:
                self._client = JobSubmissionClient(self.dashboard, verify=self._verify,
                                                   headers=dict(self._headers) or None)
            except _transport_errors(runtime=True) as err:
                raise JobSubmissionFailed(f"cannot reach the Ray Jobs API at {self.dashboard}: "
                                          f"{err}") from err
        return self._client

    # -- one job --------------------------------------------------------------------------
    def submit(
        self,
        entrypoint: str,
        *,
        job_id: str | None = None,
        working_dir: str | None = None,
        runtime_env: dict[str, Any] | None = None,
        entrypoint_num_cpus: float | None = None,
        entrypoint_num_gpus: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        env = dict(runtime_env or {})
        if working_dir:
            env["working_dir"] = working_dir
        try:  # Ray's own check, before the upload: its ValueError is no transport error
            from ray.runtime_env import RuntimeEnv

            RuntimeEnv(**env)
        except (ValueError, TypeError) as err:
            raise JobSubmissionFailed(f"Ray refuses the job's runtime_env: {err}") from err
        try:
            return str(self.client.submit_job(
                entrypoint=entrypoint, submission_id=job_id, runtime_env=env or None,
                entrypoint_num_cpus=entrypoint_num_cpus, entrypoint_num_gpus=entrypoint_num_gpus,
                metadata=metadata))
        except RuntimeError as err:
            raise JobSubmissionFailed(f"the cluster refused the job: {err}") from err
        except _transport_errors() as err:
            raise JobSubmissionFailed(f"cannot reach the Ray Jobs API: {err}") from err

    def status(self, job_id: str, *, timeout: float | None = None) -> JobStatus | None:
        """The job's status, or None when no job has that id; JobError when the read fails or
        does not answer in ``timeout`` seconds."""
        client = self.client  # made (and Ray imported) outside the bound
        try:
            info = (client.get_job_info(job_id) if timeout is None
                    else _within(timeout, lambda: client.get_job_info(job_id)))
        except RuntimeError as err:
            if "does not exist" in str(err) or "404" in str(err):
                return None
            raise JobError(f"cannot read job {job_id}: {err}") from err
        except _transport_errors() as err:
            raise JobError(f"cannot read job {job_id}: {err}") from err
        return JobStatus(str(info.status))

    def gcs_health(self, *, timeout: float = 3.0) -> str:
        """What the dashboard says of its GCS (``/api/gcs_healthz``, which asks the GCS with a
        0.1 s deadline), as a clause for an error message."""
        import requests

        url = f"{self.dashboard.rstrip('/')}/api/gcs_healthz"
        try:
            resp = requests.get(url, headers=self._headers, verify=self._verify, timeout=timeout)
        except requests.RequestException as err:
            return f"its dashboard does not answer either ({type(err).__name__})"
        if resp.ok:
            return "its dashboard says its GCS is alive"
        return f"its dashboard says its GCS is down ({resp.status_code} {resp.reason})"

    def logs(self, job_id: str) -> str:
        try:
            return str(self.client.get_job_logs(job_id))
        except _transport_errors(runtime=True) as err:
            raise JobError(f"cannot read the logs of job {job_id}: {err}") from err

    def stop(self, job_id: str, *, wait: float = 30.0) -> JobStatus | None:
        """Stop the job and wait until Ray reports it ended; return its final status. Each
        request is bounded: JobError when the cluster does not answer (a lost one)."""
        client = self.client
        try:
            _within(STOP_TIMEOUT, lambda: client.stop_job(job_id))
        except _transport_errors(runtime=True) as err:
            if self.status(job_id, timeout=READ_TIMEOUT) is None:
                return None
            raise JobError(f"cannot stop job {job_id}: {err}") from err
        deadline = time.monotonic() + wait
        while (st := self.status(job_id, timeout=READ_TIMEOUT)) is not None \
                and not st.terminal:
            if time.monotonic() > deadline:
                raise JobError(f"job {job_id} still {st} {wait:.0f}s after it was stopped")
            time.sleep(0.2)
        return st

    def succeeded_result(self, job_id: str) -> JobResult:
        """A succeeded job's result: its result line, and its wall time as Ray recorded it."""
        logs = self.logs(job_id)
        try:
            info = self.client.get_job_info(job_id)
        except _transport_errors(runtime=True) as err:
            raise JobError(f"cannot read job {job_id}: {err}") from err
        seconds = ((info.end_time or 0) - (info.start_time or 0)) / 1000
        return JobResult(job_id=job_id, cluster=self.cluster, engine="ray",
                         status=JobStatus.SUCCEEDED, seconds=round(seconds, 3),
                         result=parse_result_line(logs, job_id))

    # -- retries find their job -----------------------------------------------------------
    def submit_or_attach(
        self, entrypoint: str, *, task_key: str, attempt: int, **submit_args: Any
    ) -> tuple[str, bool]:
        """(job id, attached): attach to a live or succeeded job of an earlier attempt, else
        submit this attempt's job."""
        for earlier in range(attempt, 0, -1):
            jid = submission_id(self.cluster, task_key, earlier)
            st = self.status(jid)
            if st is not None and st in (JobStatus.PENDING, JobStatus.RUNNING,
                                         JobStatus.SUCCEEDED):
                return jid, True
            if st is not None and earlier == attempt:
                return jid, True  # this very attempt already ran (and failed): report it
        jid = submission_id(self.cluster, task_key, attempt)
        return self.submit(entrypoint, job_id=jid, **submit_args), False

    # -- following a job ------------------------------------------------------------------
    def follow(self, job_id: str, *, sink: LogSink | None = None,
               timeout: float | None = None) -> JobResult:
        """Stream the job's logs to ``sink`` as they come until it ends; raise if it failed."""
        started = time.monotonic()
        streamer = None
        if sink is not None:
            streamer = threading.Thread(target=self._stream, args=(job_id, sink), daemon=True)
            streamer.start()
        watch = JobWatch(self, job_id)
        while True:
            st = watch.status()
            if st is None:
                raise JobError(f"no job {job_id} on {self.dashboard}")
            if st.terminal:
                break
            if timeout is not None and time.monotonic() - started > timeout:
                self.stop(job_id)
                raise JobTimeout(f"job {job_id} did not finish in {timeout:.0f}s; it was stopped")
            time.sleep(0.25)
        if streamer is not None:
            streamer.join(timeout=10)  # the log stream closes when the job ends
        logs = self.logs(job_id)
        result = JobResult(job_id=job_id, cluster=self.cluster, engine="ray", status=st,
                           seconds=round(time.monotonic() - started, 3),
                           result=parse_result_line(logs))
        if not result.ok:
            raise JobFailed(job_id, st.value, tail(logs))
        return result

    def _stream(self, job_id: str, sink: LogSink) -> None:
        async def pump() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                for line in chunk.splitlines():
                    sink(line)

        try:
            asyncio.run(pump())
        except Exception as err:  # noqa: BLE001 - log streaming is best effort; status is not
            sink(f"[ephemeral] log stream interrupted: {err}")


class JobWatch:
    """Reads a running job's status for a waiter (``RayJobs.follow``, ``RayJobTrigger``), by
    the rule above: a failed or unanswered read is waited out (the last status read stands),
    and ``ClusterLost`` is raised once reads have failed for ``grace`` seconds in a row."""

    def __init__(self, jobs: RayJobs, job_id: str, *, grace: float | None = None,
                 reads: int | None = None, read_timeout: float | None = None,
                 warn: LogSink | None = None) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.grace = LOST_GRACE if grace is None else grace
        self.reads = LOST_READS if reads is None else reads
        self.read_timeout = READ_TIMEOUT if read_timeout is None else read_timeout
        self.warn = warn or log.warning
        self.last = JobStatus.PENDING
        self._failing_since: float | None = None
        self._failures = 0

    def status(self) -> JobStatus | None:
        began = time.monotonic()
        try:
            st = self.jobs.status(self.job_id, timeout=self.read_timeout)
        except JobError as err:
            if self._failing_since is None:
                self._failing_since = began
            self._failures += 1
            failing = time.monotonic() - self._failing_since
            if failing >= self.grace and self._failures >= self.reads:
                raise ClusterLost(
                    f"cluster {self.jobs.cluster or self.jobs.dashboard} is lost: its Ray Jobs "
                    f"API failed all {self._failures} reads of job {self.job_id} for "
                    f"{failing:.0f}s (last: {err}); {self.jobs.gcs_health()}") from err
            self.warn(f"reading job {self.job_id} failed ({self._failures} in a row, "
                      f"{failing:.1f}s): {err}")
            return self.last
        self._failing_since, self._failures = None, 0
        if st is not None:
            self.last = st
        return st


def _within(seconds: float, read: Callable[[], T]) -> T:
    """``read()``, or TimeoutError when it has not returned in ``seconds``. The Jobs SDK sets
    no timeout of its own; the abandoned read ends with the dashboard's answer (a dashboard
    without its GCS answers within about a minute), on a daemon thread that holds no pool's."""
    done: Future[T] = Future()

    def run() -> None:
        try:
            done.set_result(read())
        except BaseException as err:  # noqa: BLE001 - handed to the waiting caller
            done.set_exception(err)

    threading.Thread(target=run, name="ephemeral-job-read", daemon=True).start()
    try:
        return done.result(timeout=seconds)
    except TimeoutError:
        if done.done():  # the read's own
            raise
        raise TimeoutError(f"the Ray Jobs API did not answer in {seconds:g}s") from None
