"""What the clusters' HTTP endpoints answer, played from the store: the Ray dashboard (with
token authentication and a little of the Jobs API), the Spark master UI and the Spark Connect
server's UI.

Two ways in, as the backend's endpoint modes go:

- ``WebEndpoints``: ``http://127.0.0.1:<port>/<namespace>/<cluster>/<port name>/...`` for
  ``endpoint_mode="ingress"`` (``url_template``);
- ``answer_service``: what the API server's service proxy forwards to a Service's port
  (``ApiServer`` serves ``/api/v1/namespaces/<ns>/services/<svc>:<port>/proxy/...`` with it).

The dashboard answers once the head pod runs, and only with the cluster's token, read from the
Secret the (mock) operator made, as Ray does: ``Authorization: Bearer <token>`` first, else
``X-Ray-Authorization``; none is 401, a wrong one 403. ``/api/version`` answers; ``POST
/api/jobs/`` records the submission and answers a job id; ``GET /api/jobs/<id>`` and the list
``GET /api/jobs/`` say ``job_status`` (SUCCEEDED unless a test sets another), and ``GET
/api/jobs/<id>/logs`` answers ``job_logs``.
The Spark master UI lists its running worker pods as ALIVE workers in ``/json/``. A Connect
server's UI (a standalone cluster's ``<name>-connect`` Service, port ``web-ui``; a SparkConnect's
``<name>-server``) lists one application (``/api/v1/applications``) once its server pod runs,
and the ``connect_sessions`` and ``connect_operations`` a test sets below it (Spark 4's
``/api/v1/applications/<id>/connect/sessions`` and ``/operations``). The service proxy only
reaches a port the Service publishes, as kube-apiserver does. ``down`` makes every endpoint
refuse (503).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.kubernetes.apiserver.store import Store

TEMPLATE = "http://127.0.0.1:{port}/{{namespace}}/{{cluster}}/{{port}}"
TOKEN_KEY = "auth_token"


@dataclass
class Dashboards:
    """The state every way in shares: whether endpoints answer, and what they were sent."""

    store: Store
    down: bool = False
    hits: list[str] = field(default_factory=list)
    submitted: list[dict[str, Any]] = field(default_factory=list)
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    job_status: str = "SUCCEEDED"
    """What the Jobs API says of every submitted job (in ``GET /api/jobs/`` and by id)."""
    job_logs: str = ""
    """What every job logged (``GET /api/jobs/<id>/logs``)."""
    spark_apps: list[dict[str, Any]] = field(default_factory=list)
    """The Spark master's ``activeapps`` (as Spark's JsonProtocol writes them), set by tests."""
    connect_sessions: list[dict[str, Any]] = field(default_factory=list)
    """Every Connect server UI's sessions (as Spark's REST API writes them), set by tests."""
    connect_operations: list[dict[str, Any]] = field(default_factory=list)
    """Every Connect server UI's operations, set by tests."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, method: str, ns: str, cluster: str, api: str, rest: str,
               headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
        """``api`` is ``dashboard``, ``spark-ui`` or ``connect-ui`` (a standalone cluster's
        Connect server); ``rest`` the path below it (no slash)."""
        with self._lock:
            self.hits.append(f"{method} /{ns}/{cluster}/{api}/{rest}")
            self.seen_headers.append({k.lower(): v for k, v in headers.items()})
        if self.down:
            return 503, {"error": "unavailable"}
        pods = [p for p in self.store.list("pods", ns)
                if p["status"].get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp")]
        rest = rest.strip("/")
        if api == "dashboard":
            head = [p for p in pods if p["metadata"]["labels"].get("ray.io/cluster") == cluster
                    and p["metadata"]["labels"].get("ray.io/node-type") == "head"]
            if not head:
                return 503, {"error": f"no head pod of {cluster} runs"}
            refused = self._refused(ns, cluster, headers)
            if refused is not None:
                return refused
            return self._ray(method, cluster, rest, body)
        if api == "spark-ui" and self.store.get("sparkconnects", ns, cluster) is not None:
            return self._connect_ui(method, [p for p in pods if p["metadata"]["labels"].get(
                "sparkoperator.k8s.io/connect-name") == cluster and p["metadata"]["labels"].get(
                "spark-role") == "connect-server"], cluster, rest)
        if api == "connect-ui":
            return self._connect_ui(method, [p for p in pods if p["metadata"]["labels"].get(
                "ephemeral.dev/cluster") == cluster and p["metadata"]["labels"].get(
                "app.kubernetes.io/component") == "spark-connect"], cluster, rest)
        if api == "spark-ui" and method == "GET" and rest == "json":
            mine = [p for p in pods
                    if p["metadata"]["labels"].get("ephemeral.dev/cluster") == cluster]
            if any(p["metadata"]["labels"].get("app.kubernetes.io/component") == "spark-master"
                   for p in mine):
                workers = [{"id": p["metadata"]["name"], "state": "ALIVE", "cores": 1}
                           for p in mine if p["metadata"]["labels"].get(
                               "app.kubernetes.io/component") == "spark-worker"]
                return 200, {"url": f"spark://{cluster}-master:7077", "status": "ALIVE",
                             "workers": workers, "aliveworkers": len(workers),
                             "activeapps": self.spark_apps}
        return 503, {"error": f"nothing answers {method} {api}/{rest}"}

    def _connect_ui(self, method: str, server: list[dict[str, Any]], cluster: str,
                    rest: str) -> tuple[int, Any]:
        """A Connect server's UI (port 4040) once its pod runs: its application, and the
        sessions and operations tests set."""
        if not server:
            return 503, {"error": f"no Connect server of {cluster} runs"}
        app = "spark-mock-0001"
        if method == "GET" and rest == "api/v1/applications":
            return 200, [{"id": app, "name": "Spark Connect server",
                          "attempts": [{"completed": False}]}]
        if method == "GET" and rest == f"api/v1/applications/{app}/connect/sessions":
            return 200, self.connect_sessions
        if method == "GET" and rest == f"api/v1/applications/{app}/connect/operations":
            return 200, self.connect_operations
        return 404, {"error": f"the mock Connect UI does not serve {method} {rest}"}

    def _refused(self, ns: str, cluster: str,
                 headers: Mapping[str, str]) -> tuple[int, Any] | None:
        """Ray's token check (ray/_private/authentication/http_token_authentication.py)."""
        rc = self.store.get("rayclusters", ns, cluster) or {}
        options = (rc.get("spec") or {}).get("authOptions") or {}
        if options.get("mode") != "token":
            return None
        secret = self.store.get("secrets", ns, options.get("secretName") or cluster) or {}
        encoded = (secret.get("data") or {}).get(TOKEN_KEY)
        token = base64.b64decode(encoded).decode() if encoded else None
        lower = {k.lower(): v for k, v in headers.items()}
        given = lower.get("authorization") or lower.get("x-ray-authorization")
        if not given:
            return 401, "Unauthorized: Missing authentication token"
        if token is None or given != f"Bearer {token}":
            return 403, "Forbidden: Invalid authentication token"
        return None

    def _ray(self, method: str, cluster: str, rest: str, body: bytes) -> tuple[int, Any]:
        if method == "GET" and rest == "api/version":
            return 200, {"version": "4", "ray_version": "2.60.0", "ray_commit": "mock"}
        if method == "POST" and rest == "api/jobs":
            request = json.loads(body or b"{}")
            with self._lock:
                self.submitted.append({"cluster": cluster, **request})
                job_id = f"raysubmit_{len(self.submitted)}"
            return 200, {"job_id": job_id, "submission_id": request.get("submission_id")
                         or job_id}
        if method == "GET" and rest == "api/jobs":  # the list: this cluster's submissions
            with self._lock:
                return 200, [{"type": "SUBMISSION", "status": self.job_status,
                              "submission_id": s.get("submission_id") or f"raysubmit_{i + 1}",
                              "entrypoint": s.get("entrypoint")}
                             for i, s in enumerate(self.submitted) if s["cluster"] == cluster]
        if method == "GET" and rest.startswith("api/jobs/") and rest.endswith("/logs"):
            return 200, {"logs": self.job_logs}
        if method == "GET" and rest.startswith("api/jobs/"):
            job_id = rest.removeprefix("api/jobs/")
            return 200, {"job_id": job_id, "submission_id": job_id, "status": self.job_status,
                         "entrypoint": "python -c pass", "message": "done", "type": "SUBMISSION"}
        return 404, {"error": f"the mock dashboard does not serve {method} {rest}"}

    def answer_service(self, method: str, ns: str, service: str, port: str, rest: str,
                       headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
        """What the API server's proxy gets back from ``service``'s ``port`` (name or
        number): the Ray head Service's dashboard port, the Spark master's and Connect
        servers' UI ports. A port the Service does not publish is kube-apiserver's 503."""
        svc = self.store.get("services", ns, service)
        if svc is None:
            return 404, None  # the caller answers the API server's own NotFound
        published = {str(v) for p in (svc.get("spec") or {}).get("ports") or []
                     for v in (p.get("name"), p.get("port")) if v is not None}
        if port and port not in published:
            return 503, f'no service port "{port}" found for service "{service}"'
        labels = svc["metadata"].get("labels") or {}
        if service.endswith("-head-svc") and port in ("dashboard", "8265"):
            return self.answer(method, ns, labels.get("ray.io/cluster", ""), "dashboard", rest,
                               headers, body)
        if labels.get("app.kubernetes.io/component") == "spark-master" and \
                port in ("web-ui", "8080"):
            return self.answer(method, ns, labels.get("ephemeral.dev/cluster", ""), "spark-ui",
                               rest, headers, body)
        if labels.get("app.kubernetes.io/component") == "spark-connect" and \
                port in ("web-ui", "4040"):
            return self.answer(method, ns, labels.get("ephemeral.dev/cluster", ""),
                               "connect-ui", rest, headers, body)
        if labels.get("sparkoperator.k8s.io/connect-name") and port in ("web-ui", "4040"):
            return self.answer(method, ns, labels["sparkoperator.k8s.io/connect-name"],
                               "spark-ui", rest, headers, body)
        return 503, {"error": f"nothing listens on {service}:{port}"}


class WebEndpoints:
    """The endpoints as an ingress routes them: ``url_template`` for ``ingress_url_template``."""

    def __init__(self, store: Store, dashboards: Dashboards | None = None) -> None:
        self.dashboards = dashboards or Dashboards(store)
        web = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                code, answer = web.answer(self.command, self.path, dict(self.headers), body)
                data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if isinstance(answer, str)
                                 else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self.url_template = TEMPLATE.format(port=self.port)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def down(self) -> bool:
        return self.dashboards.down

    @down.setter
    def down(self, value: bool) -> None:
        self.dashboards.down = value

    @property
    def hits(self) -> list[str]:
        return self.dashboards.hits

    def start(self) -> WebEndpoints:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def answer(self, method: str, path: str, headers: Mapping[str, str] | None = None,
               body: bytes = b"") -> tuple[int, Any]:
        parts = path.split("?", 1)[0].strip("/").split("/")
        if len(parts) < 4:
            return 503, {"error": "unavailable"}
        ns, cluster, api, rest = parts[0], parts[1], parts[2], "/".join(parts[3:])
        return self.dashboards.answer(method, ns, cluster, api, rest, headers or {}, body)
