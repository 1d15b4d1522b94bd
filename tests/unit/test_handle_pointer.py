"""A handle from XCom is a pointer, never an authority (ephemeral.airflow.handles): an edited
or mistaken handle makes no task delete, run on, or send credentials to a cluster its own
backend does not record as this DAG run's."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from ephemeral.backends.base import ClusterHandle, Endpoints
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.settings import get_settings
from ephemeral.specs import ClusterIdentity, resolve

SPEC = resolve("ray/adhoc-cpu", "ci-cpu")
RUN = "scheduled__2026-01-01T00:00:00+00:00"


def ident(*, dag: str = "train", run: str = RUN, task: str = "create",
          instance: str | None = None) -> ClusterIdentity:
    return ClusterIdentity(spec_name=SPEC.spec.name, dag_id=dag, run_id=run, task_id=task,
                           instance=instance or get_settings().instance)


def context(task_id: str = "delete") -> dict[str, Any]:
    return {"dag": SimpleNamespace(dag_id="train"), "run_id": RUN,
            "ti": SimpleNamespace(task_id=task_id, map_index=-1, try_number=1,
                                  xcom_push=lambda **_kw: None)}


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> InMemoryBackend:
    """One in-memory backend every task of the test reaches, whatever the handle says."""
    from ephemeral.airflow import operators

    shared = InMemoryBackend()
    monkeypatch.setattr(operators, "task_backend", lambda *_a: shared)
    # A teardown without a usable handle: the deployment's backend, found by labels there.
    monkeypatch.setattr(operators, "resolve_target", lambda *_a: SimpleNamespace(
        backend=shared, instance=get_settings().instance, connection=None))
    return shared


def names(backend: InMemoryBackend) -> list[str]:
    from ephemeral.backends.base import OwnerSelector

    return sorted(h.name for h in backend.list_owned(OwnerSelector.everything()))


def teardown(cluster: Any) -> Any:
    from ephemeral.airflow.operators import DeleteClusterOperator

    return DeleteClusterOperator(task_id="delete", setup_task_id="create", cluster=cluster)


def test_a_teardown_given_another_runs_handle_deletes_only_its_own(
        backend: InMemoryBackend) -> None:
    backend.create(SPEC, identity=ident())
    other = backend.create(SPEC, identity=ident(dag="someone_else", run="manual__victim"))
    # The run's own cluster goes; the other is named in the failure, never deleted.
    with pytest.raises(AirflowFailException, match=f"the handle names {other.name}, which the "
                                                   "fake backend does not record"):
        teardown(other.model_dump(mode="json")).execute(context())
    assert names(backend) == [other.name]


def test_a_handle_stripped_of_its_labels_reaches_no_other_instance(
        backend: InMemoryBackend) -> None:
    # The same scheduled run in another deployment: its labels removed, the instance check
    # has nothing to compare, and the backend's record still says whose it is.
    theirs = backend.create(SPEC, identity=ident(instance="staging"))
    forged = theirs.model_copy(update={"labels": {}, "annotations": {}})
    with pytest.raises(AirflowFailException, match="nothing of it was deleted"):
        teardown(forged.model_dump(mode="json")).execute(context())
    assert names(backend) == [theirs.name]


@pytest.mark.parametrize("cluster", ["eph-adhoc-cpu-0123456789", {"name": "x"}])
def test_a_malformed_handle_still_lets_the_teardown_delete_the_runs_cluster(
        backend: InMemoryBackend, cluster: Any) -> None:
    mine = backend.create(SPEC, identity=ident())
    with pytest.raises(AirflowFailException, match="cluster handle"):
        teardown(cluster).execute(context())
    assert mine.name not in names(backend)


def test_the_teardown_keeps_what_only_the_setups_handle_knows(
        backend: InMemoryBackend) -> None:
    from ephemeral.airflow.context import owner_selector
    from ephemeral.airflow.handles import confirm

    mine = backend.create(SPEC, identity=ident())
    pushed = mine.model_copy(update={"ready_ts": 1.5, "connection": "eph",
                                     "endpoints": Endpoints(dashboard="http://elsewhere:1")})
    record = confirm(backend, pushed, owner_selector(context(), "create"))
    assert record is not None
    assert (record.ready_ts, record.connection) == (1.5, "eph")
    assert record.endpoints == mine.endpoints  # where it answers: the backend's word


def test_a_job_never_runs_on_another_runs_cluster(backend: InMemoryBackend) -> None:
    from ephemeral.airflow.operators import RayJobOperator

    other = backend.create(SPEC, identity=ident(dag="someone_else", run="manual__victim"))
    job = RayJobOperator(task_id="job", cluster=other.model_dump(mode="json"),
                         entrypoint="python -V")
    with pytest.raises(AirflowFailException, match="is not a cluster create made in this DAG "
                                                   "run on the fake backend") as err:
        job.execute(context("job"))
    assert "another run's" in str(err.value)


def test_a_job_of_another_instance_says_so(backend: InMemoryBackend,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.airflow.operators import RayJobOperator

    theirs = backend.create(SPEC, identity=ident(instance="staging"))
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    job = RayJobOperator(task_id="job", cluster=theirs.model_dump(mode="json"),
                         entrypoint="python -V")
    with pytest.raises(AirflowFailException, match="EPHEMERAL_INSTANCE differs"):
        job.execute(context("job"))


def test_a_handle_without_its_setup_is_refused_as_such(backend: InMemoryBackend) -> None:
    from ephemeral.airflow.operators import RayJobOperator

    made = backend.create(SPEC, identity=ClusterIdentity.manual(SPEC.spec.name, "by-hand"))
    job = RayJobOperator(task_id="job", cluster=made.model_dump(mode="json"),
                         entrypoint="python -V")
    with pytest.raises(AirflowFailException, match="records no setup task"):
        job.execute(context("job"))


def test_a_malformed_handle_names_its_fields() -> None:
    from ephemeral.airflow.handles import pointer

    with pytest.raises(AirflowFailException, match=r"backend, .*name.* missing or invalid"):
        pointer({"name": None})


def test_a_teardown_fails_loudly_on_a_cluster_whose_record_it_cannot_read(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record the backend cannot read (an old schema, an edit) confirms nothing, so the
    teardown deletes nothing on the handle's word; it fails naming the command that deletes
    by the processes' markers, instead of succeeding over a cluster nothing else finds."""
    from ephemeral.airflow import operators
    from ephemeral.backends.local import LocalBackend

    local = LocalBackend(tmp_path)
    monkeypatch.setattr(operators, "task_backend", lambda *_a: local)
    handle = InMemoryBackend().create(SPEC, identity=ident()).model_copy(
        update={"backend": "local"})
    broken = tmp_path / "clusters" / handle.name
    broken.mkdir(parents=True)
    (broken / "state.json").write_text('{"uid": "u", "version": 0}')
    with pytest.raises(AirflowFailException, match=f"ephemeral down {handle.name}"):
        teardown(handle.model_dump(mode="json")).execute(context())
    assert broken.exists()


