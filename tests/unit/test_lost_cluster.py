"""A Ray cluster whose Jobs API keeps failing (its GCS died: Ray 2.60's dashboard then holds a
job read for a minute, answers 500 and exits) is noticed as lost within the grace, by the
trigger and by the synchronous wait alike, when its health check shows it died; a healthy job
outlives a failed or slow read, and a cluster whose reads fail but that shows no sign of death
(the observer's trouble) is waited for up to the ceiling.

The dashboard here is a real HTTP server on a local port that answers the Jobs API's requests
(the SDK's version check, a job's details, a stop, the GCS health check) as told, hangs, or is
closed so its port refuses: the SDK and ``requests`` run unmocked against it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.airflow.triggers import RayJobTrigger
from ephemeral.errors import JobError
from ephemeral.jobs import ray_jobs
from ephemeral.jobs.ray_jobs import ClusterLost, JobWatch, RayJobs
from ephemeral.jobs.results import JobStatus
from tests.json_http import JsonHandler

JOB = "raysubmit_lost"
# The rule, at test speed
FAST: dict[str, Any] = {"grace": 1.0, "reads": 3, "read_timeout": 0.3, "ceiling": 4.0}


class Dashboard(ThreadingHTTPServer):
    """Answers each read of the job with the next of ``script`` (then its last one forever):
    a job status, "500", "slow" (RUNNING after ``slow`` seconds) or "hang" (nothing until the
    test ends). Its GCS health check answers as ``gcs`` says: "alive" (200), "down" (Ray's 503)
    or "hang"; a stop request as ``stop`` says: "ok", "500" or "hang"."""

    daemon_threads = True

    def __init__(self, script: list[str], gcs_alive: bool = True, *, gcs: str | None = None,
                 stop: str = "hang", slow: float = 1.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = list(script)
        self.gcs = gcs or ("alive" if gcs_alive else "down")
        self.stop = stop
        self.slow = slow
        self.reads = 0
        self.released = threading.Event()  # ends the hanging answers
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a slow answer: its broken pipe is expected

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_answer(self) -> str:
        self.reads += 1
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def die(self) -> None:
        """Stop listening: the port refuses, as a dead dashboard's does."""
        self.shutdown()
        self.server_close()
        self.released.set()


class _Handler(JsonHandler):
    server: Dashboard

    def do_GET(self) -> None:
        if self.path == "/api/version":
            self._send(200, {"version": "4", "ray_version": "2.60.0", "ray_commit": "x"})
        elif self.path == "/api/gcs_healthz":
            if self.server.gcs == "hang":
                self.server.released.wait(60.0)
            if self.server.gcs == "alive":
                self._send(200, "success")
            else:  # what Ray 2.60's dashboard answers when its GCS does not
                self.send_error(503, "Health check failed: GCS unreachable")
        elif self.path == f"/api/jobs/{JOB}":
            answer = self.server.next_answer()
            if answer in ("500", "401"):
                self.send_error(int(answer))
                return
            if answer == "slow":
                time.sleep(self.server.slow)
            elif answer == "hang":
                self.server.released.wait(60.0)
            if answer in ("slow", "hang"):
                answer = JobStatus.RUNNING.value
            self._send(200, {"type": "SUBMISSION", "job_id": None, "submission_id": JOB,
                             "entrypoint": "python -c 'sleep'", "status": answer})
        else:
            self.send_error(404, f"Job {self.path.rsplit('/', 1)[-1]} does not exist")

    def do_POST(self) -> None:
        if self.path != f"/api/jobs/{JOB}/stop":
            self.send_error(404, "no such route")
        elif self.server.stop == "hang":  # a dashboard whose GCS is gone holds it
            self.server.released.wait(60.0)
        elif self.server.stop == "500":
            self.send_error(500, "Internal Server Error")
        else:
            self.server.script = [JobStatus.STOPPED.value]
            self._send(200, {"stopped": True})


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Dashboard] = []

    def start(script: list[str], gcs_alive: bool = True, **how: Any) -> Dashboard:
        started.append(Dashboard(script, gcs_alive, **how))
        return started[-1]

    yield start
    for server in started:
        server.released.set()
        if server.socket.fileno() != -1:
            server.die()


