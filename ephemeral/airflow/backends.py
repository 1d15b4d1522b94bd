"""Which backend an Airflow task uses, and as which deployment instance: by name, through an
``ephemeral`` connection (backend, namespace, instance, the Kubernetes connection to use), or
through a ``kubernetes`` connection, which the cncf-kubernetes provider's ``KubernetesHook``
reads (one parser of its fields: the provider's). Tasks and triggers pass connection ids
around, never credentials: the triggerer looks the connection up again itself."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ephemeral.backends import get_backend
from ephemeral.errors import BackendMisconfigured, EphemeralError
from ephemeral.settings import INSTANCE_PATTERN, setting
from ephemeral.specs.identity import current_instance

if TYPE_CHECKING:
    from ephemeral.backends import ClusterBackend
    from ephemeral.backends.kubernetes import KubeConfig

CONN_TYPE = "ephemeral"
KUBERNETES_CONN_TYPE = "kubernetes"
BACKENDS = ("local", "kubernetes")
PROVIDER_MISSING = (
    "kubernetes connections are read by the cncf-kubernetes provider, which is not installed: "
    "pip install 'airflow-provider-ephemeral[kubernetes]' "
    "(apache-airflow-providers-cncf-kubernetes)")

# Settings a kubernetes connection has no field for, in its extras under this prefix: how cluster
# URLs are built when Airflow runs outside the cluster, and who the clusters' NetworkPolicies
# admit.
OUR_PREFIX = "ephemeral_"
log = logging.getLogger(__name__)
OUR_FIELDS = {"endpoint_mode", "ingress_url_template", "http_check", "cluster_domain",
              "proxy_link_base", "client_selector", "client_cidrs", "spark_mode",
              "spark_service_account"}
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# The provider's hook loads a kubeconfig into the kubernetes client's process-wide default
# configuration and copies it into the ApiClient it returns: two loads at once (triggers resolve
# connections in threads) could mix two connections' credentials.
_HOOK_LOCK = threading.Lock()


HIDDEN_FIELDS = ["host", "schema", "login", "password", "port", "extra"]
CONN_FIELDS: dict[str, dict[str, Any]] = {
    "backend": {
        "label": "Backend",
        "description": "local (processes on the worker) or kubernetes (KubeRay RayClusters, "
                       "Spark Deployments). Empty: kubernetes when a Kubernetes connection is "
                       "set, else EPHEMERAL_BACKEND.",
        "schema": {"type": ["string", "null"], "enum": [None, *BACKENDS]},
    },
    "namespace": {
        "label": "Namespace",
        "description": "Where the clusters live (kubernetes). Empty: the Kubernetes "
                       "connection's namespace, else default.",
        "schema": {"type": ["string", "null"]},
    },
    "instance": {
        "label": "Deployment instance",
        "description": "The deployment the clusters belong to (their owner label and name "
                       "digest). Empty: EPHEMERAL_INSTANCE, else derived from AIRFLOW_HOME.",
        "schema": {"type": ["string", "null"]},
    },
    "kubernetes_conn_id": {
        "label": "Kubernetes connection",
        "description": "The id of a kubernetes connection (cncf-kubernetes provider) that "
                       "reaches the API server. Empty: EPHEMERAL_K8S_* settings, or the pod's "
                       "service account.",
        "schema": {"type": ["string", "null"]},
    },
}
CONNECTION_TYPE: dict[str, Any] = {
    "hook-class-name": "ephemeral.airflow.hooks.EphemeralHook",
    "hook-name": "Ephemeral clusters",
    "connection-type": CONN_TYPE,
    "conn-fields": CONN_FIELDS,
    "ui-field-behaviour": {"hidden-fields": HIDDEN_FIELDS},
}
"""The provider info's ``connection-types`` entry: the connection form (Airflow 3.2+ reads
it from there without importing the hook, whose module imports Airflow)."""


class ConnectionInvalid(BackendMisconfigured):
    """A connection or task setting that cannot work as given: a retry would fail the same."""


@dataclass(frozen=True)
class EphemeralConnection:
    """The fields of an ``ephemeral`` connection, kept in its extras (the connection form's
    widgets write them there)."""

    conn_id: str
    backend: str | None = None
    namespace: str | None = None
    instance: str | None = None
    kubernetes_conn_id: str | None = None

    FIELDS = ("backend", "namespace", "instance", "kubernetes_conn_id")

    @classmethod
    def from_extra(cls, conn_id: str, extra: dict[str, Any]) -> EphemeralConnection:
        # Forms of Airflow before 2.3 wrote extras as extra__<type>__<field>; accept both.
        legacy = f"extra__{CONN_TYPE}__"
        fields = {k.removeprefix(legacy): v for k, v in extra.items()}
        unknown = sorted(set(fields) - set(cls.FIELDS))
        if unknown:
            raise ConnectionInvalid(f"connection {conn_id!r}: unknown field "
                                     f"{', '.join(unknown)}; known: {', '.join(cls.FIELDS)}")
        values: dict[str, str | None] = {}
        for name in cls.FIELDS:
            value = fields.get(name)
            if value is not None and not isinstance(value, str):
                raise ConnectionInvalid(f"connection {conn_id!r}: {name} must be text, got "
                                         f"{type(value).__name__}")
            values[name] = (value.strip() or None) if value else None
        conn = cls(conn_id=conn_id, **values)
        conn.check()
        return conn

    def check(self) -> None:
        where = f"connection {self.conn_id!r}"
        if self.backend is not None and self.backend not in BACKENDS:
            raise ConnectionInvalid(f"{where}: backend {self.backend!r} is not one of "
                                     f"{', '.join(BACKENDS)}")
        if self.backend == "local" and (self.namespace or self.kubernetes_conn_id):
            raise ConnectionInvalid(f"{where}: namespace and kubernetes_conn_id are for the "
                                     "kubernetes backend; clear them or set backend kubernetes")
        if self.namespace is not None and not _NAMESPACE.fullmatch(self.namespace):
            raise ConnectionInvalid(f"{where}: namespace {self.namespace!r} is not a "
                                     "Kubernetes namespace name (lowercase letters, digits, "
                                     "'-', at most 63)")
        # The rule EPHEMERAL_INSTANCE follows: the reaper and `ephemeral down` of that instance
        # must be able to run as it.
        if self.instance is not None and not INSTANCE_PATTERN.fullmatch(self.instance):
            raise ConnectionInvalid(f"{where}: instance {self.instance!r} must be 1-40 "
                                     "characters of lower-case letters, digits and '-', "
                                     "starting and ending alphanumeric, e.g. 'staging'")


@dataclass(frozen=True)
class Target:
    """What a task reaches: the backend, the deployment instance whose clusters it makes and
    finds, and the connection id its handles record so that the teardown and the triggerer
    resolve the same backend again (None: the backend by name)."""

    backend: ClusterBackend
    instance: str
    connection: str | None


def resolve(backend: str | None = None, conn_id: str | None = None,
            kubernetes_conn_id: str | None = None) -> Target:
    """The target of a task given its ``backend``, ``conn_id`` (an ``ephemeral`` connection, or
    a ``kubernetes`` one) and ``kubernetes_conn_id``. Settings given twice must agree. A task
    that names no connection (and no backend but Kubernetes) reaches the deployment's
    ``kubernetes_conn_id``: where the run-end cleanup and the reaper look for its clusters."""
    kubernetes_conn_id = kubernetes_conn_id or deployment_connection(backend, conn_id)
    eph: EphemeralConnection | None = None
    if conn_id:
        conn = _connection(conn_id)
        if conn.conn_type == KUBERNETES_CONN_TYPE:
            if kubernetes_conn_id and kubernetes_conn_id != conn_id:
                raise ConnectionInvalid(f"conn_id {conn_id!r} and kubernetes_conn_id "
                                         f"{kubernetes_conn_id!r} are two kubernetes "
                                         "connections: give one")
            kubernetes_conn_id = conn_id
        elif conn.conn_type == CONN_TYPE:
            eph = EphemeralConnection.from_extra(conn_id, conn.extra_dejson)
        else:
            raise ConnectionInvalid(f"connection {conn_id!r} is of type {conn.conn_type!r}; "
                                     f"conn_id takes an {CONN_TYPE!r} (or a "
                                     f"{KUBERNETES_CONN_TYPE!r}) connection")
    namespace = None
    instance = current_instance()
    recorded = kubernetes_conn_id
    if eph is not None:
        if backend and eph.backend and backend != eph.backend:
            raise ConnectionInvalid(f"backend {backend!r} but connection {eph.conn_id!r} says "
                                     f"{eph.backend!r}: drop one of them")
        if kubernetes_conn_id and eph.kubernetes_conn_id and (
                kubernetes_conn_id != eph.kubernetes_conn_id):
            raise ConnectionInvalid(f"kubernetes_conn_id {kubernetes_conn_id!r} but connection "
                                     f"{eph.conn_id!r} uses {eph.kubernetes_conn_id!r}: drop "
                                     "one of them")
        backend = backend or eph.backend
        kubernetes_conn_id = eph.kubernetes_conn_id or kubernetes_conn_id
        namespace = eph.namespace
        instance = eph.instance or instance
        recorded = eph.conn_id
    if kubernetes_conn_id or namespace:
        if backend not in (None, "kubernetes"):
            what = (f"kubernetes_conn_id={kubernetes_conn_id!r}" if kubernetes_conn_id
                    else f"namespace {namespace!r}")
            raise ConnectionInvalid(f"{what} is set but backend is {backend!r}: drop one of "
                                     "them")
        return Target(kubernetes_backend(kubernetes_conn_id, namespace), instance, recorded)
    return Target(get_backend(backend), instance, recorded)


def deployment_connection(backend: str | None, conn_id: str | None) -> str | None:
    """The connection a task that names none (and no backend but Kubernetes) reaches: the
    deployment's ``[ephemeral] kubernetes_conn_id``, where the run-end cleanup and the reaper
    look for its clusters. None for a task that names its own."""
    if backend in (None, "kubernetes") and not conn_id:
        return setting("kubernetes_conn_id") or None
    return None


def task_backend(name: str | None, connection: str | None = None) -> ClusterBackend:
    """The backend of ``resolve(name, connection)``: ``connection`` is what a handle records,
    an ``ephemeral`` or a ``kubernetes`` connection id."""
    return resolve(name, connection).backend


def instance_of(conn_id: str | None) -> str:
    """The deployment instance the tasks of a connection act as: an ``ephemeral``
    connection's ``instance``, else this deployment's."""
    conn = _known(conn_id)
    if conn is not None and conn.conn_type == CONN_TYPE:
        instance = EphemeralConnection.from_extra(str(conn_id), conn.extra_dejson).instance
        if instance:
            return instance
    return current_instance()


def same_connection(conn_id: str) -> set[str]:
    """The ids a task may name for what ``conn_id`` reaches: itself, and for an ``ephemeral``
    connection the ``kubernetes`` connection it uses."""
    conn = _known(conn_id)
    if conn is not None and conn.conn_type == CONN_TYPE:
        eph = EphemeralConnection.from_extra(conn_id, conn.extra_dejson)
        if eph.kubernetes_conn_id:
            return {conn_id, eph.kubernetes_conn_id}
    return {conn_id}


def _connection(conn_id: str) -> Any:
    from airflow.sdk import BaseHook

    return BaseHook.get_connection(conn_id)


def _known(conn_id: str | None) -> Any:
    """The connection, or None when there is none by that id (checks that compare settings
    must not fail on a lookup: resolving the backend reports a missing connection)."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    if not conn_id:
        return None
    try:
        return _connection(conn_id)
    except AirflowNotFoundException:
        return None


