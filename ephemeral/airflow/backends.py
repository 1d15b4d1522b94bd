"""Which backend an Airflow task uses: by name, or the Kubernetes backend of an Airflow
connection. Tasks and triggers pass the connection id around, never its credentials: the
triggerer looks the connection up again itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ephemeral.backends import get_backend
from ephemeral.errors import BackendUnavailable

if TYPE_CHECKING:
    from ephemeral.backends import ClusterBackend


# Settings a kubernetes connection has no field for, in its extras under this prefix: how cluster
# URLs are built when Airflow runs outside the cluster, and who the clusters' NetworkPolicies
# admit.
OUR_PREFIX = "ephemeral_"
OUR_FIELDS = {"endpoint_mode", "ingress_url_template", "http_check", "cluster_domain",
              "proxy_link_base", "client_selector", "client_cidrs", "spark_mode",
              "spark_service_account"}


def task_backend(name: str | None, kubernetes_conn_id: str | None = None) -> ClusterBackend:
    """``get_backend(name)``, or with ``kubernetes_conn_id`` a Kubernetes backend configured from
    that connection's extras: the cncf-kubernetes provider's field names (``in_cluster``,
    ``kube_config_path``, ``kube_config``, ``namespace``, ``cluster_context``), plus
    ``ephemeral_endpoint_mode`` (``auto``, ``dns``, ``proxy``, ``ingress``),
    ``ephemeral_ingress_url_template``, ``ephemeral_proxy_link_base``, ``ephemeral_http_check``,
    ``ephemeral_cluster_domain``, ``ephemeral_client_selector``, ``ephemeral_client_cidrs``,
    ``ephemeral_spark_mode`` and ``ephemeral_spark_service_account``."""
    if not kubernetes_conn_id:
        return get_backend(name)
    if name not in (None, "kubernetes"):
        raise BackendUnavailable(f"kubernetes_conn_id={kubernetes_conn_id!r} is set but backend "
                                 f"is {name!r}: drop one of them")
    from airflow.sdk import BaseHook

    from ephemeral.backends.kubernetes import KubeConfig, KubernetesBackend

    extra = BaseHook.get_connection(kubernetes_conn_id).extra_dejson
    ours = {k.removeprefix(OUR_PREFIX): v for k, v in extra.items() if k.startswith(OUR_PREFIX)}
    unknown = sorted(set(ours) - OUR_FIELDS)
    if unknown:
        raise BackendUnavailable(
            f"connection {kubernetes_conn_id!r}: unknown extra "
            f"{', '.join(OUR_PREFIX + k for k in unknown)}; known: "
            f"{', '.join(OUR_PREFIX + k for k in sorted(OUR_FIELDS))}")
    return KubernetesBackend(KubeConfig.from_connection_fields(extra, **ours))
