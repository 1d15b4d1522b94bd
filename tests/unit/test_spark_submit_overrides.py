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


def _operator(conf: dict[str, str], **kwargs: Any) -> Any:
    from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator

    return EphemeralSparkSubmitOperator(task_id="etl", cluster={}, application="app.py",
                                        conf={"spark.sql.shuffle.partitions": "8", **conf},
                                        **kwargs)


def _refused_by_the_operator(monkeypatch: pytest.MonkeyPatch, conf: dict[str, str],
                             **kwargs: Any) -> str:
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow import spark_submit as module

    monkeypatch.setattr(module, "pointer", _never)
    monkeypatch.setattr(module, "job_target", _never)
    op = _operator(conf, **kwargs)
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


@pytest.mark.parametrize(("field", "value", "key", "option"), [
    ("executor_memory", "2g", "spark.executor.memory", "--executor-memory"),
    ("executor_cores", 2, "spark.executor.cores", "--executor-cores"),
    ("total_executor_cores", 4, "spark.cores.max", "--total-executor-cores"),
    ("driver_memory", "1g", "spark.driver.memory", "--driver-memory"),
    ("jars", "a.jar", "spark.jars", "--jars"),
    ("py_files", "deps.zip", "spark.submit.pyFiles", "--py-files"),
])
def test_the_operator_refuses_a_conf_key_one_of_its_arguments_overrides(
        monkeypatch: pytest.MonkeyPatch, field: str, value: Any, key: str, option: str) -> None:
    """spark-submit takes the option the argument becomes over the conf key: one of the two
    was accepted and did nothing."""
    message = _refused_by_the_operator(monkeypatch, {key: "3"}, **{field: value})
    assert message.startswith(f"task etl: conf sets {key}, which {field} overrides")
    assert option in message
    assert "set only one of them" in message


def test_an_argument_without_its_conf_key_passes() -> None:
    _operator({"spark.executor.cores": "2"}, executor_memory="2g", jars="a.jar")._check_input()
    # Not sent by the hook (it sends only a truthy option): the conf key is not overridden.
    _operator({"spark.executor.memory": "2g"}, executor_memory="")._check_input()
