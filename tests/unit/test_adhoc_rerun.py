"""A job task attaches only to a job that runs its own request.

Job ids are deterministic per (cluster, task, attempt), so a retry finds its earlier attempt's
job. A run deleted from the UI and triggered again with the same run id adopts the cluster the
first run left (same identity) and finds the first run's job under the same id: following it
would report another entrypoint's result as this run's. The submitted job carries a digest of
its request (entrypoint, runtime_env) in its metadata; an attaching task compares it first.

The Jobs API here is a fake at the HTTP level (``_request``: a job's details as Ray answers
them) with the SDK's submit recorded, so ``status`` and the details read run unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote

import pytest
import requests

from ephemeral.jobs.ray_jobs import REQUEST_KEY, JobIdTaken, RayJobs, request_digest
from ephemeral.jobs.results import JobStatus, submission_id

TASK = "ray_job_adhoc/manual__same/run_job/-1"


class FakeJobsApi(RayJobs):
    """A cluster's Jobs API: submission id -> the job's details as ``GET /api/jobs/{id}``."""

    def __init__(self, cluster: str = "eph-adhoc-cpu-1") -> None:
        super().__init__("http://jobs.invalid:8265", cluster=cluster)
        self.jobs: dict[str, dict[str, Any]] = {}

    def _request(self, method: str, path: str, timeout: float | None) -> requests.Response:
        assert method == "GET"
        job = self.jobs.get(unquote(path.rsplit("/", 1)[1]))
        resp = requests.Response()
        resp.status_code = 200 if job else 404
        resp._content = json.dumps(job or {"detail": "Job does not exist"}).encode()
        return resp

    @property
    def client(self) -> Any:
        def submit_job(**kw: Any) -> str:
            self.jobs[kw["submission_id"]] = {
                "status": JobStatus.RUNNING.value, "entrypoint": kw["entrypoint"],
                "runtime_env": kw["runtime_env"], "metadata": kw["metadata"]}
            return str(kw["submission_id"])

        return SimpleNamespace(submit_job=submit_job)


def test_the_submitted_job_carries_its_requests_digest_and_a_retry_attaches(
        tmp_path: Path) -> None:
    api = FakeJobsApi()
    env = {"pip": ["numpy"]}
    jid, attached = api.submit_or_attach("python hello_ray.py", task_key=TASK, attempt=1,
                                         working_dir=str(tmp_path), runtime_env=env)
    assert (jid, attached) == (submission_id(api.cluster, TASK, 1), False)
    assert api.jobs[jid]["metadata"] == {
        REQUEST_KEY: request_digest("python hello_ray.py", env, str(tmp_path))}
    # The task's retry (attempt 2), same request: attaches to attempt 1's running job.
    assert api.submit_or_attach("python hello_ray.py", task_key=TASK, attempt=2,
                                working_dir=str(tmp_path), runtime_env=env) == (jid, True)
    # Another working_dir is another request.
    with pytest.raises(JobIdTaken, match="another runtime_env"):
        api.submit_or_attach("python hello_ray.py", task_key=TASK, attempt=2,
                             working_dir=str(tmp_path / "elsewhere"), runtime_env=env)


@pytest.mark.parametrize(("entrypoint", "env", "what"), [
    ("python train_ddp.py --steps 5", {"pip": ["numpy"]}, "another entrypoint"),
    ("python hello_ray.py", {"pip": ["pandas"]}, "another runtime_env"),
])
def test_a_job_of_another_request_under_the_same_id_is_never_followed(
        entrypoint: str, env: dict[str, Any], what: str) -> None:
    api = FakeJobsApi()
    first, _ = api.submit_or_attach("python hello_ray.py", task_key=TASK, attempt=1,
                                    runtime_env={"pip": ["numpy"]})
    for status in (JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED):
        api.jobs[first]["status"] = status.value
        with pytest.raises(JobIdTaken) as err:
            api.submit_or_attach(entrypoint, task_key=TASK, attempt=1, runtime_env=env)
        text = str(err.value)
        assert f"job {first} on cluster {api.cluster} runs {what}" in text
        assert "'python hello_ray.py'" in text  # what it runs
    assert list(api.jobs) == [first]  # nothing else was submitted


def test_a_job_submitted_without_a_digest_is_judged_by_its_entrypoint() -> None:
    api = FakeJobsApi()
    jid = submission_id(api.cluster, TASK, 1)
    api.jobs[jid] = {"status": "RUNNING", "entrypoint": "python hello_ray.py", "metadata": {}}
    assert api.submit_or_attach("python hello_ray.py", task_key=TASK, attempt=1) == (jid, True)
    with pytest.raises(JobIdTaken, match="another entrypoint"):
        api.submit_or_attach("python evaluate.py", task_key=TASK, attempt=1)


def test_a_run_triggered_again_with_the_same_run_id_fails_naming_the_old_job(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reviewer's scenario through the operators on the fake backend: run 1 is deleted
    from the UI while its job runs (no teardown), run 2 comes with the same run id and another
    entrypoint, adopts run 1's cluster and must not follow run 1's job."""
    from airflow.sdk.exceptions import AirflowFailException

    import ephemeral.airflow.operators as ops
    from ephemeral.adhoc import validate_request
    from ephemeral.errors import JobError

    api = FakeJobsApi()
    monkeypatch.setattr(ops, "ray_jobs_for", lambda handle, backend: api)

    def follow(self: RayJobs, jid: str, **_: Any) -> Any:
        raise JobError(f"following {jid}")  # run 1's task dies here, its job running on

    monkeypatch.setattr(FakeJobsApi, "follow", follow)

    def ctx(task_id: str) -> dict[str, Any]:
        ti = SimpleNamespace(task_id=task_id, map_index=-1, try_number=1,
                             xcom_push=lambda key, value: None)
        return {"dag": SimpleNamespace(dag_id="ray_job_adhoc"), "run_id": "manual__same",
                "ti": ti}

    def run(entrypoint: str) -> Any:
        req = validate_request({"cluster_spec": "ray/adhoc-cpu", "profile": None, "workers": 2,
                                "gpus_per_worker": None, "entrypoint": entrypoint, "pip": None,
                                "timeout_minutes": 60})
        handle = ops.CreateClusterOperator(
            task_id="create_cluster", spec=req["spec"], overrides=req["overrides"],
            backend="fake", deferrable=False).execute(ctx("create_cluster"))
        api.cluster = handle["name"]
        return ops.RayJobOperator(task_id="run_job", cluster=handle, entrypoint=req["entrypoint"],
                                  runtime_env=req["runtime_env"], job_timeout=req["timeout_s"],
                                  backend="fake", deferrable=False).execute(ctx("run_job"))

    with pytest.raises(Exception, match="following eph-"):
        run("python hello_ray.py")
    [first] = api.jobs
    with pytest.raises(AirflowFailException) as err:
        run("python train_ddp.py --steps 5")
    assert f"job {first} on cluster" in str(err.value)
    assert "runs another entrypoint" in str(err.value)
    assert list(api.jobs) == [first]


