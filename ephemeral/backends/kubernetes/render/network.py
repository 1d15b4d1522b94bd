"""Who may connect to a cluster's pods: a NetworkPolicy per cluster, made and deleted with it.

Ray's dashboard and Jobs API, its GCS and client server, and a Spark master or Connect server
run whatever code they are sent: anybody who reaches those ports runs code in the namespace. So
each cluster admits, on its pods:

- every port from pods of the same cluster (Ray's raylets and object transfer, Spark's executors
  and block managers use ports nobody fixes in advance);
- the API ports only (Ray 8265, 6379, 10001; Spark 7077, 8080, 15002, Connect's UI 4040) from
  the client pods (``client_selector``: the Airflow workers and triggerers; by default those
  labelled ``ephemeral.dev/client=true`` for the cluster's own deployment instance, never
  another deployment's in the same namespace) and the ``client_cidrs`` ranges (Airflow outside the
  cluster; the API server itself in ``proxy`` mode);
- for Spark, a second policy: the worker pods take every port from the clients as well, because
  a driver submitted from a client (spark-submit's client mode) fetches large task results from
  the executors' block managers, on ports the application chooses.

Everything else is refused once a NetworkPolicy selects a pod; a cluster whose network plugin
does not enforce NetworkPolicy ignores them (docs/kubernetes.md says which do).
"""

from __future__ import annotations

from dataclasses import dataclass

from ephemeral.backends.base import ClusterHandle
from ephemeral.backends.kubernetes.config import CLIENT_LABEL, client_labels
from ephemeral.backends.kubernetes.render.common import COMPONENT_LABEL, Manifest, metadata
from ephemeral.specs.identity import PREFIX


def default_client_selector(handle: ClusterHandle) -> dict[str, str]:
    """The client pods a cluster admits unless ``client_selector`` is configured: those of its
    own deployment instance (``client_labels``). A handle without one (never made here: a
    Kubernetes deployment must set its instance) admits the unscoped label."""
    instance = handle.instance
    return client_labels(instance) if instance else {CLIENT_LABEL: "true"}


@dataclass(frozen=True)
class Clients:
    """Which pods and address ranges besides the cluster's own may call its API ports."""

    selector: dict[str, str] | None = None
    """As configured; None: ``default_client_selector``."""
    cidrs: tuple[str, ...] = ()

    def peers(self, handle: ClusterHandle) -> list[Manifest]:
        selector = self.selector if self.selector is not None else \
            default_client_selector(handle)
        return [{"podSelector": {"matchLabels": dict(selector)}},
                *({"ipBlock": {"cidr": c}} for c in self.cidrs)]


def cluster_pods(handle: ClusterHandle) -> Manifest:
    """The label selector of every pod of the cluster (owner labels are on every template)."""
    return {"matchLabels": {PREFIX + "cluster": handle.name}}


def _policy(handle: ClusterHandle, name: str, pods: Manifest,
            ingress: list[Manifest]) -> Manifest:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(handle, name, "network-policy"),
        "spec": {"podSelector": pods, "policyTypes": ["Ingress"], "ingress": ingress},
    }


def policies(handle: ClusterHandle, api_ports: list[int], clients: Clients, *,
             open_to_clients: str | None = None) -> list[Manifest]:
    """The cluster's NetworkPolicy (named like the cluster); with ``open_to_clients`` (a
    component, e.g. ``spark-worker``) also ``<name>-<component>``, which admits the clients to
    every port of that component's pods."""
    own = {"from": [{"podSelector": cluster_pods(handle)}]}
    api = {"from": clients.peers(handle),
           "ports": [{"protocol": "TCP", "port": p} for p in api_ports]}
    out = [_policy(handle, handle.name, cluster_pods(handle), [own, api])]
    if open_to_clients:
        pods = {"matchLabels": cluster_pods(handle)["matchLabels"]
                | {COMPONENT_LABEL: open_to_clients}}
        out.append(_policy(handle, f"{handle.name}-{open_to_clients}", pods,
                           [{"from": clients.peers(handle)}]))
    return out
