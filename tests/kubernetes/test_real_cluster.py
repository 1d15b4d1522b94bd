"""ray/adhoc-cpu (ci-cpu), and spark/etl as a spark-operator SparkConnect, created, ready and
deleted on a real cluster with KubeRay (and the spark-operator).

Runs only when a kube context is reachable and the rayclusters.ray.io CRD exists (configure it
with the usual EPHEMERAL_KUBECONFIG / EPHEMERAL_K8S_CONTEXT / EPHEMERAL_K8S_NAMESPACE, or
~/.kube/config); otherwise it skips and says why, or, with EPHEMERAL_REQUIRE_K8S=1 (the kind
workflow), fails (tests/conftest.py). Readiness gets KubeRay CI's own 5 minutes.
"""

from __future__ import annotations

import pytest

from ephemeral.backends.base import Phase
from ephemeral.backends.kubernetes import KubeConfig, KubernetesBackend
from ephemeral.backends.kubernetes.client import RAYCLUSTER, SPARKCONNECT, KubeClient
from ephemeral.errors import EphemeralError
from ephemeral.specs import ClusterIdentity
from tests.conftest import small

pytestmark = pytest.mark.k8s


@pytest.fixture
def real_backend() -> KubernetesBackend:
    try:
        config = KubeConfig.from_env()
        KubeClient(config.model_copy(update={"request_timeout": 5})).list_objects(RAYCLUSTER)
    except EphemeralError as exc:
        pytest.skip(f"no usable Kubernetes cluster with KubeRay: {exc}")
    # Outside the cluster (CI's runner) `auto` means the API server's service proxy: readiness
    # also probes the dashboard through it, as the compose stack does; in a pod, Service DNS.
    return KubernetesBackend(config)


def test_adhoc_cpu_create_ready_delete(real_backend: KubernetesBackend) -> None:
    spec = small("ray/adhoc-cpu", replicas=1)
    identity = ClusterIdentity.manual(spec.spec.name, "eph-realcluster-test")
    handle = real_backend.create(spec, identity=identity)
    try:
        status = real_backend.wait_ready(handle, timeout=300)
        assert status.phase is Phase.READY
        assert status.nodes_ready == status.nodes_expected == 2
        # READY includes the dashboard's answer (http_check), here through the path below.
        dashboard = real_backend.access(handle).dashboard or ""
        if real_backend.config.resolved_endpoint_mode() == "proxy":
            assert f"/namespaces/{handle.namespace}/services/" in dashboard
            assert "/proxy" in dashboard
        assert real_backend.get(handle.name) == handle
    finally:
        real_backend.delete(handle, wait=True)
    assert real_backend.wait_ready(handle, timeout=0).phase is Phase.GONE


def test_spark_operator_mode_create_ready_delete(real_backend: KubernetesBackend) -> None:
    """spark/etl (ci-cpu) as a SparkConnect of the spark-operator; skips where it is not
    installed (the kind workflow installs chart 2.5.2 watching the namespace)."""
    try:
        real_backend.client.list_objects(SPARKCONNECT)
    except EphemeralError as exc:  # with EPHEMERAL_REQUIRE_K8S=1 the skip fails the run
        pytest.skip(f"no spark-operator in this cluster: {exc}")
    backend = KubernetesBackend(real_backend.config.model_copy(update={"spark_mode": "operator"}))
    spec = small("spark/etl", replicas=1)
    handle = backend.create(spec, identity=ClusterIdentity.manual(spec.spec.name,
                                                                  "eph-realcluster-sc"))
    try:
        status = backend.wait_ready(handle, timeout=300)  # READY: the Connect UI answers too
        assert (status.phase, status.nodes_ready) == (Phase.READY, 1)
        assert handle.endpoints.spark_master is None
        assert backend.get(handle.name) == handle
    finally:
        backend.delete(handle, wait=True)
    assert backend.wait_ready(handle, timeout=0).phase is Phase.GONE
