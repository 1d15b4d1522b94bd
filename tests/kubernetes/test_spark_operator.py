"""Spark's operator mode: a Kubeflow spark-operator SparkConnect, rendered (against the vendored
CRD, its pod templates as core PodTemplateSpecs) and run on the API mock's SparkConnect
controller, ready from its status and the Connect server's UI, deleted with everything the
operator and the server made."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ephemeral.backends.base import Phase
from ephemeral.backends.kubernetes import KubeConfig, KubernetesBackend
from ephemeral.backends.kubernetes.client import SparkOperatorMissing
from ephemeral.backends.kubernetes.render import HANDLE_ANNOTATION, render, service_endpoints
from ephemeral.backends.kubernetes.render.spark_operator import is_operator
from ephemeral.cli import main
from ephemeral.errors import (
    ClusterFailed,
    IdentityConflict,
    ReadinessTimeout,
    SpecError,
    TeardownIncomplete,
)
from ephemeral.specs import ClusterIdentity, ResolvedSpec, resolve
from ephemeral.specs.resolve import CI_CPU
from tests.conftest import small
from tests.kubernetes.apiserver import ApiServer, ConnectScenario, Operator, WebEndpoints
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.manifest_validation import validate_manifest
from tests.kubernetes.test_render import (
    NS,
    SNAPSHOTS,
    UPDATE,
    handle_for,
    spec_file,
    to_yaml,
)

SPARK = small("spark/etl")
OPERATOR_SPEC = """\
kind: SparkCluster
name: elastic
version: 1
sparkVersion: "4.3.0"
image: apache/spark:4.3.0-python3
kubernetesMode: operator
workers: {replicas: 3, cores: 2, memory: 4Gi}
connect: {cpu: 1.5, memory: 2Gi}
conf: {spark.sql.shuffle.partitions: "8"}
"""


def as_operator(ref: str, profile: str | None = None) -> tuple[Any, Any]:
    spec = resolve(ref, profile)
    handle = handle_for(spec, mode="operator")
    return handle, render(spec, handle, default_spark_mode="operator")


def owner(spec: ResolvedSpec, run: str = "run-1") -> ClusterIdentity:
    return ClusterIdentity(spec_name=spec.spec.name, dag_id="k8s", run_id=run,
                           task_id="create_cluster")


# --- render --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["spark/etl", "spark/etl-gpu"])
@pytest.mark.parametrize("profile", [None, CI_CPU])
def test_a_spark_connect_validates_against_the_crd(ref: str, profile: str | None) -> None:
    handle, out = as_operator(ref, profile)
    assert [(o["kind"], o["metadata"]["name"]) for o in out.objects] == [
        ("SparkConnect", handle.name), ("NetworkPolicy", handle.name)]
    assert out.primary is out.objects[0]
    for obj in out.objects:
        assert validate_manifest(obj) == []


def test_endpoints_are_the_operators_server_service() -> None:
    handle, out = as_operator("spark/etl")
    host = f"{handle.name}-server.{NS}.svc.cluster.local"
    assert out.endpoints.spark_connect == f"sc://{host}:15002"
    assert out.endpoints.spark_ui == f"http://{host}:4040"
    assert out.endpoints.spark_master is None  # no master: spark-submit has nothing to go to
    assert service_endpoints(handle, "spark", mode="operator") == out.endpoints
    back = handle.model_copy(update={"endpoints": out.endpoints})
    assert is_operator(back)
    assert not is_operator(handle.model_copy(update={"endpoints": service_endpoints(
        handle, "spark")}))
    policy = out.objects[1]
    assert [p["port"] for p in policy["spec"]["ingress"][1]["ports"]] == [15002, 4040]


def test_only_the_connect_server_holds_a_token_and_every_pod_is_restricted() -> None:
    handle, out = as_operator("spark/etl")
    spec = out.primary["spec"]
    server = spec["server"]["template"]["spec"]
    executor = spec["executor"]["template"]["spec"]
    assert server["serviceAccountName"] == "spark-operator-spark"
    assert server["automountServiceAccountToken"] is True  # it creates its executor pods
    assert executor["automountServiceAccountToken"] is False
    for pod in (server, executor):
        assert pod["securityContext"] == {"runAsNonRoot": True,
                                          "seccompProfile": {"type": "RuntimeDefault"}}
        assert pod["enableServiceLinks"] is False
        (c,) = pod["containers"]
        assert c["securityContext"] == {"allowPrivilegeEscalation": False,
                                        "capabilities": {"drop": ["ALL"]}}
    assert server["containers"][0]["name"] == "spark-kubernetes-driver"
    assert executor["containers"][0]["name"] == "spark-kubernetes-executor"
    for template in (spec["server"]["template"], spec["executor"]["template"]):
        assert template["metadata"]["labels"].items() >= handle.labels.items()


def test_executors_are_the_spec_workers_on_demand(tmp_path: Path) -> None:
    spec = resolve(spec_file(tmp_path, OPERATOR_SPEC))  # the spec chooses: no default needed
    handle = handle_for(spec)
    conn = render(spec, handle).primary
    assert conn["kind"] == "SparkConnect"
    conf = conn["spec"]["sparkConf"]
    assert (conf["spark.executor.cores"], conf["spark.kubernetes.executor.limit.cores"]) == (
        "2", "2")
    # Heap plus overhead is the worker's memory: the executor pod's limit is the spec's 4Gi.
    assert (conf["spark.executor.memory"], conf["spark.executor.memoryOverhead"]) == (
        "3072m", "1024m")
    assert conf["spark.dynamicAllocation.minExecutors"] == "0"
    assert conf["spark.dynamicAllocation.maxExecutors"] == "3"
    assert conf["spark.sql.shuffle.partitions"] == "8"
    assert conn["spec"]["server"]["cores"] == 2  # 1.5 CPUs: Spark counts whole cores
    res = conn["spec"]["server"]["template"]["spec"]["containers"][0]["resources"]
    assert res["limits"] == {"cpu": "1500m", "memory": "2Gi"}
    assert validate_manifest(conn) == []


def test_the_spec_mode_wins_over_the_deployment_default(tmp_path: Path) -> None:
    spec = resolve(spec_file(tmp_path, OPERATOR_SPEC.replace("operator", "standalone")))
    assert render(spec, handle_for(spec), default_spark_mode="operator").primary["kind"] == \
        "Deployment"
    etl = resolve("spark/etl")  # sets no mode: the deployment's default
    assert render(etl, handle_for(etl)).primary["kind"] == "Deployment"
    assert render(etl, handle_for(etl), default_spark_mode="operator").primary["kind"] == \
        "SparkConnect"


def test_gpu_executors_ask_spark_for_vendor_gpus_and_get_dev_shm() -> None:
    _, out = as_operator("spark/etl-gpu")
    spec = out.primary["spec"]
    conf = spec["sparkConf"]
    assert conf["spark.executor.resource.gpu.amount"] == "1"
    assert conf["spark.executor.resource.gpu.vendor"] == "nvidia.com"
    assert conf["spark.executor.resource.gpu.discoveryScript"].endswith("getGpusResources.sh")
    executor = spec["executor"]["template"]["spec"]
    assert executor["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert executor["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory",
                                                                 "sizeLimit": "8192Mi"}}]
    assert executor["containers"][0]["volumeMounts"] == [{"name": "dshm",
                                                          "mountPath": "/dev/shm"}]
    assert "nodeSelector" not in spec["server"]["template"]["spec"]


@pytest.mark.parametrize(("extra", "field", "needle"), [
    ("connect: {enabled: false}\n", "connect.enabled", "runs a Spark Connect server"),
    ("", "conf", "spark.kubernetes.namespace"),
    ("", "workers.gpuResource", "<vendor>/gpu"),
])
def test_what_the_operator_cannot_run_is_refused_naming_the_field(
        tmp_path: Path, extra: str, field: str, needle: str) -> None:
    text = OPERATOR_SPEC
    if extra:
        text = text.replace("connect: {cpu: 1.5, memory: 2Gi}\n", "")
    if field == "conf":
        text = text.replace('{spark.sql.shuffle.partitions: "8"}',
                            '{spark.kubernetes.namespace: other}')
    if field == "workers.gpuResource":
        text = text.replace("memory: 4Gi}", "memory: 4Gi, gpus: 1, gpuResource: "
                            "nvidia.com/mig-1g.5gb, discoveryScript: /opt/gpus.sh}")
    spec = resolve(spec_file(tmp_path, text + extra))
    with pytest.raises(SpecError, match=needle) as err:
        render(spec, handle_for(spec))
    assert err.value.fields == [field]


def test_the_validator_checks_the_schemaless_pod_templates() -> None:
    _, out = as_operator("spark/etl")
    conn = json.loads(json.dumps(out.primary))
    conn["spec"]["server"]["template"]["spec"]["containers"][0]["cpu"] = "1"
    assert any(p.startswith("spec.server.template:") for p in validate_manifest(conn))
    conn = json.loads(json.dumps(out.primary))
    conn["spec"]["server"]["replicas"] = 2
    assert "spec.server.replicas: unknown field" in validate_manifest(conn)


# --- on the API mock -----------------------------------------------------------------------------


@pytest.fixture
def operator_backend(kube_config: KubeConfig,
                     operator: Operator) -> Iterator[KubernetesBackend]:
    backend = KubernetesBackend(kube_config.model_copy(update={"spark_mode": "operator"}))
    try:
        yield backend
    finally:
        backend.client.close()


def test_a_spark_connect_becomes_ready_lists_and_goes_with_its_executors(
        operator_backend: KubernetesBackend, apiserver: ApiServer, operator: Operator,
        web: WebEndpoints) -> None:
    operator.connect_executors = 2
    handle = operator_backend.create(SPARK, identity=owner(SPARK))
    assert handle.endpoints.spark_master is None
    assert handle.endpoints.spark_connect == \
        f"sc://{handle.name}-server.{NAMESPACE}.svc.cluster.local:15002"
    status = operator_backend.wait_ready(handle, timeout=5)
    assert (status.phase, status.nodes_ready, status.nodes_expected) == (Phase.READY, 1, 1)
    assert any(h.endswith(f"/{handle.name}/spark-ui/api/v1/applications") for h in web.hits)
    assert [h.name for h in operator_backend.list_owned()] == [handle.name]
    assert operator_backend.create(SPARK, identity=owner(SPARK)) == handle.model_copy(
        update={"adopted": True})
    pods = {p["metadata"]["name"] for p in apiserver.store.list("pods", NAMESPACE)}
    assert pods == {f"{handle.name}-server", f"{handle.name}-exec-1", f"{handle.name}-exec-2"}
    operator_backend.delete(handle, wait=True)
    assert apiserver.store.all() == []  # ConfigMap, Service, server and executors too
    assert operator_backend.wait_ready(handle, timeout=0).phase is Phase.GONE


def test_executors_count_after_the_collector_took_their_server_pod(
        operator_backend: KubernetesBackend, apiserver: ApiServer, operator: Operator,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The executors' owner is the server pod, which the SparkConnect's foreground deletion
    waits for (its blockOwnerDeletion), so it is always gone before the wait gets to the
    pods; the executors, which may hold GPUs, must still be waited for (they were not: the
    delete returned while they ran)."""
    operator.connect_executors = 2
    handle = operator_backend.create(SPARK, identity=owner(SPARK))
    assert operator_backend.wait_ready(handle, timeout=5).ready
    server, executors = f"{handle.name}-server", [f"{handle.name}-exec-{i}" for i in (1, 2)]
    operator.slow_collection = {("Pod", "pods")}  # the executors outlive the wait
    issue = operator_backend.client.delete

    def delete_then_collect(kind: Any, name: str, **kw: Any) -> bool:
        done = issue(kind, name, **kw)
        deadline = time.monotonic() + 5
        while apiserver.store.get("pods", NAMESPACE, server) and time.monotonic() < deadline:
            time.sleep(0.01)  # the collector takes the server pod before the next request
        return done

    monkeypatch.setattr(operator_backend.client, "delete", delete_then_collect)
    with pytest.raises(TeardownIncomplete) as info:
        operator_backend.delete(handle, wait=True)
    assert apiserver.store.get("pods", NAMESPACE, server) is None
    assert sorted(info.value.leftover) == [f"Pod/{p}" for p in executors]
    operator.slow_collection = set()
    deadline = time.monotonic() + 5
    while apiserver.store.all() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert apiserver.store.all() == []


