"""The pure renderers (spec → manifests) and ``ephemeral render``: fast, offline.

Snapshots of the rendered manifests live in tests/kubernetes/snapshots; after an intended change
regenerate them with ``EPHEMERAL_UPDATE_SNAPSHOTS=1 pytest tests/kubernetes/test_render.py`` and
review the diff.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from ephemeral.backends.base import ClusterHandle, Endpoints, make_handle
from ephemeral.backends.kubernetes.render import (
    EXPIRES_ANNOTATION,
    HANDLE_ANNOTATION,
    Clients,
    Rendered,
    render,
    service_endpoints,
)
from ephemeral.backends.kubernetes.render.network import cluster_pods
from ephemeral.backends.kubernetes.render.ray import auth_secret
from ephemeral.cli.main import RENDER_CREATED, render_identity
from ephemeral.errors import SpecError
from ephemeral.specs import ClusterIdentity, ResolvedSpec, resolve
from ephemeral.specs.loader import load_file
from ephemeral.specs.quantities import memory_bytes
from ephemeral.specs.resolve import CI_CPU
from tests.kubernetes.manifest_validation import validate_manifest

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("EPHEMERAL_UPDATE_SNAPSHOTS") == "1"
EPHEMERAL = shutil.which("ephemeral", path=str(Path(sys.executable).parent)) or "ephemeral"
NS = "default"


@pytest.fixture(autouse=True)
def _fixed_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ephemeral render`` pins its placeholder owner's instance: whatever deployment runs it
    (here, and in the subprocess that inherits this), the snapshots stay the same."""
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "not-in-any-snapshot")


def _cases() -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for path in sorted((ROOT / "cluster_specs").glob("*/*.yaml")):
        if "@" in path.stem:
            continue
        ref = f"{path.parent.name}/{path.stem}"
        out += [(ref, p) for p in [None, *sorted({CI_CPU, *load_file(path).profiles})]]
    return out


CASES = _cases()
IDS = [f"{ref}[{profile or 'default'}]" for ref, profile in CASES]


def handle_for(spec: ResolvedSpec, *, name: str | None = None, namespace: str | None = NS,
               mode: str = "standalone") -> ClusterHandle:
    """The handle ``ephemeral render`` uses: a fixed owner and creation time, and the
    deployment's Spark ``mode`` (its node groups)."""
    return make_handle(spec, render_identity(spec.spec.name, name), backend="kubernetes", namespace=namespace,
                       endpoints=Endpoints(), created=datetime.fromisoformat(RENDER_CREATED),
                       default_spark_mode=mode)


def rendered(ref: str, profile: str | None = None) -> tuple[ClusterHandle, Rendered]:
    spec = resolve(ref, profile)
    handle = handle_for(spec)
    return handle, render(spec, handle)