def kubernetes_backend(kubernetes_conn_id: str | None, namespace: str | None = None
                       ) -> ClusterBackend:
    """A Kubernetes backend through a ``kubernetes`` connection (the provider's
    ``KubernetesHook`` makes the API client: ``in_cluster``, ``kube_config_path``,
    ``kube_config``, ``cluster_context``, ``disable_verify_ssl``...), with our settings from its
    ``ephemeral_*`` extras; without a connection, from ``EPHEMERAL_K8S_*``. ``namespace``
    (an ``ephemeral`` connection's) wins over the connection's own."""
    from ephemeral.backends.kubernetes import KubeConfig, KubernetesBackend
    from ephemeral.backends.kubernetes.client import KubeClient

    if not kubernetes_conn_id:
        config = KubeConfig.from_env()
        if namespace:
            config = config.model_copy(update={"namespace": namespace})
        return KubernetesBackend(config)
    try:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    except ImportError as err:
        raise ConnectionInvalid(PROVIDER_MISSING) from err
    hook = KubernetesHook(conn_id=kubernetes_conn_id)
    extra: dict[str, Any] = hook.conn_extras
    # Older Airflow forms saved every extra as extra__kubernetes__<name>: read as <name>.
    plain = {k.removeprefix("extra__kubernetes__"): v for k, v in extra.items()}
    ours = {k.removeprefix(OUR_PREFIX): v for k, v in plain.items() if k.startswith(OUR_PREFIX)}
    unknown = sorted(set(ours) - OUR_FIELDS)
    if unknown:
        raise ConnectionInvalid(
            f"connection {kubernetes_conn_id!r}: unknown extra "
            f"{', '.join(OUR_PREFIX + k for k in unknown)}; known: "
            f"{', '.join(OUR_PREFIX + k for k in sorted(OUR_FIELDS))}")
    api = _api_client(hook, kubernetes_conn_id, secret_content=bool(
        extra.get("kube_config") or extra.get("extra__kubernetes__kube_config")))
    config = _config(kubernetes_conn_id, {
        "in_cluster": bool(hook.is_in_cluster),
        "namespace": namespace or hook.get_namespace() or "default",
        "verify_ssl": bool(api.configuration.verify_ssl), **ours})
    # The namespace compared is the kubernetes connection's own, not an ephemeral one's.
    _settings_not_used(kubernetes_conn_id, config.model_copy(
        update={"namespace": hook.get_namespace() or "default"}))
    return KubernetesBackend(config, client=KubeClient(config, api))


