"""The release record (delete_cluster_on_success): it counts only for the very cluster it was
made for, a retry of the releasing task gets its result back, and the teardown uses its moments
only when the release's deletion finished."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ephemeral.airflow.release import earlier_result, recorded, release
from ephemeral.airflow.report import released
from ephemeral.backends import ClusterHandle
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.errors import BackendUnavailable
from ephemeral.specs import ClusterIdentity, resolve

BY = {"dag_id": "etl", "run_id": "r1", "task": "build_features"}
RESULT = {"job_id": "app-1", "status": "SUCCEEDED", "result": {"rows": 5}}


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
