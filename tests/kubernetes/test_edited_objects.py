"""A cluster's objects edited by hand (a label changed or added) or a create whose answer never
came: nothing is reported deleted while it runs, nothing a create made is left behind, and a
Role that cannot see a kind fails the listing instead of hiding its clusters."""

from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ephemeral.backends.kubernetes import KubeConfig, KubernetesBackend
from ephemeral.backends.kubernetes.client import Forbidden
from ephemeral.backends.kubernetes.render.spark import master_service
from ephemeral.errors import BackendUnavailable, TeardownIncomplete
from ephemeral.lifecycle import provision
from ephemeral.reaper import RunInfo, reap
from ephemeral.specs import ClusterIdentity
from tests.conftest import small
from tests.kubernetes.apiserver import ApiServer, Operator
from tests.kubernetes.apiserver.server import status
from tests.kubernetes.conftest import NAMESPACE

RAY = small("ray/adhoc-cpu", replicas=1)
SPARK = small("spark/etl")


def ident(spec: Any) -> ClusterIdentity:
    return ClusterIdentity(spec_name=spec.spec.name, dag_id="d", run_id="r", task_id="t")


def names(apiserver: ApiServer, plural: str) -> list[str]:
    return sorted(o["metadata"]["name"] for o in apiserver.store.list(plural, NAMESPACE))


def gone(apiserver: ApiServer, plural: str, within: float = 5.0) -> bool:
    """Whether every object of ``plural`` goes within ``within`` seconds (the mock's collector
    finishes a foreground deletion in its own loop)."""
    deadline = time.monotonic() + within
    while names(apiserver, plural):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stored_then(apiserver: ApiServer, plural: str, answer: Any) -> None:
    """The API server stores the first create of ``plural``, then ``answer(stored reply)``
    is what the client gets (a lost or slow reply)."""
    create = apiserver._create
    first = [True]

    def storing(request: Any, res: Any, ns: str) -> Any:
        reply = create(request, res, ns)
        if res.plural == plural and first[0]:
            first[0] = False
            return answer(reply)
        return reply

    apiserver._create = storing  # type: ignore[method-assign]


def test_a_create_whose_answer_is_lost_deletes_what_it_stored(
        k8s_backend: KubernetesBackend, apiserver: ApiServer) -> None:
    # etcd stored the RayCluster, the answer timed out ("etcdserver: request timed out", a
    # load balancer's 504), and the first read after it fails too.
    stored_then(apiserver, "rayclusters",
                lambda _: status(504, "Timeout", "etcdserver: request timed out"))
    apiserver.fail("get", "rayclusters", 503)
    with pytest.raises(BackendUnavailable, match="HTTP 504"):
        provision(k8s_backend, RAY, ClusterIdentity.manual(RAY.spec.name, "lost"), timeout=5)
    assert gone(apiserver, "rayclusters")


def test_a_create_interrupted_in_its_primary_post_deletes_what_it_stored(
        k8s_backend: KubernetesBackend, apiserver: ApiServer) -> None:
    main = threading.main_thread().ident
    assert main is not None

    def interrupted(reply: Any) -> Any:
        # Ctrl-C while the answer is awaited: a real SIGINT, sent once the object is stored,
        # so it lands in the POST whatever the load (a timer could fire before or after it).
        signal.pthread_kill(main, signal.SIGINT)
        time.sleep(0.5)
        return reply

    stored_then(apiserver, "rayclusters", interrupted)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as Python's
    try:
        with pytest.raises(KeyboardInterrupt):
            provision(k8s_backend, RAY, ClusterIdentity.manual(RAY.spec.name, "cut"), timeout=5)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert gone(apiserver, "rayclusters")


def test_a_refused_create_reads_nothing_back(k8s_backend: KubernetesBackend,
                                             apiserver: ApiServer) -> None:
    apiserver.fail("create", "rayclusters", 429, reason="TooManyRequests", message="slow down")
    with pytest.raises(BackendUnavailable):
        k8s_backend.create(RAY, identity=ident(RAY))
    assert apiserver.requests("get", "rayclusters") == []


def test_a_keep_label_added_by_hand_does_not_keep_a_run_cluster(
        k8s_backend: KubernetesBackend, apiserver: ApiServer) -> None:
    h = k8s_backend.create(RAY, identity=ident(RAY))
    apiserver.store.update("rayclusters", NAMESPACE, h.name, lambda o: o["metadata"]["labels"]
                           .update({"ephemeral.dev/on-failure": "keep"}))
    [listed] = k8s_backend.list_owned()
    assert "ephemeral.dev/on-failure" not in listed.labels
    ended = datetime.now(UTC) - timedelta(hours=5)
    [d] = reap(k8s_backend, lookup=lambda dag, run: RunInfo("success", ended))
    assert d.deleted, d
    assert names(apiserver, "rayclusters") == []


