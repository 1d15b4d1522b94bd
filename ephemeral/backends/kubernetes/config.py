"""How the Kubernetes backend reaches its API server and how it names cluster endpoints.

No Airflow and no ``kubernetes`` import here: the Airflow layer builds a ``KubeConfig`` from a
connection (read by the cncf-kubernetes provider's hook); processes without Airflow use
``from_env``.

The kubeconfig *content* is a credential: it is a ``SecretStr``, left out of ``repr`` and of every
``model_dump``, so a config can be logged or serialized (e.g. into a trigger) without it.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeGuard, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ephemeral.errors import BackendMisconfigured, SettingError, field_problems
from ephemeral.specs.labels import label_problems
from ephemeral.specs.models import dns_label, dns_subdomain

T = TypeVar("T")

EndpointMode = Literal["auto", "dns", "proxy", "ingress"]
SparkMode = Literal["standalone", "operator"]
ResolvedMode = Literal["dns", "proxy", "ingress"]
CLIENT_LABEL = "ephemeral.dev/client"
"""The default selector of the pods a cluster's NetworkPolicy admits (the Airflow workers and
triggerers): label them ``ephemeral.dev/client=true`` and ``CLIENT_INSTANCE_LABEL``, or
configure ``client_selector``."""
CLIENT_INSTANCE_LABEL = "ephemeral.dev/client-instance"
"""With ``CLIENT_LABEL``, by default: the deployment instance whose clusters a client pod may
reach (``EPHEMERAL_INSTANCE``), so that deployments sharing a namespace (staging and prod) do
not admit each other's Airflow pods to their clusters' unauthenticated ports."""


def client_labels(instance: str) -> dict[str, str]:
    """The labels of a client pod the clusters of deployment ``instance`` admit by default
    (an instance is a valid label value): what its Airflow worker and triggerer pods carry."""
    return {CLIENT_LABEL: "true", CLIENT_INSTANCE_LABEL: instance}


def admits_every_instance(selector: Mapping[str, str] | None) -> TypeGuard[Mapping[str, str]]:
    """Whether a configured ``client_selector`` has ``CLIENT_LABEL`` without
    ``CLIENT_INSTANCE_LABEL``: it admits the client pods of every deployment in the namespace
    (the default before 2026-12, kept by those who wrote it out)."""
    return selector is not None and CLIENT_LABEL in selector \
        and CLIENT_INSTANCE_LABEL not in selector


class KubeConfig(BaseModel):
    """Where the API server is, which namespace clusters live in, how their URLs are built.

    Credentials come from exactly one of: ``in_cluster`` (the pod's service account),
    ``kubeconfig_path``, ``kubeconfig`` (the file's content, YAML or JSON); with none of them the
    kubernetes client's default applies (``$KUBECONFIG`` or ``~/.kube/config``).
    """

    # hide_input_in_errors: a refused kubeconfig content or token is no part of an error.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    in_cluster: bool = False
    kubeconfig_path: str | None = None
    kubeconfig: SecretStr | None = Field(default=None, exclude=True, repr=False)
    context: str | None = None
    namespace: str = "default"
    cluster_domain: str = "cluster.local"
    endpoint_mode: EndpointMode = "auto"
    """How this process reaches the clusters' HTTP endpoints (Ray dashboard and Jobs API, Spark
    master and Connect UIs). ``dns``: in-cluster Service DNS names (Airflow runs in the same cluster; the
    older spelling ``service-dns`` is accepted). ``proxy``: the API server's service proxy
    (``/api/v1/namespaces/<ns>/services/<svc>:<port>/proxy``), with this config's credentials,
    so anything that reaches the API server reaches them. ``ingress``: ``ingress_url_template``
    formatted with ``cluster``, ``namespace``, ``service``, ``port`` (a port name:
    ``dashboard``, ``spark-ui`` or ``connect-ui``); the platform routes those URLs to the
    Services. ``auto``
    (the default): ``dns`` inside a pod (``in_cluster``, or ``KUBERNETES_SERVICE_HOST`` set),
    else ``proxy``. Non-HTTP endpoints (GCS, Ray client, Spark master and Connect) are always
    Service DNS names: they cannot go through the proxy (docs/kubernetes.md)."""
    ingress_url_template: str | None = None
    proxy_link_base: str | None = None
    """In ``proxy`` mode, the base of the extra links' URLs (what a browser opens), e.g.
    ``http://127.0.0.1:8001`` for ``kubectl proxy``; default the API server's own URL (a browser
    must then be authenticated to it). API calls always go to the API server."""
    client_selector: dict[str, str] | None = None
    """Labels of the pods (besides the cluster's own) that each cluster's NetworkPolicy admits
    to the dashboard, GCS, client, Spark master, Connect and UI ports: the Airflow workers and
    triggerers. ``k=v,k2=v2`` in the environment. Unset: ``ephemeral.dev/client=true`` and
    ``ephemeral.dev/client-instance=<the cluster's deployment instance>``; one configured is
    used as given (scope it to the deployment yourself where several share a namespace)."""
    client_cidrs: list[str] = []
    """Address ranges admitted like ``client_selector`` pods: Airflow outside the cluster, and
    in ``proxy`` mode the API server's own address (it connects to the pods itself)."""
    spark_mode: SparkMode = "standalone"
    """How a Spark spec that does not choose (``kubernetesMode``) runs: ``standalone`` (master,
    worker and Connect Deployments, no operator needed) or ``operator`` (a ``SparkConnect`` of
    the Kubeflow spark-operator, which must be installed and watch the namespace)."""
    spark_service_account: str = "spark-operator-spark"
    """In ``operator`` mode, the ServiceAccount of the Connect server (the Spark driver, which
    creates its executor pods): the one the spark-operator chart makes in each of its
    ``spark.jobNamespaces`` (``<release>-spark``)."""
    http_check: bool = True
    """Whether readiness also needs the Ray dashboard / Spark master UI to answer over HTTP."""
    verify_ssl: bool = True
    request_timeout: float = Field(default=30.0, gt=0)
    poll_interval: float = Field(default=2.0, gt=0)
    delete_timeout: float = Field(default=300.0, ge=0)
    """How long ``delete(wait=True)`` waits for objects and pods (KubeRay GCS-FT finalizers may
    take 300 s to be force-removed)."""

    @field_validator("endpoint_mode", mode="before")
    @classmethod
    def _old_spelling(cls, value: object) -> object:
        return "dns" if value == "service-dns" else value

    # Both end up in every Service name the endpoints use: a bad one would only show as a
    # cluster that never gets ready (DNS mode) or a 404 from the API server, after the create.
    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return dns_label(value, 63)

    @field_validator("cluster_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return dns_subdomain(value)

    @field_validator("client_selector", mode="before")
    @classmethod
    def _selector(cls, value: object) -> object:
        labels = parse_labels(value) if isinstance(value, str) else value
        if isinstance(labels, Mapping):
            if bad := label_problems(dict(labels)):
                raise ValueError(f"not label key=value pairs: {', '.join(bad)}")
            if not labels:
                raise ValueError("empty: give at least one label, e.g. "
                                 "release=airflow-prod,tier=airflow")
        return labels

    @field_validator("client_cidrs", mode="before")
    @classmethod
    def _cidrs(cls, value: object) -> object:
        items = [c.strip() for c in value.split(",") if c.strip()] if isinstance(value, str) \
            else value
        if isinstance(items, list):
            for item in items:
                try:
                    ipaddress.ip_network(str(item), strict=True)
                except ValueError as exc:
                    raise ValueError(f"{item!r} is not a CIDR such as 10.0.0.0/8 ({exc})") \
                        from None
        return items

    @field_validator("proxy_link_base")
    @classmethod
    def _link_base(cls, value: str | None) -> str | None:
        # Its links go into XCom, the task log and the extra links, for anyone to read.
        if value and (problem := url_setting_problem("proxy_link_base", value)):
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _one_credential_source(self) -> KubeConfig:
        given = [name for name, on in (("in_cluster", self.in_cluster),
                                       ("kubeconfig_path", self.kubeconfig_path),
                                       ("kubeconfig", self.kubeconfig)) if on]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} are mutually exclusive; set one of them")
        if self.in_cluster and self.context:  # the pod's own credentials have no contexts
            raise ValueError(f"context {self.context!r} names a kubeconfig's context, and "
                             "in_cluster uses the pod's ServiceAccount instead: unset one")
        if self.endpoint_mode == "ingress" and not self.ingress_url_template:
            raise ValueError("endpoint_mode 'ingress' needs ingress_url_template, e.g. "
                             "'https://{cluster}-{port}.ray.example.com'")
        if self.ingress_url_template:
            _check_ingress(self.ingress_url_template)
        # A URL setting of another mode would be accepted and never used: an operator who set
        # it believes the clusters are reached (or linked) through it.
        if self.ingress_url_template and self.endpoint_mode != "ingress":
            raise ValueError(f"ingress_url_template is used only with endpoint_mode 'ingress', "
                             f"and endpoint_mode is {self.endpoint_mode!r}: set endpoint_mode "
                             "to 'ingress', or unset ingress_url_template")
        if self.proxy_link_base and self.endpoint_mode in ("dns", "ingress"):
            raise ValueError(f"proxy_link_base is used only with endpoint_mode 'proxy' (or "
                             f"'auto' outside a pod), and endpoint_mode is "
                             f"{self.endpoint_mode!r}: unset proxy_link_base, or set "
                             "endpoint_mode to 'proxy'")
        return self

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> KubeConfig:
        """``EPHEMERAL_K8S_*`` variables (or Airflow's ``[ephemeral] k8s_*``, see
        ``ephemeral.settings``); in a pod without any kubeconfig, the service account. A bad
        value fails naming where it came from."""
        from ephemeral.settings import Found, as_flag, file_path, lookup, refuse_unread_variant

        env = os.environ if environ is None else environ
        named: dict[str, str] = {}  # field: it and the setting it came from, for errors

        def read(field: str, found: Found) -> str | None:
            named[field] = field if found.source == "default" else f"{field} ({found.source})"
            return found.value

        def checked(field: str, parse: Callable[[], T]) -> T:
            """A setting read by the settings' rule (a path, a flag), refused as the config's
            other bad values are: BackendMisconfigured naming the field and where it was set."""
            try:
                return parse()
            except SettingError as err:
                raise BackendMisconfigured("invalid Kubernetes settings: " + "; ".join(
                    f"{named.get(field, field)}: {msg}" for _, msg in err.problems)) from None

        fields: dict[str, Any] = {
            # Absolute, by the path settings' rule: each process (worker, triggerer, run-end
            # listener, reaper) would read a relative one from its own working directory.
            "kubeconfig_path": read("kubeconfig_path", lookup("kubeconfig", environ)) and str(
                checked("kubeconfig_path", functools.partial(file_path, "kubeconfig", environ))),
            "kubeconfig": read("kubeconfig", lookup("kubeconfig_content", environ)),
            "context": read("context", lookup("k8s_context", environ)),
            "namespace": read("namespace", lookup("k8s_namespace", environ)) or "default",
            "cluster_domain": read("cluster_domain",
                                   lookup("k8s_cluster_domain", environ)) or "cluster.local",
            "ingress_url_template": read("ingress_url_template",
                                         lookup("k8s_ingress_url_template", environ)),
            "proxy_link_base": read("proxy_link_base", lookup("k8s_proxy_link_base", environ)),
        }
        for key in ("spark_mode", "spark_service_account", "endpoint_mode", "client_selector",
                    "client_cidrs"):
            if value := read(key, lookup(f"k8s_{key}", environ)):
                fields[key] = value
        for key in ("in_cluster", "http_check", "verify_ssl"):
            # settings' one rule: a blank value (" ", an empty Helm value) is refused, not false,
            # which for verify_ssl would send the tokens over unverified TLS.
            if (found := lookup(f"k8s_{key}", environ)).value is not None:
                read(key, found)
                fields[key] = checked(key, functools.partial(as_flag, found))
        if environ is None and not (fields["kubeconfig_path"] or fields["kubeconfig"]
                                    or fields.get("in_cluster") or env.get("KUBECONFIG")):
            # No credentials given but a kubeconfig_content_secret only Airflow resolves: the
            # defaults below would reach another cluster (or none) without a word.
            checked("kubeconfig", functools.partial(refuse_unread_variant,
                                                    "kubeconfig_content"))
        if "in_cluster" not in fields:
            # A pod with no kubeconfig given talks to its own cluster as its service account;
            # a context given names one of a kubeconfig (the default ~/.kube/config).
            fields["in_cluster"] = bool(env.get("KUBERNETES_SERVICE_HOST")) and not (
                fields["kubeconfig_path"] or fields["kubeconfig"] or env.get("KUBECONFIG")
                or fields["context"])
        try:
            return cls(**fields)
        except ValidationError as exc:  # named, not shown: pydantic would echo a secret value
            every = ", ".join(n for f, n in named.items() if n != f) or "the k8s_* settings"
            raise BackendMisconfigured("invalid Kubernetes settings: " + "; ".join(
                f"{named.get(str(e['loc'][0]), e['loc'][0]) if e['loc'] else every}: "
                f"{e['msg']}" for e in exc.errors(include_input=False))) from None

    def resolved_endpoint_mode(self, environ: Mapping[str, str] | None = None) -> ResolvedMode:
        """``endpoint_mode`` with ``auto`` decided for this process: a pod (the in-cluster
        credentials, or Kubernetes' own ``KUBERNETES_SERVICE_HOST``) resolves Service DNS names;
        anything else reaches the clusters through the API server. Decided where it is used, so
        a config serialized into a trigger decides again in the triggerer."""
        if self.endpoint_mode != "auto":
            return self.endpoint_mode
        env = os.environ if environ is None else environ
        return "dns" if self.in_cluster or env.get("KUBERNETES_SERVICE_HOST") else "proxy"

    def ingress_url(self, *, cluster: str, service: str, port: str) -> str:
        assert self.ingress_url_template is not None
        return self.ingress_url_template.format(cluster=cluster, namespace=self.namespace,
                                                service=service, port=port).rstrip("/")


# How a URL setting keeps credentials out of itself: they would reach the handle's endpoints
# (XCom, task logs, extra links) and every error that shows the setting.
_URL_FIX = ("keep credentials out of the URL: the platform's ingress or proxy authenticates "
            "by headers (ephemeral sends the cluster's Ray token in them) or by a network "
            "policy, never by a user-info or a signed URL")


def url_setting_problem(setting: str, url: str) -> str | None:
    """``ephemeral.backends.http.url_setting_problem`` with the Kubernetes URL settings' fix."""
    from ephemeral.backends.http import url_setting_problem as problem

    return problem(setting, url, _URL_FIX)


def _check_ingress(template: str) -> None:
    """An ingress URL carries the cluster's Ray token: https, unless it stays on this host (a
    port-forward), and no credentials of its own. The placeholders are known names only. The
    template is shown masked (``masked_uri``): a refusal must not spread a password in it."""
    from ephemeral.backends.http import in_clear_off_host
    from ephemeral.specs.pip_credentials import masked_uri

    setting = "ingress_url_template"
    if problem := url_setting_problem(setting, template):
        raise ValueError(problem)
    try:
        url = template.format(cluster="c", namespace="ns", service="s", port="1")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{setting} {masked_uri(template)!r}: {exc!r} is no placeholder; use "
                         "{cluster}, {namespace}, {service} and {port}") from None
    if in_clear_off_host(url):
        raise ValueError(f"{setting} {masked_uri(template)!r}: requests through it carry the "
                         "cluster's Ray token, so it must be an https URL (plain http only to "
                         "this host, e.g. a port-forward)")


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` as a dict (what ``kubectl --selector`` takes, equality only)."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"{part!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def config_problems(exc: Any) -> str:
    """A pydantic ValidationError of the Kubernetes settings, field by field."""
    return field_problems(exc, "config")