def test_a_server_pod_that_never_gets_ready_times_out_with_the_reason(
        operator_backend: KubernetesBackend, operator: Operator) -> None:
    operator.connect_scenario = ConnectScenario.IMAGE_PULL
    handle = operator_backend.create(SPARK, identity=owner(SPARK))
    with pytest.raises(ReadinessTimeout, match=r"SparkConnect not ready: state=NotReady") as err:
        operator_backend.wait_ready(handle, timeout=0.5)
    assert "ImagePullBackOff" in err.value.details


def test_no_server_pod_says_where_to_look(operator_backend: KubernetesBackend,
                                          operator: Operator) -> None:
    operator.connect_scenario = ConnectScenario.NO_POD
    handle = operator_backend.create(SPARK, identity=owner(SPARK))
    with pytest.raises(ReadinessTimeout, match="state=none") as err:
        operator_backend.wait_ready(handle, timeout=0.5)
    assert "spark.jobNamespaces" in err.value.details


def test_a_failed_spark_connect_fails_at_once(operator_backend: KubernetesBackend,
                                              operator: Operator) -> None:
    operator.connect_scenario = ConnectScenario.FAILED
    handle = operator_backend.create(SPARK, identity=owner(SPARK))
    with pytest.raises(ClusterFailed, match="the spark-operator failed"):
        operator_backend.wait_ready(handle, timeout=5)


