"""The worker's environment and network never steer a call to a cluster: RAY_ADDRESS or
RAY_API_SERVER_ADDRESS do not pick the cluster a Ray job goes to (Ray's SDK let them replace the
address, and sent this cluster's job and token to another); HTTP_PROXY and friends do not carry
a cluster's requests and token to a proxy (HTTP through urllib and requests, gRPC to Spark
Connect); a dashboard that accepts and never answers holds no Jobs API call for good; and both
HTTP stacks trust the same CAs.

Against real servers on 127.0.x.y ports: dashboards that answer as Ray's Jobs API does, a
"proxy" that records what reaches it, a port that accepts connections and never answers."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.backends.http import get_json
from ephemeral.errors import JobError, JobSubmissionFailed
from ephemeral.jobs import ray_jobs
from ephemeral.jobs.ray_jobs import RayJobs
from tests.json_http import JsonHandler
from tests.setups import setup_on
from tests.unit.test_report_tls import _pki, https  # noqa: F401 - the fixture

PROXY_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
              "all_proxy", "grpc_proxy")


class Dashboard(ThreadingHTTPServer):
    """A Ray Jobs API that records every request: the version check answers; a job read
    answers ``jobs``' status or 404; a submit records the job; logs and info answer. With
    ``hang`` ("submit", "logs"), that request gets no answer until the test ends."""

    daemon_threads = True

    def __init__(self, ip: str, *, hang: tuple[str, ...] = ()) -> None:
        super().__init__((ip, 0), _Handler)
        self.seen: list[tuple[str, str, str | None]] = []
        self.jobs: dict[str, str] = {}
        self.hang = hang
        self.released = threading.Event()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a hanging answer

    def stop(self) -> None:
        self.released.set()
        self.shutdown()
        self.server_close()


class _Handler(JsonHandler):
    server: Dashboard

    def _hang(self, what: str) -> bool:
        if what in self.server.hang:
            self.server.released.wait(30)
            return True
        return False

    def do_GET(self) -> None:
        self.server.seen.append(("GET", self.path, self.headers.get("Authorization")))
        if self.path == "/api/version":
            return self._send(200, {"version": "4", "ray_version": "2.60.0", "ray_commit": "x"})
        if self.path.endswith("/logs"):
            return None if self._hang("logs") else self._send(200, {"logs": "done\n"})
        jid = self.path.removeprefix("/api/jobs/")
        if jid in self.server.jobs:
            return self._send(200, {"status": self.server.jobs[jid], "start_time": 1000,
                                    "end_time": 3000, "type": "SUBMISSION",
                                    "entrypoint": "x", "submission_id": jid})
        return self._send(404 if jid else 200, {} if jid else [])

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append(("POST", self.path, self.headers.get("Authorization")))
        if self._hang("submit"):
            return None
        jid = json.loads(body or b"{}").get("submission_id") or "raysubmit_new"
        self.server.jobs[jid] = "PENDING"
        return self._send(200, {"job_id": jid, "submission_id": jid})


@pytest.fixture
def dashboards() -> Iterator[Callable[..., Dashboard]]:
    made: list[Dashboard] = []

    def make(ip: str = "127.0.3.1", **kwargs: Any) -> Dashboard:
        made.append(Dashboard(ip, **kwargs))
        return made[-1]

    yield make
    for server in made:
        server.stop()


class Port:
    """A TCP port on ``ip`` that records in ``seen`` what connects to it (``take``)."""

    def __init__(self, ip: str) -> None:
        self.sock = socket.create_server((ip, 0))
        self.sock.settimeout(0.2)
        self.seen: list[str] = []
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def address(self) -> str:
        return f"{self.sock.getsockname()[0]}:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    self.take(conn)
                except OSError:
                    self.seen.append("(connected)")

    def take(self, conn: socket.socket) -> None:
        self.seen.append("(connected)")

    def stop(self) -> None:
        self.done.set()
        self.sock.close()


class Spy(Port):
    """A "corporate proxy": records the first line of whatever connects (an HTTP request, a
    gRPC CONNECT) and answers 502."""

    def take(self, conn: socket.socket) -> None:
        self.seen.append(conn.recv(65536).decode("latin1").split("\r\n")[0])
        conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    """Every proxy variable set to the spy, NO_PROXY not covering 127.x."""
    proxy = Spy("127.0.0.1")
    for var in PROXY_VARS:
        monkeypatch.setenv(var, f"http://{proxy.address}")
    monkeypatch.setenv("NO_PROXY", "localhost,.internal")
    monkeypatch.setenv("no_proxy", "localhost,.internal")
    yield proxy
    proxy.stop()


@pytest.fixture
def silent() -> Iterator[str]:
    """The URL of a port that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def in_thread(call: Callable[[], Any], wait: float) -> Any:
    """``call``'s result or exception, or a failure when it still runs after ``wait`` s."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(call())
        except Exception as err:  # noqa: BLE001 - handed to the test
            out.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(wait)
    assert not thread.is_alive(), f"still blocked after {wait}s"
    return out[0]


# -- RAY_ADDRESS ---------------------------------------------------------------------------

@pytest.mark.parametrize("var", ["RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"])
def test_ray_address_variables_never_pick_the_cluster(
        var: str, dashboards: Callable[..., Dashboard], monkeypatch: pytest.MonkeyPatch) -> None:
    mine, other = dashboards("127.0.3.1"), dashboards("127.0.3.2")
    monkeypatch.setenv(var, other.url)
    jobs = RayJobs(mine.url, cluster="mine", headers={"Authorization": "Bearer MINE"})
    jid, attached = jobs.submit_or_attach("python train.py", task_key="dag/task", attempt=1)
    assert not attached
    assert mine.jobs == {jid: "PENDING"}
    mine.jobs[jid] = "SUCCEEDED"
    assert jobs.succeeded_result(jid).seconds == 2.0  # logs and info: the SDK's reads
    assert jobs.client.get_address() == mine.url
    assert other.seen == []  # neither the job nor the token went elsewhere
    assert {auth for *_, auth in mine.seen} == {"Bearer MINE"}
    assert ("POST", "/api/jobs/", "Bearer MINE") in mine.seen


# -- proxies ---------------------------------------------------------------------------------

def test_environment_proxies_carry_no_call_to_a_cluster(
        dashboards: Callable[..., Dashboard], spy: Spy) -> None:
    mine = dashboards("127.0.3.1")
    token = {"Authorization": "Bearer SECRET"}
    assert get_json(f"{mine.url}/api/jobs/", headers=token) == []  # probes, reports, reaper
    jobs = RayJobs(mine.url, cluster="mine", headers=token)
    assert jobs.status("raysubmit_x", timeout=3) is None  # requests, our reads
    jid = jobs.submit("python x.py", job_id="raysubmit_y")  # requests, Ray's SDK
    assert jobs.status(jid, timeout=3) is not None
    assert spy.seen == []


@pytest.fixture
def listener() -> Iterator[Port]:
    """A Connect server's port (records a direct dial, then closes it)."""
    made = Port("127.0.3.1")
    yield made
    made.stop()


