"""A cluster's objects edited by hand (a label changed or added) or a create whose answer never
came: nothing is reported deleted while it runs, nothing a create made is left behind, and a
Role that cannot see a kind fails the listing instead of hiding its clusters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ephemeral.backends.kubernetes import KubernetesBackend
from ephemeral.reaper import RunInfo, reap
from ephemeral.specs import ClusterIdentity
from tests.conftest import small
from tests.kubernetes.apiserver import ApiServer
from tests.kubernetes.conftest import NAMESPACE

RAY = small("ray/adhoc-cpu", replicas=1)
SPARK = small("spark/etl")


def ident(spec: Any) -> ClusterIdentity:
    return ClusterIdentity(spec_name=spec.spec.name, dag_id="d", run_id="r", task_id="t")


def names(apiserver: ApiServer, plural: str) -> list[str]:
    return sorted(o["metadata"]["name"] for o in apiserver.store.list(plural, NAMESPACE))


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
