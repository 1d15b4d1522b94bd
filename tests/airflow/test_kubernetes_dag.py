"""A DAG on the Kubernetes backend through an Airflow connection: the setup creates the
RayCluster through the real kubernetes client against the strict API mock, waits deferred (the
trigger looks the connection up again by id), and the teardown deletes it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.airflow.conftest import task_states
from tests.kubernetes.apiserver import ApiServer, Operator, WebEndpoints
from tests.kubernetes.manifest_validation import validate_manifest

NAMESPACE = "airflow-test"
TOKEN = "tok-airflow-7c1e-never-in-xcom"


@pytest.fixture
def k8s_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiServer]:
    server = ApiServer(validate=validate_manifest, namespace=NAMESPACE, token=TOKEN).start()
    operator = Operator(server.store).start()
    web = WebEndpoints(server.store).start()
    try:
        kubeconfig = tmp_path / "kubeconfig.yaml"
        server.kubeconfig(kubeconfig)
        monkeypatch.setenv("EPHEMERAL_INSTANCE", "dag-test")  # required on Kubernetes
        monkeypatch.setenv("AIRFLOW_CONN_K8S_TEST", json.dumps({
            "conn_type": "kubernetes",
            "extra": {"kube_config_path": str(kubeconfig), "namespace": NAMESPACE,
                      "ephemeral_endpoint_mode": "ingress",
                      "ephemeral_ingress_url_template": web.url_template}}))
        yield server
    finally:
        web.stop()
        operator.stop()
        server.stop()


def rayclusters(server: ApiServer) -> list[dict[str, Any]]:
    return server.store.list("rayclusters", NAMESPACE)


def test_a_dag_runs_on_the_kubernetes_backend_of_a_connection(dagbag: Any,
                                                               k8s_connection: ApiServer) -> None:
    run = dagbag.get_dag("kubernetes_via_connection").test()
    assert task_states(run) == {"create": "success", "check": "success", "delete": "success"}
    created = [body for method, path, _, body in k8s_connection.calls
               if method == "POST" and path.split("?")[0].endswith("/rayclusters")]
    assert len(created) == 1
    manifest = json.loads(created[0])
    assert manifest["metadata"]["labels"]["ephemeral.dev/dag-id"] == "kubernetes_via_connection"
    # Deleted, and nothing of the connection's credentials went anywhere but the API server.
    assert rayclusters(k8s_connection) == []
    assert k8s_connection.store.list("pods", NAMESPACE) == []
    from airflow.models.trigger import Trigger
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        values = [json.dumps(r.value) for r in session.query(XComModel).filter_by(
            dag_id="kubernetes_via_connection", run_id=run.run_id)]
        triggers = [json.dumps(t.kwargs, default=str) for t in session.query(Trigger)]
    assert values
    assert not any(TOKEN in v for v in values + triggers)


def test_an_unknown_extra_of_ours_is_refused_by_name(monkeypatch: pytest.MonkeyPatch,
                                                     airflow_db: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow.backends import task_backend
    from ephemeral.airflow.operators import CreateClusterOperator
    from ephemeral.errors import BackendMisconfigured

    monkeypatch.setenv("AIRFLOW_CONN_K8S_BAD", json.dumps({
        "conn_type": "kubernetes", "extra": {"ephemeral_endpoint_mod": "ingress"}}))
    with pytest.raises(BackendMisconfigured, match="unknown extra ephemeral_endpoint_mod"):
        task_backend(None, "k8s_bad")
    with pytest.raises(BackendMisconfigured, match="drop one of them"):
        task_backend("local", "k8s_bad")
    # A task fails at once: a retry would read the same connection.
    with pytest.raises(AirflowFailException, match="unknown extra ephemeral_endpoint_mod"):
        CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu", conn_id="k8s_bad",
                              deferrable=False).execute({})