def _watch_until_lost(watch: JobWatch, pause: float = 0.05) -> tuple[float, ClusterLost]:
    """Seconds until the watch gave up, and why; each read (and the health check after it)
    must come back within its bound."""
    started = time.monotonic()
    while True:
        read = time.monotonic()
        try:
            watch.status()
        except ClusterLost as err:
            return time.monotonic() - started, err
        assert time.monotonic() - read < 2 * watch.read_timeout + 0.5, "a read was not bounded"
        assert time.monotonic() - started < 30, "the cluster was never counted lost"
        time.sleep(pause)


def test_the_rule_waits_out_a_hiccup_but_not_a_dead_gcs() -> None:
    # The grace is a few polls: more than one hiccup, well under the minute a dead GCS takes.
    assert 2 * ray_jobs.READ_TIMEOUT <= ray_jobs.LOST_GRACE <= 15
    assert ray_jobs.LOST_READS >= 2
    # Without evidence of death the waiter holds on for minutes: far past any hiccup.
    assert ray_jobs.LOST_CEILING >= 20 * ray_jobs.LOST_GRACE


def test_a_healthy_job_outlives_failed_and_slow_reads(serve: Any) -> None:
    dash = serve(["RUNNING", "500", "RUNNING", "slow", "RUNNING", "500", "500", "RUNNING",
                  "slow", "500", "SUCCEEDED"])
    watch = JobWatch(RayJobs(dash.url, cluster="c1"), JOB, **FAST)
    seen = []
    while (st := watch.status()) is not None and not st.terminal:
        seen.append(st)
        time.sleep(0.1)
    assert st is JobStatus.SUCCEEDED
    assert set(seen) == {JobStatus.RUNNING}  # a failed read stands for the last status read
    assert dash.reads == 11


def test_with_the_real_constants_two_failed_reads_are_waited_out(serve: Any) -> None:
    dash = serve(["RUNNING", "500", "500", "RUNNING"])
    watch = JobWatch(RayJobs(dash.url, cluster="c1"), JOB)
    assert [watch.status() for _ in range(4)] == [JobStatus.RUNNING] * 4


def test_a_dashboard_that_refuses_is_a_lost_cluster_after_the_grace(serve: Any) -> None:
    dash = serve(["RUNNING"], gcs_alive=False)
    watch = JobWatch(RayJobs(dash.url, cluster="c1"), JOB, **FAST)
    assert watch.status() is JobStatus.RUNNING
    dash.die()
    seconds, err = _watch_until_lost(watch)
    assert FAST["grace"] <= seconds < FAST["grace"] + 1.5
    assert "cluster c1 is lost" in str(err)
    assert JOB in str(err)
    assert "its dashboard refuses connections" in str(err)
    assert "ceiling" not in str(err)


@pytest.mark.parametrize(("answer", "read_failed", "health"), [
    # What Ray 2.60 does with its GCS gone: the read hangs (bounded); the health check says why.
    ("hang", "the Ray Jobs API did not answer in 0.3s", "its dashboard says its GCS is down (503"),
    ("500", "answered 500", "GCS is down"),
])
def test_failed_reads_and_a_dead_gcs_are_a_lost_cluster_after_the_grace(
        serve: Any, answer: str, read_failed: str, health: str) -> None:
    dash = serve(["RUNNING", answer], gcs_alive=False)
    watch = JobWatch(RayJobs(dash.url, cluster="c1"), JOB, **FAST)
    assert watch.status() is JobStatus.RUNNING
    seconds, err = _watch_until_lost(watch)
    assert FAST["grace"] <= seconds < FAST["grace"] + 1.5
    assert read_failed in str(err)
    assert health in str(err)


