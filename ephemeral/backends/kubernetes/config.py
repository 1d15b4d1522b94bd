"""How the Kubernetes backend reaches its API server and how it names cluster endpoints.

No Airflow and no ``kubernetes`` import here: the Airflow layer turns a connection's extras into a
``KubeConfig`` with ``from_connection_fields``; processes without Airflow use ``from_env``.

The kubeconfig *content* is a credential: it is a ``SecretStr``, left out of ``repr`` and of every
``model_dump``, so a config can be logged or serialized (e.g. into a trigger) without it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from ephemeral.errors import BackendUnavailable

EndpointMode = Literal["service-dns", "ingress"]
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class KubeConfig(BaseModel):
    """Where the API server is, which namespace clusters live in, how their URLs are built.

    Credentials come from exactly one of: ``in_cluster`` (the pod's service account),
    ``kubeconfig_path``, ``kubeconfig`` (the file's content, YAML or JSON); with none of them the
    kubernetes client's default applies (``$KUBECONFIG`` or ``~/.kube/config``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    in_cluster: bool = False
    kubeconfig_path: str | None = None
    kubeconfig: SecretStr | None = Field(default=None, exclude=True, repr=False)
    context: str | None = None
    namespace: str = "default"
    cluster_domain: str = "cluster.local"
    endpoint_mode: EndpointMode = "service-dns"
    """``service-dns``: in-cluster Service DNS names (Airflow runs in the same cluster).
    ``ingress``: the HTTP endpoints (Ray dashboard, Spark master UI) become
    ``ingress_url_template`` formatted with ``cluster``, ``namespace``, ``service``, ``port``
    (a port name: ``dashboard`` or ``spark-ui``); the platform routes those URLs to the Services.
    Non-HTTP endpoints (GCS, Ray client, Spark master and Connect) stay Service DNS names."""
    ingress_url_template: str | None = None
    http_check: bool = True
    """Whether readiness also needs the Ray dashboard / Spark master UI to answer over HTTP."""
    verify_ssl: bool = True
    request_timeout: float = Field(default=30.0, gt=0)
    poll_interval: float = Field(default=2.0, gt=0)
    delete_timeout: float = Field(default=300.0, ge=0)
    """How long ``delete(wait=True)`` waits for objects and pods (KubeRay GCS-FT finalizers may
    take 300 s to be force-removed)."""

    @model_validator(mode="after")
    def _one_credential_source(self) -> KubeConfig:
        given = [name for name, on in (("in_cluster", self.in_cluster),
                                       ("kubeconfig_path", self.kubeconfig_path),
                                       ("kubeconfig", self.kubeconfig)) if on]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} are mutually exclusive; set one of them")
        if self.endpoint_mode == "ingress" and not self.ingress_url_template:
            raise ValueError("endpoint_mode 'ingress' needs ingress_url_template, e.g. "
                             "'https://{cluster}-{port}.ray.example.com'")
        return self

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> KubeConfig:
        """``EPHEMERAL_K8S_*`` variables; in a pod without any kubeconfig, the service account."""
        env = os.environ if environ is None else environ
        fields: dict[str, Any] = {
            "kubeconfig_path": env.get("EPHEMERAL_KUBECONFIG") or None,
            "kubeconfig": env.get("EPHEMERAL_KUBECONFIG_CONTENT") or None,
            "context": env.get("EPHEMERAL_K8S_CONTEXT") or None,
            "namespace": env.get("EPHEMERAL_K8S_NAMESPACE") or "default",
            "cluster_domain": env.get("EPHEMERAL_K8S_CLUSTER_DOMAIN") or "cluster.local",
            "ingress_url_template": env.get("EPHEMERAL_K8S_INGRESS_URL_TEMPLATE") or None,
        }
        if env.get("EPHEMERAL_K8S_ENDPOINT_MODE"):
            fields["endpoint_mode"] = env["EPHEMERAL_K8S_ENDPOINT_MODE"]
        for key, name in (("in_cluster", "EPHEMERAL_K8S_IN_CLUSTER"),
                          ("http_check", "EPHEMERAL_K8S_HTTP_CHECK"),
                          ("verify_ssl", "EPHEMERAL_K8S_VERIFY_SSL")):
            if name in env:
                fields[key] = _flag(name, env[name])
        if "in_cluster" not in fields:
            # A pod with no kubeconfig given talks to its own cluster as its service account.
            fields["in_cluster"] = bool(env.get("KUBERNETES_SERVICE_HOST")) and not (
                fields["kubeconfig_path"] or fields["kubeconfig"] or env.get("KUBECONFIG"))
        return cls._build("environment (EPHEMERAL_K8S_*)", fields)

    @classmethod
    def from_connection_fields(cls, extra: dict[str, Any], **overrides: Any) -> KubeConfig:
        """From the extras of an Airflow ``kubernetes`` connection (cncf-kubernetes provider names:
        ``in_cluster``, ``kube_config_path``, ``kube_config``, ``namespace``, ``cluster_context``,
        ``disable_verify_ssl``; the legacy ``extra__kubernetes__`` prefix is accepted too).
        ``overrides`` set other fields (e.g. ``endpoint_mode``)."""

        def get(name: str) -> Any:
            value = extra.get(name, extra.get(f"extra__kubernetes__{name}"))
            return value if value not in ("", None) else None

        content = get("kube_config")
        if isinstance(content, dict):  # the provider accepts the kubeconfig as a JSON object too
            content = json.dumps(content)
        fields: dict[str, Any] = {
            "in_cluster": _flag("in_cluster", get("in_cluster")),
            "kubeconfig_path": get("kube_config_path"),
            "kubeconfig": content,
            "context": get("cluster_context"),
            "namespace": get("namespace") or "default",
            "verify_ssl": not _flag("disable_verify_ssl", get("disable_verify_ssl")),
        }
        return cls._build("kubernetes connection", fields | overrides)

    @classmethod
    def _build(cls, source: str, fields: dict[str, Any]) -> KubeConfig:
        try:
            return cls(**fields)
        except ValidationError as exc:
            # The message names fields only: pydantic would echo input values, a secret among them.
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}"
                                 for e in exc.errors(include_input=False))
            raise BackendUnavailable(f"invalid Kubernetes settings from {source}: {problems}") \
                from None

    def ingress_url(self, *, cluster: str, service: str, port: str) -> str:
        assert self.ingress_url_template is not None
        return self.ingress_url_template.format(cluster=cluster, namespace=self.namespace,
                                                service=service, port=port).rstrip("/")


def _flag(name: str, value: object) -> bool:
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise BackendUnavailable(f"{name}: expected true or false, got {value!r}")
