"""Readiness, the head's view and the diagnosis follow ownership from the cluster's primary, as
its deletion does: someone else's Deployment or pod carrying the cluster's labels (a copy, a
debug shell, one being deleted) neither fails, hides nor counts for the cluster. Adopting a
half-made cluster takes no one else's object under a part's name for that part."""

from __future__ import annotations

from typing import Any

import pytest

from ephemeral.backends.base import HeadState, Phase
from ephemeral.backends.kubernetes import KubernetesBackend
from ephemeral.backends.kubernetes.ownership import Owned, deployment_of
from ephemeral.backends.kubernetes.render.spark import master_service
from ephemeral.errors import BackendUnavailable, IdentityConflict
from ephemeral.lifecycle import provision
from ephemeral.specs import ClusterIdentity
from tests.conftest import manual, small
from tests.kubernetes.apiserver import ApiServer, Operator
from tests.kubernetes.conftest import NAMESPACE

RAY = small("ray/adhoc-cpu", replicas=1)
SPARK = small("spark/etl")


def ident(spec: Any) -> ClusterIdentity:
    return ClusterIdentity(spec_name=spec.spec.name, dag_id="d", run_id="r", task_id="t")


def running_pod(name: str, labels: dict[str, str], **status: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "sh", "image": "busybox"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                       **status}}


