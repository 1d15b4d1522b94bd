"""One namespace, several owners: two deployments (EPHEMERAL_INSTANCE prod and staging) and
people with edit rights who copy, relabel and annotate objects by hand. Labels only find
candidates and the handle annotation is no authority (``KubernetesBackend._handle_of``): what
ephemeral acts on is an object whose metadata and record agree, and what it deletes is that
object and what names it as owner. Each case here deleted or redirected another's cluster
before (a hostile review's reproductions, on the strict API mock)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ephemeral.activity import Activity
from ephemeral.airflow.run_end import delete_run_clusters
from ephemeral.backends.base import ClusterHandle, OwnerSelector
from ephemeral.backends.kubernetes import KubernetesBackend
from ephemeral.backends.kubernetes.render import HANDLE_ANNOTATION
from ephemeral.reaper import RunInfo, reap
from ephemeral.specs import ClusterIdentity
from ephemeral.specs.identity import INSTANCE_LABEL, PREFIX, label_value
from tests.conftest import small
from tests.kubernetes.apiserver import ApiServer
from tests.kubernetes.conftest import NAMESPACE

RAY = small("ray/adhoc-cpu", replicas=1)
RUN = "scheduled__2026-01-01T00:00:00+00:00"  # the same id in every deployment


def owner(run: str = RUN) -> ClusterIdentity:
    return ClusterIdentity(spec_name=RAY.spec.name, dag_id="train", run_id=run,
                           task_id="create_cluster")


def rayclusters(server: ApiServer, ns: str = NAMESPACE) -> list[str]:
    return sorted(o["metadata"]["name"] for o in server.store.list("rayclusters", ns))


def edit(server: ApiServer, name: str, change: Callable[[dict[str, Any]], None],
         ns: str = NAMESPACE) -> None:
    assert server.store.update("rayclusters", ns, name, change)


def edit_record(server: ApiServer, cluster: str, **fields: Any) -> None:
    def change(obj: dict[str, Any]) -> None:
        annotations = obj["metadata"]["annotations"]
        record = json.loads(annotations[HANDLE_ANNOTATION])
        record.update(fields)
        annotations[HANDLE_ANNOTATION] = json.dumps(record)
    edit(server, cluster, change)


def copy_of(server: ApiServer, name: str, as_name: str, *, ns: str = NAMESPACE,
            annotations: bool = True, cluster_label: str | None = None) -> None:
    """``kubectl get -o yaml | edit | kubectl apply``: a person's copy of a cluster."""
    obj = server.store.get("rayclusters", NAMESPACE, name)
    assert obj is not None
    labels = dict(obj["metadata"]["labels"])
    if cluster_label is not None:
        labels[PREFIX + "cluster"] = cluster_label
    meta = {"name": as_name, "labels": labels}
    if annotations:
        meta["annotations"] = dict(obj["metadata"]["annotations"])
    server.store.put("rayclusters", ns, {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                                         "spec": obj["spec"], "metadata": meta})


def never_asked(_backend: Any, _handle: ClusterHandle) -> Activity:
    return Activity(None, "not asked")


