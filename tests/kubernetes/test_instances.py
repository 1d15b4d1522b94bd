"""Staging and production sharing one namespace (the strict API mock): the same DAG and run id
make two clusters, and neither deployment's teardown, `down --all` or reaper touches the
other's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ephemeral.backends.base import OwnerSelector
from ephemeral.backends.kubernetes import KubernetesBackend
from ephemeral.errors import IdentityConflict, InstanceRequired
from ephemeral.reaper import RunInfo, reap
from ephemeral.specs import ClusterIdentity
from ephemeral.specs.identity import INSTANCE_LABEL, PREFIX, label_value
from tests.conftest import small
from tests.kubernetes.apiserver import ApiServer
from tests.kubernetes.conftest import NAMESPACE

RAY = small("ray/adhoc-cpu", replicas=1)
RUN = "scheduled__2026-01-01T00:00:00+00:00"


def owner() -> ClusterIdentity:
    return ClusterIdentity(spec_name=RAY.spec.name, dag_id="train", run_id=RUN,
                           task_id="create_cluster")


def rayclusters(server: ApiServer) -> dict[str, str]:
    return {o["metadata"]["name"]: o["metadata"]["labels"][INSTANCE_LABEL]
            for o in server.store.list("rayclusters", NAMESPACE)}


def test_two_instances_share_a_namespace_without_touching_each_other(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "staging")
    staging = k8s_backend.create(RAY, identity=owner())
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    prod = k8s_backend.create(RAY, identity=owner())
    assert rayclusters(apiserver) == {staging.name: "staging", prod.name: "prod"}

    # What production's teardown lists for its setup in this run: its own cluster only.
    run = OwnerSelector(labels={PREFIX + "dag-id": "train", PREFIX + "run-id": label_value(RUN),
                                PREFIX + "task-id": "create_cluster"})
    assert [h.name for h in k8s_backend.list_owned(run)] == [prod.name]
    assert [h.name for h in k8s_backend.list_owned()] == [prod.name]
    assert k8s_backend.get(staging.name) is None

    ended = RunInfo("failed", datetime.now(UTC) - timedelta(hours=1))
    decisions = reap(k8s_backend, lookup=lambda _d, _r: ended, grace=0,
                     memory_file=tmp_path / "seen.json")
    assert [(d.cluster, d.deleted) for d in decisions] == [(prod.name, True)]
    assert rayclusters(apiserver) == {staging.name: "staging"}

    # A manual cluster under a name the other deployment uses is refused, not adopted.
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "staging")
    k8s_backend.create(RAY, identity=ClusterIdentity.manual(RAY.spec.name, "shared-name"))
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    with pytest.raises(IdentityConflict, match="belongs to deployment instance 'staging'"):
        k8s_backend.create(RAY, identity=ClusterIdentity.manual(RAY.spec.name, "shared-name"))
    assert {h.name for h in k8s_backend.list_owned(OwnerSelector.everything())} == {
        staging.name, "shared-name"}


def test_a_teardown_given_a_handle_stripped_of_its_instance_leaves_the_other_deployment(
        k8s_backend: KubernetesBackend, apiserver: ApiServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An XCom edited to drop the instance label used to make production's teardown delete
    staging's cluster of the same scheduled run, by name across instances: the teardown acts
    on the backend's records of its own run only (ephemeral.airflow.handles)."""
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow import operators

    monkeypatch.setenv("EPHEMERAL_INSTANCE", "staging")
    staging = k8s_backend.create(RAY, identity=owner())
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    k8s_backend.create(RAY, identity=owner())
    monkeypatch.setattr(operators, "task_backend", lambda *_a: k8s_backend)
    forged = staging.model_copy(update={"labels": {}})
    teardown = operators.DeleteClusterOperator(task_id="delete", setup_task_id="create_cluster",
                                               cluster=forged.model_dump(mode="json"))
    context = {"dag": SimpleNamespace(dag_id="train"), "run_id": RUN,
               "ti": SimpleNamespace(task_id="delete", map_index=-1)}
    with pytest.raises(AirflowFailException, match="nothing of it was deleted"):
        teardown.execute(context)
    assert rayclusters(apiserver) == {staging.name: "staging"}  # production's own went


