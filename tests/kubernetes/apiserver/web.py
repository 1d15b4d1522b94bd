"""What the clusters' HTTP endpoints answer, reached the way ``endpoint_mode="ingress"`` does:
``http://127.0.0.1:<port>/<namespace>/<cluster>/<port name>``. The Ray dashboard answers
``/api/version`` once the head pod runs; the Spark master UI lists its running worker pods as
ALIVE workers in ``/json/``. ``down`` makes every endpoint refuse (503)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.kubernetes.apiserver.store import Store

TEMPLATE = "http://127.0.0.1:{port}/{{namespace}}/{{cluster}}/{{port}}"


class WebEndpoints:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = False
        self.hits: list[str] = []
        web = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                web.hits.append(self.path)
                code, body = web.answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self.url_template = TEMPLATE.format(port=self.port)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> WebEndpoints:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def answer(self, path: str) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if self.down or len(parts) < 4:
            return 503, {"error": "unavailable"}
        ns, cluster, port, rest = parts[0], parts[1], parts[2], "/".join(parts[3:])
        pods = [p for p in self.store.list("pods", ns)
                if p["status"].get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp")]
        if port == "dashboard" and rest == "api/version":
            head = [p for p in pods if p["metadata"]["labels"].get("ray.io/cluster") == cluster
                    and p["metadata"]["labels"].get("ray.io/node-type") == "head"]
            if head:
                return 200, {"version": "4", "ray_version": "2.60.0", "ray_commit": "mock"}
        if port == "spark-ui" and rest == "json":
            mine = [p for p in pods
                    if p["metadata"]["labels"].get("ephemeral.dev/cluster") == cluster]
            if any(p["metadata"]["labels"].get("app.kubernetes.io/component") == "spark-master"
                   for p in mine):
                workers = [{"id": p["metadata"]["name"], "state": "ALIVE", "cores": 1}
                           for p in mine if p["metadata"]["labels"].get(
                               "app.kubernetes.io/component") == "spark-worker"]
                return 200, {"url": f"spark://{cluster}-master:7077", "status": "ALIVE",
                             "workers": workers, "aliveworkers": len(workers)}
        return 503, {"error": f"nothing answers {path}"}