@pytest.mark.parametrize("gcs", ["alive", "hang"])
def test_a_slow_but_healthy_dashboard_is_not_lost_until_the_ceiling(serve: Any,
                                                                    gcs: str) -> None:
    """Every read answers right but after the read bound (a loaded head, a slow proxy), and
    the health check says alive or does not answer either: no evidence the cluster died, so
    it is waited for well past the grace, with a warning each grace, and lost at the ceiling."""
    dash = serve(["RUNNING", "slow"], gcs=gcs, slow=2 * FAST["read_timeout"])
    warnings: list[str] = []
    watch = JobWatch(RayJobs(dash.url, cluster="c1"), JOB, **FAST, warn=warnings.append)
    assert watch.status() is JobStatus.RUNNING
    seconds, err = _watch_until_lost(watch)
    assert seconds >= FAST["ceiling"] >= 3 * FAST["grace"]
    assert seconds < FAST["ceiling"] + 1.5
    assert "ceiling" in str(err)
    # What the health check said, each grace and at the end (on a loaded host a 0.3 s check of
    # a live GCS can time out once: that is no evidence either, and says so)
    said = "GCS is alive" if gcs == "alive" else "health check does not answer"
    assert any(said in text for text in [*warnings, str(err)])
    assert "GCS is down" not in " ".join([*warnings, str(err)])
    unproven = [w for w in warnings if "not counted lost" in w]
    assert len(unproven) >= FAST["ceiling"] // FAST["grace"] - 1  # one each grace
    assert len(unproven) <= FAST["ceiling"] // FAST["grace"]


def test_a_read_leaves_no_thread_behind(serve: Any) -> None:
    """A dashboard that accepts and never answers: each bounded read fails in its bound and
    leaves no thread waiting on the answer (the test server's own threads aside)."""
    def ours() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if "process_request" not in t.name}

    dash = serve(["hang"])
    jobs = RayJobs(dash.url, cluster="c1")
    before = ours()
    for _ in range(12):
        with pytest.raises(JobError, match=r"did not answer in 0\.2s"):
            jobs.status(JOB, timeout=0.2)
    assert ours() == before
    assert dash.reads == 12


def test_failures_must_be_in_a_row(serve: Any) -> None:
    # Failures a good read separates never add up, however long the job runs.
    dash = serve(["RUNNING"] + ["500", "500", "RUNNING"] * 6 + ["SUCCEEDED"])
    watch = JobWatch(RayJobs(dash.url, cluster="c1"), JOB, grace=0.2, reads=3,
                     read_timeout=0.3)
    while (st := watch.status()) is not None and not st.terminal:
        time.sleep(0.15)
    assert st is JobStatus.SUCCEEDED


