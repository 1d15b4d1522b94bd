"""A Ray spec as one KubeRay ``ray.io/v1`` RayCluster.

KubeRay writes the ``ray start`` command itself (from ``rayStartParams`` and the container's
resource limits), makes the head Service ``<name>-head-svc`` and the pods. The renderer gives
only the image, the sizes, the declared head ports, placement and environment.
"""

from __future__ import annotations

from typing import Any

from ephemeral.backends.base import ClusterHandle, Endpoints
from ephemeral.backends.kubernetes.render.common import (
    Manifest,
    Rendered,
    check_name,
    env_vars,
    metadata,
    namespace_of,
    placement,
    pod_labels,
    resources,
    service_host,
)
from ephemeral.specs.models import RaySpec, RayWorkerGroup
from ephemeral.specs.resolve import ResolvedSpec

GCS_PORT, DASHBOARD_PORT, CLIENT_PORT, METRICS_PORT = 6379, 8265, 10001, 8080
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
    }
    if ports:
        container["ports"] = [dict(p) for p in ports]
    if env:
        container["env"] = [dict(e) for e in env]
    return container


def _template(handle: ClusterHandle, component: str, container: Manifest,
              place: Manifest) -> Manifest:
    # The Ray container must be the first one: KubeRay finds it by index 0.
    return {"metadata": {"labels": pod_labels(handle, component)},
            "spec": {"containers": [container], **place}}


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


def render_ray(spec: ResolvedSpec, handle: ClusterHandle, cluster_domain: str) -> Rendered:
    s = spec.spec
    if not isinstance(s, RaySpec):
        raise TypeError(f"{spec.ref} is not a Ray spec")
    check_name(spec, handle.name)
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
        },
    }
    return Rendered(objects=[cluster], primary=cluster, endpoints=eps)