def _unset(monkeypatch: pytest.MonkeyPatch) -> str:
    """A deployment that left its instance unset (every Airflow container: /opt/airflow)."""
    from ephemeral.settings import instance_of

    monkeypatch.delenv("EPHEMERAL_INSTANCE", raising=False)
    monkeypatch.delenv("AIRFLOW__EPHEMERAL__INSTANCE", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", "/opt/airflow")
    return instance_of()


def test_without_a_set_instance_nothing_is_created_and_no_reaper_runs(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """Staging and prod both unset would derive one instance from /opt/airflow: the same run's
    cluster would be one name, adopted by both, and each reaper would reap the other's runs."""
    derived = _unset(monkeypatch)
    with pytest.raises(InstanceRequired) as refused:
        k8s_backend.create(RAY, identity=owner())
    assert "EPHEMERAL_INSTANCE" in str(refused.value)
    assert derived in str(refused.value)
    assert not [c for c in apiserver.calls if c[0] in ("POST", "PUT", "PATCH")]
    with pytest.raises(InstanceRequired, match="reaping"):
        reap(k8s_backend, lookup=lambda _d, _r: None, grace=0,
             memory_file=tmp_path / "seen.json")
    assert not [c for c in apiserver.calls if c[0] == "DELETE"]


def test_an_instance_the_connection_gives_is_set(k8s_backend: KubernetesBackend,
                                                 apiserver: ApiServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _unset(monkeypatch)
    made = k8s_backend.create(RAY, identity=ClusterIdentity(
        spec_name=RAY.spec.name, dag_id="train", run_id=RUN, task_id="create_cluster",
        instance="prod"))
    assert rayclusters(apiserver) == {made.name: "prod"}


def test_a_cluster_made_before_under_the_derived_instance_is_still_deleted(
        k8s_backend: KubernetesBackend, apiserver: ApiServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An upgrade must not leak what the earlier version made: its teardown and `down` (one
    known cluster, by handle or name) still delete it."""
    derived = _unset(monkeypatch)
    monkeypatch.setenv("EPHEMERAL_INSTANCE", derived)  # as the earlier version made it
    old = k8s_backend.create(RAY, identity=owner())
    other = k8s_backend.create(RAY, identity=ClusterIdentity(
        spec_name=RAY.spec.name, dag_id="train", run_id="other", task_id="create_cluster"))
    _unset(monkeypatch)
    k8s_backend.delete(old, wait=True)
    k8s_backend.delete(other.name, wait=True)
    assert rayclusters(apiserver) == {}


def test_a_teardown_whose_listing_is_forbidden_still_deletes_by_its_handle(
        k8s_backend: KubernetesBackend, apiserver: ApiServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Role without the sparkconnects rule, where the spark-operator is installed: listing the
    run's clusters fails (it may hide one), but the handle's own cluster is read in its own kind
    and deleted before the teardown fails naming the listing."""
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow import operators

    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    made = k8s_backend.create(RAY, identity=owner())
    for verb in ("list", "get", "watch"):
        apiserver.forbid(verb, "sparkconnects")
    monkeypatch.setattr(operators, "task_backend", lambda *_a: k8s_backend)
    teardown = operators.DeleteClusterOperator(task_id="delete", setup_task_id="create_cluster",
                                               cluster=made.model_dump(mode="json"))
    context = {"dag": SimpleNamespace(dag_id="train"), "run_id": RUN,
               "ti": SimpleNamespace(task_id="delete", map_index=-1)}
    with pytest.raises(AirflowFailException, match="cannot list the clusters create_cluster"):
        teardown.execute(context)
    assert rayclusters(apiserver) == {}
