"""Pieces every renderer shares: object metadata, names, quantities, placement and env.

Everything here builds plain dicts (the shape ``kubectl get -o json`` shows), so rendering needs
neither the ``kubernetes`` package nor a cluster, and a manifest can be diffed in a review.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ephemeral.backends.base import ClusterHandle, Endpoints
from ephemeral.errors import SpecError
from ephemeral.specs.identity import PREFIX
from ephemeral.specs.models import EnvVar, Placement
from ephemeral.specs.quantities import memory_bytes
from ephemeral.specs.resolve import ResolvedSpec

HANDLE_ANNOTATION = PREFIX + "handle"
"""On the primary object: ``handle.model_dump_json()``, so a listed object gives the handle back."""
EXPIRES_ANNOTATION = PREFIX + "expires-at"
COMPONENT_LABEL = "app.kubernetes.io/component"
"""Which part of a cluster an object or pod is (``spark-master``, ``ray-head``, ...). Not under
``ephemeral.dev/``: those labels are the owner labels a handle carries."""

_MIB = 2**20
NAME_MAX = 53  # KubeRay's limit for RayCluster names ("-serve-svc" is its longest suffix)
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Rendered:
    objects: list[Manifest]
    """In creation order, the primary first; plain JSON-able dicts."""
    primary: Manifest
    """The object that stands for the cluster (the RayCluster; for Spark the master Deployment)."""
    endpoints: Endpoints
    """In-cluster service DNS endpoints."""


def check_name(spec: ResolvedSpec, name: str) -> None:
    """Cluster names become object and Service names: DNS-1035 labels of at most 53 chars."""
    if len(name) > NAME_MAX:
        raise SpecError(spec.source, [("name", f"cluster name {name!r} is {len(name)} characters "
                                       f"long; Kubernetes allows at most {NAME_MAX}")])
    if not _DNS1035.fullmatch(name):
        raise SpecError(spec.source, [("name", f"cluster name {name!r} is not a DNS-1035 label "
                                       "(lowercase letters, digits and '-', starting with a "
                                       "letter and ending with a letter or digit)")])


def namespace_of(handle: ClusterHandle) -> str:
    if not handle.namespace:
        raise ValueError(f"handle of {handle.name!r} has no namespace; the Kubernetes backend "
                         "makes handles with namespace=...")
    return handle.namespace


def service_host(name: str, namespace: str, cluster_domain: str) -> str:
    return f"{name}.{namespace}.svc.{cluster_domain}"


def metadata(handle: ClusterHandle, name: str, component: str, *,
             primary: bool = False) -> Manifest:
    """Metadata of a top-level object: owner labels, owner annotations and the expiry."""
    annotations = dict(handle.annotations) | {EXPIRES_ANNOTATION: handle.expires_at}
    if primary:
        annotations[HANDLE_ANNOTATION] = handle.model_dump_json()
    return {
        "name": name,
        "namespace": namespace_of(handle),
        "labels": pod_labels(handle, component),
        "annotations": annotations,
    }


def pod_labels(handle: ClusterHandle, component: str) -> dict[str, str]:
    return dict(handle.labels) | {COMPONENT_LABEL: component}


def selector_labels(handle: ClusterHandle, component: str) -> dict[str, str]:
    """The few labels that pick one component's pods (selectors are immutable: keep them small)."""
    return {PREFIX + "cluster": handle.name, COMPONENT_LABEL: component}


def cpu_quantity(cpu: float) -> str:
    if float(cpu).is_integer():
        return str(int(cpu))
    return f"{round(cpu * 1000)}m"


def resources(cpu: float, memory: str, gpus: int = 0,
              gpu_resource: str = "nvidia.com/gpu") -> Manifest:
    """Requests equal to limits: the Guaranteed QoS class, and what Ray reads its sizes from."""
    amounts = {"cpu": cpu_quantity(cpu), "memory": memory}
    if gpus > 0:
        amounts[gpu_resource] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def placement(p: Placement) -> Manifest:
    """``nodeSelector`` and ``tolerations`` for a pod spec; empty ones are left out."""
    out: Manifest = {}
    if p.node_selector:
        out["nodeSelector"] = dict(p.node_selector)
    if p.tolerations:
        out["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True)
                              for t in p.tolerations]
    return out


def env_vars(variables: list[EnvVar]) -> list[Manifest]:
    """Container env from a spec's variables (``fromEnv`` is refused: ``checks``). A secret
    stays a reference to a Secret; a value reaches the process as written (``literal``)."""
    out: list[Manifest] = []
    for var in variables:
        if var.secret_key_ref is not None:
            ref = var.secret_key_ref
            out.append({"name": var.name,
                        "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
        else:
            assert var.value is not None, f"{var.name}: fromEnv reached the renderer"
            out.append({"name": var.name, "value": literal(var.value)})
    return out


def literal(value: str) -> str:
    """``value`` as Kubernetes hands it to the process, for a container's env ``value``,
    ``command`` or ``args``: there it expands ``$(VAR)`` from the container's env and turns
    ``$$`` into ``$``, so a user's ``$`` is doubled (the backend's own ``$(POD_IP)`` is not
    passed through here). The local backend passes values as written too."""
    return value.replace("$", "$$")


def jvm_heap(memory: str) -> int:
    """The heap, in MiB, of a JVM in a pod of ``memory``: three quarters; the JVM's own memory
    (metaspace, threads, buffers) takes the rest."""
    return memory_bytes(memory) * 3 // 4 // _MIB


def pod_security() -> Manifest:
    """A pod's part of what the ``restricted`` Pod Security Standard asks, so clusters run in a
    namespace that enforces it (compose/k8s/namespace.yaml). The engines' images run as
    numeric non-root users (rayproject/ray 1000, apache/spark 185), which ``runAsNonRoot``
    needs to verify."""
    return {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def container_security() -> Manifest:
    """A container's part of ``restricted`` (KubeRay copies the Ray container's to the init
    container it adds)."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


SHM_VOLUME = "dshm"
SHM_MOUNT: Manifest = {"name": SHM_VOLUME, "mountPath": "/dev/shm"}
SHM_FRACTION = 2
"""``/dev/shm`` is sized to 1/SHM_FRACTION of the pod's memory."""


def shm_volume(memory: str) -> Manifest:
    """A memory-backed ``/dev/shm`` for a pod of ``memory`` (the container runtime's default is
    64 MiB, too small for NCCL, PyTorch DataLoader workers and Ray's object store).

    Half the pod's memory: Ray's object store takes 30% of a node's memory by default and lives
    here, NCCL's and DataLoader's buffers take the rest of that half, and the other half stays
    for the processes themselves. tmpfs pages count against the pod's memory limit, so a
    ``/dev/shm`` as large as the limit (KubeRay's default when none is declared) would let shared
    memory crowd out the training processes; beyond its ``sizeLimit`` the kubelet evicts the pod.
    """
    size = memory_bytes(memory) // SHM_FRACTION // _MIB
    return {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": f"{size}Mi"}}


POD_IP_ENV: Manifest = {"name": "POD_IP",
                        "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
"""The pod's own IP, for processes that must advertise an address other pods can reach."""