def test_a_terminating_lookalike_deployment_neither_fails_nor_deletes_spark(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, operator: Operator) -> None:
    name = ident(SPARK).name
    operator.paused = True
    # Someone's debug Deployment with the cluster's label, being deleted (a finalizer of
    # theirs holds it).
    apiserver.store.put("deployments", NAMESPACE, {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "alice-debug", "labels": {"ephemeral.dev/cluster": name},
                     "finalizers": ["example.com/hold"]},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "alice"}},
                 "template": {"metadata": {"labels": {"app": "alice"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
    apiserver.store.mark_deleted("deployments", NAMESPACE, "alice-debug", foreground=False)
    operator.paused = False
    done = provision(k8s_backend, SPARK, ident(SPARK), timeout=5)
    assert done.status.ready
    assert done.status.nodes_expected == 4  # master, 2 workers, connect: not alice's
    ours = [d for d in apiserver.store.list("deployments", NAMESPACE)
            if d["metadata"]["name"] != "alice-debug"]
    assert len(ours) == 3
    assert not any(d["metadata"].get("deletionTimestamp") for d in ours)


def test_a_lookalike_running_head_pod_hides_no_dead_head(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, operator: Operator) -> None:
    h = k8s_backend.create(RAY, identity=ident(RAY))
    assert k8s_backend.wait_ready(h, timeout=5).ready
    operator.paused = True
    for p in apiserver.store.list("pods", NAMESPACE):
        if p["metadata"]["labels"].get("ray.io/node-type") == "head":
            apiserver.store.update("pods", NAMESPACE, p["metadata"]["name"], lambda o: o.update(
                status={"phase": "Failed", "reason": "Evicted"}))
    apiserver.store.put("pods", NAMESPACE, running_pod(
        "alice-shell", {"ray.io/cluster": h.name, "ray.io/node-type": "head"}))
    view = k8s_backend.head_view(h)
    assert view.state is HeadState.GONE
    assert "Evicted" in view.reason
    assert "alice-shell" not in view.reason


def test_lookalike_pods_count_for_no_ray_node(k8s_backend: KubernetesBackend,
                                              apiserver: ApiServer, operator: Operator) -> None:
    operator.paused = True  # the RayCluster is there, KubeRay has made no pod yet
    h = k8s_backend.create(RAY, identity=ident(RAY))
    for i in range(2):
        apiserver.store.put("pods", NAMESPACE, running_pod(f"alice-{i}",
                                                           {"ray.io/cluster": h.name}))
    status = k8s_backend.wait_ready(h, timeout=0)
    assert (status.phase, status.nodes_ready) == (Phase.STARTING, 0)


def test_the_diagnosis_names_the_clusters_pods_only(
        k8s_backend: KubernetesBackend, apiserver: ApiServer) -> None:
    """Spark's pods are owned by their Deployment's ReplicaSet, as the real controller makes
    them: found through it; a look-alike's trouble is not the cluster's."""
    h = k8s_backend.create(SPARK, identity=ident(SPARK))
    assert k8s_backend.wait_ready(h, timeout=5).ready
    waiting = {"containerStatuses": [{"name": "sh", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "no such image"}}}]}
    [ours] = [p for p in apiserver.store.list("pods", NAMESPACE)
              if p["metadata"]["name"].startswith(master_service(h.name))]
    assert ours["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    apiserver.store.update("pods", NAMESPACE, ours["metadata"]["name"],
                           lambda o: o["status"].update(waiting))
    apiserver.store.put("pods", NAMESPACE, running_pod(
        "alice-x", {"ephemeral.dev/cluster": h.name}, **waiting))
    text = k8s_backend.diagnose(h)
    assert f"pod/{ours['metadata']['name']}: container sh waiting: ImagePullBackOff" in text
    assert "alice-x" not in text


def test_a_replicaset_is_its_deployments_by_the_whole_name() -> None:
    """``<deployment>-<pod-template-hash>``, the hash one token: cluster ``etl``'s Deployment
    ``etl-worker`` is not the owner of cluster ``etl-worker``'s ReplicaSets."""
    assert deployment_of("etl-worker-5d8f7c") == "etl-worker"
    assert deployment_of("etl-worker-master-5d8f7c") == "etl-worker-master"
    assert [deployment_of(n) for n in ("etl", "etl-", "-5d8f7c", "etl-worker-5d8f.c")] == \
        [None] * 4
    owned = Owned(deployments={"etl-master", "etl-worker"})
    pod = {"metadata": {"uid": "p", "ownerReferences": [
        {"kind": "ReplicaSet", "name": "etl-worker-master-5d8f7c", "uid": "rs"}]}}
    assert not owned.claims(pod)
    pod["metadata"]["ownerReferences"][0]["name"] = "etl-worker-5d8f7c"
    assert owned.claims(pod)


def test_the_diagnosis_names_no_replicaset_of_a_cluster_whose_name_extends_its_own(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, operator: Operator) -> None:
    """Pods the API refuses show only as their ReplicaSet's events; cluster ``etl`` reports
    its own ReplicaSets', never those of cluster ``etl-worker`` (``etl-worker-master-...``
    begins with ``etl``'s ``etl-worker-``)."""
    operator.deployments_ready = False  # no ReplicaSet of the mock's: the events say why
    etl, other = (k8s_backend.create(SPARK, identity=manual(SPARK, n))
                  for n in ("etl", "etl-worker"))
    for h in (etl, other):
        for dep in apiserver.store.list("deployments", NAMESPACE,
                                        labels=f"ephemeral.dev/cluster={h.name}"):
            rs = {"kind": "ReplicaSet", "apiVersion": "apps/v1", "metadata": {
                "name": f"{dep['metadata']['name']}-5d8f7c", "namespace": NAMESPACE,
                "uid": f"rs-{dep['metadata']['uid']}"}}
            operator.event(rs, "FailedCreate", f"quota exceeded in {h.name}")
    text = k8s_backend.diagnose(etl)
    mine = [f"event replicaset/etl-{c}-5d8f7c: Warning FailedCreate: quota exceeded in etl"
            for c in ("connect", "master", "worker")]
    assert [line for line in text.splitlines() if "replicaset/" in line] == mine
    assert "etl-worker-master" not in text


def test_the_diagnosis_names_no_replicaset_event_of_an_earlier_cluster_of_the_name(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, operator: Operator) -> None:
    """An earlier ``etl``'s ReplicaSets had the same names (same pod template), and their
    events are kept for an hour: only the events since this cluster's Deployments were made
    are its own."""
    operator.deployments_ready = False
    etl = k8s_backend.create(SPARK, identity=manual(SPARK, "etl"))
    dep = apiserver.store.list("deployments", NAMESPACE, labels="ephemeral.dev/cluster=etl")[0]
    name = f"{dep['metadata']['name']}-5d8f7c"
    for life, message in (("old", "quota exceeded an hour ago"), ("new", "quota exceeded now")):
        rs = {"kind": "ReplicaSet", "apiVersion": "apps/v1", "metadata": {
            "name": name, "namespace": NAMESPACE, "uid": f"rs-{life}"}}
        operator.event(rs, "FailedCreate", message)
    (old,) = [e for e in apiserver.store.list("events", NAMESPACE)
              if e["involvedObject"]["uid"] == "rs-old"]
    apiserver.store.update("events", NAMESPACE, old["metadata"]["name"],
                           lambda e: e.update(lastTimestamp="2026-01-01T00:00:00Z"))
    lines = [line for line in k8s_backend.diagnose(etl).splitlines() if "replicaset/" in line]
    assert lines == [f"event replicaset/{name}: Warning FailedCreate: quota exceeded now"]


def _policy(name: str, **meta: Any) -> dict[str, Any]:
    """Someone's NetworkPolicy that lets everything in."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "labels": {"team": "other"}, **meta},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]}}


def test_adopting_a_half_made_cluster_takes_no_foreign_part(
        k8s_backend: KubernetesBackend, apiserver: ApiServer) -> None:
    h = k8s_backend.create(RAY, identity=ident(RAY))
    # As if the create had crashed before its NetworkPolicy, and someone else's policy of
    # that name (allowing every client in) had been made since.
    apiserver.store.remove("networkpolicies", NAMESPACE, h.name)
    apiserver.store.put("networkpolicies", NAMESPACE, _policy(h.name))
    with pytest.raises(IdentityConflict, match=rf"NetworkPolicy '{h.name}' exists and is not"):
        k8s_backend.create(RAY, identity=ident(RAY))
    kept = apiserver.store.get("networkpolicies", NAMESPACE, h.name)
    assert kept is not None
    assert kept["metadata"]["labels"] == {"team": "other"}
    assert apiserver.store.get("rayclusters", NAMESPACE, h.name) is not None  # not undone


def test_adopting_meets_a_terminating_part_and_says_retry(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, operator: Operator) -> None:
    h = k8s_backend.create(RAY, identity=ident(RAY))
    operator.paused = True  # no collector: the old part stays terminating
    apiserver.store.remove("networkpolicies", NAMESPACE, h.name)
    apiserver.store.put("networkpolicies", NAMESPACE,
                        _policy(h.name, finalizers=["example.com/hold"]))
    apiserver.store.mark_deleted("networkpolicies", NAMESPACE, h.name, foreground=False)
    with pytest.raises(BackendUnavailable, match=rf"NetworkPolicy '{h.name}' .*being deleted"):
        k8s_backend.create(RAY, identity=ident(RAY))


def test_adopting_makes_the_missing_parts_and_keeps_its_own(
        k8s_backend: KubernetesBackend, apiserver: ApiServer) -> None:
    h = k8s_backend.create(RAY, identity=ident(RAY))
    apiserver.store.remove("networkpolicies", NAMESPACE, h.name)
    assert k8s_backend.create(RAY, identity=ident(RAY)).adopted
    made = apiserver.store.get("networkpolicies", NAMESPACE, h.name)
    uid = apiserver.store.get("rayclusters", NAMESPACE, h.name)["metadata"]["uid"]
    assert made is not None
    assert [r["uid"] for r in made["metadata"]["ownerReferences"]] == [uid]
    assert k8s_backend.create(RAY, identity=ident(RAY)).adopted  # its own part: adopted again
