"""Fixtures: the strict API mock, its operator and web endpoints, and a backend wired to them.
Every server is stopped in a finalizer, whatever the test did."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemeral.backends.kubernetes import KubeConfig, KubernetesBackend
from tests.kubernetes.apiserver import ApiServer, Operator, WebEndpoints
from tests.kubernetes.manifest_validation import validate_manifest, warm_up

NAMESPACE = "ephemeral-test"


@pytest.fixture(scope="session", autouse=True)
def _schemas_loaded() -> None:
    """Parse the (large) CRD schema once, before any API mock serves a request: on a loaded
    machine the first create would otherwise pay for it within the client's read timeout."""
    warm_up()


@pytest.fixture(autouse=True)
def _instance_set(ephemeral_home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every deployment on Kubernetes sets its instance (``require_instance``); these tests run
    as one that set it to the value it would otherwise derive, so names and snapshots are the
    same. Tests of the refusal delete it again."""
    from ephemeral.settings import instance_of

    instance = instance_of()
    monkeypatch.setenv("EPHEMERAL_INSTANCE", instance)
    return instance


@pytest.fixture
def apiserver() -> Iterator[ApiServer]:
    server = ApiServer(validate=validate_manifest, namespace=NAMESPACE,
                       token="tok-3f9a-never-in-a-body").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def operator(apiserver: ApiServer) -> Iterator[Operator]:
    op = Operator(apiserver.store).start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def web(apiserver: ApiServer) -> Iterator[WebEndpoints]:
    endpoints = WebEndpoints(apiserver.store, apiserver.dashboards).start()
    try:
        yield endpoints
    finally:
        endpoints.stop()


@pytest.fixture
def kubeconfig_file(apiserver: ApiServer, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig.yaml"
    apiserver.kubeconfig(path)
    return path


@pytest.fixture
def kube_config(kubeconfig_file: Path, web: WebEndpoints) -> KubeConfig:
    return KubeConfig(kubeconfig_path=str(kubeconfig_file), namespace=NAMESPACE,
                      endpoint_mode="ingress", ingress_url_template=web.url_template,
                      poll_interval=0.02, delete_timeout=3, request_timeout=5)


@pytest.fixture
def k8s_backend(kube_config: KubeConfig, operator: Operator) -> Iterator[KubernetesBackend]:
    backend = KubernetesBackend(kube_config)
    try:
        yield backend
    finally:
        backend.client.close()
