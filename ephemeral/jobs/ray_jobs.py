"""Ray jobs through the Ray Jobs REST API at the cluster's dashboard endpoint: a job's status
read and its stop directly, the rest (submit with its working_dir upload, logs, info, the
version check) through Ray's ``JobSubmissionClient``, whose every request goes through the same
layer (``RayJobs._send``): the address given, never one from the environment (Ray's SDK lets
RAY_ADDRESS or RAY_API_SERVER_ADDRESS replace it, which sent this cluster's token and job to
another cluster), no proxy from the environment, and a timeout on every request (the SDK sets
none: a dashboard that accepts and never answers would hold a task or a trigger for good).

Job ids are deterministic per (cluster, task, attempt), so a retried task finds the job an
earlier attempt started: it attaches to it while it runs, and reuses its result when it
succeeded, instead of training twice.

Every call authenticates with the cluster's Ray token (``headers``): get a client with
``ray_jobs_for(handle, backend)``, which asks the backend for it in the calling process, so no
token is ever stored in a handle, a trigger or XCom.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import hashlib
import json
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ephemeral.backends.base import HeadState, HeadView, hide_in_task_logs
from ephemeral.backends.http import ca_trust, cluster_session, redirect_refused
from ephemeral.backends.readiness import backoff
from ephemeral.errors import JobError, JobFailed, JobRefused, JobSubmissionFailed, JobTimeout
from ephemeral.jobs.results import JobResult, JobStatus, parse_result_line, submission_id, tail
from ephemeral.jobs.runtime_env import check_submitted, job_label, with_working_dir

if TYPE_CHECKING:
    import requests

    from ephemeral.backends.base import ClusterBackend, ClusterHandle

LogSink = Callable[[str], None]
log = logging.getLogger(__name__)

# How a waiter tells a lost cluster from a dashboard hiccup. With its GCS gone, Ray 2.60's
# dashboard holds a job read for the 60 s its GCS client retries (gcs_rpc_server_reconnect_
# timeout_s), answers 500, exits and then refuses; the raylets exit after that minute too, but
# the nodes (a GPU node's reservation) stay until the cluster is deleted. A healthy dashboard
# answers in milliseconds, and a hiccup (one slow or refused read, a module restarting on a
# loaded host) is over within a read or two. So each read is bounded (READ_TIMEOUT), and once
# reads have failed for LOST_GRACE seconds in a row, at least LOST_READS of them, the waiter
# asks /api/gcs_healthz: the cluster is lost at once only on evidence that it died (the
# dashboard says its GCS is down, or its port refuses: the dashboard process is gone).
READ_TIMEOUT = 4.0
# A stop request does more than a read (the job manager signals the job's supervisor), so it
# gets a longer bound; a lost cluster's stop then fails in seconds, not Ray's minute.
STOP_TIMEOUT = 15.0
LOST_GRACE = 10.0
LOST_READS = 3
# Without that evidence (the health check says alive, or does not answer either) the trouble
# may be the observer's: a loaded head, an API-server proxy blip, a network partition. Giving
# up then would fail a healthy training (and a DAG without retries deletes its cluster), so
# the waiter keeps reading, warning each grace, and gives up only after this many seconds of
# failed reads in a row: five minutes no real hiccup lasts, and far less than a job's time.
LOST_CEILING = 300.0
# The other witness is the backend's own view of the head (``ClusterBackend.head_view``):
# behind an API-server proxy a dead head is only "503 no endpoints available for service",
# which a Ready pod's Service can answer too (an endpoints update in flight). So the backend
# is asked, at the same moments as the health check: its head GONE (the RayCluster or the
# head pod deleted, Failed or replaced; the local head's GCS process exited) is evidence at
# once; NOT_READY (a head pod Running but not Ready) once it has lasted LOST_NOT_READY;
# RUNNING, or a view that fails or takes over VIEW_TIMEOUT seconds, is none.
VIEW_TIMEOUT = 5.0
# KubeRay's head readiness probe is the same GCS health check, with a failure threshold: a
# head starved of CPU can turn NotReady and come back. A minute of it, with every read failing
# too, is a head that does not serve; less may be a loaded one that would recover.
LOST_NOT_READY = 60.0
# Every other Jobs API request (the SDK's: submit and its package upload, logs, job info, the
# version check) waits at most CONNECT_TIMEOUT to connect and CALL_TIMEOUT between bytes: far
# past a healthy dashboard's answer, and a bound on one that accepts and never answers.
CONNECT_TIMEOUT = 10.0
CALL_TIMEOUT = 60.0
# A worker following a job reads its status this often unless told otherwise: the worker is
# held anyway, and a job's end seen late keeps its cluster reserved.
FOLLOW_PAUSE = 0.25


class ClusterLost(JobError):
    """The cluster's Jobs API failed every read for the grace and the cluster shows it died
    (a dead Ray GCS, a gone dashboard), or failed them up to the ceiling: the job cannot be
    followed, so the waiter gives up and its teardown runs."""


class AccessDenied(JobError):
    """The Jobs API (or the API-server proxy before it) refused this side's credentials: a
    Kubernetes token that expired mid-job (EKS's last 15 minutes) says nothing of the cluster."""


class JobIdTaken(JobError):
    """A job id names a job that runs another request (entrypoint or runtime_env) than the
    caller's: a task's deterministic id, of a run triggered again with the id of a deleted one
    on the cluster that run left; or the CLI's ``--job-id``. Following it would report that
    job's result as this one's; the same id finds the same job, so it is final, and nothing
    was submitted."""

    refused = True


# A submission id goes into the Jobs API's URLs (the SDK's unquoted) and Ray's log file names:
# Ray checks none of it, so ids are held to the characters Ray's own ids use, and a length no
# real id nears.
JOB_ID_MAX = 64
_JOB_ID = re.compile(r"[A-Za-z0-9_-]+")
# Ray's generate_job_id: 'raysubmit_' and 16 of these (no I, l, o, O, 0: easy to read back).
_RAY_ID_CHARS = "".join(sorted(set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                   "0123456789") - set("IloO0")))


