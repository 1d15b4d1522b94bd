"""A spark-submit application's conf sets nothing that the submit path puts over it: the
operator always sends ``--name`` (its ``name``, else the task id) and ``--deploy-mode client``,
which win over ``spark.app.name`` and ``spark.submit.deployMode``; accepted, they did nothing
(and ``ephemeral spark-submit`` ran cluster mode, its driver off the host that reads its output
and result). ``EphemeralSparkSubmitOperator``, ``ephemeral spark-submit`` and ``spark_submit``
refuse them by one rule (``check_submit_input``), before anything is looked up or started,
naming the key and the fix."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from ephemeral.errors import JobRefused


def _never(*_a: Any, **_k: Any) -> Any:
    raise AssertionError("nothing may be looked up or started")


def _refused_by_the_operator(monkeypatch: pytest.MonkeyPatch, conf: dict[str, str]) -> str:
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow import spark_submit as module
    from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator

    monkeypatch.setattr(module, "pointer", _never)
    monkeypatch.setattr(module, "job_target", _never)
    op = EphemeralSparkSubmitOperator(task_id="etl", cluster={}, application="app.py",
                                      conf={"spark.sql.shuffle.partitions": "8", **conf})
    with pytest.raises(AirflowFailException) as exc:
        op.execute({"ti": None})
    return str(exc.value)


def test_the_operator_refuses_an_app_name_its_name_argument_overrides(
        monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refused_by_the_operator(monkeypatch, {"spark.app.name": "nightly-etl"})
    assert message.startswith("task etl: conf sets spark.app.name")
    assert "the operator's name argument" in message
    assert "spark.sql.shuffle.partitions" not in message


def test_the_operator_refuses_a_deploy_mode_its_client_mode_overrides(
        monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refused_by_the_operator(monkeypatch, {"spark.submit.deployMode": "cluster"})
    assert message.startswith("task etl: conf sets spark.submit.deployMode")
    assert "client mode" in message
    assert "remove it" in message


@pytest.mark.parametrize(("key", "fix"), [("spark.app.name", "--name"),
                                          ("spark.submit.deployMode", "client mode")])
def test_cli_spark_submit_refuses_them_before_looking_anything_up(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any, key: str, fix: str) -> None:
    from ephemeral.cli import main

    monkeypatch.setattr(main, "_cluster", _never)
    app = tmp_path / "app.py"
    app.write_text("print(1)\n")
    out = CliRunner().invoke(main.app, ["spark-submit", "etl", str(app), "--conf",
                                        f"{key}=x", "--json"])
    assert out.exit_code == 2, out.output  # refused input: nothing ran
    message = json.loads(out.stdout)["message"]
    assert message.startswith(f"ephemeral spark-submit: --conf sets {key}")
    assert fix in message


def test_cli_spark_submit_names_the_application_with_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fix the refusal names: ``--name`` reaches spark-submit's ``--name``."""
    from ephemeral.backends.fake import InMemoryBackend
    from ephemeral.cli import main
    from ephemeral.specs import ClusterIdentity, resolve

    handle = InMemoryBackend().create(resolve("spark/etl", "ci-cpu"),
                                      identity=ClusterIdentity.manual("etl", "etl-1"))
    seen: dict[str, object] = {}
    monkeypatch.setattr(main, "_cluster", lambda *_a: handle)
    monkeypatch.setattr("ephemeral.jobs.spark_jobs.spark_auth_for", lambda *_a: None)

    def fake_submit(master: str, application: str, args: list[str], **kw: object) -> object:
        seen.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr("ephemeral.jobs.spark_jobs.spark_submit", fake_submit)
    CliRunner().invoke(main.app, ["spark-submit", "etl-1", __file__, "--name", "nightly"])
    assert seen["name"] == "nightly"


@pytest.mark.parametrize("key", ["spark.app.name", "spark.submit.deployMode"])
def test_the_python_apis_spark_submit_refuses_them_too(tmp_path: Any,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       key: str) -> None:
    from ephemeral.jobs import spark_jobs

    monkeypatch.setattr(spark_jobs, "spark_submit_bin", _never)
    app = tmp_path / "app.py"
    app.write_text("print(1)\n")
    with pytest.raises(JobRefused, match=rf"spark-submit: conf sets {key}"):
        spark_jobs.spark_submit("spark://127.0.0.1:7077", str(app), conf={key: "x"})
