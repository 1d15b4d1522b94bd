"""``ephemeral submit`` stops a job only if it submitted it, attaches only to a job of the same
request, checks --job-id before anything is submitted, and reports a failed job's exit code.

The cluster is the in-memory backend's; its Jobs API is a fake at the HTTP level (``_request``:
a job's details as Ray answers them, and its stop) with the SDK's submit, logs and log stream
recorded, so ``RayJobs``' own status, attach, stop and follow run unchanged. No engine runs."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote

import pytest
import requests
from typer.testing import CliRunner

from ephemeral.cli import main as cli_main
from ephemeral.errors import JobFailed, JobRefused
from ephemeral.jobs import ray_jobs
from ephemeral.jobs.ray_jobs import RayJobs, job_id_problem, new_submission_id
from ephemeral.jobs.results import JobStatus


class FakeJobsApi(RayJobs):
    """A cluster's Jobs API: submission id -> the job's details, as Ray keeps them. A submitted
    job ends as ``ends`` says (None: it runs until stopped), its driver's exit code
    ``driver_exit``; ``before`` and ``after`` run as the submission is sent, and once Ray has
    the job."""

    def __init__(self) -> None:
        super().__init__("http://jobs.invalid:8265", cluster="c")
        self.jobs: dict[str, dict[str, Any]] = {}
        self.submits: list[str] = []
        self.stops: list[str] = []
        self.ends: JobStatus | None = JobStatus.SUCCEEDED
        self.driver_exit: int | None = 0
        self.logs_text = "hello\n"
        self.stream_fails = False
        self.stream_text: str | None = None  # what the log stream delivers (None: the logs)
        self.before: Callable[[str], None] | None = None
        self.after: Callable[[str], None] | None = None

    def add(self, jid: str, status: JobStatus, entrypoint: str, **details: Any) -> None:
        self.jobs[jid] = {"status": status.value, "entrypoint": entrypoint,
                          "metadata": {}, "driver_exit_code": None, **details}

    def _request(self, method: str, path: str, timeout: float | None) -> requests.Response:
        parts = path.split("/")  # /api/jobs/{id}[/stop], the id quoted
        jid = unquote(parts[3])
        job = self.jobs.get(jid)
        resp = requests.Response()
        resp.status_code = 200 if job else 404
        if method == "POST":
            assert parts[4:] == ["stop"], path
            self.stops.append(jid)
            if job and not JobStatus(job["status"]).terminal:
                job["status"] = JobStatus.STOPPED.value
        else:
            assert method == "GET", path
            assert len(parts) == 4, path
        resp._content = json.dumps(job or {"detail": f"Job {jid} does not exist"}).encode()
        return resp

    @property
    def client(self) -> Any:
        def submit_job(**kw: Any) -> str:
            jid = kw["submission_id"]
            self.submits.append(jid)
            if self.before:
                self.before(jid)
            self.add(jid, self.ends or JobStatus.RUNNING, kw["entrypoint"],
                     metadata=kw["metadata"], runtime_env=kw["runtime_env"],
                     driver_exit_code=self.driver_exit if self.ends else None)
            if self.after:
                self.after(jid)
            return str(jid)

        async def tail_job_logs(_jid: str) -> AsyncIterator[str]:
            if self.stream_fails:
                raise ConnectionError("WebSocket connection closed unexpectedly")
            yield self.logs_text if self.stream_text is None else self.stream_text

        return SimpleNamespace(submit_job=submit_job, get_job_logs=lambda _j: self.logs_text,
                               tail_job_logs=tail_job_logs)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeJobsApi:
    from tests.unit.test_cli_interrupts import _ray_cluster

    _ray_cluster(monkeypatch)  # an in-memory Ray cluster "c"
    fake = FakeJobsApi()
    monkeypatch.setattr(ray_jobs, "ray_jobs_for", lambda *_a: fake)
    monkeypatch.setattr(cli_main, "INTERRUPT_SETTLE", 0.5)
    return fake


def submit(*args: str) -> Any:
    return CliRunner().invoke(cli_main.app, ["submit", "c", *args])


def said(result: Any) -> str:
    return " ".join(result.stderr.split())


# -- 1. an interrupt while the job is sent stops it ------------------------------------------

def _interrupt(_jid: str) -> None:
    raise KeyboardInterrupt


def test_an_interrupt_while_the_job_is_sent_stops_the_job_ray_made(api: FakeJobsApi) -> None:
    """Ray made the job, the answer never came back: the id was the command's own, so it
    stops that job (before, nothing knew its id and it ran past --timeout)."""
    api.ends, api.after = None, _interrupt
    result = submit("--timeout", "600", "--", "python", "x.py")
    assert result.exit_code != 0
    [jid] = api.submits
    assert re.fullmatch(r"raysubmit_[A-Za-z0-9]{16}", jid)
    assert api.jobs[jid]["status"] == JobStatus.STOPPED.value
    assert f"interrupted: Ray job {jid} on c was stopped" in said(result)


def test_an_interrupt_before_ray_made_the_job_stops_nothing_and_says_so(
        api: FakeJobsApi) -> None:
    api.before = _interrupt
    result = submit("--", "python", "x.py")
    assert result.exit_code != 0
    [jid] = api.submits
    assert jid not in api.jobs
    assert set(api.stops) == {jid}
    assert len(api.stops) > 1  # asked again while a submission may land
    assert f"Ray job {jid} on c was never created: nothing to stop" in said(result)


def test_a_submission_that_lands_after_the_interrupt_is_stopped_too(api: FakeJobsApi) -> None:
    def lands_later(jid: str) -> None:
        threading.Timer(0.2, api.add, (jid, JobStatus.RUNNING, "python x.py")).start()
        raise KeyboardInterrupt

    api.before = lands_later
    result = submit("--", "python", "x.py")
    [jid] = api.submits
    assert api.jobs[jid]["status"] == JobStatus.STOPPED.value, said(result)
    assert f"Ray job {jid} on c was stopped" in said(result)


# -- 2. a timeout stops only a job the command submitted -------------------------------------

def test_a_timeout_leaves_a_job_it_attached_to_running(api: FakeJobsApi) -> None:
    api.ends = None
    assert submit("--job-id", "nightly-etl", "--timeout", "0.3", "--", "python", "x.py"
                  ).exit_code == 1  # submitted here: stopped
    assert api.jobs["nightly-etl"]["status"] == JobStatus.STOPPED.value
    api.jobs["nightly-etl"]["status"] = JobStatus.RUNNING.value  # as someone else's job
    api.stops.clear()
    result = submit("--job-id", "nightly-etl", "--timeout", "0.3", "--json", "--", "python",
                    "x.py")
    assert result.exit_code == 1
    assert api.stops == []
    assert api.jobs["nightly-etl"]["status"] == JobStatus.RUNNING.value
    doc = json.loads(result.stdout)
    assert doc["error"] == "JobTimeout"
    assert "attached to, not submitted here: left running" in doc["message"]
    assert api.submits == ["nightly-etl"]


def test_follow_stops_on_timeout_only_a_job_it_owns(api: FakeJobsApi) -> None:
    from ephemeral.errors import JobTimeout

    api.add("theirs", JobStatus.RUNNING, "python x.py")
    with pytest.raises(JobTimeout, match="left running"):
        api.follow("theirs", timeout=0.2, owned=False)
    assert api.stops == []
    with pytest.raises(JobTimeout, match="it was stopped"):
        api.follow("theirs", timeout=0.2)
    assert api.stops == ["theirs"]


# -- 3. attach only to the same request ------------------------------------------------------

@pytest.mark.parametrize("other", [
    ["--", "python", "y.py"],
    ["--env", "MODE=fast", "--", "python", "x.py"],
    ["--pip", "numpy", "--", "python", "x.py"],
])
def test_job_id_of_another_requests_job_is_refused(api: FakeJobsApi, other: list[str]) -> None:
    assert submit("--job-id", "etl-1", "--", "python", "x.py").exit_code == 0
    again = submit("--job-id", "etl-1", "--", "python", "x.py")
    assert again.exit_code == 0, again.output  # the same request: attached
    assert "attaching to existing job etl-1" in said(again)
    result = submit("--job-id", "etl-1", "--json", *other)
    assert result.exit_code == 2, result.output
    doc = json.loads(result.stdout)
    assert doc["error"] == "JobIdTaken"
    assert doc["message"].startswith("--job-id etl-1: job etl-1 on cluster c runs another")
    assert api.submits == ["etl-1"]  # nothing else submitted


def test_a_job_submitted_without_a_digest_is_judged_by_its_entrypoint(
        api: FakeJobsApi) -> None:
    api.add("old", JobStatus.SUCCEEDED, "python x.py")
    assert submit("--job-id", "old", "--", "python", "x.py").exit_code == 0
    assert submit("--job-id", "old", "--", "python", "y.py").exit_code == 2
    assert api.submits == []


# -- 4. --job-id is checked before anything is submitted -------------------------------------

@pytest.mark.parametrize("job_id", ["nightly/../etl", "a b", "etl?x=1", "é", "", "x" * 65])
def test_a_bad_job_id_is_refused_before_anything(api: FakeJobsApi,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 job_id: str) -> None:
    monkeypatch.setattr(ray_jobs, "ray_jobs_for", lambda *_a: pytest.fail("looked up"))
    result = submit("--job-id", job_id, "--json", "--", "python", "x.py")
    assert result.exit_code == 2, result.output
    doc = json.loads(result.stdout)
    assert doc["error"] == "RequestError"
    assert "--job-id: " in doc["message"]


def test_the_submission_id_rule() -> None:
    assert job_id_problem("raysubmit_4LamXRuQpYdSMg7J") is None
    assert job_id_problem("eph-0123456789abcdef-a1") is None
    assert job_id_problem(new_submission_id()) is None
    assert new_submission_id() != new_submission_id()
    with pytest.raises(JobRefused, match="job_id: 'a/b' is not a Ray submission id"):
        FakeJobsApi().submit("python x.py", job_id="a/b")


def test_an_id_is_quoted_in_every_url_built_here(monkeypatch: pytest.MonkeyPatch) -> None:
    paths: list[str] = []

    def send(_self: RayJobs, method: str, path: str, *_a: Any, **_k: Any) -> Any:
        paths.append(path)
        resp = requests.Response()
        resp.status_code = 404
        resp._content = b"{}"
        return resp

    monkeypatch.setattr(RayJobs, "_send", send)
    jobs = RayJobs("http://jobs.invalid:8265")
    jobs.status("a/../b?c")
    jobs.stop("a/../b?c")
    jobs.exit_code("a/../b?c")
    assert len(paths) == 3, paths
    assert all(p.startswith("/api/jobs/a%2F..%2Fb%3Fc") for p in paths), paths


# -- 5. a failed job's exit code, and its tail shown once ------------------------------------

def test_a_failed_jobs_exit_code_is_reported(api: FakeJobsApi) -> None:
    api.ends, api.driver_exit, api.logs_text = JobStatus.FAILED, 3, "boom\n"
    result = submit("--json", "--", "python", "x.py")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["error"] == "JobFailed"
    assert (doc["status"], doc["exit_code"]) == ("FAILED", 3)
    assert doc["job_id"] == api.submits[0]
    assert "ended FAILED (exit code 3); last log lines:\nboom" in doc["message"]


@pytest.mark.parametrize("stream", ["whole", "broke", "closed early"])
def test_the_log_tail_is_shown_once(api: FakeJobsApi, stream: str) -> None:
    api.ends, api.driver_exit, api.logs_text = JobStatus.FAILED, 3, "starting\nboom\n"
    api.stream_fails = stream == "broke"
    if stream == "closed early":  # the stream ended cleanly before the job's last line
        api.stream_text = "starting\n"
    result = submit("--", "python", "x.py")
    assert result.exit_code == 1
    assert f"job {api.submits[0]} ended FAILED (exit code 3)" in said(result)
    # streamed to stdout as it came; the error repeats the tail only when the stream did not
    # deliver the job's last line
    assert result.stdout.count("boom") == (1 if stream == "whole" else 0)
    assert result.stderr.count("boom") == (0 if stream == "whole" else 1)


def test_spark_submit_reports_its_exit_code_in_the_same_field(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.backends.fake import InMemoryBackend
    from ephemeral.jobs import spark_jobs
    from ephemeral.specs import ClusterIdentity, resolve

    fake_bin = tmp_path / "spark-submit"
    fake_bin.write_text("#!/bin/sh\necho 'boom'\nexit 4\n")
    fake_bin.chmod(0o755)
    monkeypatch.setattr(spark_jobs, "spark_submit_bin", lambda: str(fake_bin))
    monkeypatch.setattr(spark_jobs, "spark_auth_for", lambda *_a: None)
    handle = InMemoryBackend().create(resolve("spark/etl", "ci-cpu"),
                                      identity=ClusterIdentity.manual("etl", "etl-1"))
    monkeypatch.setattr(cli_main, "_cluster", lambda *_a: handle)
    app = tmp_path / "app.py"
    app.write_text("print(1)\n")
    run = CliRunner().invoke(cli_main.app, ["spark-submit", "etl-1", str(app), "--json"])
    assert run.exit_code == 1, run.output
    doc = json.loads(run.stdout)
    assert (doc["error"], doc["status"], doc["exit_code"]) == ("JobFailed", "FAILED", 4)
    assert "ended FAILED (exit code 4)" in doc["message"]
    human = CliRunner().invoke(cli_main.app, ["spark-submit", "etl-1", str(app)])
    assert human.stdout.count("boom") == 1
    assert "boom" not in human.stderr
    assert "ended FAILED (exit code 4)" in human.stderr
    with pytest.raises(JobFailed) as failed:
        spark_jobs.spark_submit("spark://127.0.0.1:7077", str(app))
    assert failed.value.facts["exit_code"] == 4


# -- 6. a job goes only to a ready cluster ---------------------------------------------------

def _backend_of(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> Any:
    from ephemeral.backends.fake import InMemoryBackend
    from ephemeral.specs import ClusterIdentity
    from tests.conftest import small

    backend = InMemoryBackend(**kw)
    spec = small("ray/adhoc-cpu", replicas=1)
    backend.create(spec, identity=ClusterIdentity.manual(spec.spec.name, "c"))
    monkeypatch.setattr(cli_main, "_backend", lambda _name: backend)
    return backend


def test_a_job_for_a_starting_cluster_waits_for_it(api: FakeJobsApi,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`ephemeral up c` still running in another terminal: the job waits, as `up` does, then
    runs; it is not sent to a Jobs API that does not answer yet."""
    backend = _backend_of(monkeypatch, ready_after_probes=3)
    result = submit("--", "python", "x.py")
    assert result.exit_code == 0, result.stderr
    assert "cluster c is starting (1/2 nodes ready); waiting up to" in said(result)
    assert backend._clusters["c"].probes >= 3
    assert len(api.submits) == 1


@pytest.mark.parametrize("state", ["failed", "deleting", "gone"])
def test_a_job_for_a_cluster_that_is_not_there_names_its_state(
        api: FakeJobsApi, monkeypatch: pytest.MonkeyPatch, state: str) -> None:
    from ephemeral.backends.base import ClusterStatus, Phase

    backend = _backend_of(monkeypatch, fail_nodes=state == "failed")
    if state != "failed":
        phase = Phase.DELETING if state == "deleting" else Phase.GONE
        monkeypatch.setattr(backend, "probe", lambda _h: ClusterStatus(
            phase=phase, message="being deleted" if state == "deleting" else "no such cluster"))
    result = submit("--json", "--", "python", "x.py")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["error"] == ("ClusterFailed" if state == "failed" else "ClusterNotFound")
    expected = "failed; nothing was submitted" if state == "failed" else (
        f"is {state} (")
    assert f"cluster 'c' {expected}" in doc["message"]
    assert api.submits == []