def test_grpc_to_spark_connect_takes_no_proxy(spy: Spy, listener: Port) -> None:
    """gRPC reads grpc_proxy/https_proxy/http_proxy itself: the readiness probe's channel and a
    Connect session's (pyspark's ChannelBuilder) both dial the server directly."""
    grpc = pytest.importorskip("grpc")
    from ephemeral.backends.local.spark_nodes import connect_accepts_session
    from ephemeral.jobs.spark_jobs import channel_builder

    assert connect_accepts_session(listener.address, timeout=2, token="SECRET") is False
    channel = channel_builder(f"sc://{listener.address}", "SECRET").toChannel()
    try:
        with pytest.raises(grpc.RpcError):
            channel.unary_unary("/spark.connect.SparkConnectService/AnalyzePlan")(b"",
                                                                                  timeout=2)
    finally:
        channel.close()
    assert spy.seen == []
    assert len(listener.seen) >= 2


# -- bounded calls ---------------------------------------------------------------------------

def test_attaching_to_a_dashboard_that_never_answers_ends(silent: str) -> None:
    """A retry's status reads (submit_or_attach) are bounded by READ_TIMEOUT by default."""
    jobs = RayJobs(silent, cluster="c")
    err = in_thread(lambda: jobs.submit_or_attach("python x.py", task_key="k", attempt=1),
                    ray_jobs.READ_TIMEOUT + 3)
    assert isinstance(err, JobError), err
    assert f"did not answer in {ray_jobs.READ_TIMEOUT:g}s" in str(err)


@pytest.fixture
def fast_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_jobs, "CONNECT_TIMEOUT", 0.5)
    monkeypatch.setattr(ray_jobs, "CALL_TIMEOUT", 0.5)


@pytest.mark.usefixtures("fast_calls")
def test_every_call_of_rays_sdk_is_bounded(silent: str,
                                           dashboards: Callable[..., Dashboard]) -> None:
    """The SDK sets no timeout: its version check (building the client, as the trigger does
    first), a submit whose POST is never answered and a logs read all end, as errors."""
    err = in_thread(lambda: RayJobs(silent, cluster="c").client, 5)
    assert isinstance(err, JobSubmissionFailed), err
    half = dashboards("127.0.0.1", hang=("submit", "logs"))
    jobs = RayJobs(half.url, cluster="c")
    err = in_thread(lambda: jobs.submit_or_attach("python x.py", task_key="k", attempt=1), 5)
    assert isinstance(err, JobSubmissionFailed), err
    err = in_thread(lambda: jobs.logs("raysubmit_x"), 5)
    assert isinstance(err, JobError), err