def job_id_problem(job_id: str) -> str | None:
    """Why ``job_id`` cannot be a submission id, or None when it can."""
    if not _JOB_ID.fullmatch(job_id):
        return (f"{job_id!r} is not a Ray submission id: use letters, digits, '-' and '_' "
                "only (it goes into the Jobs API's URLs)")
    if len(job_id) > JOB_ID_MAX:
        return f"{job_id[:20]!r}... is {len(job_id)} characters long; at most {JOB_ID_MAX}"
    return None


def new_submission_id() -> str:
    """A fresh submission id, as Ray makes one (``raysubmit_...``): chosen here, before the
    submission, so a submitter interrupted while it is sent knows which job to stop."""
    return "raysubmit_" + "".join(secrets.choice(_RAY_ID_CHARS) for _ in range(16))


# The key of a submitted job's metadata that holds its request's digest (``request_digest``):
# an attaching task compares it with its own before following the job.
REQUEST_KEY = "ephemeral_request"
# The key that holds the submitting DAG run's stamp (its run_after): retries of one run share it.
RUN_KEY = "ephemeral_run"


def request_digest(entrypoint: str, runtime_env: Mapping[str, Any] | None = None,
                   working_dir: str | None = None) -> str:
    """A digest of what a job runs (entrypoint, and runtime_env with its working_dir), as the
    submitter gives them: the same task's retries give the same; another request does not.
    JobRefused when both give a working_dir (``with_working_dir``)."""
    env = with_working_dir(runtime_env, working_dir, job_label(None, entrypoint))
    if isinstance(env.get("env_vars"), Mapping):  # names only: a value may be a secret, and
        env["env_vars"] = sorted(env["env_vars"])  # job metadata is shown by the dashboard
    blob = json.dumps({"entrypoint": entrypoint, "runtime_env": env}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class Liveness(enum.Enum):
    ALIVE = "alive"
    DOWN = "down"  # evidence that it died
    UNKNOWN = "unknown"  # no answer: may well be the observer's trouble


@dataclass(frozen=True)
class GcsHealth:
    state: Liveness
    text: str  # a clause for a message: "its dashboard says its GCS is down (503 ...)"


def _refused(err: BaseException) -> bool:
    """Whether ``requests``' error is a refused connection (urllib3 wraps the OSError twice)."""
    seen: set[int] = set()
    stack: list[Any] = [err]
    while stack:
        cause = stack.pop()
        if not isinstance(cause, BaseException) or id(cause) in seen:
            continue
        if isinstance(cause, ConnectionRefusedError):
            return True
        seen.add(id(cause))
        stack += [cause.__cause__, cause.__context__, getattr(cause, "reason", None),
                  *cause.args]
    return False


def capped_wait(wait: float, left: float) -> float:
    """``wait`` seconds, or just past a deadline ``left`` seconds away when that is sooner."""
    return wait if wait <= left else max(left, 0.0) + 0.01


def _failure(err: Exception, timeout: float | None) -> str:
    """A request's failure, for a message (``requests`` exceptions name the URL, no header)."""
    import requests

    if isinstance(err, requests.Timeout):
        return f"the Ray Jobs API did not answer in {timeout:g}s"
    return f"{type(err).__name__}: {err}"


def _answered(resp: requests.Response) -> str:
    """An answer that is no 2xx, with the last line of its text (Ray's reason or a traceback's
    exception; not an HTML page, such as a proxy's)."""
    said = f"{resp.status_code} {resp.reason}"
    if (status := _api_status(resp)) is not None:  # its proxy's own answer, not Ray's
        return f"the API server's proxy answered {said}: {status[:200]}"
    html = resp.headers.get("Content-Type", "").startswith("text/html")
    body = [] if html else resp.text.strip().splitlines()
    return f"the Ray Jobs API answered {said}" + (f": {body[-1][:200]}" if body else "")


def _api_status(resp: requests.Response) -> str | None:
    """The message of a Kubernetes API server's own ``Status`` answer (its service proxy's:
    ``no endpoints available for service "x"``, ``error trying to reach service: ...``), or
    None when the answer came from the cluster."""
    try:
        body = resp.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("kind") != "Status":
        return None
    return str(body.get("message") or body.get("reason") or "")


def _no_endpoints(resp: requests.Response) -> bool:
    """kube-apiserver's proxy found no ready address behind the Service (ResourceLocation's
    ``NewServiceUnavailable("no endpoints available for service %q")``)."""
    return resp.status_code == 503 and (_api_status(resp) or "").startswith(
        "no endpoints available for service")


def _transport_errors(*, runtime: bool = False) -> tuple[type[Exception], ...]:
    """What the Jobs SDK lets escape when the dashboard cannot be reached or answers badly
    (``runtime``: also the RuntimeError it raises for any refused request)."""
    import requests

    errors: tuple[type[Exception], ...] = (OSError, ValueError, requests.RequestException)
    return (*errors, RuntimeError) if runtime else errors


class HeadEvidence:
    """The backend's view of a cluster's head (``ClusterBackend.head_view``), as a waiter
    whose reads fail consults it: each look runs on a daemon thread of its own and is
    awaited at most ``timeout`` seconds from its start; one look at a time (one that hangs
    is never doubled). A look that raises or is late is UNKNOWN: never evidence."""

    def __init__(self, look: Callable[[], HeadView], *, timeout: float = VIEW_TIMEOUT) -> None:
        self._look = look
        self.timeout = timeout
        self._lock = threading.Lock()
        self._call: _Look | None = None

    @classmethod
    def of(cls, backend: ClusterBackend, handle: ClusterHandle, *,
           timeout: float = VIEW_TIMEOUT) -> HeadEvidence:
        return cls(lambda: backend.head_view(handle), timeout=timeout)

    def ask(self) -> None:
        """Start a look, unless one is under way."""
        with self._lock:
            if self._call is None or self._call.done.is_set():
                self._call = _Look(self._look)

    def answer(self) -> HeadView:
        """What the look under way says, once it has (UNKNOWN if it fails or is late)."""
        with self._lock:
            call = self._call
        if call is None:
            return HeadView(state=HeadState.UNKNOWN, reason="its backend was not asked")
        if not call.done.wait(max(call.started + self.timeout - time.monotonic(), 0.0)):
            return HeadView(state=HeadState.UNKNOWN, reason="its backend's view of it did not "
                            f"come in {self.timeout:g}s")
        if call.error is not None:
            return HeadView(state=HeadState.UNKNOWN, reason="its backend's view of it failed "
                            f"({type(call.error).__name__}: {call.error})")
        assert call.view is not None
        return call.view


class _Look:
    """One call of a backend's ``head_view``, on a daemon thread (a hung call must not keep a
    process from exiting)."""

    def __init__(self, look: Callable[[], HeadView]) -> None:
        self.started = time.monotonic()
        self.done = threading.Event()
        self.view: HeadView | None = None
        self.error: Exception | None = None
        threading.Thread(target=self._run, args=(look,), daemon=True,
                         name="ephemeral-head-view").start()

    def _run(self, look: Callable[[], HeadView]) -> None:
        try:
            self.view = look()
        except Exception as err:  # noqa: BLE001 - any failure is "no evidence", never evidence
            self.error = err
        finally:
            self.done.set()


def ray_jobs_for(handle: ClusterHandle, backend: ClusterBackend) -> RayJobs:
    """The Jobs API client of ``handle``'s cluster, with the URL and credentials its backend
    gives this process (``ClusterBackend.access``), and its backend's view of the cluster's
    head for a waiter whose reads fail (``HeadEvidence``)."""
    access = backend.access(handle)
    if handle.engine != "ray" or not access.dashboard:
        raise JobSubmissionFailed(f"cluster {handle.name} is not a Ray cluster")
    hide_in_task_logs(*access.credentials())
    return RayJobs(access.dashboard, cluster=handle.name, created_at=handle.created_at,
                   headers=access.headers,
                   verify=access.verify, proxy=access.proxy,
                   head=HeadEvidence.of(backend, handle))


@functools.cache
def _jobs_client() -> type:
    """Ray's ``JobSubmissionClient`` on one ``RayJobs``' terms. Its constructor would take the
    address from RAY_API_SERVER_ADDRESS or RAY_ADDRESS when set (``get_address_for_submission_
    client``) and Ray's token from RAY_AUTH_MODE's token files when no Authorization is given:
    this one is built by its base class (``SubmissionClient``) from the given URL and headers,
    and checks the cluster's Ray version as the SDK's does. Every call of the SDK but the log
    stream's websocket (aiohttp's, which reads no proxy from the environment either) goes
    through ``_do_request``: here ``RayJobs._send``, bounded, and refusing redirects
    (``ephemeral.backends.http`` says why) with a RuntimeError, as Ray's non-2xx answers fail."""
    import ray
    from ray.dashboard.modules.dashboard_sdk import SubmissionClient
    from ray.job_submission import JobSubmissionClient

    class ClusterJobsClient(JobSubmissionClient):
        def __init__(self, jobs: RayJobs) -> None:
            self._jobs = jobs
            self._client_ray_version = ray.__version__
            SubmissionClient.__init__(self, address=jobs.dashboard, verify=jobs.trust,
                                      headers=dict(jobs._headers))
            self._headers = dict(jobs._headers)  # not a Ray token found in the environment
            if self._address != jobs.dashboard.rstrip("/"):  # the class-level rule, checked
                raise RuntimeError(f"Ray's Jobs SDK changed the address {jobs.dashboard} to "
                                   f"{self._address}: refusing to call it")
            self._check_connection_and_version(
                min_version="2.0", version_error_message="Please ensure the cluster is "
                "running Ray 2.0 or higher.")

        def _do_request(self, method: str, endpoint: str, *, data: bytes | None = None,
                        json_data: dict[str, Any] | None = None, **_ignored: Any) -> Any:
            resp = self._jobs._send(method, endpoint, (CONNECT_TIMEOUT, CALL_TIMEOUT),
                                    data=data, json=json_data)
            if resp.is_redirect:
                raise RuntimeError(redirect_refused(resp.url, resp.headers.get("Location")))
            return resp

    return ClusterJobsClient


class RayJobs:
    def __init__(self, dashboard: str, *, cluster: str = "", created_at: str = "",
                 headers: Mapping[str, str] | None = None, verify: bool | str = True,
                 proxy: str | None = None, head: HeadEvidence | None = None) -> None:
        self.dashboard = dashboard
        self.cluster = cluster
        self.created_at = created_at or None  # the cluster life, for its results
        self.head = head  # the backend's view of the cluster's head (None: no backend)
        self._headers = dict(headers or {})  # credentials: never logged
        self._verify = verify
        self.trust = ca_trust(verify)  # the CAs every request of this client trusts
        self._proxy = proxy  # Access.proxy: never one from the environment
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                self._client = _jobs_client()(self)
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
        if job_id is not None and (problem := job_id_problem(job_id)) is not None:
            raise JobRefused(f"job_id: {problem}")
        env = with_working_dir(runtime_env, working_dir, job_label(job_id, entrypoint))
        check_submitted(env, job_label(job_id, entrypoint), entrypoint)
        try:  # Ray's own check, before the upload: its ValueError is no transport error
            from ray.runtime_env import RuntimeEnv

            RuntimeEnv(**env)
        except (ValueError, TypeError) as err:
            raise JobRefused(f"Ray refuses the job's runtime_env: {err}") from err
        try:
            return str(self.client.submit_job(
                entrypoint=entrypoint, submission_id=job_id, runtime_env=env or None,
                entrypoint_num_cpus=entrypoint_num_cpus, entrypoint_num_gpus=entrypoint_num_gpus,
                metadata=metadata))
        except RuntimeError as err:
            raise JobSubmissionFailed(f"the cluster refused the job: {err}") from err
        except _transport_errors() as err:
            raise JobSubmissionFailed(f"cannot reach the Ray Jobs API: {err}") from err

    def _send(self, method: str, path: str, timeout: float | tuple[float, float], *,
              data: bytes | None = None, json: Any = None) -> requests.Response:
        """The one way a Jobs API request goes: to this client's URL with its headers and CAs,
        nothing from the environment (``cluster_session``), bounded by ``timeout`` seconds to
        connect and between bytes (or a (connect, read) pair), a redirect not followed
        (``ephemeral.backends.http`` says why) but returned."""
        with cluster_session(self._verify, self._proxy) as session:
            return session.request(method, f"{self.dashboard.rstrip('/')}{path}",
                                   headers=self._headers, data=data, json=json,
                                   timeout=timeout, allow_redirects=False)

    def _request(self, method: str, path: str, timeout: float) -> requests.Response:
        """``_send``, with ``timeout`` for both bounds and a redirect raised as a failure."""
        import requests

        resp = self._send(method, path, (timeout, timeout))
        if resp.is_redirect:
            raise requests.RequestException(redirect_refused(resp.url,
                                                             resp.headers.get("Location")))
        return resp

    def status(self, job_id: str, *, timeout: float = READ_TIMEOUT) -> JobStatus | None:
        """The job's status (``GET /api/jobs/{id}``), or None when no job has that id; JobError
        when the read fails or does not answer in ``timeout`` seconds."""
        import requests

        try:
            resp = self._request("GET", f"/api/jobs/{quote(job_id, safe='')}", timeout)
        except requests.RequestException as err:
            raise JobError(f"cannot read job {job_id}: {_failure(err, timeout)}") from err
        # Ray's "Job ... does not exist"; not an API server's (a proxied Service that is gone)
        if resp.status_code == 404 and _api_status(resp) is None:
            return None
        if resp.status_code in (401, 403):
            raise AccessDenied(f"cannot read job {job_id}: {_answered(resp)}")
        if not resp.ok:
            raise JobError(f"cannot read job {job_id}: {_answered(resp)}")
        try:
            return JobStatus(resp.json()["status"])
        except (ValueError, KeyError, TypeError) as err:
            raise JobError(f"cannot read job {job_id}: the Ray Jobs API answered no job "
                           f"status ({type(err).__name__}: {err})") from err

    def details(self, job_id: str) -> dict[str, Any]:
        """A job's details as Ray records them (``GET /api/jobs/{id}``: its entrypoint,
        metadata, ``driver_exit_code``...); JobError when they cannot be read."""
        import requests

        try:
            resp = self._request("GET", f"/api/jobs/{quote(job_id, safe='')}", READ_TIMEOUT)
            if not resp.ok:
                raise JobError(f"cannot read job {job_id}: {_answered(resp)}")
            info = resp.json()
            if not isinstance(info, dict):
                raise ValueError(f"a {type(info).__name__}, not an object")
            return info
        except requests.RequestException as err:
            raise JobError(f"cannot read job {job_id}: {_failure(err, READ_TIMEOUT)}") from err
        except ValueError as err:
            raise JobError(f"cannot read job {job_id}: the Ray Jobs API answered no job "
                           f"details ({type(err).__name__}: {err})") from err

    def submitted_request(self, job_id: str) -> tuple[dict[str, str], str]:
        """(metadata, entrypoint) of a job as Ray recorded it at submission; JobError when
        that cannot be read. A job submitted through ``submit_request`` has its request digest
        (``REQUEST_KEY``) and, from a DAG run, its run's stamp (``RUN_KEY``) there."""
        info = self.details(job_id)
        try:
            metadata = {str(k): str(v) for k, v in (info.get("metadata") or {}).items()}
        except AttributeError as err:
            raise JobError(f"cannot read job {job_id}: the Ray Jobs API answered no job "
                           f"metadata ({type(err).__name__}: {err})") from err
        return metadata, str(info.get("entrypoint") or "")

    def exit_code(self, job_id: str) -> int | None:
        """The exit code of an ended job's driver as Ray recorded it; None when Ray has none
        (a job stopped before its driver ran) or it cannot be read: the job's end is what is
        reported then, without it."""
        try:
            code = self.details(job_id).get("driver_exit_code")
        except JobError as err:
            log.warning("%s; its exit code is not reported", err)
            return None
        return code if isinstance(code, int) and not isinstance(code, bool) else None

    def gcs_health(self, *, timeout: float = 3.0) -> GcsHealth:
        """What the dashboard says of its GCS (``/api/gcs_healthz``, which asks the GCS with a
        0.1 s deadline and answers 503 "Health check failed" when it is gone). DOWN only on
        evidence: that verdict, or a refused port (the dashboard process is gone), also as an
        API-server proxy relays it; anything else that is no 200 tells nothing (UNKNOWN)."""
        import requests

        try:
            resp = self._request("GET", "/api/gcs_healthz", timeout)
        except requests.RequestException as err:
            if _refused(err):
                return GcsHealth(Liveness.DOWN, "its dashboard refuses connections (its "
                                                "process is gone)")
            return GcsHealth(Liveness.UNKNOWN, "its dashboard's health check does not answer "
                                               f"either ({type(err).__name__})")
        said = f"{resp.status_code} {resp.reason}"
        if resp.ok:
            return GcsHealth(Liveness.ALIVE, "its dashboard says its GCS is alive")
        if resp.status_code == 503 and "Health check failed" in f"{resp.reason} {resp.text}":
            return GcsHealth(Liveness.DOWN, f"its dashboard says its GCS is down ({said})")
        if "connection refused" in resp.text.lower():  # a proxy relaying its dial's failure
            return GcsHealth(Liveness.DOWN, f"its dashboard refuses connections ({said} from "
                                            "the proxy)")
        if _no_endpoints(resp):  # no Ready head pod, or the endpoints are being updated
            return GcsHealth(Liveness.UNKNOWN, "the API server's proxy finds no endpoint "
                                               f"behind its Service ({said}: "
                                               f"{_api_status(resp)})")
        return GcsHealth(Liveness.UNKNOWN, f"its health check answered {said}, which says "
                                           "nothing of its GCS")

    def logs(self, job_id: str) -> str:
        try:
            return str(self.client.get_job_logs(job_id))
        except _transport_errors(runtime=True) as err:
            raise JobError(f"cannot read the logs of job {job_id}: {err}") from err

    def stop(self, job_id: str, *, wait: float = 30.0, settle: float = 0.0) -> JobStatus | None:
        """Stop the job (``POST /api/jobs/{id}/stop``) and wait until Ray reports it ended;
        return its final status (None: no such job). Each request is bounded: JobError when
        the cluster does not answer (a lost one) or refuses. ``settle``: for a job whose
        submission was cut short, asked again for that many seconds while Ray has no such job
        (a submission already sent may still land)."""
        settled = time.monotonic() + settle
        while (st := self._stop(job_id, wait)) is None and time.monotonic() < settled:
            time.sleep(0.2)
        return st

    def _stop(self, job_id: str, wait: float) -> JobStatus | None:
        import requests

        failed: str | None = None
        cause: Exception | None = None
        try:
            resp = self._request("POST", f"/api/jobs/{quote(job_id, safe='')}/stop",
                                 STOP_TIMEOUT)
        except requests.RequestException as err:
            failed, cause = _failure(err, STOP_TIMEOUT), err
        else:
            if resp.status_code == 404:  # Ray's "Job ... does not exist"
                return None
            if not resp.ok:
                failed = _answered(resp)
        if failed is not None:
            try:  # a job that is gone or has ended needs no stop
                st = self.status(job_id, timeout=READ_TIMEOUT)
                if st is None or st.terminal:
                    return st
            except JobError:
                pass  # the stop's failure is the one to report
            raise JobError(f"cannot stop job {job_id}: {failed}") from cause
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
                         cluster_created_at=self.created_at,
                         status=JobStatus.SUCCEEDED, seconds=round(seconds, 3),
                         result=parse_result_line(logs, job_id))

    # -- retries find their job -----------------------------------------------------------
    def submit_or_attach(
        self, entrypoint: str, *, task_key: str, attempt: int, run_stamp: str | None = None,
        **submit_args: Any
    ) -> tuple[str, bool]:
        """(job id, attached): attach to a live or succeeded job of an earlier attempt, else
        submit this attempt's job. The job is submitted with its request's digest
        (``REQUEST_KEY``) and its DAG run's stamp (``RUN_KEY``: the run's ``run_after``, which
        a clear keeps and a run deleted and triggered again under its id does not) in its
        metadata. A job found is attached to when it is this run's (a retry, even one whose
        entrypoint renders differently per try) or runs the same request; else JobIdTaken
        names it (never another run's job followed as this one's)."""
        for earlier in range(attempt, 0, -1):
            jid = submission_id(self.cluster, task_key, earlier)
            st = self.status(jid)
            if st is not None and (earlier == attempt or st in (
                    JobStatus.PENDING, JobStatus.RUNNING, JobStatus.SUCCEEDED)):
                # a live or succeeded earlier job; or this very attempt's, which already ran
                # (and failed): report it
                self._same_request(jid, entrypoint, submit_args.get("runtime_env"),
                                   submit_args.get("working_dir"), run_stamp=run_stamp)
                return jid, True
        jid = submission_id(self.cluster, task_key, attempt)
        return self.submit_request(entrypoint, job_id=jid, run_stamp=run_stamp,
                                   **submit_args), False

    def submit_request(self, entrypoint: str, *, job_id: str, run_stamp: str | None = None,
                       **submit_args: Any) -> str:
        """``submit``, with the request's digest (``REQUEST_KEY``) and a DAG run's stamp
        (``RUN_KEY``) in the job's metadata, by which a later attach knows its request."""
        digest = request_digest(entrypoint, submit_args.get("runtime_env"),
                                submit_args.get("working_dir"))
        metadata = {**(submit_args.pop("metadata", None) or {}), REQUEST_KEY: digest,
                    **({RUN_KEY: run_stamp} if run_stamp else {})}
        return self.submit(entrypoint, job_id=job_id, metadata=metadata, **submit_args)

    def attachable(self, job_id: str, entrypoint: str, *,
                   runtime_env: Mapping[str, Any] | None = None,
                   working_dir: str | None = None, field: str = "job_id") -> bool:
        """Whether a job ``job_id`` exists to attach to: False when there is none (submit it);
        JobIdTaken, naming ``field``, when it runs another request than this one."""
        if self.status(job_id) is None:
            return False
        self._same_request(job_id, entrypoint, runtime_env, working_dir, field=field)
        return True

    def _same_request(self, job_id: str, entrypoint: str,
                      runtime_env: Mapping[str, Any] | None, working_dir: str | None, *,
                      run_stamp: str | None = None, field: str | None = None) -> None:
        """Refuse to attach to ``job_id`` unless it is this run's job (its stamp) or runs this
        request: its digest, or for a job submitted without one, its entrypoint. ``field``
        names where a caller's own id came from; None: a task's deterministic id."""
        metadata, their_entrypoint = self.submitted_request(job_id)
        theirs = metadata.get(REQUEST_KEY)
        if (run_stamp and metadata.get(RUN_KEY) == run_stamp) or theirs == request_digest(
                entrypoint, runtime_env, working_dir) or (
                theirs is None and their_entrypoint == entrypoint):
            return
        shown = their_entrypoint if len(their_entrypoint) <= 200 else \
            their_entrypoint[:200] + "..."
        this = "this task's" if field is None else "this one"
        what = (f"another entrypoint than {this} ({shown!r}, not {entrypoint!r})"
                if their_entrypoint != entrypoint else "another runtime_env (pip, env_vars or "
                f"working_dir) than {this}, for the same entrypoint {shown!r}")
        ran = f"job {job_id} on cluster {self.cluster} runs {what}"
        if field is not None:
            raise JobIdTaken(
                f"{field} {job_id}: {ran}. Its result is not this request's, so nothing was "
                f"submitted nor followed: give another {field}, or leave it out for a new one")
        raise JobIdTaken(
            f"{ran}: it was submitted by an earlier run with the same run id (one deleted and "
            "triggered again), whose cluster this run adopted. Its result is not this task's, "
            "so it is not followed: trigger with a new run id, or delete the cluster first "
            f"(`ephemeral down {self.cluster}`)")

    # -- following a job ------------------------------------------------------------------
    def follow(self, job_id: str, *, sink: LogSink | None = None,
               timeout: float | None = None, owned: bool = True,
               poll_interval: float | None = None) -> JobResult:
        """Stream the job's logs to ``sink`` as they come until it ends; raise if it failed.
        Past ``timeout`` seconds: JobTimeout, with the job stopped when ``owned`` (the caller
        submitted it, or is the task whose job it is), else left running: a job only attached
        to is someone else's to stop. ``poll_interval`` caps the pause between status reads
        (default FOLLOW_PAUSE), as in ``RayJobTrigger``: the log stream's end cuts it short."""
        pause = FOLLOW_PAUSE if poll_interval is None else poll_interval
        after_stream = backoff(pause, first=0.1)
        started = time.monotonic()
        streamer = None
        streamed = _Streamed()
        if sink is not None:
            streamer = threading.Thread(target=self._stream, args=(job_id, sink, streamed),
                                        daemon=True)
            streamer.start()
        watch = JobWatch(self, job_id)
        while True:
            st = watch.status()
            if st is None:
                raise JobError(f"no job {job_id} on {self.dashboard}")
            if st.terminal:
                break
            if timeout is not None and time.monotonic() - started > timeout:
                late = f"job {job_id} did not finish in {timeout:.0f}s"
                if not owned:
                    raise JobTimeout(f"{late}; it was attached to, not submitted here: left "
                                     "running")
                try:
                    self.stop(job_id)
                except JobError as err:  # the timeout stays the error; the teardown ends it
                    timed_out = JobTimeout(late)
                    timed_out.add_note(f"stopping it failed: {err}")
                    raise timed_out from err
                raise JobTimeout(f"{late}; it was stopped")
            # Never far past the deadline: a long poll_interval overran the timeout by itself.
            left = math.inf if timeout is None else started + timeout - time.monotonic()
            if streamer is not None and streamer.is_alive():
                # Ray closes the stream as the job ends: look at once
                streamer.join(capped_wait(pause, left))
            else:  # no stream, or it ended or broke: look soon, then at the usual pace
                time.sleep(capped_wait(next(after_stream), left))
        if streamer is not None:
            streamer.join(timeout=10)  # the log stream closes when the job ends
        logs = self.logs(job_id)
        result = JobResult(job_id=job_id, cluster=self.cluster, engine="ray", status=st,
                           cluster_created_at=self.created_at,
                           seconds=round(time.monotonic() - started, 3),
                           result=parse_result_line(logs))
        if not result.ok:
            raise JobFailed(job_id, st.value, tail(logs), exit_code=self.exit_code(job_id),
                            streamed=streamed.covers(logs))
        return result

    def _stream(self, job_id: str, sink: LogSink, streamed: _Streamed) -> None:
        async def pump() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                for line in chunk.splitlines():
                    sink(line)
                    streamed.saw(line)

        try:
            asyncio.run(pump())
        except Exception as err:  # noqa: BLE001 - log streaming is best effort; status is not
            sink(f"[ephemeral] log stream interrupted: {err}")
        else:
            streamed.ended = True