def test_without_the_spark_operator_create_names_the_install(
        operator_backend: KubernetesBackend, k8s_backend: KubernetesBackend,
        apiserver: ApiServer) -> None:
    apiserver.spark_operator_installed = False
    with pytest.raises(SparkOperatorMissing, match=r"spark-operator is not installed.*"
                                                   r"kubernetesMode: standalone"):
        operator_backend.create(SPARK, identity=owner(SPARK))
    assert apiserver.store.all() == []
    # Standalone clusters and listings do not need it.
    handle = k8s_backend.create(SPARK, identity=owner(SPARK, "run-2"))
    assert [h.name for h in k8s_backend.list_owned()] == [handle.name]
    k8s_backend.delete(handle, wait=True)


def test_a_cluster_of_the_other_mode_is_never_made_beside_or_adopted(
        operator_backend: KubernetesBackend, k8s_backend: KubernetesBackend,
        apiserver: ApiServer) -> None:
    standalone = k8s_backend.create(SPARK, identity=owner(SPARK))
    with pytest.raises(IdentityConflict, match="other Spark mode"):
        operator_backend.create(SPARK, identity=owner(SPARK))
    assert apiserver.store.list("sparkconnects", NAMESPACE) == []
    k8s_backend.delete(standalone, wait=True)
    made = operator_backend.create(SPARK, identity=owner(SPARK))
    with pytest.raises(IdentityConflict, match="other Spark mode"):
        k8s_backend.create(SPARK, identity=owner(SPARK))
    operator_backend.delete(made, wait=True)
    assert apiserver.store.all() == []


