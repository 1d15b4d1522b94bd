"""A spark-submit application's executors fit one worker of its cluster: an executor with more
cores, memory or GPUs than a worker has (or more cores than ``spark.cores.max`` leaves) is never
placed by the standalone master, and the application waited for executors until its timeout.
``EphemeralSparkSubmitOperator`` (its ``executor_cores``, ``executor_memory``,
``total_executor_cores`` and ``conf``) and ``ephemeral spark-submit`` (its ``--conf``) refuse
them before submitting, by the rule of a spec's conf (``executor_problems``), against the
handle's "workers" node group; a handle of older code (no groups) is not judged."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from ephemeral.backends import ClusterHandle
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.errors import JobRefused
from ephemeral.specs import ClusterIdentity, resolve


class Submitted(Exception):
    """Raised where the application would have been submitted."""


def _submitted(*_a: Any, **_k: Any) -> Any:
    raise Submitted


def handle_of(ref: str) -> ClusterHandle:
    """etl: workers of 4 cores, 8Gi, no GPU; etl-gpu: 8 cores, 16Gi, 1 GPU."""
    return InMemoryBackend().create(resolve(ref, None),
                                    identity=ClusterIdentity.manual("etl", "etl-1"))


def _execute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, handle: ClusterHandle,
             **kwargs: Any) -> None:
    from ephemeral.airflow import spark_submit as module
    from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator

    app = tmp_path / "app.py"
    app.write_text("print(1)\n")
    monkeypatch.setattr(module, "job_target", lambda *_a: (None, handle))
    monkeypatch.setattr(EphemeralSparkSubmitOperator, "_submit", _submitted)
    op = EphemeralSparkSubmitOperator(task_id="etl", cluster=handle.model_dump(mode="json"),
                                      application=str(app), **kwargs)
    op.execute({"ti": SimpleNamespace(xcom_push=lambda **_k: None)})


@pytest.mark.parametrize(("ref", "kwargs", "said"), [
    ("spark/etl", {"executor_cores": 8},
     "executor_cores: 8 is more than a worker has (workers.cores: 4)"),
    ("spark/etl", {"executor_memory": "16g"},
     "executor_memory: 16g is more than a worker has (workers.memory: 8Gi)"),
    ("spark/etl", {"total_executor_cores": 2},
     "total_executor_cores: 2 is fewer than one executor's cores (4;"),
    ("spark/etl", {"executor_cores": 0},  # the hook would not send it: ignored
     "executor_cores: '0' is not a whole number of cores"),
    ("spark/etl", {"conf": {"spark.executor.cores": "8"}},
     "conf spark.executor.cores: 8 is more than a worker has (workers.cores: 4)"),
    ("spark/etl", {"conf": {"spark.executor.memory": "9g"}},
     "conf spark.executor.memory: 9g is more than a worker has (workers.memory: 8Gi)"),
    ("spark/etl", {"conf": {"spark.task.cpus": "8"}},
     "conf spark.task.cpus: 8 is more than an executor has (4;"),
    ("spark/etl", {"executor_cores": 2, "conf": {"spark.task.cpus": "4"}},
     "conf spark.task.cpus: 4 is more than an executor has (2;"),
    ("spark/etl", {"conf": {"spark.executor.resource.gpu.amount": "1"}},
     "conf spark.executor.resource.gpu.amount: 1 is more than a worker has (workers.gpus: 0)"),
    ("spark/etl-gpu", {"conf": {"spark.task.resource.gpu.amount": "2"}},
     "conf spark.task.resource.gpu.amount: 2 is more than an executor has (1;"),
], ids=["executor_cores", "executor_memory", "total_executor_cores", "zero-cores",
        "conf-cores", "conf-memory", "task-cpus", "task-cpus-over-argument", "executor-gpus",
        "task-gpus"])
def test_the_operator_refuses_executors_bigger_than_a_worker_before_submitting(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ref: str, kwargs: dict[str, Any],
        said: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException) as err:
        _execute(monkeypatch, tmp_path, handle_of(ref), **kwargs)
    message = str(err.value)
    assert message.startswith("task etl: executors and their tasks must fit one worker of "
                              "cluster etl-1: ")
    assert said in message, message


def test_the_operator_submits_executors_that_fit(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    with pytest.raises(Submitted):
        _execute(monkeypatch, tmp_path, handle_of("spark/etl"), executor_cores=2,
                 executor_memory="4g", total_executor_cores=4,
                 conf={"spark.task.cpus": "2"})


def test_a_handle_without_node_groups_is_not_judged(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    old = handle_of("spark/etl").model_copy(update={"groups": []})
    with pytest.raises(Submitted):
        _execute(monkeypatch, tmp_path, old, executor_cores=64)


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_spark_submit_refuses_them_before_the_driver_starts(
        monkeypatch: pytest.MonkeyPatch, as_json: bool) -> None:
    from ephemeral.cli import main

    monkeypatch.setattr(main, "_cluster", lambda *_a: handle_of("spark/etl"))
    monkeypatch.setattr("ephemeral.jobs.spark_jobs.spark_auth_for", lambda *_a: None)
    monkeypatch.setattr("ephemeral.jobs.spark_jobs.spark_submit", _submitted)
    out = CliRunner().invoke(main.app, ["spark-submit", "etl-1", __file__, "--conf",
                                        "spark.executor.memory=64g",
                                        *(["--json"] if as_json else [])])
    assert out.exit_code == 2, out.output  # refused input: nothing ran
    text = json.loads(out.stdout)["message"] if as_json else " ".join(out.output.split())
    assert ("ephemeral spark-submit: executors and their tasks must fit one worker of "
            "cluster etl-1: ") in text
    assert "--conf spark.executor.memory: 64g is more than a worker has" in text


def test_cli_spark_submit_runs_executors_that_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.cli import main

    monkeypatch.setattr(main, "_cluster", lambda *_a: handle_of("spark/etl"))
    monkeypatch.setattr("ephemeral.jobs.spark_jobs.spark_auth_for", lambda *_a: None)
    monkeypatch.setattr("ephemeral.jobs.spark_jobs.spark_submit", _submitted)
    out = CliRunner().invoke(main.app, ["spark-submit", "etl-1", __file__, "--conf",
                                        "spark.executor.memory=4g"])
    assert isinstance(out.exception, Submitted), out.output


@pytest.mark.parametrize("conf", [
    {"spark.executor.cores": "5"}, {"spark.executor.memory": "9g"}, {"spark.task.cpus": "5"},
    {"spark.cores.max": "3"}, {"spark.executor.cores": "x"},
])
def test_the_spec_and_the_application_are_judged_by_one_rule(conf: dict[str, str]) -> None:
    """What a spec's conf may not ask of its workers, an application on them may not either."""
    from ephemeral.errors import SpecError
    from ephemeral.jobs.spark_jobs import check_executors_fit
    from ephemeral.specs.loader import parse_spec

    handle = handle_of("spark/etl")
    data = resolve("spark/etl", None).spec.model_dump(mode="json", by_alias=True,
                                                       exclude_none=True)
    data["conf"] = data["conf"] | conf
    with pytest.raises(SpecError) as err:
        parse_spec(data, "etl.yaml")
    [(field, _)] = err.value.problems
    with pytest.raises(JobRefused) as refused:
        check_executors_fit("job", handle, conf)
    assert f"conf {field.removeprefix('conf.')}: " in str(refused.value)


def test_on_kubernetes_an_executor_must_fit_what_a_worker_pod_offers() -> None:
    """A worker pod of 8Gi offers executors 5632m (heaps and the JVMs' overhead take the rest):
    6g fits the pod, yet its master would never place it, and the application would wait."""
    from ephemeral.jobs.spark_jobs import check_executors_fit

    local = handle_of("spark/etl")
    check_executors_fit("job", local, {"spark.executor.memory": "6g"})  # a local worker: 8g
    on_k8s = local.model_copy(update={"backend": "kubernetes"})
    check_executors_fit("job", on_k8s, {"spark.executor.memory": "5632m"})
    with pytest.raises(JobRefused) as refused:
        check_executors_fit("job", on_k8s, {"spark.executor.memory": "6g"})
    assert ("conf spark.executor.memory: 6g is more than a worker has (workers.memory: 8Gi, of "
            "which 5632m a worker offers executors)") in str(refused.value)
