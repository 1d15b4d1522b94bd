"""An artifact root whose URI carries credentials (s3://KEY:SECRET@bucket, a signed URL) is
refused before anything is made: every job's environment gets the root, and every artifact URI
a job returns (XCom, task logs, the run report) starts with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ephemeral.errors import SettingError
from ephemeral.jobs.artifacts import job_root

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCY"
BAD = [f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@bucket/ephemeral",
       f"https://store.example/ephemeral?X-Amz-Signature={SECRET}"]


@pytest.mark.parametrize("root", BAD)
def test_job_root_refuses_credentials_masked(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", root)
    with pytest.raises(SettingError) as err:
        job_root()
    assert "EPHEMERAL_ARTIFACT_ROOT" in str(err.value)
    assert "never in the URI" in str(err.value)
    assert SECRET not in str(err.value)


def test_job_root_takes_a_plain_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", "s3://bucket/ephemeral")
    assert job_root() == "s3://bucket/ephemeral"


@pytest.mark.parametrize("root", BAD)
def test_up_and_the_setup_refuse_it_before_making_anything(
        root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow.operators import CreateClusterOperator
    from ephemeral.backends.local.backend import LocalBackend
    from ephemeral.cli.main import app
    from ephemeral.specs import ClusterIdentity, resolve

    monkeypatch.setenv("EPHEMERAL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", root)
    out = CliRunner().invoke(app, ["up", "ray/adhoc-cpu", "--backend", "local", "--json"])
    assert out.exit_code == 2, out.output
    assert "EPHEMERAL_ARTIFACT_ROOT" in out.output
    assert SECRET not in out.output
    with pytest.raises(AirflowFailException, match="EPHEMERAL_ARTIFACT_ROOT"):
        CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu@1").execute({})
    backend = LocalBackend()
    with pytest.raises(SettingError):
        backend.create(resolve("ray/adhoc-cpu", "ci-cpu"),
                       identity=ClusterIdentity.manual("adhoc-cpu", None))
    assert backend.list_owned() == []
    assert list(tmp_path.rglob("state.json")) == []


@pytest.mark.parametrize("root", [
    "abfss://models@acct.dfs.core.windows.net/ephemeral",  # Azure: the container, no secret
    "wasbs://models@acct.blob.core.windows.net/ephemeral",
    "hdfs://etl@namenode:8020/ephemeral",  # HDFS: the user
    "gs://bucket/ephemeral", "s3://bucket/path@v2", "file:///srv/artifacts"])
def test_a_root_that_names_a_container_or_user_is_no_credential(
        root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", root)
    assert job_root() == root


def test_an_azure_root_with_a_key_is_still_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT",
                       f"abfss://models:{SECRET}@acct.dfs.core.windows.net/ephemeral")
    with pytest.raises(SettingError):
        job_root()


@pytest.mark.parametrize(("root", "code", "said"), [
    (f"file://user:{SECRET}@localhost/x", 2, "never in the URI"),
    (BAD[0], 2, "never in the URI"),
    ("foo://bar/x", 1, "cannot read the artifact store EPHEMERAL_ARTIFACT_ROOT=foo://bar/x"),
])
@pytest.mark.parametrize("as_json", [False, True])
def test_ephemeral_report_reads_the_root_checked(root: str, code: int, said: str, as_json: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`ephemeral report` read the root unchecked: pyarrow's traceback echoed the password."""
    from ephemeral.cli.main import app

    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", root)
    out = CliRunner().invoke(app, ["report", "d", "r", *(["--json"] if as_json else [])])
    assert out.exit_code == code, out.output
    assert said in " ".join(out.output.split())
    assert SECRET not in out.output
    assert "Traceback" not in out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)
