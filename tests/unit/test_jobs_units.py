"""Job results, submission ids and the artifact store, without clusters."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ephemeral.jobs import artifacts
from ephemeral.jobs.results import parse_result_line, submission_id


def test_the_last_json_object_line_is_the_result() -> None:
    logs = 'starting\n{"partial": 1}\nINFO done {not json}\n  {"artifact_uri": "file:///a"}  \n'
    assert parse_result_line(logs) == {"artifact_uri": "file:///a"}
    assert parse_result_line("no result here\n[1, 2]\n") == {}


def test_submission_ids_are_deterministic_per_cluster_task_attempt() -> None:
    a = submission_id("eph-x-1", "dag/run/train/-1", 1)
    assert a == submission_id("eph-x-1", "dag/run/train/-1", 1)
    assert a.endswith("-a1")
    assert a != submission_id("eph-x-2", "dag/run/train/-1", 1)
    assert a != submission_id("eph-x-1", "dag/run/train/0", 1)
    assert a.removesuffix("-a1") == submission_id("eph-x-1", "dag/run/train/-1", 2).removesuffix(
        "-a2")


def test_artifact_root_defaults_under_home(ephemeral_home: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EPHEMERAL_ARTIFACT_ROOT", raising=False)
    assert artifacts.root() == (ephemeral_home / "artifacts").resolve().as_uri()
    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", "s3://bucket/prefix/")
    assert artifacts.root() == "s3://bucket/prefix"
    assert artifacts.run_uri("r1", "model", "model.pt") == "s3://bucket/prefix/r1/model/model.pt"


def test_file_artifacts_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", str(tmp_path / "store"))
    uri = artifacts.run_uri("r1", "metrics.json")
    assert not artifacts.exists(uri)
    artifacts.write_json(uri, {"loss": 0.1})
    assert artifacts.exists(uri)
    assert artifacts.read_json(uri) == {"loss": 0.1}
    artifacts.write_bytes(artifacts.run_uri("r1", "model", "model.pt"), b"\x00weights")
    artifacts.copy(artifacts.run_uri("r1"), artifacts.run_uri("registry", "best"))
    assert artifacts.read_bytes(artifacts.run_uri("registry", "best", "model", "model.pt")) == (
        b"\x00weights")


def test_airflow_settings_and_secrets_never_reach_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.settings import job_environ

    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://u:secret@db/af")
    monkeypatch.setenv("AIRFLOW_API_TOKEN", "t0k3n")
    monkeypatch.setenv("EPHEMERAL_AIRFLOW_PASSWORD", "pw")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("EPHEMERAL_KUBECONFIG_CONTENT", "apiVersion: v1")
    monkeypatch.setenv("SHOP_DB_PASSWORD", "hunter2")
    monkeypatch.setenv("LC_TIME", "C")
    env = job_environ()
    assert not [k for k in env if "AIRFLOW" in k]
    # An allow-list: nothing unlisted passes, however it is named.
    assert "EPHEMERAL_KUBECONFIG_CONTENT" not in env
    assert "SHOP_DB_PASSWORD" not in env
    assert "AWS_REGION" not in env
    assert env["LC_TIME"] == "C"
    assert env["EPHEMERAL_ARTIFACT_ROOT"].startswith("file://")
    # A deployment extends it (what jobs need to reach an s3:// artifact store), but never to
    # Airflow's settings or ours.
    monkeypatch.setenv("EPHEMERAL_JOB_ENV_ALLOW", "AWS_*, AIRFLOW_API_TOKEN,EPHEMERAL_*")
    env = job_environ()
    assert env["AWS_REGION"] == "eu-west-1"
    assert "AIRFLOW_API_TOKEN" not in env
    assert "EPHEMERAL_KUBECONFIG_CONTENT" not in env


@pytest.mark.parametrize(("allow", "said"), [
    ("*", "would pass every variable"), ("AWS_REGION, *", "would pass every variable"),
    (" * ", "would pass every variable"), ("AWS_*_KEY", "is no variable name or PREFIX_*"),
    ("AWS REGION", "is no variable name or PREFIX_*")])
def test_an_allow_list_entry_that_passes_everything_or_nothing_is_refused(
        allow: str, said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``*`` is the empty prefix: every variable, secrets included, reached every node and
    job. The local backend refuses it before it makes anything."""
    from ephemeral.backends.local.backend import LocalBackend
    from ephemeral.errors import SettingError
    from ephemeral.settings import job_environ
    from ephemeral.specs import ClusterIdentity, resolve

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI")
    monkeypatch.setenv("EPHEMERAL_JOB_ENV_ALLOW", allow)
    with pytest.raises(SettingError, match=f"EPHEMERAL_JOB_ENV_ALLOW: .*{re.escape(said)}.*"
                                           "list the names or prefixes the jobs need"):
        job_environ()
    backend = LocalBackend()
    with pytest.raises(SettingError, match="EPHEMERAL_JOB_ENV_ALLOW"):
        backend.create(resolve("ray/adhoc-cpu", "ci-cpu"),
                       identity=ClusterIdentity.manual("adhoc-cpu", None))
    assert backend.list_owned() == []
    assert list(tmp_path.rglob("state.json")) == []
