"""A Ray spec as one KubeRay ``ray.io/v1`` RayCluster, and its NetworkPolicy.

KubeRay writes the ``ray start`` command itself (from ``rayStartParams`` and the container's
resource limits), makes the head Service ``<name>-head-svc`` and the pods. The renderer gives
only the image, the sizes, the declared head ports, placement and environment.

Token authentication is always on (``authOptions.mode: token``, KubeRay 1.6+, Ray 2.52+): the
operator makes a Secret with a random token (``auth_token``), owned by the RayCluster and named
after it, and gives every Ray container ``RAY_AUTH_MODE=token`` and the token by
``secretKeyRef``. The manifest never holds the token; ``auth_secret`` names where it lives.

Every Ray container mounts a memory-backed ``/dev/shm`` (``render.common.shm_volume``): Ray's
object store, NCCL and DataLoader workers live in it, and the container runtime's default is 64 MiB.

A worker group whose ``minReplicas`` differs from its ``maxReplicas`` turns on KubeRay's in-tree
autoscaler (``autoscaling``): a sidecar in the head pod that scales the groups between their
bounds and releases workers idle for ``worker_idle_timeout`` seconds. It calls the Kubernetes
API, so KubeRay gives the head pod a ServiceAccount of its own (named after the cluster, with a
Role on the cluster's pods and RayCluster, all owned by the RayCluster). The pod still does not
automount the token: a projected volume mounts it into the autoscaler container only, so the Ray
container, which runs the jobs' drivers, holds no Kubernetes credentials.
"""

from __future__ import annotations

from typing import Any

from ephemeral.backends.base import ClusterHandle, Endpoints
from ephemeral.backends.kubernetes.render.common import (
    SHM_MOUNT,
    Manifest,
    Rendered,
    check_name,
    container_security,
    env_vars,
    metadata,
    namespace_of,
    placement,
    pod_labels,
    pod_security,
    resources,
    service_host,
    shm_volume,
)
from ephemeral.backends.kubernetes.render.network import Clients, policies
from ephemeral.specs.models import RaySpec, RayWorkerGroup
from ephemeral.specs.resolve import ResolvedSpec