def test_a_deferred_job_task_has_a_deferral_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trigger held in spite of its bounds still ends: Airflow's deferral timeout, the job's
    limit (its timeout, else its cluster's remaining life) plus DEFER_MARGIN, fails the task
    and its teardown deletes the cluster."""
    from airflow.sdk.exceptions import TaskDeferred

    from ephemeral.airflow import operators
    from ephemeral.backends.fake import InMemoryBackend
    from ephemeral.specs import ClusterIdentity, resolve

    backend = InMemoryBackend()
    handle = backend.create(resolve("ray/adhoc-cpu", "ci-cpu"), identity=ClusterIdentity(
        spec_name="adhoc-cpu", dag_id="d", run_id="r", task_id="create"))
    jobs = SimpleNamespace(submit_or_attach=lambda *_a, **_k: ("raysubmit_1", False))
    monkeypatch.setattr(operators, "job_target", lambda *_a: (backend, handle))
    monkeypatch.setattr(operators.RayJobOperator, "_jobs", lambda *_a: jobs)
    monkeypatch.setattr(operators, "RayJobTrigger", lambda **kw: SimpleNamespace(**kw))
    context = {"ti": SimpleNamespace(xcom_push=lambda **_k: None, try_number=1,
                                     task_id="train", map_index=-1),
               "dag": SimpleNamespace(dag_id="d"), "run_id": "r"}
    for job_timeout in (600, None):
        op = operators.RayJobOperator(task_id="train", cluster=handle.model_dump(mode="json"),
                                      entrypoint="python x.py", deferrable=True,
                                      job_timeout=job_timeout)
        with pytest.raises(TaskDeferred) as deferred:
            op.execute(context)
        timeout = deferred.value.timeout
        assert isinstance(timeout, timedelta)
        if job_timeout is not None:
            assert timeout == timedelta(seconds=600 + operators.DEFER_MARGIN)
        else:  # the cluster's remaining lifetime, a few seconds less than its TTL
            ttl = resolve("ray/adhoc-cpu", "ci-cpu").spec.lifetime.ttl_seconds
            assert ttl - 60 < timeout.total_seconds() - operators.DEFER_MARGIN <= ttl



def test_a_deferred_setup_has_a_deferral_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The setup's readiness deadline plus the job tasks' DEFER_MARGIN: a triggerer that never
    runs the trigger (down, stuck) still fails the setup, and the run-end listener deletes."""
    from airflow.sdk.exceptions import TaskDeferred

    from ephemeral.airflow import operators
    from ephemeral.backends.fake import InMemoryBackend

    op, context = setup_on(monkeypatch, InMemoryBackend(ready_after_probes=10**9),
                           deferrable=True, ready_timeout=300)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    timeout = deferred.value.timeout
    assert isinstance(timeout, timedelta)
    assert 290 < timeout.total_seconds() - operators.DEFER_MARGIN <= 300

# -- TLS trust -------------------------------------------------------------------------------

@pytest.mark.parametrize("var", ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
def test_both_http_stacks_trust_the_same_ca(var: str, https: tuple[str, str],  # noqa: F811
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A private CA named in either variable is trusted by the probes' urllib and the Jobs
    client's requests alike (they used to read one each); none named, by neither."""
    url, ca = https
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    assert get_json(f"{url}/api/jobs/") is None
    with pytest.raises(JobError, match="CERTIFICATE_VERIFY_FAILED"):
        RayJobs(url).status("x", timeout=3)
    monkeypatch.setenv(var, ca)
    assert get_json(f"{url}/api/jobs/")  # the dashboard's job list
    assert RayJobs(url).status("x", timeout=3) is None  # its answer: no such job


def test_an_explicit_ca_wins_over_the_environment(https: tuple[str, str],  # noqa: F811
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    url, ca = https
    (tmp_path / "other").mkdir()
    other, *_ = _pki(tmp_path / "other")  # a CA that did not sign the server's certificate
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other))
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    assert get_json(f"{url}/api/jobs/", verify=ca)
    assert RayJobs(url, verify=ca).status("x", timeout=3) is None



def test_a_setup_killed_while_creating_undoes_the_create(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Airflow's SIGTERM handler calls on_kill in the thread running create (the SIGKILL comes
    5 s later): on_kill interrupts create, whose undo on BaseException removes what it made."""
    from airflow.sdk.exceptions import AirflowTaskTerminated

    from ephemeral.backends.fake import InMemoryBackend

    class Starting(InMemoryBackend):
        def create(self, spec: Any, *, identity: Any) -> Any:
            made = super().create(spec, identity=identity)
            try:  # nodes starting when the kill comes
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except BaseException:
                self.delete(made)
                raise
            raise AssertionError("on_kill did not interrupt create")

    backend = Starting()
    op, context = setup_on(monkeypatch, backend, deferrable=False)
    previous = signal.signal(signal.SIGTERM, lambda *_a: op.on_kill())
    try:
        with pytest.raises(AirflowTaskTerminated):
            op.execute(context)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert backend.list_owned() == []


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"jobs\": [",
    b"SSH-2.0-OpenSSH_9.2\r\n",  # not HTTP: a port-forward to the wrong port
], ids=["cut-short", "not-http"])
def test_an_answer_cut_short_or_not_http_is_no_answer(reply: bytes) -> None:
    """A proxy or port-forward that drops the dashboard's answer mid-body: no answer (the
    reaper's activity unknown), not an exception out of every caller."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(reply)

    threading.Thread(target=answer, daemon=True).start()
    try:
        assert get_json(f"http://127.0.0.1:{server.getsockname()[1]}/api/jobs/") is None
    finally:
        server.close()