def _settings_not_used(conn_id: str, config: KubeConfig) -> None:
    """Warn of EPHEMERAL_K8S_* settings that say otherwise than the connection in use: a
    connection's extras are the whole config, so a NetworkPolicy's clients or a Spark mode set
    there silently did not apply."""
    from ephemeral.backends.kubernetes import KubeConfig
    from ephemeral.settings import lookup

    try:
        settings = KubeConfig.from_env()
    except EphemeralError:  # they are not used here: their own errors are not this task's
        return
    differ = [source for field in sorted(OUR_FIELDS | {"namespace"})
              if (source := lookup(f"k8s_{field}").source) != "default"
              and getattr(settings, field) != getattr(config, field)]
    if differ:
        log.warning("connection %r is used, so %s (set otherwise) do not apply: set them as "
                    "its ephemeral_* extras (namespace: its own), or unset them", conn_id,
                    ", ".join(differ))


def _api_client(hook: Any, conn_id: str, *, secret_content: bool) -> Any:
    try:
        with _HOOK_LOCK:
            return hook.get_conn()
    except Exception as err:  # the loaders raise many types; all mean "cannot load"
        if secret_content:  # the loaders' messages can quote a kubeconfig's content
            raise ConnectionInvalid(f"connection {conn_id!r}: cannot load Kubernetes "
                                     f"credentials from its kube_config ({type(err).__name__})"
                                     ) from None
        raise ConnectionInvalid(f"connection {conn_id!r}: cannot load Kubernetes credentials: "
                                 f"{err}") from err


def _config(conn_id: str, fields: dict[str, Any]) -> KubeConfig:
    from pydantic import ValidationError

    from ephemeral.backends.kubernetes import KubeConfig
    from ephemeral.backends.kubernetes.config import config_problems

    try:
        return KubeConfig(**fields)
    except ValidationError as exc:
        raise ConnectionInvalid(f"connection {conn_id!r}: invalid settings: "
                                f"{config_problems(exc)}") from None
