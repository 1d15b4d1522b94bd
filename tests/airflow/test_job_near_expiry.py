"""A job task refuses, before it submits anything, a cluster whose lifetime is (nearly) over,
whatever its job_timeout: the reaper deletes a cluster at its expiry whatever runs on it. Its
task waited past the cluster's lifetime.ttl (e.g. queued in a pool); the error says so and
what to do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from ephemeral.airflow.context import SetupIdentity
from ephemeral.backends import ClusterHandle
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.specs import resolve

LATE = "Put that pool on the setup task too"


def _never(*_a: Any, **_k: Any) -> Any:
    raise AssertionError("the job went ahead on an expired cluster")


def _expired(backend: InMemoryBackend, spec: str) -> ClusterHandle:
    """A cluster its setup made an hour and five minutes ago; it expired five minutes ago."""
    made = backend.create(resolve(spec, "ci-cpu"), identity=SetupIdentity(
        spec_name=spec.split("/")[1], dag_id="d", run_id="r", task_id="create"))
    now = datetime.now(UTC)
    past = made.model_copy(update={
        "created_at": (now - timedelta(minutes=65)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expires_at": (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")})
    backend._clusters[made.name].handle = past  # the backend's own record says so too
    return past


@pytest.mark.parametrize("job_timeout", [None, 60])
def test_a_ray_job_is_not_submitted_to_an_expired_cluster(
        monkeypatch: pytest.MonkeyPatch, job_timeout: int | None) -> None:
    from ephemeral.airflow import operators
    from ephemeral.airflow.operators import RayJobOperator

    monkeypatch.setattr(operators, "job_target", _never)  # where it would reach the cluster

    handle = _expired(InMemoryBackend(), "ray/adhoc-cpu")
    op = RayJobOperator(task_id="train", cluster=handle.model_dump(mode="json"),
                        entrypoint="python t.py", job_timeout=job_timeout, deferrable=False)
    with pytest.raises(AirflowFailException) as err:
        op.execute({})  # nothing of the context is needed before the refusal
    assert "0 s left of cluster" in str(err.value)
    assert LATE in str(err.value)
    assert "shorten the timeout" not in str(err.value)


def test_a_spark_application_is_not_submitted_to_an_expired_cluster(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from ephemeral.airflow import spark_submit
    from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator

    monkeypatch.setattr(spark_submit, "job_target", _never)

    handle = _expired(InMemoryBackend(), "spark/etl")
    app = tmp_path / "app.py"
    app.write_text("print(1)\n")
    op = EphemeralSparkSubmitOperator(task_id="etl", cluster=handle.model_dump(mode="json"),
                                      application=str(app))
    with pytest.raises(AirflowFailException, match=LATE):
        op.execute({})


def test_a_spark_connect_task_does_not_open_a_session_on_an_expired_cluster(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import airflow.sdk

    from ephemeral.airflow import backends
    from ephemeral.airflow.spark import spark_connect

    backend = InMemoryBackend()
    handle = _expired(backend, "spark/etl")
    monkeypatch.setattr(backends, "task_backend", lambda *_a: backend)
    monkeypatch.setattr("ephemeral.jobs.spark_jobs.spark_auth_for", _never)
    monkeypatch.setattr(airflow.sdk, "get_current_context", lambda: {
        "dag": SimpleNamespace(dag_id="d"), "run_id": "r", "task": None,
        "ti": SimpleNamespace(task_id="rows", map_index=-1)})

    @spark_connect
    def rows(spark: Any, cluster: Any) -> int:
        raise AssertionError("no session may be opened")

    with pytest.raises(AirflowFailException, match=LATE):
        rows(cluster=handle.model_dump(mode="json"))