def test_the_synchronous_wait_gives_up_by_the_same_rule(serve: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(ray_jobs, "LOST_GRACE", 1.0)
    monkeypatch.setattr(ray_jobs, "READ_TIMEOUT", 0.3)
    dash = serve(["RUNNING", "RUNNING", "RUNNING", "hang"], gcs_alive=False)
    started = time.monotonic()
    with pytest.raises(ClusterLost, match="GCS is down"):
        RayJobs(dash.url, cluster="c1").follow(JOB)
    assert time.monotonic() - started < 5


def _first_event(trigger: RayJobTrigger) -> dict[str, Any]:
    async def first() -> Any:
        return await anext(trigger.run())

    return dict(asyncio.run(asyncio.wait_for(first(), timeout=30)).payload)


def _trigger(dash: Dashboard, monkeypatch: Any) -> RayJobTrigger:
    monkeypatch.setattr(RayJobTrigger, "_jobs", lambda self: RayJobs(dash.url, cluster="c1"))
    return RayJobTrigger(handle={"name": "c1"}, backend="local", job_id=JOB, poll_interval=0.05)


def test_the_trigger_fails_a_lost_cluster_with_its_cause(serve: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(ray_jobs, "LOST_GRACE", 1.0)
    monkeypatch.setattr(ray_jobs, "READ_TIMEOUT", 0.3)
    dash = serve(["RUNNING", "RUNNING", "hang"], gcs_alive=False)
    started = time.monotonic()
    event = _first_event(_trigger(dash, monkeypatch))
    assert event["status"] == "ERROR"
    assert "cluster c1 is lost" in event["message"]
    assert "its dashboard says its GCS is down" in event["message"]
    assert time.monotonic() - started < 5


def test_hung_triggers_do_not_starve_a_healthy_one(serve: Any, monkeypatch: Any) -> None:
    """A dozen triggers whose dashboard never answers hold a thread for each bounded read; a
    healthy trigger in the same triggerer still sees its job end at once."""
    monkeypatch.setattr(ray_jobs, "READ_TIMEOUT", 2.0)
    hung = serve(["hang"])
    healthy = serve(["RUNNING", "SUCCEEDED"])

    def trigger(dash: Dashboard) -> RayJobTrigger:
        made = RayJobTrigger(handle={"name": "c1"}, backend="local", job_id=JOB,
                             poll_interval=0.05)
        made._jobs = lambda: RayJobs(dash.url, cluster="c1")  # type: ignore[method-assign]
        # In a triggerer, as the triggerer sets it: its cancels below are the triggerer's
        # (a cancel in line, without one, is a Ctrl-C, which stops the job).
        made.task_instance = SimpleNamespace(  # type: ignore[assignment]
            dag_id="d", run_id="r", task_id="work", map_index=-1)
        return made

    async def first(dash: Dashboard) -> Any:
        return await anext(trigger(dash).run())

    async def main() -> tuple[Any, float]:
        waiting = [asyncio.create_task(first(hung)) for _ in range(12)]
        await asyncio.sleep(0.5)  # all of them inside a read
        started = time.monotonic()
        event = await asyncio.wait_for(first(healthy), timeout=20)
        took = time.monotonic() - started
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        return event, took

    event, took = asyncio.run(main())
    assert event.payload == {"status": "SUCCEEDED", "job_id": JOB}
    assert took < 1.5


def test_the_trigger_waits_out_a_failed_read(serve: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(ray_jobs, "LOST_GRACE", 1.0)
    monkeypatch.setattr(ray_jobs, "READ_TIMEOUT", 0.3)
    dash = serve(["RUNNING", "500", "slow", "RUNNING", "SUCCEEDED"])
    event = _first_event(_trigger(dash, monkeypatch))
    assert event == {"status": "SUCCEEDED", "job_id": JOB}


def test_stopping_a_job_on_a_lost_cluster_fails_in_seconds(
        serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job timeout on a lost cluster: the stop request is bounded too, and its failure is
    an error the trigger reports (the teardown's deletion ends the job), not a minute's hang."""
    monkeypatch.setattr(ray_jobs, "STOP_TIMEOUT", 0.5)
    monkeypatch.setattr(ray_jobs, "READ_TIMEOUT", 0.3)
    dashboard = serve(["hang"], gcs_alive=False)
    started = time.monotonic()
    with pytest.raises(JobError, match=f"cannot stop job {JOB}: .*did not answer in 0.5s"):
        RayJobs(dashboard.url).stop(JOB)
    assert time.monotonic() - started < 5


def test_stop_through_the_rest_api(serve: Any) -> None:
    stops = serve(["RUNNING"], stop="ok")
    assert RayJobs(stops.url).stop(JOB) is JobStatus.STOPPED
    assert RayJobs(stops.url).stop("raysubmit_other") is None  # Ray's 404: no such job
    assert RayJobs(stops.url).status("raysubmit_other") is None


def test_a_job_timeout_whose_stop_fails_is_still_a_timeout(serve: Any) -> None:
    """The stop's failure is a note on the JobTimeout, not the error that replaces it."""
    from ephemeral.errors import JobTimeout

    dash = serve(["RUNNING"], stop="500")
    with pytest.raises(JobTimeout, match=f"^job {JOB} did not finish in 0s\n") as caught:
        RayJobs(dash.url, cluster="c1").follow(JOB, timeout=0.3)
    assert any("stopping it failed: cannot stop job" in note and "answered 500" in note
               for note in caught.value.__notes__)


def test_refused_credentials_are_renewed_not_counted_against_the_cluster(serve: Any) -> None:
    """A Kubernetes token that expired mid-job (the API-server proxy answers 401): the watch
    asks for access again and reads on; the healthy cluster is not counted lost."""
    expired, renewed = serve(["401"]), serve([JobStatus.RUNNING.value])
    watch = JobWatch(RayJobs(expired.url), JOB, **FAST,
                     renew=lambda: RayJobs(renewed.url))
    for _ in range(5):
        assert watch.status() is JobStatus.RUNNING
    assert expired.reads == 1
    assert renewed.reads == 5
    assert watch._failures == 0