def test_the_request_digest_holds_no_env_value() -> None:
    """The digest lives in the job's metadata, which the dashboard shows: a value may be a
    secret, so only the variables' names count."""
    from ephemeral.jobs.ray_jobs import request_digest

    one = request_digest("python x.py", {"env_vars": {"TOKEN": "a"}})
    assert one == request_digest("python x.py", {"env_vars": {"TOKEN": "b"}})
    assert one != request_digest("python x.py", {"env_vars": {"OTHER": "a"}})


def test_a_retry_of_the_same_run_attaches_even_when_its_entrypoint_renders_anew() -> None:
    """A run's retries share its stamp (run_after, which a clear keeps): an entrypoint with
    {{ ti.try_number }} in it still finds attempt 1's live job, as before; a run deleted and
    triggered again under the same id has another stamp and is refused."""
    api = FakeJobsApi()
    first, _ = api.submit_or_attach("python train_ddp.py --tag try1", task_key=TASK, attempt=1,
                                    run_stamp="2026-11-30T20:00:00+00:00")
    assert api.submit_or_attach("python train_ddp.py --tag try2", task_key=TASK, attempt=2,
                                run_stamp="2026-11-30T20:00:00+00:00") == (first, True)
    with pytest.raises(JobIdTaken, match="another entrypoint"):
        api.submit_or_attach("python train_ddp.py --tag try2", task_key=TASK, attempt=2,
                             run_stamp="2026-11-30T21:00:00+00:00")


def test_the_operator_stamps_its_job_with_its_runs_run_after() -> None:
    from datetime import UTC, datetime

    from ephemeral.airflow.operators import run_stamp

    when = datetime(2026, 11, 30, 20, tzinfo=UTC)
    assert run_stamp({"dag_run": SimpleNamespace(run_after=when)}) == when.isoformat()
    assert run_stamp({}) is None
