"""The release record (delete_cluster_on_success): it counts only for the very cluster it was
made for, a retry of the releasing task gets its result back, and the teardown uses its moments
only when the release's deletion finished. A release deletes only a cluster its engines say
runs nothing else (given here as the idle rule's ``Activity``; the in-memory backend runs no
engine)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.activity import Activity
from ephemeral.airflow.release import earlier_result, recorded, release
from ephemeral.airflow.report import released
from ephemeral.backends import ClusterHandle
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.errors import BackendUnavailable
from ephemeral.specs import ClusterIdentity, resolve

BY = {"dag_id": "etl", "run_id": "r1", "task": "build_features"}
RESULT = {"job_id": "app-1", "status": "SUCCEEDED", "result": {"rows": 5}}


IDLE = Activity(False, "no Spark application, Connect session or operation running")


def engines(monkeypatch: pytest.MonkeyPatch, seen: Activity) -> None:
    monkeypatch.setattr("ephemeral.activity.cluster_activity", lambda _b, _h: seen)


@pytest.fixture(autouse=True)
def _idle(monkeypatch: pytest.MonkeyPatch) -> None:
    engines(monkeypatch, IDLE)


def cluster(backend: InMemoryBackend) -> ClusterHandle:
    spec = resolve("spark/etl", "ci-cpu")
    identity = ClusterIdentity(spec_name=spec.spec.name, dag_id="etl", run_id="r1",
                               task_id="create")
    return backend.create(spec, identity=identity)


def context() -> dict[str, Any]:
    return {"dag": SimpleNamespace(dag_id="etl"), "run_id": "r1"}


def test_a_release_is_recorded_with_its_result_and_a_retry_gets_it_back(
        ephemeral_home: Path) -> None:
    backend = InMemoryBackend()
    handle = cluster(backend)
    assert release(backend, handle, BY, RESULT) is not None
    assert backend.list_owned() == []
    rel = recorded(handle, "etl", "r1")
    assert rel is not None
    assert rel.deleted is not None
    assert rel.deleted >= rel.teardown_started
    assert earlier_result(handle, BY) == RESULT
    assert earlier_result(handle, {**BY, "task": "another_task"}) is None
    assert released(context(), handle) == rel


def test_a_cleared_runs_new_cluster_of_the_same_name_is_not_taken_for_the_released_one(
        ephemeral_home: Path) -> None:
    backend = InMemoryBackend()
    handle = cluster(backend)
    release(backend, handle, BY, RESULT)
    again = cluster(backend)  # the same name, made anew
    again = again.model_copy(update={"created_at": "2099-01-01T00:00:00Z"})
    assert again.name == handle.name
    assert recorded(again, "etl", "r1") is None
    assert earlier_result(again, BY) is None
    assert released(context(), again) is None


class FailingDelete(InMemoryBackend):
    def delete(self, target: Any, *, wait: bool = True) -> None:
        raise BackendUnavailable("the API server does not answer")


def test_a_release_whose_deletion_failed_leaves_the_moments_to_the_teardown(
        ephemeral_home: Path) -> None:
    backend = FailingDelete()
    handle = cluster(backend)
    assert release(backend, handle, BY, RESULT) is None  # never raises
    assert backend.list_owned() != []
    assert released(context(), handle) is None  # the teardown deletes it and reports itself
    assert earlier_result(handle, BY) == RESULT  # the job did succeed


@pytest.mark.parametrize("seen", [
    Activity(True, "2 running", details=["Spark application app-1 (build_features)",
                                         "Spark application app-2 (prep)"]),
    Activity(None, "the Spark master UI did not answer"),
])
def test_a_release_leaves_a_cluster_other_work_runs_on_or_unknown_to_the_teardown(
        ephemeral_home: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, seen: Activity) -> None:
    """A task cleared after the job started (clearing it re-runs the setup, which adopts the
    same cluster) runs on it beside the job: the DAG's shape said this job was its last use."""
    backend = InMemoryBackend()
    handle = cluster(backend)
    engines(monkeypatch, seen)
    assert release(backend, handle, BY, RESULT) is None
    assert [h.name for h in backend.list_owned()] == [handle.name]
    assert f"{handle.name} is left to its teardown" in caplog.text
    assert ("app-2 (prep)" if seen.busy else "did not answer") in caplog.text
    assert "app-1 (build" not in caplog.text  # the releasing job itself is no other work
    assert released(context(), handle) is None  # the teardown deletes it and reports itself
    assert earlier_result(handle, BY) == RESULT  # the job did succeed


def test_the_releasing_job_alone_still_listed_running_does_not_keep_the_cluster(
        ephemeral_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = InMemoryBackend()
    handle = cluster(backend)
    engines(monkeypatch, Activity(True, "1 running",
                                  details=["Spark application app-1 (build_features)"]))
    assert release(backend, handle, BY, RESULT) is not None
    assert backend.list_owned() == []


def test_the_triggers_release_asks_the_engines_too(
        ephemeral_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.airflow import triggers
    from ephemeral.jobs.results import JobResult

    backend = InMemoryBackend()
    handle = cluster(backend)
    monkeypatch.setattr(triggers, "task_backend", lambda *_a: backend)
    engines(monkeypatch, Activity(True, "1 Ray job(s) pending or running",
                                  details=["raysubmit_prep"]))
    trig = triggers.RayJobTrigger(handle=handle.model_dump(mode="json"), backend="local",
                                  job_id="raysubmit_train", release=BY)
    done = JobResult(job_id="raysubmit_train", cluster=handle.name, engine="ray",
                     status="SUCCEEDED", seconds=1.0, result={"loss": 0.1})
    event = trig._released(SimpleNamespace(succeeded_result=lambda _jid: done))
    assert event["released"] is None
    assert [h.name for h in backend.list_owned()] == [handle.name]
