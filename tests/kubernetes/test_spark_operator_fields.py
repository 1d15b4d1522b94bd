"""Spark's operator mode honours every field of a spec or refuses it by name: a SparkConnect has a
Connect server and executors, no standalone master (the vendored CRD has ``server`` and
``executor``, nothing else to size), so ``master.*`` other than its defaults is refused, when the
spec is read if it chooses the mode and when rendered or created if the deployment does, before
anything reaches the API server. The handle's groups are the ones that exist (no master)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemeral.backends.base import node_groups
from ephemeral.backends.kubernetes import KubeConfig, KubernetesBackend
from ephemeral.backends.kubernetes.render import render
from ephemeral.errors import SpecError
from ephemeral.report.model import reserved
from ephemeral.specs import ClusterIdentity, ResolvedSpec, resolve
from tests.kubernetes.apiserver import ApiServer, Operator
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.manifest_validation import validate_manifest
from tests.kubernetes.test_render import handle_for, spec_file

# The hostile review's spec: a master sized and placed, in operator mode.
ETLOP = """\
kind: SparkCluster
name: etlop
version: 1
sparkVersion: "4.3.0"
image: apache/spark:4.3.0-python3
master:
  cpu: 4
  memory: 16Gi
  nodeSelector: {pool: spark-masters}
workers: {replicas: 2, cores: 1, memory: 2Gi}
connect: {enabled: true, cpu: 1, memory: 2Gi}
lifetime: {ttl: 3h, idleTimeout: 20m}
kubernetesMode: operator
"""
MASTER_FIELDS = ["master.cpu", "master.memory", "master.nodeSelector"]


def _spec(tmp_path: Path, text: str) -> ResolvedSpec:
    return resolve(spec_file(tmp_path, text))


def owner(spec: ResolvedSpec) -> ClusterIdentity:
    return ClusterIdentity(spec_name=spec.spec.name, dag_id="k8s", run_id="run-1",
                           task_id="create_cluster")


@pytest.fixture
def operator_backend(kube_config: KubeConfig,
                     operator: Operator) -> Iterator[KubernetesBackend]:
    backend = KubernetesBackend(kube_config.model_copy(update={"spark_mode": "operator"}))
    try:
        yield backend
    finally:
        backend.client.close()


# --- the rule ------------------------------------------------------------------------------------


def test_a_spec_choosing_operator_mode_may_not_size_or_place_a_master(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        _spec(tmp_path, ETLOP)
    assert err.value.fields == MASTER_FIELDS
    text = str(err.value)
    assert "no standalone master" in text
    assert "sized by connect.cpu" in text
    assert "placed by connect.nodeSelector" in text
    assert "kubernetesMode: standalone" in text  # the fix


def test_a_tolerated_master_is_refused_too(tmp_path: Path) -> None:
    text = ETLOP.replace("  cpu: 4\n  memory: 16Gi\n  nodeSelector: {pool: spark-masters}\n",
                         "  tolerations: [{key: pool, operator: Exists}]\n")
    with pytest.raises(SpecError) as err:
        _spec(tmp_path, text)
    assert err.value.fields == ["master.tolerations"]


def test_a_master_at_its_defaults_asks_for_nothing_and_renders(tmp_path: Path) -> None:
    """spark/etl writes its master out at the defaults (cpu 1, memory 1Gi) and runs in
    either mode; so does a spec choosing operator mode with them."""
    text = ETLOP.replace("cpu: 4\n  memory: 16Gi\n  nodeSelector: {pool: spark-masters}",
                         "cpu: 1\n  memory: 1024Mi")
    spec = _spec(tmp_path, text)
    out = render(spec, handle_for(spec))
    assert out.primary["kind"] == "SparkConnect"
    for obj in out.objects:
        assert validate_manifest(obj) == []
    # The CRD has a server and executors only: nothing a master could become.
    assert set(out.primary["spec"]) == {"sparkVersion", "image", "sparkConf", "server",
                                        "executor"}


def test_the_deployments_operator_mode_refuses_it_at_render(tmp_path: Path) -> None:
    """Without kubernetesMode the spec is valid (standalone, local: a master runs); in a
    deployment whose mode is operator the same rule refuses it when rendered."""
    spec = _spec(tmp_path, ETLOP.replace("kubernetesMode: operator\n", ""))
    standalone = render(spec, handle_for(spec))
    assert standalone.primary["kind"] == "Deployment"
    for obj in standalone.objects:
        assert validate_manifest(obj) == []
    with pytest.raises(SpecError) as err:
        render(spec, handle_for(spec), default_spark_mode="operator")
    assert err.value.fields == MASTER_FIELDS


def test_the_connect_server_is_sized_and_placed_by_connect(tmp_path: Path) -> None:
    text = ETLOP.replace("cpu: 4\n  memory: 16Gi\n  nodeSelector: {pool: spark-masters}",
                         "cpu: 1").replace(
        "connect: {enabled: true, cpu: 1, memory: 2Gi}",
        "connect: {enabled: true, cpu: 2, memory: 3Gi, nodeSelector: {pool: spark-masters}}")
    spec = _spec(tmp_path, text)
    conn = render(spec, handle_for(spec)).primary
    server = conn["spec"]["server"]["template"]["spec"]
    assert server["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "3Gi"}
    assert server["nodeSelector"] == {"pool": "spark-masters"}
    assert conn["spec"]["server"]["cores"] == 2
    assert validate_manifest(conn) == []


# --- the groups a handle carries -----------------------------------------------------------------


def test_operator_mode_groups_are_the_server_and_executors() -> None:
    etl = resolve("spark/etl")
    standalone = node_groups(etl, backend="kubernetes")
    assert [g.name for g in standalone] == ["master", "workers", "connect"]
    groups = node_groups(etl, backend="kubernetes", default_spark_mode="operator")
    assert [(g.name, g.role, g.replicas) for g in groups] == [
        ("executors", "worker", 2), ("connect", "service", 1)]
    assert (groups[1].cpu, groups[1].memory_bytes) == (1, 2 * 2**30)  # connect.*, the server
    # The local backend runs Spark standalone whatever the mode: its master exists there.
    assert [g.name for g in node_groups(etl, default_spark_mode="operator")] == \
        ["master", "workers", "connect"]
    # A master's CPU is no longer charged: 4 worker cores x 2 and the server's 1 core.
    assert reserved(groups, 10.0)["cpu_seconds"] == (2 * 4 + 1) * 10.0


def test_on_the_api_mock_nothing_is_created_and_the_handle_has_no_master(
        operator_backend: KubernetesBackend, apiserver: ApiServer, tmp_path: Path) -> None:
    spec = _spec(tmp_path, ETLOP.replace("kubernetesMode: operator\n", ""))
    with pytest.raises(SpecError) as err:
        operator_backend.create(spec, identity=owner(spec))
    assert err.value.fields == MASTER_FIELDS
    assert apiserver.store.all() == []  # refused before anything reached the API server

    etl = resolve("spark/etl", "ci-cpu")
    handle = operator_backend.create(etl, identity=owner(etl))
    try:
        assert [g.name for g in handle.groups] == ["executors", "connect"]
        [listed] = operator_backend.list_owned()  # rebuilt from the SparkConnect's annotation
        assert listed.groups == handle.groups
        assert apiserver.store.list("sparkconnects", NAMESPACE)
    finally:
        operator_backend.delete(handle, wait=True)
    assert apiserver.store.all() == []
