"""A job's own environment (RayJobOperator's runtime_env.env_vars, `ephemeral submit --env`,
EphemeralSparkSubmitOperator's env_vars) cannot set the names a spec cannot
(ephemeral.specs.models.reserved_env): a job's EPHEMERAL_CLUSTER_UID hid what its driver
detached from `ephemeral down` (`setsid sleep 902 &` outlived its cluster). Refused before
anything is submitted, naming the variable, the field and the fix; ephemeral's own
EPHEMERAL_ARTIFACT_ROOT stays, and a job may still set it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.backends.base import ClusterHandle, Endpoints, make_handle
from ephemeral.errors import JobSubmissionFailed, SpecError
from ephemeral.jobs.runtime_env import (
    JOB_MAY_SET,
    check_job_env,
    job_runtime_env,
    merge_runtime_env,
)
from ephemeral.specs import ClusterIdentity, resolve
from ephemeral.specs.loader import parse_spec
from ephemeral.specs.models import BACKEND_ENV, reserved_env

RESERVED = [
    "EPHEMERAL_CLUSTER_UID",  # the marker `down` finds a local cluster's detached processes by
    "EPHEMERAL_CLUSTER_DIR", "EPHEMERAL_CLUSTER_NAME", "EPHEMERAL_RESULT_FILE",
    "EPHEMERAL_KUBECONFIG_CONTENT", "ephemeral_cluster_uid",
    "AIRFLOW_HOME", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW_CONN_S3", "_AIRFLOW_DB_MIGRATE",
    "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ENABLE_K8S_TOKEN_AUTH",
]
ORDINARY = ["MY_FLAG", "NCCL_DEBUG", "RAY_DEDUP_LOGS", "SPARK_LAUNCHER_OPTS", "PYTHONPATH",
            "EPHEMERALX", "XAIRFLOW_HOME"]


def _handle() -> ClusterHandle:
    spec = resolve("ray/adhoc-cpu", "ci-cpu")
    return make_handle(spec, ClusterIdentity.manual("adhoc-cpu", "env"), backend="fake",
                       endpoints=Endpoints())


@pytest.mark.parametrize("name", RESERVED)
def test_a_jobs_reserved_variable_is_refused_naming_it_and_the_fix(name: str) -> None:
    with pytest.raises(JobSubmissionFailed) as err:
        merge_runtime_env({"env_vars": {"A": "1"}}, {"env_vars": {"OK": "1", name: "x"}})
    message = str(err.value)
    assert f"runtime_env.env_vars sets {name!r}" in message
    assert "reserved" in message
    assert "Pick another name" in message
    assert "'OK'" not in message


def test_the_job_layer_of_job_runtime_env_is_checked_and_ours_is_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", "file:///tmp/artifacts")
    handle = _handle()
    with pytest.raises(JobSubmissionFailed, match="EPHEMERAL_CLUSTER_UID"):
        job_runtime_env(handle, {"env_vars": {"EPHEMERAL_CLUSTER_UID": "not-this-cluster"}})
    with pytest.raises(JobSubmissionFailed, match=r"'AIRFLOW_HOME', 'RAY_AUTH_TOKEN'"):
        job_runtime_env(handle, {"env_vars": {"RAY_AUTH_TOKEN": "t", "AIRFLOW_HOME": "/x"}})
    # Ephemeral's own layer sets a reserved name; a job may set that one too.
    assert job_runtime_env(handle, None)["env_vars"] == {
        "EPHEMERAL_ARTIFACT_ROOT": "file:///tmp/artifacts"}
    assert job_runtime_env(handle, {"env_vars": {"EPHEMERAL_ARTIFACT_ROOT": "file:///mine",
                                                 "MY_FLAG": "1"}})["env_vars"] == {
        "EPHEMERAL_ARTIFACT_ROOT": "file:///mine", "MY_FLAG": "1"}


@pytest.mark.parametrize("name", [*RESERVED, *ORDINARY, *JOB_MAY_SET, *sorted(BACKEND_ENV),
                                  "cuda_visible_devices"])
def test_the_rule_is_the_specs(name: str) -> None:
    """One rule: a job may set a name exactly when a spec may (not reserved_env, not one the
    backend sets: a job's RAY_ADDRESS or CUDA_VISIBLE_DEVICES was passed on), but
    JOB_MAY_SET."""
    try:
        check_job_env({name: "x"}, "the job")
        job_refuses = False
    except JobSubmissionFailed:
        job_refuses = True
    spec = {"kind": "RayCluster", "name": "envs", "version": 1, "rayVersion": "2.60.0",
            "image": "rayproject/ray:2.60.0-py311-cpu",
            "workerGroups": [{"name": "w", "replicas": 1}],
            "runtimeEnv": {"env": [{"name": name, "value": "x"}]}}
    try:
        parse_spec(spec, "envs.yaml")
        spec_refuses = False
    except SpecError:
        spec_refuses = True
    assert spec_refuses == (reserved_env(name) or name in BACKEND_ENV)
    assert job_refuses == (spec_refuses and name not in JOB_MAY_SET)


def test_env_vars_that_are_not_a_mapping_are_refused_naming_the_field() -> None:
    with pytest.raises(JobSubmissionFailed, match=r"runtime_env\.env_vars must be a mapping"):
        merge_runtime_env({}, {"env_vars": ["EPHEMERAL_CLUSTER_UID=x"]})
    assert merge_runtime_env({"env_vars": {"A": "1"}}, {"env_vars": None}) == {
        "env_vars": {"A": "1"}}


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_submit_refuses_a_reserved_env_before_looking_anything_up(
        monkeypatch: pytest.MonkeyPatch, as_json: bool) -> None:
    from typer.testing import CliRunner

    from ephemeral.cli import main
    from ephemeral.jobs import ray_jobs

    def never(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("nothing may be looked up or submitted")

    monkeypatch.setattr(main, "_cluster", never)
    monkeypatch.setattr(ray_jobs, "ray_jobs_for", never)
    args = ["submit", "x", "--env", "MY_FLAG=1", "--env", "EPHEMERAL_CLUSTER_UID=not-this-cluster",
            *(["--json"] if as_json else []), "--", "sh", "-c", "setsid sleep 902 &"]
    out = CliRunner().invoke(main.app, args)
    assert out.exit_code == 2, out.output  # refused input: nothing was submitted
    text = json.loads(out.stdout)["message"] if as_json else out.output
    assert "ephemeral submit: --env sets 'EPHEMERAL_CLUSTER_UID'" in " ".join(text.split())
    assert "Pick another name" in " ".join(text.split())


def test_cli_submit_passes_ordinary_and_artifact_root_variables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from ephemeral.cli import main
    from ephemeral.jobs import ray_jobs
    from ephemeral.jobs.results import JobResult, JobStatus

    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", "file:///tmp/artifacts")
    submitted: dict[str, Any] = {}

    def submit(entrypoint: str, **kwargs: Any) -> str:
        submitted.update(kwargs)
        return "raysubmit_1"

    def follow(jid: str, **_k: Any) -> JobResult:
        return JobResult(job_id=jid, cluster="x", status=JobStatus.SUCCEEDED, engine="ray",
                         seconds=0.1)

    jobs = SimpleNamespace(submit_request=submit, follow=follow)
    monkeypatch.setattr(main, "_cluster", lambda *_a: _handle())
    monkeypatch.setattr(main, "_backend", lambda *_a: None)
    monkeypatch.setattr(ray_jobs, "ray_jobs_for", lambda *_a: jobs)
    out = CliRunner().invoke(main.app, ["submit", "x", "--env", "MY_FLAG=1", "--env",
                                        "EPHEMERAL_ARTIFACT_ROOT=file:///mine", "--", "true"])
    assert out.exit_code == 0, out.output
    assert submitted["runtime_env"]["env_vars"] == {"EPHEMERAL_ARTIFACT_ROOT": "file:///mine",
                                                    "MY_FLAG": "1"}


# -- EphemeralSparkSubmitOperator ------------------------------------------------------------

def _spark_operator(env_vars: dict[str, str]) -> Any:
    from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator

    return EphemeralSparkSubmitOperator(task_id="etl", cluster={}, application="app.py",
                                        env_vars=env_vars)


@pytest.mark.parametrize("name", ["EPHEMERAL_CLUSTER_UID", "EPHEMERAL_RESULT_FILE",
                                  "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "RAY_AUTH_TOKEN"])
def test_spark_env_vars_follow_the_same_rule_before_the_driver_starts(
        monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow import spark_submit
    from ephemeral.airflow.spark_submit_hook import ClusterSparkSubmitHook
    from ephemeral.backends.fake import InMemoryBackend
    from ephemeral.jobs.spark_jobs import SparkAuth
    from ephemeral.settings import get_settings

    def never(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the driver must not start")

    monkeypatch.setattr(ClusterSparkSubmitHook, "submit", never)
    backend = SimpleNamespace(spark_auth=lambda _h: SparkAuth(secret="s" * 32))
    monkeypatch.setattr(spark_submit, "cluster_backend", lambda *_a: backend)
    spec = resolve("spark/etl", "ci-cpu")
    handle = InMemoryBackend().create(spec, identity=ClusterIdentity(
        spec_name=spec.spec.name, dag_id="etl", run_id="r1", task_id="create",
        instance=get_settings().instance))
    op = _spark_operator({"MY_FLAG": "1", name: "x"})
    with pytest.raises(AirflowFailException) as err:
        op._submit({"ti": SimpleNamespace(xcom_push=lambda **_k: None, try_number=1)}, handle)
    message = " ".join(str(err.value).split())
    assert f"task etl: env_vars sets {name!r}, reserved" in message
    assert "Pick another name" in message


def test_spark_env_vars_may_set_ordinary_names_and_the_artifact_root(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ephemeral.jobs.spark_jobs import driver_environ

    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", "file:///tmp/artifacts")
    env = driver_environ(tmp_path, _spark_operator({
        "MY_FLAG": "1", "SPARK_LAUNCHER_OPTS": "-Xmx1g", "SPARK_SUBMIT_OPTS": "-Dmine=1",
        "EPHEMERAL_ARTIFACT_ROOT": "file:///mine"})._env_vars())
    assert env["MY_FLAG"] == "1"
    assert env["SPARK_LAUNCHER_OPTS"] == "-Xmx1g"
    assert env["EPHEMERAL_ARTIFACT_ROOT"] == "file:///mine"
    assert "EPHEMERAL_ARTIFACT_ROOT" in driver_environ(tmp_path, _spark_operator({})._env_vars())
    # The driver's temporary files in its run's folder; the task's own options after ours.
    assert env["TMPDIR"] == str(tmp_path / "tmp")
    assert env["SPARK_LOCAL_DIRS"] == str(tmp_path / "local")
    assert env["SPARK_SUBMIT_OPTS"] == f"-Djava.io.tmpdir={tmp_path / 'tmp'} -Dmine=1"
    # A deployment that lets its own through (EPHEMERAL_JOB_ENV_ALLOW) keeps them, under the
    # task's: a trust store, a scratch disk.
    monkeypatch.setenv("EPHEMERAL_JOB_ENV_ALLOW", "SPARK_SUBMIT_OPTS,SPARK_LOCAL_DIRS")
    monkeypatch.setenv("SPARK_SUBMIT_OPTS", "-Djavax.net.ssl.trustStore=/etc/corp.jks")
    monkeypatch.setenv("SPARK_LOCAL_DIRS", "/scratch")
    env = driver_environ(tmp_path, {"SPARK_SUBMIT_OPTS": "-Dmine=1"})
    assert env["SPARK_SUBMIT_OPTS"] == (f"-Djava.io.tmpdir={tmp_path / 'tmp'} "
                                        "-Djavax.net.ssl.trustStore=/etc/corp.jks -Dmine=1")
    assert env["SPARK_LOCAL_DIRS"] == "/scratch"


@pytest.mark.parametrize("runtime_env", [
    {"env_vars": {"EPHEMERAL_CLUSTER_UID": "not-this-cluster"}},
    {"pip": ["pandas===${RAY_AUTH_TOKEN}"]},
    {"uv": {"packages": ["https://user:secret@example.com/x.whl"]}},
])
def test_the_python_apis_ray_submit_checks_the_job_before_reaching_the_cluster(
        runtime_env: dict[str, Any]) -> None:
    """``RayJobs.submit``, the layer every Ray submission goes through (the operator, the CLI,
    a user's own code), applies the job rules itself: nothing is asked of the dashboard."""
    from ephemeral.jobs.ray_jobs import RayJobs

    jobs = RayJobs("http://127.0.0.1:9", cluster="c")  # nothing listens: a call would fail
    with pytest.raises(JobSubmissionFailed, match="Ray job 'j1'") as err:
        jobs.submit("python x.py", job_id="j1", runtime_env=runtime_env)
    assert "cannot reach" not in str(err.value)
    assert jobs._client is None  # no client was even made


def test_spark_submit_refuses_a_reserved_driver_env_before_starting_anything(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from ephemeral.jobs import spark_jobs

    def never(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("nothing may be started")

    monkeypatch.setattr(spark_jobs.subprocess, "Popen", never)
    app = tmp_path / "app.py"
    app.write_text("print(1)\n")
    with pytest.raises(JobSubmissionFailed, match=r"spark-submit: env sets 'EPHEMERAL_CLUSTER_UID'"):
        spark_jobs.spark_submit("spark://127.0.0.1:9", str(app),
                                env={"EPHEMERAL_CLUSTER_UID": "x", "MY_FLAG": "1"})