def past_expiry(handle: ClusterHandle) -> datetime:
    expires = datetime.strptime(handle.expires_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return expires + timedelta(seconds=1)


def test_a_run_id_that_looks_like_a_hashed_label_selects_only_its_own_clusters(
        k8s_backend: KubernetesBackend, apiserver: ApiServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    long_run = "manual__" + "x" * 70  # over 63 characters: its label is a hash
    victim = k8s_backend.create(RAY, identity=owner(long_run))
    crafted = label_value(long_run)  # 'h-...': a valid label value and Airflow run id
    mine = k8s_backend.create(RAY, identity=owner(crafted))
    # The two share a label; the full ids tell them apart.
    assert mine.labels[PREFIX + "run-id"] == victim.labels[PREFIX + "run-id"]
    deleted = delete_run_clusters("train", crafted, backend=k8s_backend,
                                  failed_setup=lambda _h: False)
    assert deleted == [mine.name]
    assert rayclusters(apiserver) == [victim.name]
    assert delete_run_clusters("train", long_run, backend=k8s_backend,
                               failed_setup=lambda _h: False) == [victim.name]


def test_ids_that_look_like_a_hash_are_a_clusters_own_as_they_always_were(
        k8s_backend: KubernetesBackend, apiserver: ApiServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A DAG named ``h-index-refresh``: its label is its id, as before, so clusters made by
    earlier versions stay their runs' to delete."""
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    made = k8s_backend.create(RAY, identity=ClusterIdentity(
        spec_name=RAY.spec.name, dag_id="h-index-refresh", run_id=RUN, task_id="create"))
    assert made.labels[PREFIX + "dag-id"] == "h-index-refresh"
    assert delete_run_clusters("h-index-refresh", RUN, backend=k8s_backend,
                               failed_setup=lambda _h: False) == [made.name]
    assert rayclusters(apiserver) == []


def test_deleting_a_cluster_whose_own_object_was_edited_fails_naming_it(
        k8s_backend: KubernetesBackend, apiserver: ApiServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither deleted on the edited record's word nor reported deleted: a teardown or
    ``ephemeral down`` that leaves it running fails, naming it and why."""
    from ephemeral.errors import TeardownIncomplete

    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    made = k8s_backend.create(RAY, identity=owner())
    edit_record(apiserver, made.name, labels={INSTANCE_LABEL: "prod",
                                              PREFIX + "cluster": made.name,
                                              PREFIX + "run-id": "another"})
    with pytest.raises(TeardownIncomplete, match=rf"RayCluster/{made.name} \(left alone: "):
        k8s_backend.delete(made.name)
    assert rayclusters(apiserver) == [made.name]


def test_a_copy_carrying_a_clusters_labels_is_neither_listed_nor_deleted_with_it(
        k8s_backend: KubernetesBackend, apiserver: ApiServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    made = k8s_backend.create(RAY, identity=owner())
    copy_of(apiserver, made.name, "alice-debug", annotations=False)  # labels only
    copy_of(apiserver, made.name, "bob-debug")  # labels and the record, name unchanged in it
    assert [h.name for h in k8s_backend.list_owned()] == [made.name]
    assert delete_run_clusters("train", RUN, backend=k8s_backend,
                               failed_setup=lambda _h: False) == [made.name]
    assert rayclusters(apiserver) == ["alice-debug", "bob-debug"]


def test_a_copy_renamed_with_its_record_expiring_does_not_take_the_original(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    made = k8s_backend.create(RAY, identity=ClusterIdentity.manual(RAY.spec.name, "exp1"))
    # The copy's cluster label follows its new name; its record still names the original.
    copy_of(apiserver, made.name, "alice-debug", cluster_label="alice-debug")
    decisions = reap(k8s_backend, lookup=None, now=past_expiry(made),
                     memory_file=tmp_path / "m.json", activity=never_asked)
    assert [(d.cluster, d.deleted) for d in decisions] == [(made.name, True),
                                                           ("alice-debug", False)]
    assert "disagrees with the object on ephemeral.dev/cluster, name" in decisions[1].reason
    assert rayclusters(apiserver) == ["alice-debug"]


def test_a_relabelled_cluster_is_acted_on_by_nobody(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """``kubectl label raycluster X ephemeral.dev/instance=staging --overwrite`` on prod's
    cluster: staging's reaper, whose Airflow has the same scheduled run (ended), left it alone
    no more before; now neither deployment acts on a cluster whose labels and record differ."""
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    prod = k8s_backend.create(RAY, identity=owner())
    edit(apiserver, prod.name,
         lambda o: o["metadata"]["labels"].__setitem__(INSTANCE_LABEL, "staging"))
    policies = [o["metadata"]["name"] for o in apiserver.store.list("networkpolicies", NAMESPACE)]
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "staging")
    assert k8s_backend.list_owned() == []
    ended = RunInfo("success", datetime.now(UTC) - timedelta(hours=1))
    [reported] = reap(k8s_backend, lookup=lambda _d, _r: ended, grace=600,
                      memory_file=tmp_path / "m.json", activity=never_asked)
    assert (reported.cluster, reported.delete, reported.deleted) == (prod.name, False, False)
    assert "left alone" in reported.reason
    assert f"{INSTANCE_LABEL}" in reported.reason
    assert delete_run_clusters("train", RUN, backend=k8s_backend,
                               failed_setup=lambda _h: False) == []
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    assert k8s_backend.list_owned(OwnerSelector.everything()) == []
    assert rayclusters(apiserver) == [prod.name]
    assert [o["metadata"]["name"]
            for o in apiserver.store.list("networkpolicies", NAMESPACE)] == policies


@pytest.mark.parametrize("fields", [
    {"namespace": "team-b"},
    {"endpoints": {"dashboard": "http://attacker.example:8265"}},
    {"labels": {INSTANCE_LABEL: "prod", PREFIX + "cluster": "other"}},
    {"name": "other"},
])
def test_a_record_edited_in_place_never_redirects_a_task(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, monkeypatch: pytest.MonkeyPatch,
        fields: dict[str, Any]) -> None:
    """What a task acts on comes from the object: its namespace, its name, endpoints derived
    from them; a record that names another cluster than its object is nobody's."""
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    made = k8s_backend.create(RAY, identity=owner())
    edit_record(apiserver, made.name, **fields)
    found = k8s_backend.owned(made, OwnerSelector(labels=made.owner_labels))
    if "name" in fields or "labels" in fields:
        assert found is None
        return
    assert found is not None
    assert found.namespace == NAMESPACE
    assert found.endpoints == k8s_backend.endpoints(made)
    assert "attacker" not in json.dumps(found.endpoints.model_dump())
    k8s_backend.delete(found)
    assert rayclusters(apiserver) == []


def test_a_copy_in_another_namespace_is_that_namespaces_own(
        k8s_backend: KubernetesBackend, kube_config: Any, apiserver: ApiServer,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A record copied into namespace team-b still names the original's namespace: team-b's
    reaper judged the copy and deleted the original. The namespace is the object's now."""
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    made = k8s_backend.create(RAY, identity=ClusterIdentity.manual(RAY.spec.name, "exp1"))
    copy_of(apiserver, made.name, made.name, ns="team-b")
    team_b = KubernetesBackend(kube_config.model_copy(update={"namespace": "team-b"}))
    try:
        [listed] = team_b.list_owned()
        assert listed.namespace == "team-b"
        decisions = reap(team_b, lookup=None, now=past_expiry(made),
                         memory_file=tmp_path / "m.json", activity=never_asked)
        assert [(d.cluster, d.deleted) for d in decisions] == [(made.name, True)]
    finally:
        team_b.client.close()
    assert rayclusters(apiserver, "team-b") == []
    assert rayclusters(apiserver) == [made.name]


def earlier_life(handle: ClusterHandle) -> ClusterHandle:
    """``handle`` as a handle of its name's life an hour before (gone since)."""
    assert handle.created_ts is not None
    ts = handle.created_ts - 3600
    return handle.model_copy(update={"created_ts": ts, "created_at": datetime.fromtimestamp(
        ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})


def test_a_handle_naming_another_namespace_finds_there_only_the_cluster_it_recorded(
        k8s_backend: KubernetesBackend, kube_config: Any, apiserver: ApiServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A handle's namespace is looked in (the deployment moved since its setup, or its
    connection's is another), but there this run's labels alone would take any cluster of the
    name for the run's: another deployment's of the same instance and scheduled run id, or a
    life made since. Only the one the handle recorded (name and creation time) is found."""
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    team_b = KubernetesBackend(kube_config.model_copy(update={"namespace": "team-b"}))
    try:
        theirs = team_b.create(RAY, identity=owner())
    finally:
        team_b.client.close()
    assert theirs.namespace == "team-b"
    selector = OwnerSelector(labels=theirs.owner_labels)
    assert k8s_backend.owned(earlier_life(theirs), selector) is None
    found = k8s_backend.owned(theirs, selector)
    assert found is not None
    assert (found.namespace, found.created_at) == ("team-b", theirs.created_at)
    # In the backend's own namespace the run's labels find the run's cluster, whatever life
    # the handle names: its caller compares the lives and says which (the reaper's look).
    mine = k8s_backend.create(RAY, identity=owner())
    assert mine.namespace == NAMESPACE
    found = k8s_backend.owned(earlier_life(mine), selector)
    assert found is not None
    assert (found.namespace, found.created_at) == (NAMESPACE, mine.created_at)
    assert rayclusters(apiserver, "team-b") == rayclusters(apiserver) == [mine.name]


def test_an_unreadable_record_is_reported_at_every_pass_and_deleted_by_nobody(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    made = k8s_backend.create(RAY, identity=owner())
    edit(apiserver, made.name,
         lambda o: o["metadata"]["annotations"].__setitem__(HANDLE_ANNOTATION, "{not json"))
    for _ in range(2):
        [reported] = reap(k8s_backend, lookup=None, now=past_expiry(made),
                          memory_file=tmp_path / "m.json", activity=never_asked)
        assert (reported.cluster, reported.delete) == (made.name, False)
        assert "unreadable" in reported.reason
    assert rayclusters(apiserver) == [made.name]
