"""No secret goes onto spark-submit's command line (visible in ``ps`` to every user of the
host) or into the task log: a job's own conf follows the rule of a spec's conf
(``secret_conf_keys``), and the URL options (``repositories``, ``jars``, ``packages``,
``files``, ``archives``, ...) and application arguments hold no credentials
(``credentials_problem``). ``EphemeralSparkSubmitOperator``, ``ephemeral spark-submit`` and
``spark_submit`` refuse them before anything is looked up or started, naming the field and
showing no secret."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ephemeral.errors import JobSubmissionFailed
from ephemeral.jobs.spark_jobs import spark_submit

SECRET = "REPO-TOKEN-123"
CONFS = [{"spark.hadoop.fs.s3a.access.key": "AKIAEXAMPLE",
          "spark.hadoop.fs.s3a.session.token": SECRET},
         {"spark.jars.repositories": f"https://deploy:{SECRET}@maven.corp.example/repo"},
         {"spark.eventLog.dir": f"wasbs://c@a.blob.core.windows.net/?sig={SECRET}"}]


def _never(*_a: Any, **_k: Any) -> Any:
    raise AssertionError("nothing may be looked up or started")


def _operator(**kwargs: Any) -> Any:
    from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator

    return EphemeralSparkSubmitOperator(task_id="etl", cluster={}, application="app.py",
                                        **kwargs)


def _refused_by_the_operator(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> str:
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow import spark_submit as module

    monkeypatch.setattr(module, "pointer", _never)
    monkeypatch.setattr(module, "job_target", _never)
    with pytest.raises(AirflowFailException) as exc:
        _operator(**kwargs).execute({"ti": None})
    return str(exc.value)


@pytest.mark.parametrize("conf", CONFS)
def test_the_operators_conf_follows_the_specs_rule(monkeypatch: pytest.MonkeyPatch,
                                                   conf: dict[str, str]) -> None:
    message = _refused_by_the_operator(monkeypatch, conf={"spark.sql.shuffle.partitions": "8",
                                                          **conf})
    assert message.startswith("task etl: conf sets ")
    assert all(key in message for key in conf)
    assert "spark.sql.shuffle.partitions" not in message
    assert SECRET not in message
    assert "AKIAEXAMPLE" not in message


@pytest.mark.parametrize("option", ["repositories", "jars", "packages", "files", "py_files",
                                    "archives"])
def test_the_operators_url_options_hold_no_credentials(monkeypatch: pytest.MonkeyPatch,
                                                       option: str) -> None:
    url = f"https://deploy:{SECRET}@maven.corp.example/repo"
    message = _refused_by_the_operator(monkeypatch, **{option: f"https://ok.example/x,{url}"})
    assert f"{option}: " in message
    assert "credentials" in message
    assert SECRET not in message


def test_the_operators_arguments_hold_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refused_by_the_operator(monkeypatch, application_args=[
        "--input", f"https://data.example/x.parquet?X-Amz-Signature={SECRET}"])
    assert "application_args[1]: " in message
    assert SECRET not in message


def test_plain_input_passes_the_check() -> None:
    _operator(conf={"spark.sql.shuffle.partitions": "8",
                    "spark.hadoop.fs.s3a.aws.credentials.provider": "com.amazonaws.auth."
                    "InstanceProfileCredentialsProvider"},
              repositories="https://maven.corp.example/repo", packages="a:b:1",
              application_args=["--input", "s3a://bucket/x"])._check_input()


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize(("options", "args", "field"), [
    (["--conf", "spark.hadoop.fs.s3a.secret.key=" + SECRET], [], "--conf sets"),
    (["--conf", f"spark.jars.repositories=https://u:{SECRET}@repo.example"], [], "--conf sets"),
    ([], ["--", f"https://u:{SECRET}@data.example/x"], "args[0]: "),
])
def test_cli_spark_submit_refuses_before_looking_anything_up(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any, as_json: bool, options: list[str],
        args: list[str], field: str) -> None:
    from typer.testing import CliRunner

    from ephemeral.cli import main

    monkeypatch.setattr(main, "_cluster", _never)
    app = tmp_path / "app.py"
    app.write_text("print(1)\n")
    out = CliRunner().invoke(main.app, ["spark-submit", "etl", str(app), *options,
                                        *(["--json"] if as_json else []), *args])
    assert out.exit_code == 2, out.output  # refused input: nothing ran
    text = json.loads(out.stdout)["message"] if as_json else " ".join(out.output.split())
    assert f"ephemeral spark-submit: {field}" in text
    assert SECRET not in text


def test_the_python_apis_spark_submit_refuses_too(tmp_path: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.jobs import spark_jobs

    monkeypatch.setattr(spark_jobs, "spark_submit_bin", _never)
    app = tmp_path / "app.py"
    app.write_text("print(1)\n")
    with pytest.raises(JobSubmissionFailed, match=r"conf sets .*session\.token"):
        spark_submit("spark://127.0.0.1:7077", str(app), conf=CONFS[0])