def test_a_job_runs_on_the_backends_endpoints_not_the_handles(backend: InMemoryBackend) -> None:
    from ephemeral.airflow.operators import RayJobOperator, job_target

    mine = backend.create(SPEC, identity=ident())
    edited = mine.model_copy(update={"endpoints": Endpoints(dashboard="http://attacker:80")})
    job = RayJobOperator(task_id="job", cluster=edited.model_dump(mode="json"),
                         entrypoint="python -V")
    _backend, record = job_target(job, context("job"), ClusterHandle.model_validate(
        edited.model_dump(mode="json")))
    assert record.endpoints.dashboard == mine.endpoints.dashboard != "http://attacker:80"


def test_a_local_cluster_token_goes_only_to_its_own_dashboard(tmp_path: Any) -> None:
    from ephemeral.backends.local import LocalBackend

    # A cluster this backend has no record of gets no URL at all, whatever the handle says.
    handle = InMemoryBackend().create(SPEC, identity=ident()).model_copy(
        update={"endpoints": Endpoints(dashboard="http://attacker:80")})
    access = LocalBackend(tmp_path).access(handle)
    assert access.dashboard is None
    assert access.headers == {}


def test_a_handle_lookup_that_fails_does_not_stop_the_runs_own_deletion(
        backend: InMemoryBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.errors import BackendUnavailable

    mine = backend.create(SPEC, identity=ident())
    elsewhere = mine.model_copy(update={"name": "eph-adhoc-cpu-0000000000"})

    def forbidden(*_a: Any) -> None:
        raise BackendUnavailable("namespace team-b: forbidden")

    monkeypatch.setattr(backend, "owned", forbidden)
    with pytest.raises(AirflowFailException, match="cannot look up eph-adhoc-cpu-0000000000"):
        teardown(elsewhere.model_dump(mode="json")).execute(context())
    assert names(backend) == []  # the run's own cluster, found by its labels, went


def test_spark_connect_called_directly_needs_a_cluster_of_this_deployment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.airflow import backends
    from ephemeral.airflow.spark import spark_connect

    theirs = InMemoryBackend()
    spark = resolve("spark/etl", "ci-cpu")
    other = theirs.create(spark, identity=ClusterIdentity(
        spec_name=spark.spec.name, dag_id="d", run_id="r", task_id="t", instance="staging"))
    monkeypatch.setattr(backends, "task_backend", lambda *_a: theirs)

    @spark_connect
    def rows(spark: Any, cluster: Any) -> int:
        raise AssertionError("no session may be opened")

    with pytest.raises(ValueError, match="not a cluster of this deployment"):
        rows(cluster=other.model_dump(mode="json"))


def _in_a_dag(setup_kwargs: dict[str, Any]) -> Any:
    """A teardown of setup ``create`` (configured with ``setup_kwargs``), in a DAG."""
    from airflow.sdk import DAG

    from ephemeral.airflow.operators import CreateClusterOperator, DeleteClusterOperator

    with DAG("train", schedule=None):
        CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu", **setup_kwargs)
        return DeleteClusterOperator(task_id="delete", setup_task_id="create")


def test_a_handle_naming_another_connection_than_its_setup_still_lets_the_teardown_delete(
        backend: InMemoryBackend) -> None:
    """The run's own clusters go first, found by labels where the setup made them; then the
    teardown fails naming the edited field (handles.made_through)."""
    mine = backend.create(SPEC, identity=ident())
    delete = _in_a_dag({"conn_id": "eph"})
    delete.cluster = mine.model_copy(update={"connection": "other"}).model_dump(mode="json")
    with pytest.raises(AirflowFailException,
                       match="connection 'other' where create says 'eph'"):
        delete.execute(context())
    assert names(backend) == []


@pytest.mark.parametrize("workers_backend", ["fake", "local", "kubernetes"])
def test_a_setup_naming_no_connection_accepts_whatever_backend_its_worker_had(
        backend: InMemoryBackend, monkeypatch: pytest.MonkeyPatch, workers_backend: str) -> None:
    """EPHEMERAL_BACKEND may differ between the setup's worker and the teardown's: the handle's
    backend is then not this worker's default, and still the setup's own."""
    monkeypatch.setenv("EPHEMERAL_BACKEND", workers_backend)
    mine = backend.create(SPEC, identity=ident())
    delete = _in_a_dag({})
    delete.cluster = mine.model_dump(mode="json")
    assert delete.execute(context()) == {"deleted": [mine.name]}
    assert names(backend) == []


@pytest.mark.parametrize("recorded", ["k8s", None])
def test_a_setup_naming_no_connection_reaches_the_deployments_and_its_tasks_agree(
        backend: InMemoryBackend, monkeypatch: pytest.MonkeyPatch, recorded: str | None) -> None:
    """With [ephemeral] kubernetes_conn_id set, a setup naming no connection records it: its
    job tasks and teardown take that as the setup's own (as they do a handle recorded before
    the setting was set), and still refuse another connection."""
    monkeypatch.setenv("EPHEMERAL_KUBERNETES_CONN_ID", "k8s")
    mine = backend.create(SPEC, identity=ident()).model_copy(update={"connection": recorded})
    delete = _in_a_dag({})
    delete.cluster = mine.model_dump(mode="json")
    assert delete.execute(context()) == {"deleted": [mine.name]}
    other = backend.create(SPEC, identity=ident())
    delete.cluster = other.model_copy(update={"connection": "other"}).model_dump(mode="json")
    with pytest.raises(AirflowFailException, match="connection 'other' where create says 'k8s'"):
        delete.execute(context())


def test_a_job_given_a_handle_of_another_connection_than_its_setup_submits_nothing(
        backend: InMemoryBackend) -> None:
    from airflow.sdk import DAG

    from ephemeral.airflow.operators import CreateClusterOperator, RayJobOperator

    mine = backend.create(SPEC, identity=ident())
    with DAG("train", schedule=None):
        CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu", backend="fake")
        job = RayJobOperator(task_id="job", entrypoint="python -V", deferrable=False,
                             cluster=mine.model_copy(update={"backend": "local"}).model_dump(
                                 mode="json"))
    with pytest.raises(AirflowFailException, match="backend 'local' where create says 'fake'"):
        job.execute(context("job"))
    assert names(backend) == [mine.name]


def test_a_teardown_tried_again_after_its_deletion_succeeds(backend: InMemoryBackend) -> None:
    """A cleared teardown, or a retry after the worker was lost past the deletion: the cluster
    was deleted in this run, by this teardown (its release record says so, with the first
    try's moments for the report), so the new try succeeds: no failure, no notification."""
    from ephemeral.airflow.release import recorded
    from ephemeral.backends.base import ClusterHandle

    mine = backend.create(SPEC, identity=ident())
    h = mine.model_dump(mode="json")
    assert teardown(h).execute(context()) == {"deleted": [mine.name]}
    assert names(backend) == []
    rel = recorded(ClusterHandle.model_validate(h), "train", RUN)
    assert rel is not None
    assert rel.task == "delete"
    assert rel.deleted is not None
    assert rel.deleted >= rel.teardown_started
    assert teardown(h).execute(context()) == {"deleted": [mine.name]}
    assert recorded(ClusterHandle.model_validate(h), "train", RUN) == rel  # the first try's
    # Another cluster of the same name (a cleared run's new life) is no release of this one.
    other = ClusterHandle.model_validate(h | {"created_at": "2026-01-02T00:00:00+00:00"})
    assert recorded(other, "train", RUN) is None


def test_a_teardown_completes_a_job_tasks_record_whose_deletion_failed(
        backend: InMemoryBackend) -> None:
    """A job task released the cluster (its job succeeded) but could not delete it: the
    teardown deletes it and adds the moment to that record, which keeps the task and the
    result a retry of the task returns."""
    from ephemeral.airflow.release import earlier_result, recorded
    from ephemeral.backends.base import ClusterHandle
    from ephemeral.report.model import Release
    from ephemeral.report.store import write_release

    mine = backend.create(SPEC, identity=ident())
    result = {"job_id": "j1", "status": "SUCCEEDED", "result": {"artifact_uri": "file:///m"}}
    write_release("train", RUN, Release(name=mine.name, created_at=mine.created_at,
                                        task="trial", teardown_started=1.0, result=result))
    h = mine.model_dump(mode="json")
    assert teardown(h).execute(context()) == {"deleted": [mine.name]}
    rel = recorded(ClusterHandle.model_validate(h), "train", RUN)
    assert rel is not None
    assert (rel.task, rel.result, rel.teardown_started) == ("trial", result, 1.0)
    assert rel.deleted is not None
    by = {"dag_id": "train", "run_id": RUN, "task": "trial"}
    assert earlier_result(ClusterHandle.model_validate(h), by) == result