GCS_PORT, DASHBOARD_PORT, CLIENT_PORT, METRICS_PORT = 6379, 8265, 10001, 8080
API_PORTS = [DASHBOARD_PORT, GCS_PORT, CLIENT_PORT]
"""What the client pods may reach (the NetworkPolicy): the Jobs API, the GCS, the Ray client."""
TOKEN_AUTH_SINCE = (2, 52, 0)  # KubeRay refuses authOptions.mode=token for older Ray
TOKEN_KEY = "auth_token"  # the key of KubeRay's token Secret (RAY_AUTH_TOKEN_SECRET_KEY)
# Declared explicitly: with ports declared, the head Service exposes exactly these (plus metrics).
HEAD_PORTS = [
    {"name": "gcs-server", "containerPort": GCS_PORT, "protocol": "TCP"},
    {"name": "dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"},
    {"name": "client", "containerPort": CLIENT_PORT, "protocol": "TCP"},
    {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
]


WORKER_IDLE_MIN, WORKER_IDLE_MAX = 60, 300
"""Bounds of the autoscaler's worker idle timeout, seconds: 60 is Ray's and KubeRay's default."""
AUTOSCALER_RESOURCES = {"cpu": "250m", "memory": "512Mi"}
"""The autoscaler sidecar's requests and limits (KubeRay's default is 500m/512Mi): it polls the
GCS and the API every few seconds; 512Mi holds its Python process with Ray imported. Requests
equal limits keep the head pod in the Guaranteed QoS class."""
TOKEN_VOLUME = "autoscaler-api-token"
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"  # where Ray's autoscaler reads it
TOKEN_EXPIRY = 3607  # seconds, what the kubelet's own automounted token uses; it is refreshed


def autoscaling(spec: RaySpec) -> bool:
    """Whether any worker group may change size (its bounds differ)."""
    return any(g.min != g.max for g in spec.worker_groups)


def worker_idle_timeout(spec: RaySpec) -> int:
    """Seconds a worker above ``minReplicas`` may idle before the autoscaler removes it: a tenth
    of the cluster's ``lifetime.idleTimeout``, within 60 s (Ray's default: a worker between two
    back-to-back tasks stays) and 5 minutes (an idle GPU node is released well before the
    reaper would delete the whole cluster); 60 s without an idleTimeout."""
    idle = spec.lifetime.idle_timeout_seconds
    if idle is None:
        return WORKER_IDLE_MIN
    return max(WORKER_IDLE_MIN, min(WORKER_IDLE_MAX, idle // 10))


def _token_volume() -> Manifest:
    """The head's ServiceAccount token, CA and namespace as the kubelet's automount makes them
    (a projected volume), for the autoscaler container alone."""
    return {"name": TOKEN_VOLUME, "projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_EXPIRY}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt",
                                                              "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace",
                                    "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}}


def autoscaler_options(spec: RaySpec) -> Manifest:
    return {
        "idleTimeoutSeconds": worker_idle_timeout(spec),
        "upscalingMode": "Default",
        "resources": {"requests": dict(AUTOSCALER_RESOURCES),
                      "limits": dict(AUTOSCALER_RESOURCES)},
        # KubeRay copies no security context to its sidecar: restricted needs one.
        "securityContext": container_security(),
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}],
    }


def head_service(name: str) -> str:
    """KubeRay's name for the head Service of RayCluster ``name``."""
    return f"{name}-head-svc"


def auth_secret(cluster: dict[str, Any]) -> str | None:
    """The Secret that holds a RayCluster's token, as KubeRay 1.7 decides it: ``secretName``
    when given, else the cluster's name through ``utils.CheckName`` (cut to its last 50
    characters, a leading digit or punctuation replaced by ``r``). None without token auth."""
    options = (cluster.get("spec") or {}).get("authOptions") or {}
    if options.get("mode") != "token":
        return None
    if options.get("secretName"):
        return str(options["secretName"])
    name = str(cluster["metadata"]["name"])[-50:]
    if name[0].isdigit() or not name[0].isalnum():
        name = "r" + name[1:]
    return name


def endpoints(handle: ClusterHandle, cluster_domain: str) -> Endpoints:
    host = service_host(head_service(handle.name), namespace_of(handle), cluster_domain)
    return Endpoints(dashboard=f"http://{host}:{DASHBOARD_PORT}",
                     ray_client=f"ray://{host}:{CLIENT_PORT}",
                     gcs=f"{host}:{GCS_PORT}")


def _container(name: str, spec: RaySpec, env: list[Manifest], *, cpu: float, memory: str,
               gpus: int, gpu_resource: str, ports: list[Manifest] | None = None) -> Manifest:
    container: Manifest = {
        "name": name,
        "image": spec.image,
        "resources": resources(cpu, memory, gpus, gpu_resource),
        "securityContext": container_security(),
    }
    if ports:
        container["ports"] = [dict(p) for p in ports]
    if env:
        container["env"] = [dict(e) for e in env]
    # Declared, KubeRay adds no /dev/shm of its own (its default is as large as the limit).
    container["volumeMounts"] = [dict(SHM_MOUNT)]
    return container


def _template(handle: ClusterHandle, component: str, container: Manifest, place: Manifest,
              memory: str, *, extra_volumes: list[Manifest] | None = None) -> Manifest:
    # The Ray container must be the first one: KubeRay finds it by index 0. The Ray containers
    # run the jobs' code and never get a ServiceAccount token (the autoscaler's is its own).
    return {"metadata": {"labels": pod_labels(handle, component)},
            "spec": {"containers": [container], "automountServiceAccountToken": False,
                     "securityContext": pod_security(),
                     "volumes": [shm_volume(memory), *(extra_volumes or [])], **place}}


def _gpu_params(gpus: int) -> dict[str, str]:
    """``num-gpus`` from the spec: KubeRay derives it from the container's limits only for a
    resource whose name ends in "gpu" (nvidia.com/gpu, amd.com/gpu); with another
    (gpu.intel.com/i915) Ray and its autoscaler would see no GPU at all."""
    return {"num-gpus": str(gpus)} if gpus else {}


def _worker_group(spec: RaySpec, handle: ClusterHandle, group: RayWorkerGroup,
                  env: list[Manifest]) -> Manifest:
    container = _container("ray-worker", spec, env, cpu=group.cpu, memory=group.memory,
                           gpus=group.gpus, gpu_resource=group.gpu_resource)
    return {
        "groupName": group.name,
        # minReplicas/maxReplicas are required by the CRD schema: the server defaults them to
        # 0 and 2**31-1, which would misstate the spec, so they are always written.
        "replicas": group.replicas,
        "minReplicas": group.min,
        "maxReplicas": group.max,
        "rayStartParams": _gpu_params(group.gpus),
        "template": _template(handle, "ray-worker", container, placement(group), group.memory),
    }


def render_ray(spec: ResolvedSpec, handle: ClusterHandle, cluster_domain: str,
               clients: Clients) -> Rendered:
    s = spec.spec
    if not isinstance(s, RaySpec):
        raise TypeError(f"{spec.ref} is not a Ray spec")
    check_name(spec, handle.name)
    from ephemeral.backends.kubernetes.render.checks import refuse  # here: it imports this module

    refuse(spec)
    env = env_vars(s.runtime_env.env)
    eps = endpoints(handle, cluster_domain)
    head = s.head
    start_params: dict[str, str] = {"dashboard-host": "0.0.0.0"}
    if not head.run_tasks:
        # The head only coordinates; otherwise KubeRay takes num-cpus from the CPU limit.
        start_params["num-cpus"] = "0"
    start_params |= _gpu_params(head.gpus)
    head_container = _container("ray-head", s, env, cpu=head.cpu, memory=head.memory,
                                gpus=head.gpus, gpu_resource=head.gpu_resource, ports=HEAD_PORTS)
    primary_handle = handle.model_copy(update={"endpoints": eps})
    scaling = autoscaling(s)
    head_template = _template(handle, "ray-head", head_container, placement(head), head.memory,
                              extra_volumes=[_token_volume()] if scaling else None)
    cluster: dict[str, Any] = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": metadata(primary_handle, handle.name, "ray-cluster", primary=True),
        "spec": {
            "rayVersion": s.ray_version,
            "headGroupSpec": {
                "rayStartParams": start_params,
                "template": head_template,
            },
            "workerGroupSpecs": [_worker_group(s, handle, g, env) for g in s.worker_groups],
            # KubeRay makes the token Secret and hands it to every Ray container.
            "authOptions": {"mode": "token"},
        },
    }
    if scaling:
        cluster["spec"]["enableInTreeAutoscaling"] = True
        cluster["spec"]["autoscalerOptions"] = autoscaler_options(s)
    return Rendered(objects=[cluster, *policies(handle, API_PORTS, clients)], primary=cluster,
                    endpoints=eps)
