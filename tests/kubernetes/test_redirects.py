"""No request that carries credentials follows a redirect (``ephemeral.backends.http``).

kube-apiserver's service proxy relays a head's redirect to another host as it is, so whoever
controls what the head answers could otherwise collect Airflow's Kubernetes bearer token (proxy
mode) and the cluster's Ray token on a host of their choosing. Here the head answers every
request with a 302 to a collector on another address: readiness, the run report's read, the
reaper's idle check, the Jobs API client and the job status reads all see "no answer", and the
collector receives nothing.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import kmock
import pytest

from ephemeral.activity import cluster_activity
from ephemeral.backends.http import get_json
from ephemeral.backends.kubernetes import KubernetesBackend
from ephemeral.errors import EphemeralError
from ephemeral.jobs.ray_jobs import ray_jobs_for
from ephemeral.report.engines import engine_jobs
from tests.kubernetes.apiserver import ApiServer
from tests.kubernetes.test_access import proxy_backend  # noqa: F401 - the fixture
from tests.kubernetes.test_backend import RAY, owner


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, str, dict[str, str]]]]]:
    """An HTTP server on another address that records whatever reaches it."""
    seen: list[tuple[str, str, dict[str, str]]] = []

    class Record(http.server.BaseHTTPRequestHandler):
        def _any(self) -> None:
            seen.append((self.command, self.path, dict(self.headers)))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        do_GET = do_POST = _any

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Record)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.2:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_heads_redirect_takes_no_credential_anywhere(
        proxy_backend: KubernetesBackend, apiserver: ApiServer,  # noqa: F811
        collector: tuple[str, list[tuple[str, str, dict[str, str]]]]) -> None:
    where, seen = collector
    handle = proxy_backend.create(RAY, identity=owner(RAY))
    assert proxy_backend.wait_ready(handle, timeout=5).ready

    def redirect(method: str, ns: str, service: str, port: str, rest: str,
                 headers: Any, body: bytes) -> tuple[int, Any]:
        return 302, kmock.Response(status=302, headers={"Location": f"{where}/{rest}"})

    apiserver.dashboards.answer_service = redirect  # type: ignore[method-assign]
    # Readiness (the Kubernetes client's own proxy GET) no longer sees a ready dashboard.
    assert not proxy_backend.wait_ready(handle, timeout=0).ready
    engine_jobs(proxy_backend, handle)  # the teardown's run report read
    assert cluster_activity(proxy_backend, handle).busy is None  # the reaper: "no answer"
    jobs = ray_jobs_for(handle, proxy_backend)
    for call in (lambda: jobs.status("raysubmit_1", timeout=3),  # our own requests
                 lambda: jobs.client.get_job_info("raysubmit_1"),  # Ray's SDK
                 lambda: jobs.stop("raysubmit_1", wait=0.1)):
        with pytest.raises((EphemeralError, RuntimeError)) as err:
            call()
        # Said as what it is, naming where it points, not as an unreadable answer.
        assert f"redirect to {where}/" in str(err.value), err.value
        assert "does not follow" in str(err.value)
    assert seen == [], [(m, p, sorted(h)) for m, p, h in seen]


def test_the_json_get_treats_a_redirect_as_no_answer(
        collector: tuple[str, list[tuple[str, str, dict[str, str]]]]) -> None:
    where, seen = collector

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"{where}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/api/jobs/"
        assert get_json(url, headers={"Authorization": "Bearer secret"}) is None
    finally:
        server.shutdown()
        server.server_close()
    assert seen == []
    assert get_json(f"{where}/direct") == []  # the collector itself answers JSON
