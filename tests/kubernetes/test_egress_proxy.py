"""Through a Kubernetes API server's service proxy, a cluster's URLs are the API server's: a
deployment that reaches its API server through an HTTP proxy (HTTPS_PROXY, as the Kubernetes
client reads it, or a kubeconfig's proxy-url) reaches them the same way, as ``Access.proxy``
names it; the environment's proxy variables themselves steer no call to a cluster
(``ephemeral.backends.http``)."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ephemeral.backends.base import ClusterHandle
from ephemeral.backends.kubernetes import KubeConfig, KubernetesBackend
from ephemeral.jobs.ray_jobs import ray_jobs_for
from ephemeral.report.engines import engine_jobs
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.test_backend import RAY, owner


class Forwarder(ThreadingHTTPServer):
    """A forward HTTP proxy that records the URLs it relays."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Relay)
        self.relayed: list[str] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Relay(BaseHTTPRequestHandler):
    server: Forwarder

    def log_message(self, *_: Any) -> None:
        pass

    def _relay(self) -> None:
        self.server.relayed.append(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "proxy-connection", "connection")}
        request = urllib.request.Request(self.path, data=body, headers=headers,
                                         method=self.command)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=10) as resp:
                status, reply, data = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            status, reply, data = err.code, err.headers, err.read()
        self.send_response(status)
        for key, value in reply.items():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _relay


@pytest.fixture
def forwarder() -> Iterator[Forwarder]:
    server = Forwarder()
    yield server
    server.shutdown()
    server.server_close()


def _backend(kubeconfig_file: Path) -> KubernetesBackend:
    return KubernetesBackend(KubeConfig(
        kubeconfig_path=str(kubeconfig_file), namespace=NAMESPACE, endpoint_mode="proxy",
        poll_interval=0.02, delete_timeout=3, request_timeout=5))


@pytest.fixture
def ready(kubeconfig_file: Path, operator: Any, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[ClusterHandle]:
    """A ready Ray cluster (its watches would not pass the forwarder, which does not stream),
    and an environment with no proxy variable or Ray address."""
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "NO_PROXY",
                "no_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    backend = _backend(kubeconfig_file)
    try:
        handle = backend.create(RAY, identity=owner(RAY))
        assert backend.wait_ready(handle, timeout=5).ready
        yield handle
    finally:
        backend.client.close()


def test_the_kubernetes_clients_proxy_carries_the_proxied_cluster_calls(
        kubeconfig_file: Path, ready: ClusterHandle, forwarder: Forwarder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", forwarder.url)  # the mock API server speaks http
    backend = _backend(kubeconfig_file)  # its Kubernetes client reads it
    try:
        access = backend.access(ready)
        assert access.proxy == forwarder.url
        jobs = ray_jobs_for(ready, backend)
        jid = jobs.submit("python -c pass")  # Ray's SDK: version check, submit
        assert jobs.status(jid, timeout=5) is not None  # our own read
        assert engine_jobs(backend, ready) is not None  # urllib: the run report's read
        relayed = [url for url in forwarder.relayed if "/proxy/" in url]
        for path in ("/proxy/api/version", "/proxy/api/jobs/", f"/proxy/api/jobs/{jid}"):
            assert any(url.endswith(path) for url in relayed), (path, relayed)
    finally:
        backend.client.close()


def test_a_server_no_proxy_names_is_reached_directly(
        kubeconfig_file: Path, ready: ClusterHandle, forwarder: Forwarder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", forwarder.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    backend = _backend(kubeconfig_file)
    try:
        assert backend.access(ready).proxy is None
        jobs = ray_jobs_for(ready, backend)
        assert jobs.status(jobs.submit("python -c pass"), timeout=5) is not None
        assert engine_jobs(backend, ready) is not None
        assert forwarder.relayed == []
    finally:
        backend.client.close()
