"""Everything at once, for suites outside tests/kubernetes (the backend contract)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ephemeral.backends.kubernetes import KubeConfig, KubernetesBackend
from tests.kubernetes.apiserver.operator import Operator
from tests.kubernetes.apiserver.server import ApiServer
from tests.kubernetes.apiserver.web import WebEndpoints


@contextlib.contextmanager
def mock_backend(workdir: Path, namespace: str = "ephemeral-test") -> Iterator[KubernetesBackend]:
    """A KubernetesBackend on a strict API mock with a KubeRay-like operator that makes
    clusters ready; every server is stopped on exit."""
    from tests.kubernetes.manifest_validation import validate_manifest, warm_up

    warm_up()

    with contextlib.ExitStack() as stack:
        server = ApiServer(validate=validate_manifest, namespace=namespace).start()
        stack.callback(server.stop)
        operator = Operator(server.store).start()
        stack.callback(operator.stop)
        web = WebEndpoints(server.store, server.dashboards).start()
        stack.callback(web.stop)
        kubeconfig = workdir / "kubeconfig.yaml"
        server.kubeconfig(kubeconfig)
        backend = KubernetesBackend(KubeConfig(
            kubeconfig_path=str(kubeconfig), namespace=namespace, endpoint_mode="ingress",
            ingress_url_template=web.url_template, poll_interval=0.02, delete_timeout=5))
        stack.callback(backend.client.close)
        yield backend


def hold_until_watched(server: ApiServer, operator: Operator, plural: str) -> Callable[[], None]:
    """Hold the mock controllers until a watch on ``plural`` arrives; returns the starter (on a
    loaded machine a fast mock operator has a cluster ready before the wait even begins)."""
    operator.paused = True
    before = len(server.requests("watch", plural))

    def release() -> None:
        deadline = time.monotonic() + 10
        while len(server.requests("watch", plural)) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        operator.paused = False

    return threading.Thread(target=release, daemon=True).start
