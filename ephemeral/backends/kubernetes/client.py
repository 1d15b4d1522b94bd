"""The one module that imports ``kubernetes``: dict-in, dict-out API calls and their errors.

Objects stay plain JSON dicts (what the renderers make, what the server returns). Grouped
resources (``ray.io``, ``apps``) go through ``CustomObjectsApi``, whose bodies are untyped; the
core ``/api/v1`` resources go through the same ApiClient with a raw request, because the typed
``CoreV1Api`` methods re-validate bodies client-side (pydantic) and would refuse or reshape them
before the server's strict field validation sees them.

Every ``ApiException`` and transport error becomes an ``ephemeral.errors`` type in ``_errors``.

``watch`` streams changes through ``kubernetes.watch.Watch`` (for core resources too, over a raw
request shaped like a generated list method), so waits need no polling; a Role without the
``watch`` verb (403) or a server without watch (405) raises ``Forbidden`` / ``WatchUnsupported``
and the caller polls instead.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ephemeral.backends.kubernetes.config import KubeConfig
from ephemeral.errors import BackendError, BackendUnavailable, SpecError


@dataclass(frozen=True)
class Kind:
    """One API resource: where it lives and what it is called."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """``rayclusters.ray.io``, ``deployments.apps``, ``pods``: as RBAC rules name it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RAYCLUSTER = Kind("ray.io", "v1", "rayclusters", "RayCluster")
SPARKCONNECT = Kind("sparkoperator.k8s.io", "v1alpha1", "sparkconnects", "SparkConnect")
DEPLOYMENT = Kind("apps", "v1", "deployments", "Deployment")
STATEFULSET = Kind("apps", "v1", "statefulsets", "StatefulSet")
SERVICE = Kind("", "v1", "services", "Service")
CONFIGMAP = Kind("", "v1", "configmaps", "ConfigMap")
POD = Kind("", "v1", "pods", "Pod")
EVENT = Kind("", "v1", "events", "Event")
SECRET = Kind("", "v1", "secrets", "Secret")
NETWORKPOLICY = Kind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
SERVICE_PROXY = Kind("", "v1", "services/proxy", "Service")
"""The service proxy subresource, as RBAC names it (``get`` for GET, ``create`` for POST)."""
KINDS = (RAYCLUSTER, SPARKCONNECT, DEPLOYMENT, STATEFULSET, SERVICE, CONFIGMAP, POD, EVENT, SECRET,
         NETWORKPOLICY)
_BY_TYPE = {(k.api_version, k.kind): k for k in KINDS}


def kind_of(obj: dict[str, Any]) -> Kind:
    try:
        return _BY_TYPE[(obj["apiVersion"], obj["kind"])]
    except KeyError:
        raise BackendError(f"the Kubernetes backend does not manage "
                           f"{obj.get('apiVersion')}/{obj.get('kind')} objects") from None


def name_of(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["name"])


class Forbidden(BackendError):
    """The API server refused a verb on a resource (RBAC). Retrying does not help."""

    def __init__(self, message: str, *, verb: str, resource: str, namespace: str) -> None:
        self.verb = verb
        self.resource = resource
        self.namespace = namespace
        super().__init__(message)


class OperatorMissing(BackendUnavailable):
    """A CRD is not installed: the platform must install its operator (helm)."""

    retryable = False


class KubeRayMissing(OperatorMissing):
    """The RayCluster CRD is not installed: the platform must install KubeRay (helm)."""


class SparkOperatorMissing(OperatorMissing):
    """The SparkConnect CRD is not installed: the platform must install the spark-operator."""


class AlreadyExists(BackendError):
    """Internal to create(): the object is there already (409)."""


class Replaced(BackendError):
    """Internal to delete(): the object of that name is not the one the caller read (its uid
    precondition failed, 409): another object was made under the name since."""


class WatchUnsupported(BackendError):
    """The server does not serve watch for this resource (405): poll instead."""