def pod_templates(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if obj["kind"] == "RayCluster":
        yield obj["spec"]["headGroupSpec"]["template"]
        for group in obj["spec"]["workerGroupSpecs"]:
            yield group["template"]
    elif "template" in obj.get("spec", {}):
        yield obj["spec"]["template"]


def containers(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for obj in objects:
        for template in pod_templates(obj):
            yield from template["spec"]["containers"]


def by_name(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def spec_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return str(path)


RAY_MINIMAL = """\
kind: RayCluster
name: tiny
version: 1
rayVersion: "2.60.0"
image: rayproject/ray:2.60.0-py311-cpu
workerGroups:
  - name: cpu
    replicas: 3
"""

# --- every shipped spec, under every profile ---------------------------------------------------


@pytest.mark.parametrize(("ref", "profile"), CASES, ids=IDS)
def test_every_object_validates_against_its_schema(ref: str, profile: str | None) -> None:
    _, out = rendered(ref, profile)
    problems = {f"{o['kind']}/{o['metadata']['name']}": validate_manifest(o) for o in out.objects}
    assert problems == {key: [] for key in problems}


@pytest.mark.parametrize(("ref", "profile"), CASES, ids=IDS)
def test_every_object_and_pod_carries_the_owner_labels(ref: str, profile: str | None) -> None:
    handle, out = rendered(ref, profile)
    for obj in out.objects:
        assert obj["metadata"]["namespace"] == NS
        assert obj["metadata"]["labels"].items() >= handle.labels.items()
        assert obj["metadata"]["annotations"][EXPIRES_ANNOTATION] == handle.expires_at
        assert obj["metadata"]["annotations"].items() >= handle.annotations.items()
        for template in pod_templates(obj):
            assert template["metadata"]["labels"].items() >= handle.labels.items()


@pytest.mark.parametrize(("ref", "profile"), CASES, ids=IDS)
def test_the_primary_carries_the_handle_with_the_endpoints(ref: str, profile: str | None) -> None:
    handle, out = rendered(ref, profile)
    assert any(o is out.primary for o in out.objects)
    assert out.objects[0] is out.primary  # created first: a half-made cluster is still findable
    carriers = [o for o in out.objects if HANDLE_ANNOTATION in o["metadata"]["annotations"]]
    assert carriers == [out.primary]
    back = ClusterHandle.model_validate_json(out.primary["metadata"]["annotations"]
                                            [HANDLE_ANNOTATION])
    assert back == handle.model_copy(update={"endpoints": out.endpoints})


@pytest.mark.parametrize(("ref", "profile"), CASES, ids=IDS)
def test_service_endpoints_agree_with_render(ref: str, profile: str | None) -> None:
    handle, out = rendered(ref, profile)
    spec = resolve(ref, profile).spec
    connect = bool(getattr(spec, "connect", None) and spec.connect.enabled)  # type: ignore[union-attr]
    assert service_endpoints(handle, spec.engine, spark_connect=connect) == out.endpoints


@pytest.mark.parametrize(("ref", "profile"), [c for c in CASES if c[1] == CI_CPU],
                         ids=[i for i, c in zip(IDS, CASES, strict=True) if c[1] == CI_CPU])
def test_ci_cpu_renders_no_gpu_at_all(ref: str, profile: str) -> None:
    _, out = rendered(ref, profile)
    text = json.dumps(out.objects)
    assert "nvidia.com/gpu" not in text  # no resources, node selectors or tolerations
    for c in containers(out.objects):
        assert set(c["resources"]["limits"]) == {"cpu", "memory"}
        assert set(c["resources"]["requests"]) == {"cpu", "memory"}
    for obj in out.objects:
        for template in pod_templates(obj):
            assert "nodeSelector" not in template["spec"]
            assert "tolerations" not in template["spec"]


# --- Ray -----------------------------------------------------------------------------------------


def test_ray_gpu_workers_request_and_limit_their_gpus() -> None:
    _, out = rendered("ray/train-gpu")
    group = out.primary["spec"]["workerGroupSpecs"][0]
    res = group["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"] == res["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert group["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert group["template"]["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    head = out.primary["spec"]["headGroupSpec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in head["containers"][0]["resources"]["limits"]


def test_ray_cluster_shape() -> None:
    handle, out = rendered("ray/adhoc-cpu")
    cluster = out.primary
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert cluster["metadata"]["name"] == handle.name
    assert cluster["spec"]["rayVersion"] == "2.60.0"
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"] == {"dashboard-host": "0.0.0.0", "num-cpus": "0"}
    ray = head["template"]["spec"]["containers"][0]
    assert (ray["name"], ray["image"]) == ("ray-head", "rayproject/ray:2.60.0-py311-cpu")
    assert {p["name"]: p["containerPort"] for p in ray["ports"]} == {
        "gcs-server": 6379, "dashboard": 8265, "client": 10001, "metrics": 8080}
    assert "command" not in ray  # KubeRay writes `ray start` itself
    (group,) = cluster["spec"]["workerGroupSpecs"]
    assert (group["groupName"], group["replicas"], group["minReplicas"], group["maxReplicas"]) == (
        "cpu", 2, 1, 4)


def test_ray_token_auth_is_on_and_the_token_never_in_the_manifest() -> None:
    handle, out = rendered("ray/adhoc-cpu")
    assert out.primary["spec"]["authOptions"] == {"mode": "token"}
    assert auth_secret(out.primary) == handle.name  # KubeRay's Secret, named by the cluster
    text = json.dumps(out.objects)
    assert "RAY_AUTH_TOKEN" not in text  # KubeRay injects it from the Secret, by reference
    assert "auth_token" not in text


def test_kuberays_token_secret_name() -> None:
    def cluster(name: str, **options: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "spec": {"authOptions": {"mode": "token",
                                                                     **options}}}

    assert auth_secret(cluster("a" * 53)) == "a" * 50  # utils.CheckName keeps the last 50
    assert auth_secret(cluster("x" * 3 + "9" + "b" * 49)) == "r" + "b" * 49
    assert auth_secret(cluster("c", secretName="mine")) == "mine"
    assert auth_secret({"metadata": {"name": "c"}, "spec": {}}) is None


@pytest.mark.parametrize(("ref", "profile"), CASES, ids=IDS)
def test_every_pod_runs_without_an_api_token_under_restricted(ref: str,
                                                              profile: str | None) -> None:
    _, out = rendered(ref, profile)
    for obj in out.objects:
        for template in pod_templates(obj):
            pod = template["spec"]
            assert pod["automountServiceAccountToken"] is False
            assert pod["securityContext"] == {"runAsNonRoot": True,
                                              "seccompProfile": {"type": "RuntimeDefault"}}
            for c in pod["containers"]:
                assert c["securityContext"] == {"allowPrivilegeEscalation": False,
                                                "capabilities": {"drop": ["ALL"]}}


@pytest.mark.parametrize(("ref", "profile"), CASES, ids=IDS)
def test_every_cluster_admits_only_its_pods_and_the_clients(ref: str,
                                                            profile: str | None) -> None:
    handle, out = rendered(ref, profile)
    policies = [o for o in out.objects if o["kind"] == "NetworkPolicy"]
    main = by_name(policies, "NetworkPolicy", handle.name)
    mine = {"matchLabels": {"ephemeral.dev/cluster": handle.name}}
    assert main["spec"]["podSelector"] == mine
    assert main["spec"]["policyTypes"] == ["Ingress"]
    own, clients = main["spec"]["ingress"]
    assert own == {"from": [{"podSelector": mine}]}
    assert clients["from"] == [{"podSelector": {"matchLabels": {
        "ephemeral.dev/client": "true", "ephemeral.dev/client-instance": "render"}}}]
    assert clients["ports"]  # only the API ports
    # Every pod of the cluster is selected: the owner label is on every pod template.
    for obj in out.objects:
        for template in pod_templates(obj):
            assert template["metadata"]["labels"]["ephemeral.dev/cluster"] == handle.name


@pytest.mark.parametrize("ref", ["ray/adhoc-cpu", "spark/etl", "spark/etl@operator"])
def test_deployments_sharing_a_namespace_admit_only_their_own_clients(ref: str) -> None:
    """Staging's Airflow pods never reach prod's unauthenticated Spark master or Connect ports
    (nor Ray's) in a shared namespace: the default client selector names the instance."""
    spec = resolve(ref.removesuffix("@operator"))
    mode = "operator" if ref.endswith("@operator") else "standalone"
    peers: dict[str, list[object]] = {}
    for instance in ("staging", "prod"):
        ident = ClusterIdentity(spec_name=spec.spec.name, dag_id="etl", run_id="r",
                                task_id="c", instance=instance)
        handle = make_handle(spec, ident, backend="kubernetes", endpoints=Endpoints(),
                             namespace="shared")
        policies = [o for o in render(spec, handle, default_spark_mode=mode).objects
                    if o["kind"] == "NetworkPolicy"]
        assert policies
        peers[instance] = [rule["from"] for p in policies for rule in p["spec"]["ingress"]
                           if rule["from"][0]["podSelector"] != cluster_pods(handle)]
        for rules in peers[instance]:
            assert rules == [{"podSelector": {"matchLabels": {
                "ephemeral.dev/client": "true", "ephemeral.dev/client-instance": instance}}}]
    assert peers["staging"] != peers["prod"]
    # A configured selector is used as given, for every instance.
    spec_handle = handle_for(spec)
    out = render(spec, spec_handle, clients=Clients(selector={"ephemeral.dev/client": "true"}),
                 default_spark_mode=mode)
    assert all(rule["from"][0] == {"podSelector": {"matchLabels": {"ephemeral.dev/client":
                                                                   "true"}}}
               for p in out.objects if p["kind"] == "NetworkPolicy"
               for rule in p["spec"]["ingress"][1:])


def test_network_policy_clients_are_configurable() -> None:
    spec = resolve("ray/adhoc-cpu")
    out = render(spec, handle_for(spec), clients=Clients(selector={"tier": "airflow"},
                                                         cidrs=("10.0.0.0/8",)))
    policy = out.objects[1]
    assert policy["spec"]["ingress"][1] == {
        "from": [{"podSelector": {"matchLabels": {"tier": "airflow"}}},
                 {"ipBlock": {"cidr": "10.0.0.0/8"}}],
        "ports": [{"protocol": "TCP", "port": p} for p in (8265, 6379, 10001)]}
    assert validate_manifest(policy) == []


def test_a_ray_too_old_for_token_auth_is_refused(tmp_path: Path) -> None:
    spec = resolve(spec_file(tmp_path, RAY_MINIMAL.replace("2.60.0", "2.51.1")))
    with pytest.raises(SpecError, match=r"rayVersion.*2\.51\.1 is older than 2\.52\.0"):
        render(spec, handle_for(spec))


def test_ray_endpoints_are_the_head_service_dns_names() -> None:
    handle, out = rendered("ray/adhoc-cpu")
    host = f"{handle.name}-head-svc.{NS}.svc.cluster.local"
    assert out.endpoints == Endpoints(dashboard=f"http://{host}:8265",
                                      ray_client=f"ray://{host}:10001", gcs=f"{host}:6379")
    spec = resolve("ray/adhoc-cpu")
    other = render(spec, handle_for(spec), cluster_domain="k8s.example")
    assert other.endpoints.gcs == f"{handle.name}-head-svc.{NS}.svc.k8s.example:6379"


def test_ray_replica_bounds_default_to_replicas(tmp_path: Path) -> None:
    spec = resolve(spec_file(tmp_path, RAY_MINIMAL))
    (group,) = render(spec, handle_for(spec)).primary["spec"]["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (3, 3, 3)


def test_ray_autoscaler_only_where_a_group_may_change_size(tmp_path: Path) -> None:
    _, out = rendered("ray/adhoc-cpu")  # cpu: 1..4
    spec = out.primary["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    options = spec["autoscalerOptions"]
    assert options["idleTimeoutSeconds"] == 90  # a tenth of its 15m idleTimeout
    assert options["resources"]["requests"] == options["resources"]["limits"] == {
        "cpu": "250m", "memory": "512Mi"}
    assert options["securityContext"] == {"allowPrivilegeEscalation": False,
                                          "capabilities": {"drop": ["ALL"]}}
    # ci-cpu drops the bounds (min == max == replicas), and so does a spec without them.
    for case in (rendered("ray/adhoc-cpu", CI_CPU)[1].primary,
                 render(resolve(spec_file(tmp_path, RAY_MINIMAL)),
                        handle_for(resolve(spec_file(tmp_path, RAY_MINIMAL)))).primary):
        assert "enableInTreeAutoscaling" not in case["spec"]
        assert "autoscalerOptions" not in case["spec"]
        head = case["spec"]["headGroupSpec"]["template"]["spec"]
        assert [v["name"] for v in head["volumes"]] == ["dshm"]


def test_only_the_autoscaler_container_gets_the_api_token() -> None:
    _, out = rendered("ray/train-gpu")  # gpu: 2..4
    spec = out.primary["spec"]
    head = spec["headGroupSpec"]["template"]["spec"]
    assert head["automountServiceAccountToken"] is False  # the Ray container runs job code
    assert "serviceAccountName" not in head  # KubeRay sets its own, named after the cluster
    (token,) = [v for v in head["volumes"] if "projected" in v]
    sources = token["projected"]["sources"]
    assert sources[0] == {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}
    assert spec["autoscalerOptions"]["volumeMounts"] == [{
        "name": token["name"], "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
        "readOnly": True}]
    for c in containers([out.primary]):
        assert token["name"] not in {m["name"] for m in c.get("volumeMounts", [])}
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 180  # 30m / 10


@pytest.mark.parametrize(("idle", "seconds"), [
    (None, 60), ("5m", 60), ("15m", 90), ("30m", 180), ("2h", 300)])
def test_worker_idle_timeout_follows_the_cluster_idle_timeout(
        tmp_path: Path, idle: str | None, seconds: int) -> None:
    bounds = RAY_MINIMAL.replace("replicas: 3", "replicas: 3\n    minReplicas: 0")
    life = f"lifetime: {{ttl: 6h, idleTimeout: {idle}}}\n" if idle else ""
    spec = resolve(spec_file(tmp_path, bounds + life))
    out = render(spec, handle_for(spec)).primary
    assert out["spec"]["autoscalerOptions"]["idleTimeoutSeconds"] == seconds
    assert validate_manifest(out) == []


@pytest.mark.parametrize(("ref", "profile"), [c for c in CASES if c[0].startswith("ray/")],
                         ids=[i for i, c in zip(IDS, CASES, strict=True)
                              if c[0].startswith("ray/")])
def test_every_ray_pod_has_a_memory_backed_dev_shm_of_half_its_memory(
        ref: str, profile: str | None) -> None:
    _, out = rendered(ref, profile)
    s = resolve(ref, profile).spec
    sizes = [s.head.memory, *(g.memory for g in s.worker_groups)]  # type: ignore[union-attr]
    for template, memory in zip(pod_templates(out.primary), sizes, strict=True):
        pod = template["spec"]
        (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
        half = memory_bytes(memory) // 2 // 2**20
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": f"{half}Mi"}
        assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


def test_ray_gpu_workers_dev_shm_is_sized_from_the_spec() -> None:
    _, out = rendered("ray/train-gpu")
    (group,) = out.primary["spec"]["workerGroupSpecs"]
    (shm,) = group["template"]["spec"]["volumes"]
    assert shm["emptyDir"]["sizeLimit"] == "16384Mi"  # half of 32Gi


def test_ray_head_that_runs_tasks_gets_its_cpus_from_the_limit(tmp_path: Path) -> None:
    spec = resolve(spec_file(tmp_path, RAY_MINIMAL + "head: {runTasks: true, cpu: 3}\n"))
    head = render(spec, handle_for(spec)).primary["spec"]["headGroupSpec"]
    assert head["rayStartParams"] == {"dashboard-host": "0.0.0.0"}
    assert head["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "3"


def test_secrets_stay_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_super_secret_value")
    spec = resolve(spec_file(tmp_path, RAY_MINIMAL + """\
runtimeEnv:
  env:
    - {name: MODE, value: fast}
    - name: HF_TOKEN
      secretKeyRef: {name: hf-credentials, key: token}
"""))
    out = render(spec, handle_for(spec))
    for c in containers(out.objects):
        assert c["env"] == [
            {"name": "MODE", "value": "fast"},
            {"name": "HF_TOKEN",
             "valueFrom": {"secretKeyRef": {"name": "hf-credentials", "key": "token"}}}]
    assert "hf_super_secret_value" not in json.dumps(out.objects)
    assert not validate_manifest(out.primary)


def test_from_env_is_refused_on_kubernetes(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_TOKEN", "tok_super_secret_value")
    spec = resolve(spec_file(tmp_path, RAY_MINIMAL + """\
runtimeEnv:
  env:
    - {name: MODE, value: fast}
    - {name: TOKEN, fromEnv: LOCAL_TOKEN}
"""))
    with pytest.raises(SpecError) as err:
        render(spec, handle_for(spec))
    assert err.value.fields == ["runtimeEnv.env[1].fromEnv"]
    assert "secretKeyRef" in str(err.value)
    assert "tok_super_secret_value" not in str(err.value)


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["ray/adhoc-cpu", "spark/etl"])
def test_a_name_longer_than_53_characters_is_refused(ref: str) -> None:
    spec = resolve(ref)
    with pytest.raises(SpecError) as err:
        render(spec, handle_for(spec, name="a" * 54))
    assert err.value.fields == ["name"]
    assert "at most 53" in str(err.value)
    assert render(spec, handle_for(spec, name="a" * 53)).primary


@pytest.mark.parametrize("name", ["1st-cluster", "Upper", "trailing-", "dot.ted"])
def test_a_name_that_is_no_dns_1035_label_is_refused(name: str) -> None:
    spec = resolve("ray/adhoc-cpu")
    with pytest.raises(SpecError, match="DNS-1035") as err:
        render(spec, handle_for(spec, name=name))
    assert err.value.fields == ["name"]


def test_a_handle_without_namespace_is_a_programming_error() -> None:
    spec = resolve("ray/adhoc-cpu")
    with pytest.raises(ValueError, match="no namespace"):
        render(spec, handle_for(spec, namespace=None))


# --- Spark -------------------------------------------------------------------------------------


def test_spark_objects_names_and_services() -> None:
    handle, out = rendered("spark/etl")
    n = handle.name
    assert [(o["kind"], o["metadata"]["name"]) for o in out.objects] == [
        ("Deployment", f"{n}-master"), ("Service", f"{n}-master"),
        ("Deployment", f"{n}-worker"), ("Deployment", f"{n}-connect"),
        ("Service", f"{n}-connect"), ("NetworkPolicy", n),
        ("NetworkPolicy", f"{n}-spark-worker")]
    assert out.primary is by_name(out.objects, "Deployment", f"{n}-master")
    assert out.primary["spec"]["replicas"] == 1
    master_svc = by_name(out.objects, "Service", f"{n}-master")
    assert {p["name"]: p["port"] for p in master_svc["spec"]["ports"]} == {"spark": 7077,
                                                                          "web-ui": 8080}
    connect_svc = by_name(out.objects, "Service", f"{n}-connect")
    # Its UI too: the reaper and the run report read its sessions and operations there.
    assert {p["name"]: p["port"] for p in connect_svc["spec"]["ports"]} == {"grpc": 15002,
                                                                           "web-ui": 4040}
    (server,) = by_name(out.objects, "Deployment", f"{n}-connect")["spec"]["template"]["spec"][
        "containers"]
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {"grpc": 15002,
                                                                       "web-ui": 4040}
    assert "spark.ui.port=4040" in server["command"]  # never moved onto another port
    policy = by_name(out.objects, "NetworkPolicy", n)
    assert [p["port"] for p in policy["spec"]["ingress"][1]["ports"]] == [7077, 8080, 15002, 4040]
    # Each Service selects exactly the pods of its Deployment.
    for name in (f"{n}-master", f"{n}-connect"):
        deployment = by_name(out.objects, "Deployment", name)
        selector = by_name(out.objects, "Service", name)["spec"]["selector"]
        assert selector == deployment["spec"]["selector"]["matchLabels"]
        assert deployment["spec"]["template"]["metadata"]["labels"].items() >= selector.items()
    host = f"{NS}.svc.cluster.local"
    assert out.endpoints == Endpoints(spark_master=f"spark://{n}-master.{host}:7077",
                                      spark_ui=f"http://{n}-master.{host}:8080",
                                      spark_connect=f"sc://{n}-connect.{host}:15002")


def test_spark_workers_join_the_master_with_the_spec_sizes() -> None:
    handle, out = rendered("spark/etl")
    workers = by_name(out.objects, "Deployment", f"{handle.name}-worker")
    assert workers["spec"]["replicas"] == 2
    (c,) = workers["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "apache/spark:4.3.0-python3"
    cmd = c["command"]
    assert cmd[:2] == ["/opt/spark/bin/spark-class", "org.apache.spark.deploy.worker.Worker"]
    assert cmd[-1] == f"spark://{handle.name}-master.{NS}.svc.cluster.local:7077"
    assert cmd[cmd.index("--cores") + 1] == "4"
    assert cmd[cmd.index("--memory") + 1] == "5632m"  # of 8Gi: room left for the JVMs
    assert c["resources"]["limits"] == {"cpu": "4", "memory": "8Gi"}


def test_spark_conf_reaches_the_connect_server() -> None:
    handle, out = rendered("spark/etl")
    (c,) = by_name(out.objects, "Deployment", f"{handle.name}-connect")["spec"]["template"][
        "spec"]["containers"]
    confs = [c["command"][i + 1] for i, a in enumerate(c["command"]) if a == "--conf"]
    assert "spark.sql.shuffle.partitions=8" in confs
    assert "spark.connect.grpc.binding.port=15002" in confs
    assert c["command"][-1] == "spark-internal"


DOLLARS = "cost: $$5 $(HOME) $(POD_IP)"
"""Kubernetes would make this "cost: $5 /home/ray ..." in an env value or on a command line."""


def test_a_users_dollar_reaches_the_process_as_written(tmp_path: Path) -> None:
    """Kubernetes expands ``$(VAR)`` and turns ``$$`` into ``$`` in env values, commands and
    args: the spec's values are escaped (``$$``) so the process gets them as the local backend
    gives them, while the backend's own ``$(POD_IP)`` still expands."""
    ray = resolve(spec_file(tmp_path, RAY_MINIMAL + f"runtimeEnv:\n  env:\n"
                            f"    - {{name: GREETING, value: '{DOLLARS}'}}\n"))
    escaped = "cost: $$$$5 $$(HOME) $$(POD_IP)"
    for c in containers(render(ray, handle_for(ray)).objects):
        assert c["env"] == [{"name": "GREETING", "value": escaped}]

    path = tmp_path / "etl.yaml"
    path.write_text((ROOT / "cluster_specs/spark/etl.yaml").read_text().replace(
        "  memory: 2Gi\n", f"  memory: 2Gi\n  conf: {{spark.app.note: '{DOLLARS}'}}\n").replace(
        'partitions: "8"\n', f'partitions: "8"\n  spark.app.label: \'{DOLLARS}\'\n'))
    spark = resolve(str(path))
    handle = handle_for(spark)
    (c,) = by_name(render(spark, handle).objects, "Deployment", f"{handle.name}-connect")[
        "spec"]["template"]["spec"]["containers"]
    confs = [c["command"][i + 1] for i, a in enumerate(c["command"]) if a == "--conf"]
    assert f"spark.app.label={escaped}" in confs
    assert f"spark.app.note={escaped}" in confs
    assert "spark.driver.host=$(POD_IP)" in confs  # the pod's IP, expanded by Kubernetes
    assert handle.spark_conf["spark.app.label"] == DOLLARS  # spark-submit's: no Kubernetes
    # The operator puts sparkConf into a `bash -c` line (v2.5.2, buildStartConnectServerArgs),
    # where no escape holds: refused there (test_refusals).
    with pytest.raises(SpecError, match="through bash with sparkConf unquoted"):
        render(spark, handle, default_spark_mode="operator")


def test_spark_gpu_workers() -> None:
    handle, out = rendered("spark/etl-gpu")
    workers = by_name(out.objects, "Deployment", f"{handle.name}-worker")
    pod = workers["spec"]["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["SPARK_WORKER_OPTS"] == (
        "-Dspark.worker.resource.gpu.amount=1 -Dspark.worker.resource.gpu.discoveryScript="
        "/opt/spark/examples/src/main/scripts/getGpusResources.sh")
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    connect = by_name(out.objects, "Deployment", f"{handle.name}-connect")
    cmd = connect["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "spark.executor.resource.gpu.amount=1" in cmd
    assert "spark.task.resource.gpu.amount=0.125" in cmd
    master = out.primary["spec"]["template"]["spec"]
    assert "nodeSelector" not in master  # only the workers need GPU nodes


def test_spark_without_connect(tmp_path: Path) -> None:
    spec = resolve(spec_file(tmp_path, """\
kind: SparkCluster
name: batch
version: 1
sparkVersion: "4.3.0"
image: apache/spark:4.3.0-python3
workers: {replicas: 1, cores: 1}
connect: {enabled: false}
"""))
    handle = handle_for(spec)
    out = render(spec, handle)
    assert [o["metadata"]["name"] for o in out.objects] == [
        f"{handle.name}-master", f"{handle.name}-master", f"{handle.name}-worker", handle.name,
        f"{handle.name}-spark-worker"]
    assert out.endpoints.spark_connect is None
    policy = by_name(out.objects, "NetworkPolicy", handle.name)
    assert [p["port"] for p in policy["spec"]["ingress"][1]["ports"]] == [7077, 8080]
    assert service_endpoints(handle, "spark", spark_connect=False) == out.endpoints


# --- snapshots ---------------------------------------------------------------------------------


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, width=2**16)


@pytest.mark.parametrize(("ref", "profile"), CASES, ids=IDS)
def test_snapshot(ref: str, profile: str | None) -> None:
    _, out = rendered(ref, profile)
    path = SNAPSHOTS / f"{ref.replace('/', '-')}{'--' + profile if profile else ''}.yaml"
    text = to_yaml(out.objects)
    if UPDATE or not path.exists():
        path.write_text(text)
        if not UPDATE:
            pytest.fail(f"{path.name} did not exist and was written; review and commit it")
    assert text == path.read_text(), (
        f"{path.name} changed; if intended: EPHEMERAL_UPDATE_SNAPSHOTS=1 and review the diff")


# --- the CLI -----------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`ephemeral` without a deployment's Kubernetes settings (render follows them, as `up`
    does; the snapshots are of the defaults): none from the environment nor an airflow.cfg."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EPHEMERAL_K8S_", "AIRFLOW__EPHEMERAL__"))}
    return subprocess.run([EPHEMERAL, *args], capture_output=True, text=True, timeout=120,
                          env=env | {"AIRFLOW_CONFIG": os.devnull}, check=False)


def test_cli_render_prints_one_yaml_document_per_object() -> None:
    proc = cli("render", "ray/train-gpu", "--profile", "ci-cpu")
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(proc.stdout))
    assert [d["kind"] for d in docs] == ["RayCluster", "NetworkPolicy"]
    assert all(validate_manifest(d) == [] for d in docs)
    assert "nvidia.com/gpu" not in proc.stdout
    assert proc.stdout.startswith("# ray/train-gpu@1 [ci-cpu]")
    # The same fixed owner as the snapshots: the output is the reviewed snapshot.
    assert docs == list(yaml.safe_load_all(
        (SNAPSHOTS / "ray-train-gpu--ci-cpu.yaml").read_text()))


def test_cli_render_spark_in_a_namespace() -> None:
    proc = cli("render", "spark/etl", "-n", "data", "--replicas", "3")
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(proc.stdout))
    assert {d["metadata"]["namespace"] for d in docs} == {"data"}
    workers = [d for d in docs if d["metadata"]["name"].endswith("-worker")]
    assert workers[0]["spec"]["replicas"] == 3
    assert all(validate_manifest(d) == [] for d in docs)


def test_cli_render_json() -> None:
    proc = cli("render", "spark/etl", "--name", "etl-review", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ref"] == "spark/etl@1"
    assert doc["endpoints"]["spark_master"] == (
        "spark://etl-review-master.default.svc.cluster.local:7077")
    assert doc["objects"][0]["metadata"]["name"] == "etl-review-master"


@pytest.mark.parametrize(("args", "needle"), [
    (("ray/nope",), "no spec 'ray/nope'"),
    (("ray/train-gpu@9",), "versions that exist"),
    (("ray/train-gpu", "--profile", "nope"), "no profile 'nope'"),
    (("ray/train-gpu", "--name", "Bad_Name"), "name"),
    (("ray/train-gpu", "-n", "Not_A_Namespace"), "namespace"),
])
def test_cli_render_bad_input_exits_2(args: tuple[str, ...], needle: str) -> None:
    proc = cli("render", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert needle in proc.stderr
    assert proc.stdout == ""


# --- the validator itself (other tests rely on it refusing what the API server refuses) --------


def test_validator_refuses_what_the_api_server_would() -> None:
    _, ray_out = rendered("ray/adhoc-cpu")
    cluster = json.loads(json.dumps(ray_out.primary))
    cluster["metadata"]["labels"]["bad key!"] = "v"
    cluster["metadata"]["bogus"] = 1
    group = cluster["spec"]["workerGroupSpecs"][0]
    group["replicas"] = "two"
    group["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    del group["minReplicas"]
    problems = validate_manifest(cluster)
    assert any("'bogus' was unexpected" in p for p in problems)
    assert any("bad key!" in p for p in problems)
    assert any(p.startswith("spec.workerGroupSpecs[0].replicas:") for p in problems)
    assert "spec.workerGroupSpecs[0].template.spec.containers[0].imagePullPolicyy: " \
           "unknown field" in problems
    assert any("'minReplicas' is a required property" in p for p in problems)

    _, spark_out = rendered("spark/etl")
    deployment = json.loads(json.dumps(spark_out.primary))
    deployment["spec"]["template"]["spec"]["containers"][0]["cpu"] = "1"
    assert validate_manifest(deployment)
    service = json.loads(json.dumps(spark_out.objects[1]))
    service["metadata"]["name"] = "9-starts-with-a-digit"
    assert any("metadata.name" in p for p in validate_manifest(service))


def test_spark_pods_too_small_for_sparks_heap_are_refused_before_anything_is_made(
        tmp_path: Path) -> None:
    """A pod's memory is split here (daemon, executors' heap, JVM overhead): a worker of 600Mi,
    which runs locally, would leave its executors under Spark's 450 MiB minimum heap."""
    from ephemeral.backends.notes import refusals

    path = tmp_path / "small.yaml"
    path.write_text((ROOT / "cluster_specs/spark/etl.yaml").read_text()
                    .replace("memory: 8Gi", "memory: 600Mi"))
    spec = resolve(str(path))
    assert [f for f, _ in refusals(spec, "kubernetes")] == ["workers.memory"]
    assert refusals(spec, "local") == []
    with pytest.raises(SpecError, match="under Spark's 450 MiB heap on Kubernetes") as err:
        render(spec, handle_for(spec))
    assert err.value.fields == ["workers.memory"]


@pytest.mark.parametrize("resource", ["nvidia.com/gpu", "gpu.intel.com/i915", "amd.com/gpu"])
def test_ray_gpus_reach_ray_whatever_the_resource_is_called(tmp_path: Path,
                                                             resource: str) -> None:
    """KubeRay derives num-gpus from a container's limits only for a resource ending in "gpu":
    the renderer writes it from the spec, for the head and each group with GPUs."""
    text = RAY_MINIMAL.replace("    replicas: 3\n", f"""\
    replicas: 2
    gpus: 2
    gpuResource: {resource}
  - name: cpu2
    replicas: 1
head:
  gpus: 1
  gpuResource: {resource}
""")
    spec = resolve(spec_file(tmp_path, text))
    out = render(spec, handle_for(spec))
    cluster = out.primary["spec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "1"
    assert [g["rayStartParams"] for g in cluster["workerGroupSpecs"]] == [{"num-gpus": "2"}, {}]
    assert validate_manifest(out.primary) == []


def test_a_spark_executor_bigger_than_a_kubernetes_worker_offers_is_refused(
        tmp_path: Path) -> None:
    """A worker pod of 8Gi offers executors 5632m (daemon and JVM overhead take the rest): an
    executor of 7g, which fits a local worker, would never be placed here."""
    from ephemeral.backends.notes import refusals

    path = tmp_path / "etl.yaml"
    path.write_text((ROOT / "cluster_specs/spark/etl.yaml").read_text()
                    .replace("  memory: 2Gi\n", "  memory: 2Gi\n  conf:\n"
                             "    spark.executor.memory: 7g\n"))
    spec = resolve(str(path))
    assert [f for f, _ in refusals(spec, "kubernetes")] == ["connect.conf.spark.executor.memory"]
    assert refusals(spec, "local") == []
    with pytest.raises(SpecError, match="ask for at most 5632m"):
        render(spec, handle_for(spec))
    path.write_text(path.read_text().replace("7g", "5632m"))
    assert refusals(resolve(str(path)), "kubernetes") == []
