"""A Ray spec as one KubeRay ``ray.io/v1`` RayCluster, and its NetworkPolicy.

KubeRay writes the ``ray start`` command itself (from ``rayStartParams`` and the container's
resource limits), makes the head Service ``<name>-head-svc`` and the pods. The renderer gives
only the image, the sizes, the declared head ports, placement and environment.

Token authentication is always on (``authOptions.mode: token``, KubeRay 1.6+, Ray 2.52+): the
operator makes a Secret with a random token (``auth_token``), owned by the RayCluster and named
after it, and gives every Ray container ``RAY_AUTH_MODE=token`` and the token by
``secretKeyRef``. The manifest never holds the token; ``auth_secret`` names where it lives.
"""

from __future__ import annotations

from typing import Any

from ephemeral.backends.base import ClusterHandle, Endpoints
from ephemeral.backends.kubernetes.render.common import (
    Manifest,
    Rendered,
    check_name,
    check_version,
    container_security,
    env_vars,
    metadata,
    namespace_of,
    placement,
    pod_labels,
    pod_security,
    resources,
    service_host,
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
    return container


def _template(handle: ClusterHandle, component: str, container: Manifest,
              place: Manifest) -> Manifest:
    # The Ray container must be the first one: KubeRay finds it by index 0. No process of the
    # cluster calls the Kubernetes API (no autoscaler), so it gets no ServiceAccount token.
    return {"metadata": {"labels": pod_labels(handle, component)},
            "spec": {"containers": [container], "automountServiceAccountToken": False,
                     "securityContext": pod_security(), **place}}


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
        "rayStartParams": {},
        "template": _template(handle, "ray-worker", container, placement(group)),
    }


def render_ray(spec: ResolvedSpec, handle: ClusterHandle, cluster_domain: str,
               clients: Clients) -> Rendered:
    s = spec.spec
    if not isinstance(s, RaySpec):
        raise TypeError(f"{spec.ref} is not a Ray spec")
    check_name(spec, handle.name)
    check_version(spec, "rayVersion", s.ray_version, TOKEN_AUTH_SINCE,
                  "token authentication (always on for Kubernetes clusters)")
    env = env_vars(spec, s.runtime_env.env, "runtimeEnv.env")
    eps = endpoints(handle, cluster_domain)
    head = s.head
    start_params: dict[str, str] = {"dashboard-host": "0.0.0.0"}
    if not head.run_tasks:
        # The head only coordinates; otherwise KubeRay takes num-cpus from the CPU limit.
        start_params["num-cpus"] = "0"
    head_container = _container("ray-head", s, env, cpu=head.cpu, memory=head.memory,
                                gpus=head.gpus, gpu_resource=head.gpu_resource, ports=HEAD_PORTS)
    primary_handle = handle.model_copy(update={"endpoints": eps})
    cluster: dict[str, Any] = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": metadata(primary_handle, handle.name, "ray-cluster", primary=True),
        "spec": {
            "rayVersion": s.ray_version,
            "headGroupSpec": {
                "rayStartParams": start_params,
                "template": _template(handle, "ray-head", head_container, placement(head)),
            },
            "workerGroupSpecs": [_worker_group(s, handle, g, env) for g in s.worker_groups],
            # KubeRay makes the token Secret and hands it to every Ray container.
            "authOptions": {"mode": "token"},
        },
    }
    return Rendered(objects=[cluster, *policies(handle, API_PORTS, clients)], primary=cluster,
                    endpoints=eps)