class WatchExpired(BackendUnavailable):
    """A watch from a caller's resourceVersion met 410 Gone: list again, then watch from it."""


GONE = 410
REQUEST_TIMEOUT = 408


def refused(exc: BaseException) -> bool:
    """Whether a request failed because the API server refused it (a 4xx answer other than
    408): nothing was stored. Any other failure (a 5xx such as etcd's timeout or a load
    balancer's 504, a lost connection, an interrupt) may come after the server stored it."""
    status = getattr(exc.__cause__, "status", None)  # the ApiException ``_errors`` translated
    return isinstance(status, int) and 400 <= status < 500 and status != REQUEST_TIMEOUT
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass(frozen=True)
class _Op:
    verb: str
    kind: Kind
    namespace: str
    name: str | None = None

    def describe(self) -> str:
        target = f"{self.kind.resource} {self.name!r}" if self.name else self.kind.resource
        return f"{self.verb} {target} in namespace {self.namespace!r}"


_NOT_INSTALLED = "the server could not find the requested resource"


def _status(exc: Any) -> dict[str, Any]:
    """The Status object a Kubernetes API error carries in its body (empty when it has none)."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _translate(exc: Any, op: _Op) -> Exception:
    """An ephemeral error for an ApiException raised while doing ``op``."""
    code = int(exc.status or 0)
    status = _status(exc)
    message = str(status.get("message") or exc.reason or "no message")
    if code == 403 and "exceeded quota" in message:
        return BackendUnavailable(
            f"a ResourceQuota of namespace {op.namespace!r} refused to {op.describe()}: "
            f"{message}; raise the quota or wait for other clusters to be deleted")
    if code == 403 and "being terminated" in message:
        return BackendError(f"cannot {op.describe()}: the namespace is being deleted "
                            f"({message}); use another namespace or recreate it")
    if code == 403:
        return Forbidden(
            f"forbidden: the Kubernetes identity in use cannot {op.verb} {op.kind.resource} in "
            f"namespace {op.namespace!r}; grant verb {op.verb!r} on resource "
            f"{op.kind.plural!r} of API group {op.kind.group!r} (a Role bound to the Airflow "
            f"service account, as in compose/k8s/rbac.yaml). Server said: {message}",
            verb=op.verb, resource=op.kind.resource, namespace=op.namespace)
    if code == 401:
        return BackendUnavailable(f"unauthorized: the API server rejected the credentials "
                                  f"while trying to {op.describe()}: {message}")
    if code == 404 and (not status.get("details", {}).get("name") or message == _NOT_INSTALLED):
        if op.kind is RAYCLUSTER:
            return KubeRayMissing(
                "KubeRay is not installed (CRD rayclusters.ray.io not found): install the "
                "kuberay-operator helm chart in this cluster; tasks never install it")
        if op.kind is SPARKCONNECT:
            return SparkOperatorMissing(
                "the Kubeflow spark-operator is not installed (CRD sparkconnects."
                "sparkoperator.k8s.io not found): install its helm chart (2.5 or newer) watching "
                f"namespace {op.namespace!r}, or run Spark specs in standalone mode "
                "(kubernetesMode: standalone, EPHEMERAL_K8S_SPARK_MODE=standalone)")
        return BackendUnavailable(f"the API server does not serve {op.kind.resource} "
                                  f"({op.describe()}): {message}")
    if code in (400, 422):
        causes = status.get("details", {}).get("causes") or []
        problems = [(str(c.get("field", "")), str(c.get("message", ""))) for c in causes]
        return SpecError(f"{op.kind.kind} {op.name or ''} (refused by the API server: "
                         f"{message})".replace("  ", " "), problems or [("", message)])
    if code == 429 or code >= 500:
        return BackendUnavailable(f"the API server failed to {op.describe()} "
                                  f"(HTTP {code}): {message}")
    return BackendError(f"could not {op.describe()} (HTTP {code}): {message}")


@contextlib.contextmanager
def _errors(op: _Op) -> Iterator[None]:
    """The one place where foreign errors become ``ephemeral.errors``."""
    import urllib3.exceptions
    from kubernetes.client.exceptions import ApiException

    try:
        yield
    except ApiException as exc:
        raise _translate(exc, op) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise BackendUnavailable(f"cannot reach the Kubernetes API server to {op.describe()}: "
                                 f"{type(exc).__name__}: {exc}") from exc


class KubeClient:
    """Namespaced create/get/list/delete of plain-dict objects."""

    def __init__(self, config: KubeConfig, api_client: Any = None) -> None:
        self.config = config
        self.namespace = config.namespace
        self._api = api_client

    def in_namespace(self, namespace: str) -> KubeClient:
        """The same connection, another namespace (handles name the namespace they live in)."""
        if namespace == self.namespace:
            return self
        other = KubeClient(self.config.model_copy(update={"namespace": namespace}), self._api)
        if self._api is None:
            other._api = self.api
        return other

    @property
    def api(self) -> Any:
        if self._api is None:
            self._api = build_api_client(self.config)
        return without_redirects(self._api)

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    # -- verbs ---------------------------------------------------------------------------------

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create with strict field validation; raises ``AlreadyExists`` on 409."""
        kind = kind_of(obj)
        op = _Op("create", kind, self.namespace, name_of(obj))
        from kubernetes.client.exceptions import ApiException

        with _errors(op):
            try:
                if kind.group:
                    return dict(self._custom().create_namespaced_custom_object(
                        kind.group, kind.version, self.namespace, kind.plural, obj,
                        field_validation="Strict", _request_timeout=self._timeout))
                return self._core("POST", kind, query=[("fieldValidation", "Strict")], body=obj)
            except ApiException as exc:
                if exc.status == 409:
                    raise AlreadyExists(_status(exc).get("message", "exists")) from exc
                raise

    def get(self, kind: Kind, name: str) -> dict[str, Any] | None:
        """The object, or None when there is none."""
        from kubernetes.client.exceptions import ApiException

        with _errors(_Op("get", kind, self.namespace, name)):
            try:
                if kind.group:
                    return dict(self._custom().get_namespaced_custom_object(
                        kind.group, kind.version, self.namespace, kind.plural, name,
                        _request_timeout=self._timeout))
                return self._core("GET", kind, name=name)
            except ApiException as exc:
                if exc.status == 404 and _status(exc).get("details", {}).get("name"):
                    return None
                raise

    def list_objects(self, kind: Kind, *, labels: str | None = None,
             fields: str | None = None) -> list[dict[str, Any]]:
        return self._list(kind, labels=labels, fields=fields)[0]

    def _list(self, kind: Kind, *, labels: str | None = None,
              fields: str | None = None) -> tuple[list[dict[str, Any]], str]:
        """The items and the list's resourceVersion (where a watch continues from)."""
        with _errors(_Op("list", kind, self.namespace)):
            if kind.group:
                result = self._custom().list_namespaced_custom_object(
                    kind.group, kind.version, self.namespace, kind.plural,
                    label_selector=labels, field_selector=fields,
                    _request_timeout=self._timeout)
            else:
                query = [(k, v) for k, v in (("labelSelector", labels),
                                             ("fieldSelector", fields)) if v]
                result = self._core("GET", kind, query=query)
        version = str((result.get("metadata") or {}).get("resourceVersion") or "")
        return list(result.get("items") or []), version

    def watch(self, kind: Kind, *, labels: str | None = None, name: str | None = None,
              resource_version: str | None = None,
              timeout: float = 60.0) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(type, object)`` for each change of the matching objects, for ``timeout`` seconds
        at most (the generator then ends; stop iterating to stop earlier).

        Without ``resource_version`` the watch lists first: an ADDED for every object there,
        then a BOOKMARK annotated ``k8s.io/initial-events-end`` (so a caller knows when its view
        is complete, even when nothing matches), then the changes. When the server answers
        410 Gone (its history was compacted), it lists afresh and yields the difference to what
        it yielded before (DELETED for objects gone meanwhile) and another BOOKMARK, and goes
        on from there. With a ``resource_version`` it cannot know the caller's view, so a 410
        raises ``WatchExpired``."""
        deadline = time.monotonic() + timeout
        known: dict[str, dict[str, Any]] = {}
        fields = f"metadata.name={name}" if name else None
        version = resource_version
        while True:
            if version is None:
                items, version = self._list(kind, labels=labels, fields=fields)
                yield from _resync(known, items)
                yield "BOOKMARK", {"metadata": {"resourceVersion": version,
                                                "annotations": {INITIAL_EVENTS_END: "true"}}}
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                for type_, obj in self._watch_once(kind, labels, fields, version, left):
                    version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                    if type_ == "DELETED":
                        known.pop(name_of(obj), None)
                    elif type_ in ("ADDED", "MODIFIED"):
                        known[name_of(obj)] = obj
                    yield type_, obj
            except _Expired:
                if resource_version is not None and version == resource_version:
                    raise WatchExpired(f"watch {kind.resource} in namespace "
                                       f"{self.namespace!r}: resourceVersion {version} is too "
                                       "old; list again") from None
                version = None  # restart from a fresh list
                continue
            if deadline - time.monotonic() <= 0:
                return

    def _watch_once(self, kind: Kind, labels: str | None, fields: str | None, version: str,
                    left: float) -> Iterator[tuple[str, dict[str, Any]]]:
        """One watch request, until the server ends it (``timeoutSeconds``) or an error."""
        import urllib3.exceptions
        from kubernetes import watch as kube_watch
        from kubernetes.client.exceptions import ApiException

        untyped: Any = kube_watch  # the watch module is untyped
        watcher = untyped.Watch()
        # timeout_seconds also stops Watch.stream retrying a 410 on its own: we relist instead.
        args: dict[str, Any] = {
            "label_selector": labels, "field_selector": fields, "resource_version": version,
            "timeout_seconds": max(1, math.ceil(left)),
            # (connect, read): the read timeout ends an idle stream at our deadline, not at the
            # server's whole-second timeoutSeconds.
            "_request_timeout": (self._timeout, max(left, 0.05))}
        op = _Op("watch", kind, self.namespace)
        stream = watcher.stream(self._raw_list(kind), **args)
        try:
            while True:
                with _errors(op):
                    try:
                        event = next(stream, None)
                    except urllib3.exceptions.ReadTimeoutError:
                        return  # nothing happened for as long as we wait: the caller decides
                    except ApiException as exc:
                        if exc.status == GONE:
                            raise _Expired from None
                        if exc.status == 405:
                            raise WatchUnsupported(
                                f"the API server does not serve watch on {kind.resource} "
                                f"({_status(exc).get('message') or exc.reason})") from exc
                        raise
                if event is None:
                    return
                yield str(event["type"]), dict(event["raw_object"])
        finally:
            stream.close()

    def delete(self, kind: Kind, name: str, *, uid: str | None = None) -> bool:
        """Foreground delete: the object stays until its dependents are gone. False if missing.
        With ``uid`` (the object as the caller read it), only that object: one made since
        under its name raises ``Replaced`` (the server's uid precondition, 409), untouched."""
        from kubernetes.client import V1DeleteOptions, V1Preconditions
        from kubernetes.client.exceptions import ApiException

        # The policy in the query, as before; the body carries the precondition.
        options = V1DeleteOptions(preconditions=V1Preconditions(uid=uid)) if uid else None
        with _errors(_Op("delete", kind, self.namespace, name)):
            try:
                if kind.group:
                    self._custom().delete_namespaced_custom_object(
                        kind.group, kind.version, self.namespace, kind.plural, name,
                        propagation_policy="Foreground", body=options,
                        _request_timeout=self._timeout)
                else:
                    self._core("DELETE", kind, name=name,
                               query=[("propagationPolicy", "Foreground")],
                               body=self.api.sanitize_for_serialization(options)
                               if options else None)
            except ApiException as exc:
                if exc.status == 404 and _status(exc).get("details", {}).get("name"):
                    return False
                if exc.status == 409 and uid:
                    raise Replaced(f"{kind.kind} {name!r} is not the object of uid {uid} any "
                                   f"more: {_status(exc).get('message', '')}") from None
                raise
        return True

    # -- the service proxy and the credentials behind it -----------------------------------------

    @property
    def server(self) -> str:
        """The API server's URL, as the credentials name it."""
        return str(self.api.configuration.host).rstrip("/")

    def server_proxy(self) -> str | None:
        """The HTTP proxy this client reaches its API server through (its kubeconfig's
        proxy-url, or HTTPS_PROXY as the Kubernetes client reads it unless its NO_PROXY names
        the server), None when direct: the way other HTTP clients to the server's URLs go."""
        import urllib3

        pool = self.api.rest_client.pool_manager
        pool = getattr(pool, "pool", pool)  # under _NoRedirects
        proxy = pool.proxy if isinstance(pool, urllib3.ProxyManager) else None
        return str(proxy.url) if proxy is not None else None

    def proxy_path(self, service: str, port: str) -> str:
        """Where the API server proxies to ``service``'s ``port`` (a name or a number)."""
        return f"/api/v1/namespaces/{self.namespace}/services/{service}:{port}/proxy"

    def bearer(self) -> str | None:
        """The ``Authorization`` value this client sends (``Bearer <token>``), refreshed as the
        client refreshes it (in-cluster tokens rotate); None for client certificates."""
        settings = self.api.configuration.auth_settings().get("BearerToken") or {}
        value = settings.get("value")
        return str(value) if value else None

    def proxy_get(self, service: str, port: str, path: str, *,
                  headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """GET ``path`` of a Service through the API server, with this client's credentials
        (a token, a client certificate, an exec plugin alike): the status and the body of what
        the Service answered, whatever the status. The API server's own refusals (RBAC, bad
        credentials) raise."""
        from kubernetes.client.exceptions import ApiException

        with _errors(_Op("get", SERVICE_PROXY, self.namespace, f"{service}:{port}")):
            path = f"{self.proxy_path(service, port)}/{path.lstrip('/')}"
            try:
                response = self._request("GET", path, headers=headers)
                return int(response.status), bytes(response.data or b"")
            except ApiException as exc:  # what the Service answered, unless the API server refused
                data = exc.body.encode() if isinstance(exc.body, str) else bytes(exc.body or b"")
                if exc.status in (401, 403) and _is_status(data):
                    raise
                if not exc.status:
                    raise
                return int(exc.status), data

    # -- plumbing ------------------------------------------------------------------------------

    def _raw_list(self, kind: Kind) -> Any:
        """A list function ``Watch.stream`` can call, for core and custom kinds alike: it has no
        return type to deserialize into (the events stay dicts, as ``_core`` keeps them), and it
        writes ``watch=true`` itself (kubernetes 36's generated methods send ``watch=True``)."""
        base = f"/apis/{kind.group}" if kind.group else "/api"

        def list_namespaced(*, watch: bool, label_selector: str | None,
                            field_selector: str | None, resource_version: str | None,
                            timeout_seconds: int, _preload_content: bool,
                            _request_timeout: Any) -> Any:
            query = [(k, str(v)) for k, v in (
                ("watch", "true" if watch else None), ("labelSelector", label_selector),
                ("fieldSelector", field_selector), ("resourceVersion", resource_version),
                ("timeoutSeconds", timeout_seconds)) if v]
            return self._request(  # the urllib3 response, streamed line by line
                "GET", f"{base}/{kind.version}/namespaces/{self.namespace}/{kind.plural}",
                query=query, headers={"Accept": "application/json"}, stream=True,
                timeout=_request_timeout)

        return list_namespaced

    @property
    def _timeout(self) -> float:
        return self.config.request_timeout

    def _custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    def _core(self, method: str, kind: Kind, *, name: str | None = None,
              query: list[tuple[str, str]] | None = None,
              body: dict[str, Any] | None = None) -> dict[str, Any]:

        path = f"/api/{kind.version}/namespaces/{self.namespace}/{kind.plural}"
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        response = self._request(method, path + (f"/{name}" if name else ""), query=query,
                                 headers=headers, body=body)
        return dict(json.loads(response.data or b"{}"))

    def _request(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
                 headers: dict[str, str] | None = None, body: Any = None,
                 timeout: Any = None, stream: bool = False) -> Any:
        """A request no generated API method makes, with this client's credentials, on both
        generations of the client's ApiClient: kubernetes 37's param_serialize + call_api, and
        the call_api of 36 and before, which the cncf-kubernetes provider (kubernetes<37) brings.
        A status outside 2xx raises ApiException carrying the body; otherwise the urllib3
        response, its body read (``.data``) unless ``stream``."""
        from kubernetes.client.exceptions import ApiException

        timeout = self._timeout if timeout is None else timeout
        if not hasattr(self.api, "param_serialize"):  # kubernetes <= 36: raises on non-2xx
            response = self.api.call_api(
                path, method, query_params=query or [], header_params=dict(headers or {}),
                body=body, auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=timeout)
            if not stream:
                _ = response.data  # read it all, as 37's path does
            return response
        request = self.api.param_serialize(
            method=method, resource_path=path, query_params=query or [],
            header_params=dict(headers or {}), body=body, auth_settings=["BearerToken"])
        result = self.api.call_api(*request, _request_timeout=timeout)
        ok = 200 <= result.status <= 299
        if not (ok and stream):
            result.read()
        if not ok:
            raise ApiException.from_response(http_resp=result, body=None, data=None)
        return result.response


def _is_status(data: bytes) -> bool:
    """Whether a body is the API server's own ``Status`` (not the proxied service's answer)."""
    try:
        body = json.loads(data or b"{}")
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("kind") == "Status"


class _Expired(Exception):
    """Internal to watch(): 410 Gone, as an HTTP status or an ERROR event."""


def _resync(known: dict[str, dict[str, Any]],
            items: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The events that take a watcher who saw ``known`` to ``items``; updates ``known``."""
    current = {name_of(o): o for o in items}
    for gone in [n for n in known if n not in current]:
        yield "DELETED", known.pop(gone)
    for name, obj in current.items():
        before = known.get(name)
        known[name] = obj
        if before is None:
            yield "ADDED", obj
        elif before["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
            yield "MODIFIED", obj


class _NoRedirects:
    """An ApiClient's urllib3 pool that returns a 3xx as the answer: the API server never
    redirects, and the Services it proxies must not send its bearer token elsewhere
    (``ephemeral.backends.http`` says why). The generated client raises it as ApiException."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def request(self, *args: Any, **kwargs: Any) -> Any:
        return self.pool.request(*args, **kwargs, redirect=False)

    def __getattr__(self, name: str) -> Any:
        if name == "pool":  # not set yet (a copy being made): no recursion into itself
            raise AttributeError(name)
        return getattr(self.pool, name)


def without_redirects(api: Any) -> Any:
    """``api`` (ours or the cncf-kubernetes provider's) with its pool refusing redirects."""
    rest = api.rest_client
    if not isinstance(rest.pool_manager, _NoRedirects):
        rest.pool_manager = _NoRedirects(rest.pool_manager)
    return api


_T = TypeVar("_T")


def _within(seconds: float, call: Callable[[], _T]) -> _T:
    """``call()``, on a daemon thread awaited at most ``seconds``: TimeoutError past them (the
    thread is left to end by itself; a daemon does not keep the process alive)."""
    done = threading.Event()
    out: list[Any] = []

    def run() -> None:
        try:
            out.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller
            out.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name="ephemeral-kube-credentials").start()
    if not done.wait(seconds):
        raise TimeoutError(f"no answer in {seconds:g}s")
    ok, value = out[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def kube_user(config: KubeConfig) -> str:
    """The kubeconfig user ``config``'s context authenticates as, for a message ("?" when it
    cannot be read)."""
    import yaml

    try:
        if config.kubeconfig is not None:
            data = yaml.safe_load(config.kubeconfig.get_secret_value())
        else:
            path = config.kubeconfig_path or os.environ.get(
                "KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]
            data = yaml.safe_load(Path(path).expanduser().read_text())
        name = config.context or data.get("current-context")
        [context] = [c for c in data.get("contexts") or [] if c.get("name") == name]
        return str(context["context"]["user"])
    except Exception:  # noqa: BLE001 - only a message's detail
        return "?"


def _slow_credentials(config: KubeConfig, source: str) -> BackendUnavailable:
    return BackendUnavailable(
        f"loading the Kubernetes credentials of kubeconfig user {kube_user(config)!r} "
        f"({source}) took over {config.request_timeout:g}s (request_timeout): its exec "
        "credential plugin does not answer; run it by hand (kubectl get --raw /version) to see "
        "what it waits for (a login prompt, an unreachable identity provider)")


def build_api_client(config: KubeConfig) -> Any:
    """An ApiClient for ``config``: in-cluster, a kubeconfig file, or kubeconfig content.

    Loading credentials may run the kubeconfig user's exec plugin (``aws eks get-token``,
    ``gke-gcloud-auth-plugin``), at load and again whenever its token expires, and the
    Kubernetes client waits for it without a timeout: both waits are bounded by
    ``request_timeout`` here (``_within``), a hung plugin reported as BackendUnavailable."""
    import yaml
    from kubernetes import client
    from kubernetes import config as untyped_config
    from kubernetes.config.config_exception import ConfigException

    kube_config: Any = untyped_config  # the loaders are untyped

    configuration = client.Configuration()
    source = ("in-cluster service account" if config.in_cluster else
              "kubeconfig content" if config.kubeconfig is not None else
              f"kubeconfig {config.kubeconfig_path or '(default location)'}")

    def load() -> None:
        if config.in_cluster:
            kube_config.load_incluster_config(client_configuration=configuration)
        elif config.kubeconfig is not None:
            data = yaml.safe_load(config.kubeconfig.get_secret_value())
            kube_config.load_kube_config_from_dict(
                data, context=config.context, client_configuration=configuration,
                persist_config=False)
        else:
            kube_config.load_kube_config(
                config_file=config.kubeconfig_path, context=config.context,
                client_configuration=configuration, persist_config=False)

    try:
        _within(config.request_timeout, load)
    except TimeoutError:
        raise _slow_credentials(config, source) from None
    except (ConfigException, yaml.YAMLError, OSError, TypeError) as exc:
        # The exception text of a bad kubeconfig can quote its content: keep it out.
        if config.kubeconfig is not None:
            raise BackendUnavailable(f"cannot load Kubernetes credentials from {source}") from None
        raise BackendUnavailable(f"cannot load Kubernetes credentials from {source}: {exc}") \
            from exc
    configuration.verify_ssl = config.verify_ssl
    if (refresh := configuration.refresh_api_key_hook) is not None:  # an expiring token's

        def bounded_refresh(conf: Any) -> None:
            try:
                _within(config.request_timeout, lambda: refresh(conf))
            except TimeoutError:
                raise _slow_credentials(config, source) from None

        configuration.refresh_api_key_hook = bounded_refresh
    return client.ApiClient(configuration)