class _Streamed:
    """What a job's log stream delivered: a failed job's tail is shown again unless the
    stream ran to the job's end *and* its last line is the logs' last line (a stream that
    closed early, or lost the end, must not hide the lines that say why the job failed)."""

    def __init__(self) -> None:
        self.ended = False
        self.last = ""

    def saw(self, line: str) -> None:
        if line.strip():
            self.last = line

    def covers(self, logs: str) -> bool:
        lines = [line for line in logs.splitlines() if line.strip()]
        return self.ended and (not lines or lines[-1] == self.last)


class JobWatch:
    """Reads a running job's status for a waiter (``RayJobs.follow``, ``RayJobTrigger``), by
    the rule above: a failed or unanswered read is waited out (the last status read stands);
    ``ClusterLost`` is raised once reads have failed for ``grace`` seconds in a row and there
    is evidence the cluster died (``_evidence``: its health check's, or its backend's view,
    ``head``, by default the one ``ray_jobs_for`` gave ``jobs``), or for ``ceiling`` seconds
    whatever they show."""

    def __init__(self, jobs: RayJobs, job_id: str, *, grace: float | None = None,
                 reads: int | None = None, read_timeout: float | None = None,
                 ceiling: float | None = None, warn: LogSink | None = None,
                 renew: Callable[[], RayJobs] | None = None,
                 head: HeadEvidence | None = None, not_ready: float | None = None) -> None:
        self.jobs = jobs
        self.renew = renew  # fresh access (a new token) when the credentials are refused
        self.head = head or jobs.head
        self.job_id = job_id
        self.grace = LOST_GRACE if grace is None else grace
        self.reads = LOST_READS if reads is None else reads
        self.read_timeout = READ_TIMEOUT if read_timeout is None else read_timeout
        self.ceiling = LOST_CEILING if ceiling is None else ceiling
        self.not_ready = LOST_NOT_READY if not_ready is None else not_ready
        self.warn = warn or log.warning
        self.last = JobStatus.PENDING
        self._failing_since: float | None = None
        self._failures = 0
        self._graces = 0  # graces passed without evidence, each warned once
        self._not_ready_since: float | None = None  # the backend has seen the head not ready

    def status(self) -> JobStatus | None:
        began = time.monotonic()
        try:
            try:
                st = self.jobs.status(self.job_id, timeout=self.read_timeout)
            except AccessDenied:
                if self.renew is None:
                    raise
                try:  # a token that expired: ask for access again
                    self.jobs = self.renew()
                    self.head = self.jobs.head or self.head  # its credentials may be stale too
                except Exception as err:  # a failed read like any other
                    raise JobError(f"renewing access to the Ray Jobs API failed: {err}") from err
                st = self.jobs.status(self.job_id, timeout=self.read_timeout)
        except JobError as err:
            return self._failed(err, began)
        self._failing_since, self._failures, self._graces = None, 0, 0
        self._not_ready_since = None
        if st is not None:
            self.last = st
        return st

    def _failed(self, err: JobError, began: float) -> JobStatus:
        if self._failing_since is None:
            self._failing_since = began
        self._failures += 1
        failing = time.monotonic() - self._failing_since
        read = f"reading job {self.job_id} failed ({self._failures} in a row, {failing:.1f}s)"
        if failing < self.grace or self._failures < self.reads:
            self.warn(f"{read}: {err}")
            return self.last
        died, seen = self._evidence()
        failing = time.monotonic() - self._failing_since
        if died or failing >= self.ceiling:
            limit = "" if died else ", the ceiling for a cluster that shows no sign of death"
            raise ClusterLost(
                f"cluster {self.jobs.cluster or self.jobs.dashboard} is lost: its Ray Jobs "
                f"API failed all {self._failures} reads of job {self.job_id} for "
                f"{failing:.0f}s{limit} (last: {err}); {seen}") from err
        if (graces := int(failing // self.grace)) > self._graces:
            self._graces = graces
            self.warn(f"{read}: {err}; {seen}, so it is not counted lost: it may be "
                      f"this side's trouble; reading on up to {self.ceiling:.0f}s")
        return self.last

    def _evidence(self) -> tuple[bool, str]:
        """The one rule: whether the cluster shows it died, and what it shows. The dashboard
        says its GCS is down or its port refuses; or the backend sees its head GONE, or
        NOT_READY for LOST_NOT_READY. The backend is asked first: its look runs while the health
        check does."""
        if self.head is not None:
            self.head.ask()
        health = self.jobs.gcs_health(timeout=self.read_timeout)
        if health.state is Liveness.DOWN or self.head is None:
            return health.state is Liveness.DOWN, health.text
        view = self.head.answer()
        seen = f"{health.text}; {view.reason}"
        if view.state is HeadState.GONE:
            return True, seen
        if view.state is HeadState.RUNNING:
            self._not_ready_since = None
        if view.state is not HeadState.NOT_READY:
            return False, seen  # UNKNOWN neither proves nor clears a not-ready head
        now = time.monotonic()
        if self._not_ready_since is None:
            self._not_ready_since = now
        lasted = now - self._not_ready_since
        return lasted >= self.not_ready, f"{seen} (for {lasted:.0f}s)"
