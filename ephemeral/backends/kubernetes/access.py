"""How this process reaches one cluster's HTTP APIs (Ray dashboard and Jobs API, Spark master
and Connect server UIs), in the endpoint mode its ``KubeConfig`` resolves to, and with which
credentials.

- ``dns``: ``http://<service>.<ns>.svc.<domain>:<port>``; Ray gets ``Authorization: Bearer
  <token>``.
- ``ingress``: the configured template; Ray gets its token in ``Authorization`` and in
  ``X-Ray-Authorization`` (which Ray reads when a proxy took ``Authorization`` for itself).
- ``proxy``: ``<API server>/api/v1/namespaces/<ns>/services/<svc>:<port>/proxy``;
  ``Authorization`` carries this process's Kubernetes credentials (the API server removes it
  once it has authenticated the request, kube-apiserver's WithAuthentication filter) and Ray's
  token travels in ``X-Ray-Authorization``.

The Ray token is read on demand from the Secret KubeRay made for the cluster (``get`` on that
one Secret: no list, no watch). It is held only in the returned ``Access`` (which hides it from
``repr``) and never in a handle, a manifest, XCom or a log line.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

from ephemeral.backends.base import Access, ClusterHandle, Endpoints
from ephemeral.backends.http import get_json
from ephemeral.backends.kubernetes.client import RAYCLUSTER, SECRET, KubeClient
from ephemeral.backends.kubernetes.config import KubeConfig, ResolvedMode
from ephemeral.backends.kubernetes.render import service_endpoints
from ephemeral.backends.kubernetes.render.ray import TOKEN_KEY, auth_secret, head_service
from ephemeral.backends.kubernetes.render.spark import connect_service, connect_ui, master_service
from ephemeral.backends.kubernetes.render.spark_operator import is_operator, server_service
from ephemeral.errors import BackendUnavailable, ClusterNotFound

Api = Literal["dashboard", "spark_ui", "connect_ui"]
RAY_HEADER = "X-Ray-Authorization"
# (port name on its Service, ingress port name) of each HTTP API.
_PORTS: dict[Api, tuple[str, str]] = {"dashboard": ("dashboard", "dashboard"),
                                      "spark_ui": ("web-ui", "spark-ui"),
                                      "connect_ui": ("web-ui", "connect-ui")}


class ClusterAccess:
    """One cluster's HTTP APIs as this process reaches them (``config`` decides the mode)."""

    def __init__(self, config: KubeConfig, client: KubeClient, handle: ClusterHandle) -> None:
        self.config = config
        self.client = client
        self.handle = handle
        self.mode: ResolvedMode = config.resolved_endpoint_mode()

    # -- URLs ----------------------------------------------------------------------------------

    def _service(self, api: Api) -> str:
        name = self.handle.name
        if api == "dashboard":
            return head_service(name)
        # A SparkConnect's UI is its Connect server's (the operator's Service names it web-ui).
        if is_operator(self.handle):
            return server_service(name)
        # Standalone: the master's UI, and the Connect server's own on its Service.
        return connect_service(name) if api == "connect_ui" else master_service(name)

    def url(self, api: Api, *, for_browser: bool = False) -> str:
        """The base URL of ``api`` (no trailing slash); ``for_browser`` in proxy mode puts it
        under ``proxy_link_base`` when one is set."""
        port, ingress_port = _PORTS[api]
        if self.mode == "proxy":
            base = (self.config.proxy_link_base if for_browser else None) or self.client.server
            return base.rstrip("/") + self.client.proxy_path(self._service(api), port)
        if self.mode == "ingress":
            return self.config.ingress_url(cluster=self.handle.name,
                                           service=self._service(api), port=ingress_port)
        if api == "connect_ui":
            return connect_ui(self._here(), self.config.cluster_domain)
        found = getattr(self._dns(), api)
        assert isinstance(found, str)
        return found

    def _here(self) -> ClusterHandle:
        """The handle in the namespace this client reaches (its Services' DNS names)."""
        return self.handle.model_copy(update={"namespace": self.client.namespace})

    def _dns(self) -> Endpoints:
        handle = self._here()
        return service_endpoints(handle, self.handle.engine,
                                 cluster_domain=self.config.cluster_domain,
                                 mode="operator" if is_operator(handle) else "standalone")

    def links(self, endpoints: Endpoints) -> Endpoints:
        """``endpoints`` with the HTTP ones as a person's browser reaches them in this mode."""
        if self.mode == "dns":
            return endpoints
        update = {api: self.url(api, for_browser=True)
                  for api in ("dashboard", "spark_ui") if getattr(endpoints, api)}
        return endpoints.model_copy(update=update)

    # -- credentials ---------------------------------------------------------------------------

    def ray_token(self, cluster: dict[str, Any] | None = None) -> str | None:
        """The cluster's Ray token, from the Secret its RayCluster names (None when the
        RayCluster has no token auth, e.g. one made before it was turned on)."""
        if self.handle.engine != "ray":
            return None
        cluster = cluster or self.client.get(RAYCLUSTER, self.handle.name)
        if cluster is None:
            raise ClusterNotFound(f"no RayCluster {self.handle.name!r} in namespace "
                                  f"{self.client.namespace!r}")
        name = auth_secret(cluster)
        if name is None:
            return None
        secret = self.client.get(SECRET, name)
        encoded = ((secret or {}).get("data") or {}).get(TOKEN_KEY)
        if not encoded:
            # KubeRay makes it in its first reconcile, before any pod: not there yet.
            raise BackendUnavailable(f"the token Secret {name!r} of RayCluster "
                                     f"{self.handle.name!r} has no {TOKEN_KEY!r} yet "
                                     "(KubeRay makes it; is the operator 1.6 or newer?)")
        return base64.b64decode(encoded).decode()

    def headers(self, token: str | None, *, with_kube: bool) -> dict[str, str]:
        """The request headers: Ray's token where this mode carries it, and in proxy mode the
        Kubernetes credentials when ``with_kube`` (a client that is not ``KubeClient``)."""
        out: dict[str, str] = {}
        if self.mode == "proxy":
            if with_kube:
                bearer = self.client.bearer()
                if bearer is None:
                    raise BackendUnavailable(
                        "endpoint mode 'proxy': the Kubernetes credentials in use are no bearer "
                        "token (a client certificate?), and an HTTP client such as Ray's Jobs "
                        "SDK can only send headers; use a ServiceAccount token kubeconfig (as "
                        "compose/kind/up.sh writes) or another endpoint mode")
                out["Authorization"] = bearer
            if token:
                out[RAY_HEADER] = f"Bearer {token}"
        elif token:
            out["Authorization"] = f"Bearer {token}"
            if self.mode == "ingress":
                out[RAY_HEADER] = f"Bearer {token}"
        return out

    def access(self) -> Access:
        token = self.ray_token()
        apis: dict[str, str] = {}
        if self.handle.engine == "ray":
            apis["dashboard"] = self.url("dashboard")
        else:
            apis["spark_ui"] = self.url("spark_ui")
            if self.handle.endpoints.spark_connect:
                # In operator mode the cluster's Spark UI is the Connect server's own.
                apis["connect_ui"] = apis["spark_ui"] if is_operator(self.handle) \
                    else self.url("connect_ui")
        return Access(**apis, headers=self.headers(token, with_kube=True), verify=self.verify(),
                      proxy=self.client.server_proxy() if self.mode == "proxy" else None)

    def verify(self) -> bool | str:
        """What an HTTP client should trust for ``access()``'s URLs (``requests``' ``verify``,
        which Ray's JobSubmissionClient takes): through the proxy, the API server's CA as the
        credentials name it (kind's and most clusters' is private), or False when the config
        turns verification off; True elsewhere (the system's trust store)."""
        if self.mode != "proxy":
            return True
        if not self.config.verify_ssl:
            return False
        ca = self.client.api.configuration.ssl_ca_cert
        return str(ca) if ca else True

    # -- readiness -----------------------------------------------------------------------------

    def get_json(self, api: Api, path: str, token: str | None) -> Any:
        """GET ``path`` of ``api`` and parse JSON; None while it does not answer 200 with JSON.
        In proxy mode through ``KubeClient`` (its TLS trust and any kind of credentials); the
        API server refusing this identity (RBAC) raises."""
        headers = self.headers(token, with_kube=False)
        if self.mode == "proxy":
            port, _ = _PORTS[api]
            status, body = self.client.proxy_get(self._service(api), port, path,
                                                 headers=headers)
            if status != 200:
                return None
            try:
                return json.loads(body or b"null")
            except ValueError:
                return None
        return get_json(f"{self.url(api)}/{path.lstrip('/')}", headers=headers)

    def where(self, api: Api) -> str:
        """``api``'s URL for messages (credentials are never part of one)."""
        return self.url(api)