def test_a_setup_that_keeps_its_cluster_is_still_kept(k8s_backend: KubernetesBackend) -> None:
    from ephemeral.airflow.context import SetupIdentity

    keep = SetupIdentity(spec_name=RAY.spec.name, dag_id="d", run_id="r", task_id="t",
                         on_failure="keep")
    k8s_backend.create(RAY, identity=keep)
    [listed] = k8s_backend.list_owned()
    assert listed.labels["ephemeral.dev/on-failure"] == "keep"


@pytest.mark.parametrize("label", ["ephemeral.dev/instance", "ephemeral.dev/cluster"])
def test_a_relabelled_cluster_is_never_reported_deleted(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, label: str) -> None:
    h = k8s_backend.create(RAY, identity=ident(RAY))
    k8s_backend.wait_ready(h, timeout=5)
    apiserver.store.update("rayclusters", NAMESPACE, h.name,
                           lambda o: o["metadata"]["labels"].pop(label))
    for target in (h, h.name):
        with pytest.raises(TeardownIncomplete, match=f"RayCluster/{h.name} .*{label}"):
            k8s_backend.delete(target, wait=True)
    assert names(apiserver, "rayclusters") == [h.name]  # left alone, and said so
    assert k8s_backend.list_owned() == []
    [(name, why)] = k8s_backend.disowned()  # the reaper names it at every pass
    assert name == h.name
    assert label in why


def test_a_spark_master_relabelled_is_still_the_cluster(
        k8s_backend: KubernetesBackend, apiserver: ApiServer) -> None:
    h = k8s_backend.create(SPARK, identity=ident(SPARK))
    apiserver.store.update("deployments", NAMESPACE, master_service(h.name), lambda o: o[
        "metadata"]["labels"].update({"app.kubernetes.io/component": "master"}))
    assert [x.name for x in k8s_backend.list_owned()] == [h.name]
    assert k8s_backend.delete(h, wait=True)
    assert names(apiserver, "deployments") == []


def spark_connect(kube_config: KubeConfig, apiserver: ApiServer,
                  identity: ClusterIdentity) -> tuple[KubernetesBackend, Any]:
    """An operator-mode cluster, then a Role without the sparkconnects rule (from before
    operator mode), and a backend that has it."""
    backend = KubernetesBackend(kube_config.model_copy(update={"spark_mode": "operator"}))
    h = backend.create(SPARK, identity=identity)
    for verb in ("list", "get", "watch", "delete"):
        apiserver.forbid(verb, "sparkconnects")
    return backend, h


def test_a_role_that_cannot_see_sparkconnects_fails_the_reaper_after_reaping_the_rest(
        kube_config: KubeConfig, operator: Operator, apiserver: ApiServer) -> None:
    """The SparkConnects it cannot see fail the pass (they would be neither listed nor
    reaped); the clusters it does see are still judged and deleted: an expired RayCluster."""
    backend, _ = spark_connect(kube_config, apiserver, ident(SPARK))
    ray = backend.create(RAY, identity=ident(RAY))
    decisions = reap(backend, lookup=None, now=datetime.now(UTC) + timedelta(days=365))
    assert [(d.cluster, d.deleted) for d in decisions if d.delete] == [(ray.name, True)]
    assert gone(apiserver, "rayclusters")
    errors = [d.error for d in decisions if d.error]
    assert errors
    assert all("cannot list sparkconnects" in e for e in errors)
    assert names(apiserver, "sparkconnects")  # unseen, so untouched
    with pytest.raises(Forbidden, match="cannot list sparkconnects"):
        backend.disowned()


def test_a_role_that_cannot_see_sparkconnects_fails_their_deletion(
        kube_config: KubeConfig, operator: Operator, apiserver: ApiServer) -> None:
    backend, h = spark_connect(kube_config, apiserver,
                               ClusterIdentity.manual(SPARK.spec.name, "sc-one"))
    for target in (h, "sc-one"):
        with pytest.raises(TeardownIncomplete, match=r"SparkConnect/sc-one .*cannot get "
                                                     r"sparkconnects"):
            backend.delete(target, wait=True)
    assert names(apiserver, "sparkconnects") == ["sc-one"]


def test_a_role_without_sparkconnects_still_runs_standalone_clusters(
        k8s_backend: KubernetesBackend, apiserver: ApiServer) -> None:
    for verb in ("list", "get", "watch", "delete"):
        apiserver.forbid(verb, "sparkconnects")
    h = k8s_backend.create(SPARK, identity=ident(SPARK))  # its other-mode check sees none
    assert k8s_backend.delete(h, wait=True)
    assert names(apiserver, "deployments") == []
