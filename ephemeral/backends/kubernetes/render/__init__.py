"""Pure renderers: a resolved spec and a handle in, Kubernetes manifests (plain dicts) out.

No I/O and no ``kubernetes`` import: the backend sends these dicts to the API server, the
``ephemeral render`` command prints them for review, and tests validate them offline.

Every top-level object carries the handle's labels (the owner labels, also on pod templates),
its annotations and ``ephemeral.dev/expires-at``; every cluster gets NetworkPolicies that admit
only its own pods and the ``Clients`` (``render.network``). The primary object (the RayCluster; for Spark
the master Deployment) also carries ``HANDLE_ANNOTATION``: the handle as JSON, with the
endpoints replaced by the rendered ones, so the handle can be rebuilt from a listed object.
"""

from __future__ import annotations

from ephemeral.backends.base import ClusterHandle, Endpoints
from ephemeral.backends.kubernetes.config import SparkMode
from ephemeral.backends.kubernetes.render import ray, spark, spark_operator
from ephemeral.backends.kubernetes.render.common import (
    COMPONENT_LABEL,
    EXPIRES_ANNOTATION,
    HANDLE_ANNOTATION,
    NAME_MAX,
    Rendered,
)
from ephemeral.backends.kubernetes.render.network import Clients
from ephemeral.specs.resolve import ResolvedSpec

__all__ = [
    "COMPONENT_LABEL",
    "EXPIRES_ANNOTATION",
    "HANDLE_ANNOTATION",
    "NAME_MAX",
    "Clients",
    "Rendered",
    "render",
    "service_endpoints",
    "spark_mode",
]


def spark_mode(spec: ResolvedSpec, default: SparkMode = "standalone") -> SparkMode:
    """How a Spark spec runs on Kubernetes: its own ``kubernetesMode``, else ``default`` (the
    deployment's ``EPHEMERAL_K8S_SPARK_MODE``)."""
    chosen = getattr(spec.spec, "kubernetes_mode", None)
    return chosen if chosen is not None else default


def render(spec: ResolvedSpec, handle: ClusterHandle, *,
           cluster_domain: str = "cluster.local", clients: Clients | None = None,
           default_spark_mode: SparkMode = "standalone",
           spark_service_account: str = "spark-operator-spark") -> Rendered:
    """The objects that make the cluster ``handle`` from ``spec``, admitting ``clients`` (by
    default pods labelled ``ephemeral.dev/client=true`` and ``ephemeral.dev/client-instance``
    with the cluster's instance: ``config.client_labels``); raises SpecError when the spec cannot
    be expressed on Kubernetes (a name too long; what ``checks.problems`` lists: a ``fromEnv``
    variable, a Ray too old for token authentication, a version the image contradicts, ...). A Spark spec becomes standalone Deployments or, in ``operator``
    mode (``spark_mode``), a SparkConnect whose server runs as ``spark_service_account``."""
    clients = clients or Clients()
    if spec.engine == "ray":
        return ray.render_ray(spec, handle, cluster_domain, clients)
    if spark_mode(spec, default_spark_mode) == "operator":
        return spark_operator.render_spark_connect(spec, handle, cluster_domain, clients,
                                                   spark_service_account)
    return spark.render_spark(spec, handle, cluster_domain, clients)


def service_endpoints(handle: ClusterHandle, engine: str, *,
                      cluster_domain: str = "cluster.local",
                      spark_connect: bool = True,
                      mode: SparkMode = "standalone") -> Endpoints:
    """In-cluster DNS endpoints of cluster ``handle`` (its name and namespace are used).

    The handle does not say whether a Spark cluster runs Spark Connect: pass
    ``spark_connect=False`` for a spec without it, and ``mode="operator"`` for a SparkConnect
    (``render`` knows and gets it right).
    """
    if engine == "ray":
        return ray.endpoints(handle, cluster_domain)
    if engine == "spark" and mode == "operator":
        return spark_operator.endpoints(handle, cluster_domain)
    if engine == "spark":
        return spark.endpoints(handle, cluster_domain, connect=spark_connect)
    raise ValueError(f"unknown engine {engine!r}; known: ray, spark")
