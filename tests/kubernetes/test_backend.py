"""KubernetesBackend against the strict API mock with a test-driven operator."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from ephemeral.backends import get_backend
from ephemeral.backends.base import OwnerSelector, Phase
from ephemeral.backends.kubernetes import KubeConfig, KubernetesBackend
from ephemeral.backends.kubernetes.client import DEPLOYMENT, RAYCLUSTER, Forbidden
from ephemeral.errors import (
    BackendUnavailable,
    ClusterFailed,
    IdentityConflict,
    ReadinessTimeout,
    SettingError,
    TeardownIncomplete,
)
from ephemeral.specs import ClusterIdentity
from ephemeral.specs.identity import PREFIX
from ephemeral.specs.resolve import ResolvedSpec
from tests.conftest import small
from tests.kubernetes.apiserver import ApiServer, Operator, RayScenario, WebEndpoints
from tests.kubernetes.apiserver.harness import hold_until_watched
from tests.kubernetes.conftest import NAMESPACE

RAY = small("ray/adhoc-cpu", replicas=1)
SPARK = small("spark/etl")


def owner(spec: ResolvedSpec, run: str = "run-1") -> ClusterIdentity:
    return ClusterIdentity(spec_name=spec.spec.name, dag_id="k8s", run_id=run,
                           task_id="create_cluster")


def names(server: ApiServer, plural: str) -> list[str]:
    return [o["metadata"]["name"] for o in server.store.list(plural, NAMESPACE)]


def test_ray_cluster_becomes_ready_and_adopts(k8s_backend: KubernetesBackend,
                                              apiserver: ApiServer, web: WebEndpoints) -> None:
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    assert handle.namespace == NAMESPACE
    assert handle.endpoints.gcs == f"{handle.name}-head-svc.{NAMESPACE}.svc.cluster.local:6379"
    assert handle.endpoints.dashboard == f"http://127.0.0.1:{web.port}/{NAMESPACE}/" \
                                         f"{handle.name}/dashboard"
    status = k8s_backend.wait_ready(handle, timeout=5)
    assert (status.phase, status.nodes_ready, status.nodes_expected) == (Phase.READY, 2, 2)
    assert f"GET /{NAMESPACE}/{handle.name}/dashboard/api/version" in web.hits
    assert k8s_backend.create(RAY, identity=owner(RAY)) == handle.model_copy(
        update={"adopted": True})
    assert names(apiserver, "rayclusters") == [handle.name]


def test_a_name_typed_by_hand_never_adopts_a_runs_cluster(k8s_backend: KubernetesBackend,
                                                          apiserver: ApiServer) -> None:
    from ephemeral.errors import IdentityConflict

    handle = k8s_backend.create(RAY, identity=owner(RAY))
    with pytest.raises(IdentityConflict, match="task create_cluster of run run-1 of DAG k8s"):
        k8s_backend.create(RAY, identity=ClusterIdentity.manual(RAY.spec.name, handle.name))
    assert names(apiserver, "rayclusters") == [handle.name]
    assert not [c for c in apiserver.calls if c[0] == "DELETE"]


def test_dashboard_must_answer(k8s_backend: KubernetesBackend, web: WebEndpoints) -> None:
    web.down = True
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    with pytest.raises(ReadinessTimeout, match=r"dashboard .* does not answer"):
        k8s_backend.wait_ready(handle, timeout=0.5)
    web.down = False
    assert k8s_backend.wait_ready(handle, timeout=5).ready


def test_spark_cluster_ready_when_workers_alive(k8s_backend: KubernetesBackend,
                                                apiserver: ApiServer, web: WebEndpoints) -> None:
    handle = k8s_backend.create(SPARK, identity=owner(SPARK))
    assert names(apiserver, "deployments") == [f"{handle.name}-{c}"
                                               for c in ("connect", "master", "worker")]
    status = k8s_backend.wait_ready(handle, timeout=5)
    assert status.ready
    assert status.nodes_expected == 4  # master, 2 workers, connect
    assert any(h.endswith("/spark-ui/json") for h in web.hits)
    assert [h.name for h in k8s_backend.list_owned()] == [handle.name]
    k8s_backend.delete(handle)
    assert apiserver.store.all() == []


def test_another_spec_under_the_same_identity_is_refused(k8s_backend: KubernetesBackend) -> None:
    k8s_backend.create(RAY, identity=owner(RAY))
    with pytest.raises(IdentityConflict, match="spec hash"):
        k8s_backend.create(small("ray/adhoc-cpu", replicas=2), identity=owner(RAY))


def test_image_pull_backoff_times_out_with_events_and_pod_reasons(
        k8s_backend: KubernetesBackend, operator: Operator) -> None:
    operator.ray_scenario = RayScenario.IMAGE_PULL
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    with pytest.raises(ReadinessTimeout) as info:
        k8s_backend.wait_ready(handle, timeout=0.5)
    text = str(info.value)
    assert "0/2 nodes ready" in text
    assert f"pod/{handle.name}-head: container ray-head waiting: ImagePullBackOff" in text
    assert 'Warning Failed: Failed to pull image "rayproject/ray:2.60.0-py311-cpu"' in text
    assert info.value.retryable


def test_unschedulable_gpu_pods_are_explained(k8s_backend: KubernetesBackend,
                                              operator: Operator) -> None:
    operator.ray_scenario = RayScenario.UNSCHEDULABLE
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    with pytest.raises(ReadinessTimeout) as info:
        k8s_backend.wait_ready(handle, timeout=0.5)
    assert "not scheduled: Unschedulable: 0/3 nodes are available: 3 Insufficient " \
           "nvidia.com/gpu" in info.value.details
    assert "Warning FailedScheduling" in info.value.details


def test_spark_pods_the_api_refuses_are_explained(k8s_backend: KubernetesBackend,
                                                  apiserver: ApiServer, operator: Operator
                                                  ) -> None:
    """Pods refused at admission (here a ResourceQuota) never exist: the reasons are the
    Deployment's ReplicaFailure condition and its ReplicaSet's events."""
    operator.deployments_ready = False  # the controller cannot make the workers' pods
    handle = k8s_backend.create(SPARK, identity=owner(SPARK))
    worker = f"{handle.name}-worker"
    refused = 'pods "x" is forbidden: exceeded quota: gpu-quota, requested: requests.cpu=1'

    def fail(dep: dict[str, object]) -> None:
        dep["status"] = {"conditions": [{"type": "ReplicaFailure", "status": "True",
                                         "reason": "FailedCreate", "message": refused}]}
    apiserver.store.update("deployments", NAMESPACE, worker, fail)
    rs = {"kind": "ReplicaSet", "apiVersion": "apps/v1",
          "metadata": {"name": f"{worker}-5d8f7c", "namespace": NAMESPACE, "uid": "rs-uid"}}
    operator.event(rs, "FailedCreate", "Error creating: " + refused)
    other = dict(rs, metadata={"name": "someone-else-5d8f7c", "namespace": NAMESPACE,
                               "uid": "rs-2"})
    operator.event(other, "FailedCreate", "not about this cluster")
    with pytest.raises(ReadinessTimeout) as info:
        k8s_backend.wait_ready(handle, timeout=0.5)
    assert f"deployment/{worker}: ReplicaFailure: FailedCreate: {refused}" in info.value.details
    assert f"event replicaset/{worker}-5d8f7c: Warning FailedCreate: Error creating: " \
           f"{refused}" in info.value.details
    assert "someone-else" not in info.value.details


def test_invalid_spec_event_fails_at_once(k8s_backend: KubernetesBackend,
                                          operator: Operator) -> None:
    operator.ray_scenario = RayScenario.INVALID
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    started = time.monotonic()
    with pytest.raises(ClusterFailed, match="InvalidRayClusterSpec"):
        k8s_backend.wait_ready(handle, timeout=30)
    assert time.monotonic() - started < 5


def test_an_invalid_spec_event_of_an_earlier_cluster_of_that_name_is_ignored(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, operator: Operator) -> None:
    # Events outlive their object for an hour: a cleared task makes the cluster again under the
    # same name, and must not fail on its predecessor's InvalidRayClusterSpec.
    operator.ray_scenario = RayScenario.INVALID
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    with pytest.raises(ClusterFailed, match="InvalidRayClusterSpec"):
        k8s_backend.wait_ready(handle, timeout=5)
    k8s_backend.delete(handle, wait=True)
    assert names(apiserver, "events")  # still there, as on a real cluster
    operator.ray_scenario = RayScenario.READY
    again = k8s_backend.create(RAY, identity=owner(RAY))
    assert again.name == handle.name
    assert k8s_backend.wait_ready(again, timeout=5).ready


def test_spark_objects_are_owned_by_the_master(k8s_backend: KubernetesBackend,
                                               apiserver: ApiServer) -> None:
    # list_owned sees the master only: whatever removes it (a delete interrupted after its first
    # call, a create whose clean-up failed) must not leave Services and Deployments nobody finds.
    handle = k8s_backend.create(SPARK, identity=owner(SPARK))
    master = apiserver.store.get("deployments", NAMESPACE, f"{handle.name}-master")
    assert master is not None
    ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": master["metadata"]["name"],
           "uid": master["metadata"]["uid"]}
    others = [o for plural in ("deployments", "services")
              for o in apiserver.store.list(plural, NAMESPACE)
              if o["metadata"]["uid"] != ref["uid"]]
    assert len(others) == 4  # the master Service, the workers, Connect and its Service
    assert all(o["metadata"].get("ownerReferences") == [ref] for o in others)
    k8s_backend.client.delete(DEPLOYMENT, ref["name"])  # and nothing else
    deadline = time.monotonic() + 3
    while apiserver.store.all() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert apiserver.store.all() == []
    assert k8s_backend.list_owned() == []


def test_adoption_makes_the_missing_parts_owned_by_the_master(
        k8s_backend: KubernetesBackend, apiserver: ApiServer) -> None:
    handle = k8s_backend.create(SPARK, identity=owner(SPARK))
    worker = f"{handle.name}-worker"
    apiserver.store.remove("deployments", NAMESPACE, worker)  # as if a create had crashed
    assert k8s_backend.create(SPARK, identity=owner(SPARK)) == handle.model_copy(
        update={"adopted": True})
    master = apiserver.store.get("deployments", NAMESPACE, f"{handle.name}-master")
    made = apiserver.store.get("deployments", NAMESPACE, worker)
    assert master is not None
    assert made is not None
    assert [r["uid"] for r in made["metadata"]["ownerReferences"]] == [master["metadata"]["uid"]]


def test_a_concurrent_create_that_adopted_the_cluster_is_not_undone(
        k8s_backend: KubernetesBackend, apiserver: ApiServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A retry starts while the first attempt still runs: it adopts the primary and makes the
    # rest, so the first attempt meets parts that are already there, owned by its primary.
    rival = KubernetesBackend(k8s_backend.config)
    create = k8s_backend.client.create
    calls: list[str] = []

    def racing(obj: dict[str, Any]) -> dict[str, Any]:
        calls.append(obj["metadata"]["name"])
        if len(calls) == 2:
            rival.create(SPARK, identity=owner(SPARK))
        return create(obj)

    monkeypatch.setattr(k8s_backend.client, "create", racing)
    handle = k8s_backend.create(SPARK, identity=owner(SPARK))
    assert handle.model_copy(update={"adopted": True}) == rival.create(SPARK,
                                                                       identity=owner(SPARK))
    assert not [c for c in apiserver.calls if c[0] == "DELETE"]
    assert k8s_backend.wait_ready(handle, timeout=5).ready
    rival.client.close()


def test_delete_removes_the_primary_before_a_later_list_fails(
        k8s_backend: KubernetesBackend, apiserver: ApiServer) -> None:
    handle = k8s_backend.create(SPARK, identity=owner(SPARK))
    apiserver.forbid("list", "services")  # listed after the Deployments
    with pytest.raises(Forbidden, match="list services"):
        k8s_backend.delete(handle, wait=True)
    deadline = time.monotonic() + 3
    while apiserver.store.all() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert apiserver.store.all() == []  # the master went, and the collector took the rest


def test_partial_create_deletes_what_it_made(k8s_backend: KubernetesBackend,
                                             apiserver: ApiServer, operator: Operator) -> None:
    operator.deployments_ready = False
    apiserver.fail("create", "services", 500)  # the master's Service, after the master
    with pytest.raises(BackendUnavailable):
        k8s_backend.create(SPARK, identity=owner(SPARK))
    deadline = time.monotonic() + 3
    while apiserver.store.list("deployments", NAMESPACE) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert apiserver.store.all() == []
    # Nothing is left half-made, so a retry starts from scratch and succeeds.
    operator.deployments_ready = True
    assert k8s_backend.wait_ready(k8s_backend.create(SPARK, identity=owner(SPARK)),
                                  timeout=5).ready


def test_foreground_delete_waits_for_the_pods(k8s_backend: KubernetesBackend,
                                              apiserver: ApiServer, operator: Operator) -> None:
    operator.pod_grace = 1.0
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    k8s_backend.wait_ready(handle, timeout=5)
    started = time.monotonic()
    k8s_backend.delete(handle, wait=True)
    assert time.monotonic() - started >= 0.5
    assert apiserver.store.all() == []
    assert k8s_backend.wait_ready(handle, timeout=0).phase is Phase.GONE
    deletes = [path for method, path, *_ in apiserver.calls if method == "DELETE"]
    assert deletes[0] == (f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayclusters/{handle.name}"
                          "?propagationPolicy=Foreground")
    # The NetworkPolicy is the collector's once its owner goes (unless it is still listed).
    assert all("/networkpolicies/" in path for path in deletes[1:])


def test_delete_without_wait_returns_at_once(k8s_backend: KubernetesBackend,
                                             operator: Operator) -> None:
    operator.pod_grace = 2.0
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    k8s_backend.wait_ready(handle, timeout=5)
    k8s_backend.delete(handle, wait=False)
    assert k8s_backend.wait_ready(handle, timeout=0).phase in (Phase.DELETING, Phase.GONE)


def test_a_finalizer_that_never_clears_is_teardown_incomplete(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, operator: Operator) -> None:
    operator.ray_scenario = RayScenario.STUCK_FINALIZER
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    k8s_backend.wait_ready(handle, timeout=5)
    fast = KubernetesBackend(k8s_backend.config.model_copy(update={"delete_timeout": 0.5}))
    with pytest.raises(TeardownIncomplete) as info:
        fast.delete(handle, wait=True)
    assert info.value.leftover == [f"RayCluster/{handle.name} (terminating; finalizers: "
                                   "ray.io/gcs-ft-redis-cleanup-finalizer)"]
    # The finalizer is removed (the operator's timeout): the next delete completes.
    apiserver.store.update("rayclusters", NAMESPACE, handle.name,
                           lambda o: o["metadata"].update(finalizers=[]))
    k8s_backend.delete(handle, wait=True)
    assert apiserver.store.all() == []


def test_list_owned_ignores_foreign_and_unlabelled_objects(
        k8s_backend: KubernetesBackend, apiserver: ApiServer) -> None:
    mine = k8s_backend.create(RAY, identity=owner(RAY, run="run-a"))
    other = k8s_backend.create(RAY, identity=owner(RAY, run="run-b"))
    rc = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "spec": {}}
    apiserver.store.put("rayclusters", NAMESPACE, rc | {"metadata": {"name": "hand-made"}})
    apiserver.store.put("rayclusters", NAMESPACE, rc | {"metadata": {
        "name": "labelled-no-handle", "labels": {PREFIX + "cluster": "x",
                                                 PREFIX + "backend": "kubernetes"}}})
    apiserver.store.put("rayclusters", "elsewhere", rc | {"metadata": {
        "name": mine.name + "-x", "labels": dict(mine.labels),
        "annotations": {PREFIX + "handle": mine.model_dump_json()}}})
    assert [h.name for h in k8s_backend.list_owned()] == sorted([mine.name, other.name])
    only_a = k8s_backend.list_owned(OwnerSelector(labels={PREFIX + "run-id": "run-a"}))
    assert only_a == [mine]
    assert k8s_backend.get(other.name) == other


def test_secrets_never_travel_in_request_bodies(k8s_backend: KubernetesBackend,
                                                apiserver: ApiServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.specs.resolve import resolve

    monkeypatch.setenv("HF_TOKEN", "hf-value-must-stay-home")
    spec = resolve("ray/adhoc-cpu", "ci-cpu")
    env = [{"name": "HF_TOKEN", "secretKeyRef": {"name": "hf", "key": "token"}}]
    data = spec.spec.model_dump(by_alias=True) | {"runtimeEnv": {"env": env}}
    with_secret = type(spec)(spec=type(spec.spec).model_validate(data), ref=spec.ref,
                             source=spec.source, profile=spec.profile, hash=spec.hash + "s")
    handle = k8s_backend.create(with_secret, identity=owner(RAY))
    k8s_backend.wait_ready(handle, timeout=5)
    k8s_backend.delete(handle)
    bodies = b"".join(apiserver.bodies())
    assert b"secretKeyRef" in bodies  # the reference travels, the value never does
    for secret in (apiserver.token, os.environ["HF_TOKEN"]):
        assert secret.encode() not in bodies
    # The credential goes in the Authorization header only.
    assert all(h.get("Authorization") == f"Bearer {apiserver.token}"
               for _, _, h, _ in apiserver.calls)


def test_crd_missing_is_reported_on_create_and_tolerated_on_delete(
        k8s_backend: KubernetesBackend, apiserver: ApiServer) -> None:
    apiserver.crd_installed = False
    with pytest.raises(BackendUnavailable, match="KubeRay is not installed"):
        k8s_backend.create(RAY, identity=owner(RAY))
    k8s_backend.delete(owner(RAY), wait=True)
    assert k8s_backend.list_owned() == []


def test_a_handles_kind_answered_as_not_served_is_never_reported_deleted(
        k8s_backend: KubernetesBackend, apiserver: ApiServer) -> None:
    """An API server whose cache is not synced (a restart, an upgrade) answers a RayCluster it
    has as a CRD it does not serve: the teardown reported the running cluster deleted."""
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    apiserver.fail("get", "rayclusters", 404, reason="NotFound",
                   message="the server could not find the requested resource")
    with pytest.raises(TeardownIncomplete, match=rf"RayCluster/{handle.name} \(cannot tell"):
        k8s_backend.delete(handle, wait=True)
    assert apiserver.store.get("rayclusters", NAMESPACE, handle.name) is not None
    k8s_backend.delete(handle, wait=True)  # the server answers again: deleted
    assert apiserver.store.get("rayclusters", NAMESPACE, handle.name) is None


def test_handles_of_another_namespace_are_followed(k8s_backend: KubernetesBackend,
                                                   apiserver: ApiServer) -> None:
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    moved = handle.model_copy(update={"namespace": "elsewhere"})
    assert k8s_backend.wait_ready(moved, timeout=0).phase is Phase.GONE
    assert apiserver.calls[-1][1].startswith("/apis/ray.io/v1/namespaces/elsewhere/")
    assert k8s_backend.get(handle.name) is not None
    assert k8s_backend.client.get(RAYCLUSTER, handle.name) is not None


def test_get_backend_builds_it_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPHEMERAL_K8S_NAMESPACE", "ml")
    monkeypatch.setenv("EPHEMERAL_K8S_IN_CLUSTER", "false")
    backend = get_backend("kubernetes")
    assert isinstance(backend, KubernetesBackend)
    assert backend.config.namespace == "ml"
    with pytest.raises(SettingError, match="unknown backend 'nomad'; use local or kubernetes"
                       ) as err:
        get_backend("nomad")
    assert not err.value.retryable  # refused input: a retry would only fail again


def test_config_from_env_detects_a_pod() -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    assert KubeConfig.from_env(env).in_cluster
    assert not KubeConfig.from_env(env | {"EPHEMERAL_KUBECONFIG": "/k"}).in_cluster
    assert KubeConfig.from_env({"EPHEMERAL_K8S_HTTP_CHECK": "0"}).http_check is False
    with pytest.raises(BackendUnavailable, match="EPHEMERAL_K8S_IN_CLUSTER"):
        KubeConfig.from_env({"EPHEMERAL_K8S_IN_CLUSTER": "maybe"})


def test_delete_waits_through_watch_not_polling(k8s_backend: KubernetesBackend,
                                                apiserver: ApiServer, operator: Operator) -> None:
    operator.pod_grace = 1.0  # polling every 0.02 s would list ~5 kinds 50 times meanwhile
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    assert k8s_backend.wait_ready(handle, timeout=5).ready
    before = len(apiserver.calls)
    started = time.monotonic()
    k8s_backend.delete(handle, wait=True)
    took = time.monotonic() - started
    assert 0.9 <= took < 2.5  # returns as the last pod goes, not a poll interval later
    assert apiserver.store.all() == []
    calls = apiserver.calls[before:]
    watches = [path for method, path, *_ in calls if "watch=true" in path]
    lists = [path for method, path, *_ in calls if method == "GET" and "watch=true" not in path]
    # The RayCluster goes last (foreground): its watch waits out the pods' grace period.
    assert any("/rayclusters?" in path for path in watches)
    # The delete's own lists (5 kinds: RayCluster, SparkConnect, Deployment, Service,
    # NetworkPolicy), each watch's list (5 kinds, 2 pod selectors), one final check (as many).
    assert len(lists) <= 19


@pytest.mark.parametrize("refusal", ["forbidden", "unsupported"])
def test_without_watch_delete_and_wait_ready_poll(k8s_backend: KubernetesBackend,
                                                  apiserver: ApiServer, operator: Operator,
                                                  refusal: str) -> None:
    # A Role without the watch verb (403), or a server that does not serve it (405).
    for plural in ("rayclusters", "deployments", "services", "pods"):
        if refusal == "forbidden":
            apiserver.forbid("watch", plural)
        else:
            apiserver.fail("watch", plural, 405, times=100, reason="MethodNotAllowed",
                           message="watch is not supported")
    operator.pod_grace = 0.3
    for spec in (RAY, SPARK):
        handle = k8s_backend.create(spec, identity=owner(spec))
        assert k8s_backend.wait_ready(handle, timeout=30).ready  # a loaded runner: ready when ready
        k8s_backend.delete(handle, wait=True)
        assert apiserver.store.all() == []
    assert apiserver.requests("watch", "rayclusters")  # tried, refused, polled


def test_spark_pods_count_after_the_collector_took_their_deployments(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, operator: Operator,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The master waits for no dependent: the collector may remove the other Deployments and
    their ReplicaSets before the delete lists them, and their pods, tied to the cluster only
    by their ReplicaSet's name, must still be waited for (they were not: the delete returned
    while the workers ran, when the collector came between the DELETE and the list)."""
    handle = k8s_backend.create(SPARK, identity=owner(SPARK))
    assert k8s_backend.wait_ready(handle, timeout=30).ready
    pods = names(apiserver, "pods")
    assert len(pods) == 4  # master, 2 workers, connect
    operator.slow_collection = {("ReplicaSet", "pods")}  # the pods outlive the wait
    issue = k8s_backend.client.delete

    def delete_then_collect(kind: Any, name: str, **kw: Any) -> bool:
        done = issue(kind, name, **kw)
        deadline = time.monotonic() + 5
        while names(apiserver, "deployments") and time.monotonic() < deadline:
            time.sleep(0.01)  # the collector takes every Deployment before the next request
        return done

    monkeypatch.setattr(k8s_backend.client, "delete", delete_then_collect)
    with pytest.raises(TeardownIncomplete) as info:
        k8s_backend.delete(handle, wait=True)
    assert names(apiserver, "deployments") == []
    assert sorted(info.value.leftover) == [f"Pod/{p}" for p in pods]
    operator.slow_collection = set()
    deadline = time.monotonic() + 5
    while apiserver.store.all() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert apiserver.store.all() == []


def test_wait_ready_probes_on_changes(k8s_backend: KubernetesBackend, apiserver: ApiServer,
                                      operator: Operator) -> None:
    operator.provision_delay = 0.5
    start = hold_until_watched(apiserver, operator, "rayclusters")
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    start()
    assert k8s_backend.wait_ready(handle, timeout=5).ready
    # Polling every 0.02 s would have read the RayCluster ~25 times while it provisioned.
    assert len(apiserver.requests("get", "rayclusters")) <= 5
    assert apiserver.requests("watch", "rayclusters")
    # timeout=0 stays one probe, no watch (Airflow's trigger loops over it).
    before = len(apiserver.requests("watch", "rayclusters"))
    assert k8s_backend.wait_ready(handle, timeout=0).ready
    assert len(apiserver.requests("watch", "rayclusters")) == before