def test_through_the_api_servers_proxy(kubeconfig_file: Path, operator: Operator,
                                       apiserver: ApiServer) -> None:
    backend = KubernetesBackend(KubeConfig(
        kubeconfig_path=str(kubeconfig_file), namespace=NAMESPACE, endpoint_mode="proxy",
        spark_mode="operator", poll_interval=0.02, delete_timeout=3, request_timeout=5))
    try:
        handle = backend.create(SPARK, identity=owner(SPARK))
        ui = f"{apiserver.url}/api/v1/namespaces/{NAMESPACE}/services/{handle.name}-server:" \
             "web-ui/proxy"
        assert handle.endpoints.spark_ui == ui
        assert backend.wait_ready(handle, timeout=5).ready
        assert backend.access(handle).spark_ui == ui
        backend.delete(handle, wait=True)
    finally:
        backend.client.close()


@pytest.mark.parametrize("profile", [None, CI_CPU])
def test_snapshot(profile: str | None) -> None:
    """spark/etl as a SparkConnect, for review (regenerate as test_render.py says)."""
    _, out = as_operator("spark/etl", profile)
    path = SNAPSHOTS / f"spark-etl--operator{'--' + profile if profile else ''}.yaml"
    text = to_yaml(out.objects)
    if UPDATE or not path.exists():
        path.write_text(text)
        if not UPDATE:
            pytest.fail(f"{path.name} did not exist and was written; review and commit it")
    assert text == path.read_text(), (
        f"{path.name} changed; if intended: EPHEMERAL_UPDATE_SNAPSHOTS=1 and review the diff")


