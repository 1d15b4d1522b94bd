"""The HTTP side of the mock: kmock serves the requests; the verbs below keep the store and
answer like the real API server (status codes, Status bodies, 201 on create, watches as a
chunked stream of JSON lines fed by the store's changes).

The service proxy (``/api/v1/namespaces/<ns>/services/<svc>:<port>/proxy/<path>``) is served
too, as kube-apiserver does it: the request is authenticated (the bearer token), authorized as
verb ``get`` (GET) or ``create`` (POST) on ``services/proxy``, its ``Authorization`` header is
removed (WithAuthentication drops it once it has authenticated the caller), and the rest goes to
the Service's port, played by ``web.Dashboards``."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import kmock
import yaml

from tests.kubernetes.apiserver.store import (
    RESOURCES,
    Change,
    Resource,
    SelectorError,
    Store,
    parse_field_selector,
    parse_label_selector,
)
from tests.kubernetes.apiserver.web import Dashboards

Validator = Callable[[dict[str, Any]], list[str]]
NOT_INSTALLED = "the server could not find the requested resource"
PROXY = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/services/(?P<svc>[^/:]+)(:(?P<port>[^/]+))?"
                   r"/proxy(?P<rest>/.*)?")
ACCESS_REVIEW = re.compile(r"/apis/authorization\.k8s\.io/v1/selfsubjectaccessreviews/?")


def status(code: int, reason: str, message: str, **details: Any) -> kmock.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "details": details, "code": code}
    return kmock.Response(status=code, payload=body)


@attrs.define(kw_only=True)
class _Handler(kmock.KubernetesScaffold):
    api: ApiServer

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[PROXY] << self.api.serve_proxy  # before the verbs: a proxied GET is no get
        self.fallback[ACCESS_REVIEW] << self.api.serve_access_review
        self.fallback[kmock.action.LIST] << self.api.serve
        self.fallback[kmock.action.FETCH] << self.api.serve
        self.fallback[kmock.action.CREATE] << self.api.serve
        self.fallback[kmock.action.DELETE] << self.api.serve
        self.fallback[kmock.action.UPDATE] << self.api.serve
        self.fallback[kmock.action.WATCH] << self.api.serve


class ApiServer:
    """``start()`` it, point a kubeconfig at ``url``; ``stop()`` in a finalizer."""

    def __init__(self, *, validate: Validator | None = None, namespace: str = "default",
                 token: str = "mock-token") -> None:
        self.store = Store()
        self.validate = validate
        self.namespace = namespace
        self.token = token
        self.crd_installed = True
        self.spark_operator_installed = True
        self.forbidden: set[tuple[str, str]] = set()
        self.failures: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
        self.calls: list[tuple[str, str, dict[str, str], bytes]] = []
        self.reviews: list[tuple[str, str, str]] = []
        """The (verb, resource, namespace) of each SelfSubjectAccessReview asked."""
        self.dashboards = Dashboards(self.store)
        """What the Services behind the proxy answer (share it with ``WebEndpoints``)."""
        self._handler = _Handler(api=self)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="k8s-api-mock")
        self._server: kmock.Server | None = None
        self._watches: set[asyncio.Queue[Change | None]] = set()
        self.url = ""

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> ApiServer:
        self._thread.start()
        self._server = self._run(self._enter())
        self.url = str(self._server.url).rstrip("/")
        return self

    async def _enter(self) -> kmock.Server:
        await self._handler.__aenter__()
        server = kmock.Server(self._handler)
        await server.__aenter__()
        return server

    async def _exit(self) -> None:
        assert self._server is not None
        await self._server.__aexit__(None, None, None)
        await self._handler.__aexit__(None, None, None)

    def stop(self) -> None:
        errors = list(self._handler.errors)
        self.end_watches()  # or the server waits for them to end
        if self._server is not None:
            self._run(self._exit())
            self._server = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
        assert not errors, f"the API mock itself failed: {errors!r}"

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def kubeconfig(self, path: Path | None = None, *, context: str = "mock") -> dict[str, Any]:
        """A kubeconfig for this server (written to ``path`` when given)."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "mock", "cluster": {"server": self.url}}],
            "users": [{"name": "mock-user", "user": {"token": self.token}}],
            "contexts": [{"name": context, "context": {"cluster": "mock", "user": "mock-user",
                                                       "namespace": self.namespace}}],
        }
        if path is not None:
            path.write_text(yaml.safe_dump(config))
        return config

    # -- test controls -------------------------------------------------------------------------

    def forbid(self, verb: str, plural: str) -> None:
        """Answer ``verb`` on ``plural`` with 403, as RBAC does."""
        self.forbidden.add((verb, plural))

    def fail(self, verb: str, plural: str, code: int = 500, times: int = 1, *,
             reason: str = "InternalError",
             message: str = "etcdserver: request timed out") -> None:
        """Answer the next ``times`` of ``verb`` on ``plural`` with this Status."""
        self.failures.setdefault((verb, plural), []).extend([(code, reason, message)] * times)

    def end_watches(self) -> None:
        """Close every open watch stream, as an API server restart or a load balancer would."""
        for queue in list(self._watches):
            self._loop.call_soon_threadsafe(queue.put_nowait, None)

    def requests(self, verb: str, plural: str) -> list[str]:
        """The paths of the list, watch or get requests served for ``plural``."""
        def verb_of(method: str, path: str) -> str:
            route = path.split("?", 1)[0].rstrip("/")
            if method != "GET":
                return method.lower()
            if "watch=true" in path:
                return "watch"
            return "list" if route.endswith("/" + plural) else "get"

        return [path for method, path, *_ in self.calls
                if f"/{plural}" in path.split("?", 1)[0] and verb_of(method, path) == verb]

    def bodies(self) -> list[bytes]:
        return [body for *_, body in self.calls]

    # -- the service proxy ---------------------------------------------------------------------

    def serve_proxy(self, request: kmock.Request) -> kmock.Response:
        path = str(request.url.path)
        self.calls.append((request.method.value, str(request.url.path_qs),
                           dict(request.headers), request.body))
        match = PROXY.fullmatch(path)
        assert match is not None
        ns, service = match["ns"], match["svc"]
        port = match["port"] or ""
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return status(401, "Unauthorized", "Unauthorized")
        verb = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}[request.method.value.upper()]
        if (verb, "services/proxy") in self.forbidden:
            return status(403, "Forbidden", f'services "{service}" is forbidden: User '
                          f'"system:serviceaccount:{self.namespace}:airflow" cannot {verb} '
                          f'resource "services/proxy" in API group "" in the namespace "{ns}"',
                          name=service, group="", kind="services")
        if self.failures.get((verb, "services/proxy")):
            code, reason, message = self.failures[(verb, "services/proxy")].pop(0)
            return status(code, reason, message)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        code, answer = self.dashboards.answer_service(
            request.method.value.upper(), ns, service, port, (match["rest"] or "/")[1:],
            headers, request.body or b"")
        if code == 404 and answer is None:
            return status(404, "NotFound", f'services "{service}" not found', name=service,
                          kind="services")
        if isinstance(answer, str):
            return kmock.Response(status=code, headers={"Content-Type": "text/plain"},
                                  payload=answer.encode())
        return kmock.Response(status=code, payload=answer)

    # -- access reviews ------------------------------------------------------------------------

    def serve_access_review(self, request: kmock.Request) -> kmock.Response:
        """``SelfSubjectAccessReview`` (cluster-scoped, create only): allowed unless the test
        forbade the (verb, resource) with ``forbid``, the same table that answers 403."""
        self.calls.append((request.method.value, str(request.url.path_qs),
                           dict(request.headers), request.body))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return status(401, "Unauthorized", "Unauthorized")
        if request.method.value.upper() != "POST":
            return status(405, "MethodNotAllowed", "access reviews are created only")
        body = request.data
        attrs = (body.get("spec") or {}).get("resourceAttributes") if isinstance(body, dict) \
            else None
        if not isinstance(body, dict) or (body.get("apiVersion"), body.get("kind")) != (
                "authorization.k8s.io/v1", "SelfSubjectAccessReview") or not attrs:
            return status(400, "BadRequest", "expected a SelfSubjectAccessReview with "
                          "spec.resourceAttributes")
        resource = attrs.get("resource", "") + (f"/{attrs['subresource']}"
                                                if attrs.get("subresource") else "")
        verb = attrs.get("verb", "")
        self.reviews.append((verb, resource, attrs.get("namespace", "")))
        allowed = (verb, resource) not in self.forbidden
        # As kube-apiserver answers: a reason when RBAC allows, none when nothing does.
        answer = {"allowed": True, "reason": 'RBAC: allowed by RoleBinding "mock"'} \
            if allowed else {"allowed": False}
        return kmock.Response(status=201, payload={**body, "metadata": {}, "status": answer})

    # -- the API -------------------------------------------------------------------------------

    def serve(self, request: kmock.Request) -> kmock.Response:
        # Always a Response with its status: kmock copies a returned Response's status onto
        # the reaction, so a bare dict after an error would be sent with that error's code.
        answer = self._serve(request)
        return answer if isinstance(answer, kmock.Response) else kmock.Response(status=200,
                                                                                 payload=answer)

    def _serve(self, request: kmock.Request) -> Any:
        self.calls.append((request.method.value, str(request.url.path_qs),
                           dict(request.headers), request.body))
        res_ref = request.resource
        assert res_ref is not None
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return status(401, "Unauthorized", "Unauthorized")
        res = RESOURCES.get(res_ref.plural or "")
        if (res is None or (res.group, res.version) != (res_ref.group, res_ref.version)
                or (res.plural == "rayclusters" and not self.crd_installed)
                or (res.plural == "sparkconnects" and not self.spark_operator_installed)):
            return status(404, "NotFound", NOT_INSTALLED)
        if request.namespace is None:
            return status(405, "MethodNotAllowed", "this mock serves namespaced requests only")
        verb = {kmock.action.LIST: "list", kmock.action.FETCH: "get",
                kmock.action.CREATE: "create", kmock.action.DELETE: "delete",
                kmock.action.UPDATE: "patch", kmock.action.WATCH: "watch"}[request.action]
        if (verb, res.plural) in self.forbidden:
            return status(403, "Forbidden", f'{res.qualified} is forbidden: User '
                          f'"system:serviceaccount:{self.namespace}:airflow" cannot {verb} '
                          f'resource "{res.plural}" in API group "{res.group}" in the '
                          f'namespace "{request.namespace}"',
                          group=res.group, kind=res.plural, name=request.name or "")
        if self.failures.get((verb, res.plural)):
            code, reason, message = self.failures[(verb, res.plural)].pop(0)
            return status(code, reason, message)
        handler = getattr(self, f"_{verb}", None)
        if handler is None:
            return status(405, "MethodNotAllowed", f"{verb} is not supported by this mock")
        return handler(request, res, request.namespace)

    def _list(self, request: kmock.Request, res: Resource, ns: str) -> Any:
        try:
            with self.store.lock:  # the version is the list's: a watch from it misses nothing
                items = self.store.list(res.plural, ns,
                                        labels=request.params.get("labelSelector", ""),
                                        fields=request.params.get("fieldSelector", ""))
                version = self.store.resource_version()
        except SelectorError as exc:
            return status(400, "BadRequest", str(exc))
        return {"apiVersion": res.api_version, "kind": f"{res.kind}List",
                "metadata": {"resourceVersion": version}, "items": items}

    def _watch(self, request: kmock.Request, res: Resource, ns: str) -> Any:
        """``?watch=true``: ADDED for what exists now when no resourceVersion (or "0") is given,
        else the changes after it (an ERROR event with a 410 Status when it is older than the
        history kept); then every matching change until ``timeoutSeconds``. Selectors apply to
        both sides of a change: an object that stops matching is DELETED for this watch."""
        params = request.params
        try:
            labels = parse_label_selector(params.get("labelSelector", ""))
            fields = parse_field_selector(params.get("fieldSelector", ""))
            since = int(params["resourceVersion"]) if params.get("resourceVersion") else None
            timeout = float(params.get("timeoutSeconds") or 1800)
        except (SelectorError, ValueError) as exc:
            return status(400, "BadRequest", str(exc))

        def matches(obj: dict[str, Any] | None) -> bool:
            return obj is not None and labels(obj["metadata"].get("labels") or {}) and \
                fields(obj) and request.name in (None, obj["metadata"]["name"])

        def event(change: Change) -> dict[str, Any] | None:
            if change.plural != res.plural or change.namespace != ns:
                return None
            before, after = matches(change.old), matches(change.new)
            if change.type == "DELETED":
                kind = "DELETED" if before else None
            elif change.type == "ADDED" or not before:
                kind = "ADDED" if after else None
            else:
                kind = "MODIFIED" if after else "DELETED"
            return {"type": kind, "object": change.new} if kind else None

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Change | None] = asyncio.Queue()

        def listener(change: Change) -> None:  # any thread, under the store's lock
            loop.call_soon_threadsafe(queue.put_nowait, change)

        with self.store.lock:
            current = self.store.list(res.plural, ns) if since in (None, 0) else []
            backlog = self.store.subscribe(listener, None if since in (None, 0) else since)
        if backlog is None:
            gone = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": f"too old resource version: {since} "
                               f"({self.store.resource_version()})",
                    "reason": "Expired", "code": 410}
            return kmock.Response(status=200, payload=({"type": "ERROR", "object": gone},))
        self._watches.add(queue)

        async def stream() -> AsyncIterator[Any]:
            try:
                yield b""  # the headers now, whether or not anything happens
                for obj in current:
                    if matches(obj):
                        yield {"type": "ADDED", "object": obj}
                for change in backlog:
                    if (found := event(change)) is not None:
                        yield found
                deadline = time.monotonic() + timeout
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        change = await asyncio.wait_for(queue.get(), left)
                    except TimeoutError:
                        break
                    if change is None:  # the server stops
                        break
                    if (found := event(change)) is not None:
                        yield found
            finally:
                self.store.unsubscribe(listener)
                self._watches.discard(queue)

        return kmock.Response(status=200, headers={"Content-Type": "application/json"},
                              payload=stream())

    def _get(self, request: kmock.Request, res: Resource, ns: str) -> Any:
        assert request.name is not None
        obj = self.store.get(res.plural, ns, request.name)
        if obj is None:
            return self._not_found(res, request.name)
        return obj

    def _create(self, request: kmock.Request, res: Resource, ns: str) -> Any:
        obj = request.data
        if not isinstance(obj, dict):
            return status(400, "BadRequest", "the body of the request is not a JSON object")
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if (obj.get("apiVersion"), obj.get("kind")) != (res.api_version, res.kind):
            return status(400, "BadRequest", f"the API version in the data "
                          f"({obj.get('apiVersion')}/{obj.get('kind')}) does not match the "
                          f"expected API version ({res.api_version}/{res.kind})")
        if meta.get("namespace") not in (None, ns):
            return status(400, "BadRequest", "the namespace of the provided object does not "
                          "match the namespace sent on the request")
        if not name:
            return status(422, "Invalid", f"{res.kind} is invalid: metadata.name: Required "
                          "value", causes=[{"field": "metadata.name",
                                            "reason": "FieldValueRequired",
                                            "message": "Required value: name is required"}])
        if self.validate is not None:
            problems = self.validate(obj)
            unknown = [p for p in problems if p.endswith(": unknown field")]
            if unknown and request.params.get("fieldValidation") == "Strict":
                fields = ", ".join(f'unknown field "{p.rsplit(":", 1)[0]}"' for p in unknown)
                return status(400, "BadRequest", f"{res.kind} in version "
                              f'"{res.version}" cannot be handled as a {res.kind}: strict '
                              f"decoding error: {fields}")
            invalid = [p for p in problems if not p.endswith(": unknown field")]
            if invalid:
                causes = [{"reason": "FieldValueInvalid", "field": p.split(": ", 1)[0],
                           "message": p.split(": ", 1)[-1]} for p in invalid]
                return status(422, "Invalid", f'{res.kind}.{res.group or "core"} "{name}" is '
                              f"invalid: {'; '.join(invalid)}", name=name, group=res.group,
                              kind=res.plural, causes=causes)
        with self.store.lock:
            if self.store.get(res.plural, ns, name) is not None:
                return status(409, "AlreadyExists", f'{res.qualified} "{name}" already exists',
                              name=name, group=res.group, kind=res.plural)
            stored = self.store.put(res.plural, ns, obj)
        return kmock.Response(status=201, payload=stored)

    def _delete(self, request: kmock.Request, res: Resource, ns: str) -> Any:
        assert request.name is not None
        body = request.data if isinstance(request.data, dict) else {}
        policy = request.params.get("propagationPolicy") or body.get("propagationPolicy")
        wanted = (body.get("preconditions") or {}).get("uid")
        with self.store.lock:
            current = self.store.get(res.plural, ns, request.name)
            if current is None:
                return self._not_found(res, request.name)
            if wanted and wanted != current["metadata"]["uid"]:
                # As kube-apiserver answers a DeleteOptions precondition that fails.
                return status(409, "Conflict", f'Operation cannot be fulfilled on '
                              f'{res.qualified} "{request.name}": Precondition failed: UID in '
                              f'precondition: {wanted}, UID in object meta: '
                              f'{current["metadata"]["uid"]}', name=request.name,
                              group=res.group, kind=res.plural)
            self.store.mark_deleted(res.plural, ns, request.name,
                                    foreground=policy == "Foreground")
            left = self.store.get(res.plural, ns, request.name)
        if left is not None:
            return left
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": request.name, "group": res.group, "kind": res.plural}}

    @staticmethod
    def _not_found(res: Resource, name: str) -> Any:
        return status(404, "NotFound", f'{res.qualified} "{name}" not found', name=name,
                      group=res.group, kind=res.plural)
