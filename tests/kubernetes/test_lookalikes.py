"""Readiness, the head's view and the diagnosis follow ownership from the cluster's primary, as
its deletion does: someone else's Deployment or pod carrying the cluster's labels (a copy, a
debug shell, one being deleted) neither fails, hides nor counts for the cluster."""

from __future__ import annotations

from typing import Any

from ephemeral.backends.base import HeadState, Phase
from ephemeral.backends.kubernetes import KubernetesBackend
from ephemeral.backends.kubernetes.render.spark import master_service
from ephemeral.lifecycle import provision
from ephemeral.specs import ClusterIdentity
from tests.conftest import small
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