def test_cli_render_follows_the_deployments_mode(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`ephemeral render` prints and refuses what `up` would make in this deployment: a spec
    that chooses no kubernetesMode follows EPHEMERAL_K8S_SPARK_MODE, as `specs show --backend
    kubernetes` does (it rendered standalone Deployments, and a master operator mode refuses)."""
    monkeypatch.setenv("EPHEMERAL_K8S_SPARK_MODE", "operator")
    run = CliRunner().invoke(main.app, ["render", "spark/etl"])
    assert run.exit_code == 0, run.output
    # The reviewed operator snapshot, its handle's groups those of a SparkConnect.
    assert list(yaml.safe_load_all(run.stdout)) == list(yaml.safe_load_all(
        (SNAPSHOTS / "spark-etl--operator.yaml").read_text()))
    assert run.stderr.startswith("note: operator mode (the deployment's EPHEMERAL_K8S_SPARK_MODE)")
    run = CliRunner().invoke(main.app, ["render", "spark/etl", "--json"])
    handle = json.loads(json.loads(run.stdout)["objects"][0]["metadata"]["annotations"][
        HANDLE_ANNOTATION])
    assert [g["name"] for g in handle["groups"]] == ["executors", "connect"]

    path = spec_file(tmp_path, OPERATOR_SPEC.replace("kubernetesMode: operator\n", "")
                     + "master: {cpu: 2}\n")
    for args in (["specs", "show", path, "--backend", "kubernetes"], ["render", path]):
        run = CliRunner().invoke(main.app, [*args, "--json"])
        assert run.exit_code == 2, run.output
        assert "master.cpu: operator mode (a SparkConnect) has no standalone master" in \
            json.loads(run.stdout)["message"]
    # The spec's own choice wins over the deployment's.
    path = spec_file(tmp_path, OPERATOR_SPEC.replace("kubernetesMode: operator",
                                                     "kubernetesMode: standalone"))
    run = CliRunner().invoke(main.app, ["render", path, "--json"])
    assert run.exit_code == 0, run.output
    assert [o["kind"] for o in json.loads(run.stdout)["objects"]][:2] == ["Deployment", "Service"]
