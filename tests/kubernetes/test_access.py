"""Reaching the clusters' HTTP APIs: Ray token authentication, the API server's service proxy
(Airflow outside the cluster), the NetworkPolicy each cluster gets, and the settings behind them.

All against the strict API mock: its fake dashboard refuses a request without the cluster's
token as Ray does (401 without one, 403 with a wrong one), and its service proxy authenticates
and authorizes the caller and drops ``Authorization`` before forwarding, as kube-apiserver does.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ephemeral.backends.base import Access, ClusterHandle, Phase
from ephemeral.backends.kubernetes import KubeConfig, KubernetesBackend
from ephemeral.backends.kubernetes.client import NETWORKPOLICY, RAYCLUSTER, SECRET, Forbidden
from ephemeral.errors import BackendUnavailable
from tests.kubernetes.apiserver import ApiServer, Operator, WebEndpoints
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.test_backend import RAY, SPARK, owner


def call(url: str, headers: dict[str, str], body: dict[str, Any] | None = None
         ) -> tuple[int, str]:
    """An HTTP request as any client (the Jobs SDK, a browser) would make it."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={
        **headers, **({"Content-Type": "application/json"} if data else {})})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def proxy_backend(kubeconfig_file: Path, operator: Operator) -> Iterator[KubernetesBackend]:
    """Airflow outside the cluster: everything HTTP goes through the API server."""
    backend = KubernetesBackend(KubeConfig(
        kubeconfig_path=str(kubeconfig_file), namespace=NAMESPACE, endpoint_mode="proxy",
        poll_interval=0.02, delete_timeout=3, request_timeout=5))
    try:
        yield backend
    finally:
        backend.client.close()


def token_of(server: ApiServer, name: str) -> str:
    import base64

    secret = server.store.get("secrets", NAMESPACE, name)
    assert secret is not None
    return base64.b64decode(secret["data"]["auth_token"]).decode()


# -- Ray token authentication ---------------------------------------------------------------------

def test_the_dashboard_refuses_calls_without_the_clusters_token(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, web: WebEndpoints) -> None:
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    assert k8s_backend.wait_ready(handle, timeout=5).ready  # the probe sends the token
    version = f"{handle.endpoints.dashboard}/api/version"
    assert call(version, {})[0] == 401
    assert call(version, {"Authorization": "Bearer guessed"})[0] == 403
    access = k8s_backend.access(handle)
    assert access.dashboard == handle.endpoints.dashboard
    assert call(version, access.headers) == (200, json.dumps(
        {"version": "4", "ray_version": "2.60.0", "ray_commit": "mock"}))
    # Behind an ingress that keeps Authorization for itself, X-Ray-Authorization carries it.
    assert call(version, {"X-Ray-Authorization": access.headers["X-Ray-Authorization"]})[0] \
        == 200
    # Submitting a job is refused without it, and accepted with it.
    job = {"entrypoint": "python -c 'print(1)'"}
    assert call(f"{access.dashboard}/api/jobs/", {}, job)[0] == 401
    assert call(f"{access.dashboard}/api/jobs/", access.headers, job)[0] == 200
    assert web.dashboards.submitted == [{"cluster": handle.name, **job}]


def test_the_token_is_kuberays_secret_and_never_leaves_the_access(
        k8s_backend: KubernetesBackend, apiserver: ApiServer,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    k8s_backend.wait_ready(handle, timeout=5)
    cluster = apiserver.store.get("rayclusters", NAMESPACE, handle.name)
    assert cluster is not None
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    secret = apiserver.store.get("secrets", NAMESPACE, handle.name)
    assert secret is not None
    assert secret["metadata"]["ownerReferences"][0]["uid"] == cluster["metadata"]["uid"]
    token = token_of(apiserver, handle.name)
    access = k8s_backend.access(handle)
    assert access.headers["Authorization"] == f"Bearer {token}"
    # Nowhere else: the handle (XCom, annotations), what was sent to the API server, the
    # access's repr, the logs, the listed handles.
    assert token not in handle.model_dump_json()
    assert token.encode() not in b"".join(apiserver.bodies())
    assert token not in repr(access) + str(access)
    assert token not in caplog.text
    assert all(token not in h.model_dump_json() for h in k8s_backend.list_owned())
    # The Secret is read by name: never listed, never watched.
    secrets = [p for _, p, *_ in apiserver.calls if "/secrets" in p]
    assert secrets
    assert all(p.split("?")[0].endswith(f"/secrets/{handle.name}") for p in secrets)
    assert not any("watch=true" in p for p in secrets)


def test_a_cluster_before_token_auth_gets_no_ray_header(k8s_backend: KubernetesBackend,
                                                        apiserver: ApiServer) -> None:
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    k8s_backend.wait_ready(handle, timeout=5)
    apiserver.store.update("rayclusters", NAMESPACE, handle.name,
                           lambda o: o["spec"].pop("authOptions"))
    assert k8s_backend.access(handle).headers == {}


def test_a_missing_token_secret_is_not_ready_yet(k8s_backend: KubernetesBackend,
                                                 apiserver: ApiServer) -> None:
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    k8s_backend.wait_ready(handle, timeout=5)
    apiserver.store.remove("secrets", NAMESPACE, handle.name)
    status = k8s_backend.wait_ready(handle, timeout=0)
    assert status.phase is Phase.STARTING
    assert f"token Secret {handle.name!r}" in status.message
    with pytest.raises(BackendUnavailable, match="KubeRay makes it"):
        k8s_backend.access(handle)


def test_without_get_on_secrets_the_backend_names_the_grant(k8s_backend: KubernetesBackend,
                                                            apiserver: ApiServer) -> None:
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    apiserver.forbid("get", "secrets")
    with pytest.raises(Forbidden, match="grant verb 'get' on resource 'secrets'"):
        k8s_backend.wait_ready(handle, timeout=5)


def test_access_in_dns_mode_names_the_service_and_sends_the_token(
        kubeconfig_file: Path, operator: Operator, apiserver: ApiServer) -> None:
    backend = KubernetesBackend(KubeConfig(kubeconfig_path=str(kubeconfig_file),
                                           namespace=NAMESPACE, endpoint_mode="dns",
                                           http_check=False, poll_interval=0.02))
    try:
        handle = backend.create(RAY, identity=owner(RAY))
        backend.wait_ready(handle, timeout=5)
        access = backend.access(handle)
        host = f"{handle.name}-head-svc.{NAMESPACE}.svc.cluster.local"
        assert access.dashboard == f"http://{host}:8265" == handle.endpoints.dashboard
        assert access.headers == {"Authorization": f"Bearer {token_of(apiserver, handle.name)}"}
    finally:
        backend.client.close()


# -- The API server's service proxy ---------------------------------------------------------------

def proxied(server: ApiServer) -> list[tuple[str, str, dict[str, str]]]:
    return [(m, p, h) for m, p, h, _ in server.calls if "/proxy/" in p]


def test_the_whole_ray_lifecycle_through_the_proxy(proxy_backend: KubernetesBackend,
                                                   apiserver: ApiServer) -> None:
    handle = proxy_backend.create(RAY, identity=owner(RAY))
    base = f"{apiserver.url}/api/v1/namespaces/{NAMESPACE}/services/{handle.name}-head-svc:" \
           "dashboard/proxy"
    # The handle's links point at the proxy (a browser authenticated to the API server).
    assert handle.endpoints.dashboard == base
    assert handle.endpoints.gcs == f"{handle.name}-head-svc.{NAMESPACE}.svc.cluster.local:6379"
    assert proxy_backend.wait_ready(handle, timeout=5).ready
    # The probe went through the proxy, and the dashboard saw Ray's token but not the API
    # server's credentials (the proxy drops Authorization).
    [(method, path, _)] = [c for c in proxied(apiserver) if c[1].endswith("/api/version")][:1]
    assert (method, path) == ("GET", base.removeprefix(apiserver.url) + "/api/version")
    token = token_of(apiserver, handle.name)
    seen = apiserver.dashboards.seen_headers[-1]
    assert seen.get("x-ray-authorization") == f"Bearer {token}"
    assert "authorization" not in seen
    # Job submission through access(): the API server's bearer token, Ray's in its own header.
    access = proxy_backend.access(handle)
    assert access.dashboard == base
    assert access.headers == {"Authorization": f"Bearer {apiserver.token}",
                              "X-Ray-Authorization": f"Bearer {token}"}
    job = {"entrypoint": "python train.py"}
    status, body = call(f"{access.dashboard}/api/jobs/", access.headers, job)
    assert status == 200
    assert json.loads(body)["job_id"]
    assert call(f"{access.dashboard}/api/jobs/raysubmit_1", access.headers)[0] == 200
    # Without Ray's token the dashboard refuses; without the API server's, the API server does.
    no_ray = {"Authorization": access.headers["Authorization"]}
    assert call(f"{access.dashboard}/api/jobs/", no_ray, job)[0] == 401
    assert call(f"{access.dashboard}/api/version", {"X-Ray-Authorization": f"Bearer {token}"}
                )[0] == 401
    assert apiserver.dashboards.submitted == [{"cluster": handle.name, **job}]
    proxy_backend.delete(handle, wait=True)
    assert apiserver.store.all() == []
    assert proxy_backend.wait_ready(handle, timeout=0).phase is Phase.GONE


def test_the_ray_jobs_sdk_keeps_the_proxy_path(proxy_backend: KubernetesBackend,
                                               apiserver: ApiServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's JobSubmissionClient builds every URL as address + endpoint, so the proxy prefix
    survives (ray/dashboard/modules/dashboard_sdk.py); checked here with the real SDK."""
    from ray.job_submission import JobSubmissionClient

    from ephemeral.backends.http import ca_trust
    from ephemeral.jobs.ray_jobs import ray_jobs_for

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):  # ignored: they pick no cluster
        monkeypatch.setenv(var, "http://127.0.0.9:9")
    handle = proxy_backend.create(RAY, identity=owner(RAY))
    assert proxy_backend.wait_ready(handle, timeout=5).ready
    access = proxy_backend.access(handle)
    assert access.dashboard is not None
    # What the operators and the CLI use: the URL, headers and TLS trust of access().
    client = ray_jobs_for(handle, proxy_backend).client
    assert isinstance(client, JobSubmissionClient)
    assert client._verify == ca_trust(access.verify)
    job_id = client.submit_job(entrypoint="python -c 'print(42)'")
    assert str(client.get_job_status(job_id)) in ("SUCCEEDED", "JobStatus.SUCCEEDED")
    paths = [p for _, p, _ in proxied(apiserver)]
    prefix = access.dashboard.removeprefix(apiserver.url)
    assert f"{prefix}/api/version" in paths
    assert f"{prefix}/api/jobs/" in paths
    assert apiserver.dashboards.submitted[-1]["entrypoint"] == "python -c 'print(42)'"


def test_a_spark_cluster_through_the_proxy(proxy_backend: KubernetesBackend,
                                           apiserver: ApiServer) -> None:
    handle = proxy_backend.create(SPARK, identity=owner(SPARK))
    ui = f"{apiserver.url}/api/v1/namespaces/{NAMESPACE}/services/{handle.name}-master:" \
         "web-ui/proxy"
    assert handle.endpoints.spark_ui == ui
    # Spark Connect and the master's RPC port cannot go through an HTTP proxy: DNS names.
    assert handle.endpoints.spark_connect == \
        f"sc://{handle.name}-connect.{NAMESPACE}.svc.cluster.local:15002"
    assert proxy_backend.wait_ready(handle, timeout=5).ready
    assert any(p.endswith("-master:web-ui/proxy/json/") for _, p, _ in proxied(apiserver))
    access = proxy_backend.access(handle)
    assert (access.spark_ui, access.headers) == (ui, {"Authorization":
                                                      f"Bearer {apiserver.token}"})
    proxy_backend.delete(handle, wait=True)
    assert apiserver.store.all() == []


def test_without_the_proxy_grant_readiness_fails_naming_it(proxy_backend: KubernetesBackend,
                                                           apiserver: ApiServer) -> None:
    apiserver.forbid("get", "services/proxy")
    handle = proxy_backend.create(RAY, identity=owner(RAY))
    with pytest.raises(Forbidden, match="grant verb 'get' on resource 'services/proxy'"):
        proxy_backend.wait_ready(handle, timeout=5)


def test_proxy_links_can_point_at_kubectl_proxy(kubeconfig_file: Path, operator: Operator,
                                                apiserver: ApiServer) -> None:
    backend = KubernetesBackend(KubeConfig(
        kubeconfig_path=str(kubeconfig_file), namespace=NAMESPACE, endpoint_mode="proxy",
        proxy_link_base="http://127.0.0.1:8001/", poll_interval=0.02))
    try:
        handle = backend.create(RAY, identity=owner(RAY))
        link = f"http://127.0.0.1:8001/api/v1/namespaces/{NAMESPACE}/services/" \
               f"{handle.name}-head-svc:dashboard/proxy"
        assert handle.endpoints.dashboard == link
        assert backend.get(handle.name) is not None
        assert backend.list_owned()[0].endpoints.dashboard == link
        # API calls still go to the API server itself (once KubeRay has made the token Secret,
        # which the mock's operator does a moment after the create).
        assert backend.wait_ready(handle, timeout=10).ready
        assert str(backend.access(handle).dashboard).startswith(apiserver.url)
    finally:
        backend.client.close()


def test_tls_trust_for_the_proxy_is_the_api_servers_ca(tmp_path: Path,
                                                      apiserver: ApiServer) -> None:
    """kind's API server (and most clusters') has a private CA: the Jobs SDK must trust it."""
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    kubeconfig = apiserver.kubeconfig()
    kubeconfig["clusters"][0]["cluster"] = {"server": "https://127.0.0.1:6443",
                                             "certificate-authority": str(ca)}  # never called
    path = tmp_path / "kubeconfig-ca.yaml"
    path.write_text(yaml.safe_dump(kubeconfig))
    handle = ClusterHandle.model_validate({
        "name": "c", "backend": "kubernetes", "engine": "ray", "namespace": NAMESPACE,
        "spec_ref": "ray/x@1", "spec_hash": "h", "created_at": "1970-01-01T00:00:00Z",
        "expires_at": "1970-01-01T01:00:00Z", "labels": {}})
    for mode, verify_ssl, expected in (("proxy", True, str(ca)), ("proxy", False, False),
                                       ("dns", True, True)):
        backend = KubernetesBackend(KubeConfig(kubeconfig_path=str(path), namespace=NAMESPACE,
                                               endpoint_mode=mode, verify_ssl=verify_ssl))
        assert backend.tls_verify(handle) == expected
        backend.client.close()


def test_client_certificates_cannot_become_headers(proxy_backend: KubernetesBackend,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    handle = proxy_backend.create(RAY, identity=owner(RAY))
    assert proxy_backend.wait_ready(handle, timeout=5).ready
    monkeypatch.setattr(type(proxy_backend.client), "bearer", lambda self: None)
    with pytest.raises(BackendUnavailable, match="no bearer token"):
        proxy_backend.access(handle)


# -- NetworkPolicy ----------------------------------------------------------------------------------

def test_each_cluster_gets_its_network_policy_and_loses_it_with_the_cluster(
        kubeconfig_file: Path, operator: Operator, apiserver: ApiServer) -> None:
    backend = KubernetesBackend(KubeConfig(
        kubeconfig_path=str(kubeconfig_file), namespace=NAMESPACE, http_check=False,
        client_selector={"component": "worker", "release": "airflow"},
        client_cidrs=["172.18.0.0/16"],
        poll_interval=0.02, delete_timeout=3))
    try:
        for spec in (RAY, SPARK):
            handle = backend.create(spec, identity=owner(spec))
            policies = apiserver.store.list("networkpolicies", NAMESPACE)
            primary = apiserver.store.get(
                "rayclusters" if spec is RAY else "deployments", NAMESPACE,
                handle.name if spec is RAY else f"{handle.name}-master")
            assert primary is not None
            for policy in policies:
                assert policy["metadata"]["labels"]["ephemeral.dev/cluster"] == handle.name
                assert policy["metadata"]["ownerReferences"][0]["uid"] == \
                    primary["metadata"]["uid"]
            main = next(p for p in policies if p["metadata"]["name"] == handle.name)
            rules = main["spec"]["ingress"]
            assert rules[0] == {"from": [{"podSelector": {"matchLabels": {
                "ephemeral.dev/cluster": handle.name}}}]}
            assert rules[1]["from"] == [
                {"podSelector": {"matchLabels": {"component": "worker", "release": "airflow"}}},
                {"ipBlock": {"cidr": "172.18.0.0/16"}}]
            ports = {p["port"] for p in rules[1]["ports"]}
            assert ports == ({8265, 6379, 10001} if spec is RAY else {7077, 8080, 15002, 4040})
            assert backend.wait_ready(handle, timeout=5).ready
            backend.delete(handle, wait=True)
            assert apiserver.store.list("networkpolicies", NAMESPACE) == []
    finally:
        backend.client.close()


@pytest.mark.parametrize(("selector", "warned"), [
    ({"ephemeral.dev/client": "true"}, True),  # the default before 2026-12, written out
    ({"ephemeral.dev/client": "true", "ephemeral.dev/client-instance": "staging"}, False),
    ({"release": "airflow-prod", "tier": "airflow"}, False)])
def test_a_selector_that_admits_every_deployments_clients_is_warned_of(
        selector: dict[str, str], warned: bool, kubeconfig_file: Path, operator: Operator,
        apiserver: ApiServer, caplog: pytest.LogCaptureFixture) -> None:
    """Used as given, ephemeral's client label alone admits another deployment's Airflow pods
    in a shared namespace to this one's clusters: said at each create, with the label to add."""
    backend = KubernetesBackend(KubeConfig(
        kubeconfig_path=str(kubeconfig_file), namespace=NAMESPACE, http_check=False,
        client_selector=selector, poll_interval=0.02, delete_timeout=3))
    try:
        with caplog.at_level(logging.WARNING, logger="ephemeral.backends.kubernetes.backend"):
            handle = backend.create(RAY, identity=owner(RAY))
        said = [r.getMessage() for r in caplog.records if "CLIENT_SELECTOR" in r.getMessage()]
        assert len(said) == int(warned), said
        if warned:
            assert f"ephemeral.dev/client-instance={handle.instance}" in said[0]
            assert NAMESPACE in said[0]
        policy = next(p for p in apiserver.store.list("networkpolicies", NAMESPACE)
                      if p["metadata"]["name"] == handle.name)
        assert {"podSelector": {"matchLabels": selector}} in policy["spec"]["ingress"][1]["from"]
        backend.delete(handle, wait=True)
    finally:
        backend.client.close()


def test_the_kinds_the_backend_reads_are_known_to_the_client() -> None:
    assert (SECRET.resource, NETWORKPOLICY.resource, RAYCLUSTER.resource) == (
        "secrets", "networkpolicies.networking.k8s.io", "rayclusters.ray.io")


# -- Settings -----------------------------------------------------------------------------------------

def test_endpoint_mode_auto_is_dns_in_a_pod_and_proxy_elsewhere() -> None:
    outside = KubeConfig.from_env({})
    assert outside.endpoint_mode == "auto"
    assert outside.resolved_endpoint_mode({}) == "proxy"
    assert outside.resolved_endpoint_mode({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}) == "dns"
    assert KubeConfig(in_cluster=True).resolved_endpoint_mode({}) == "dns"
    # The older spelling still works; an explicit mode is kept wherever it is decided.
    old = KubeConfig.model_validate({"endpoint_mode": "service-dns"})
    assert old.resolved_endpoint_mode({}) == "dns"
    forced = KubeConfig.from_env({"EPHEMERAL_K8S_ENDPOINT_MODE": "proxy",
                                  "KUBERNETES_SERVICE_HOST": "10.96.0.1"})
    assert forced.resolved_endpoint_mode({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}) == "proxy"


def test_a_context_is_a_kubeconfigs_even_in_a_pod() -> None:
    """In a pod, a context given meant a kubeconfig's cluster: the pod's own was used, and the
    context ignored. Given with in_cluster explicitly, it is refused."""
    from ephemeral.errors import BackendUnavailable

    pod = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    assert KubeConfig.from_env(pod).in_cluster
    chosen = KubeConfig.from_env(pod | {"EPHEMERAL_K8S_CONTEXT": "prod"})
    assert (chosen.in_cluster, chosen.context) == (False, "prod")
    with pytest.raises(BackendUnavailable, match="context 'prod' names a kubeconfig's context, "
                                                 "and in_cluster uses the pod's ServiceAccount"):
        KubeConfig.from_env(pod | {"EPHEMERAL_K8S_CONTEXT": "prod",
                                   "EPHEMERAL_K8S_IN_CLUSTER": "true"})


def test_client_settings_from_the_environment_and_connection_extras() -> None:
    env = KubeConfig.from_env({"EPHEMERAL_K8S_CLIENT_SELECTOR": "tier=airflow, component=worker",
                               "EPHEMERAL_K8S_CLIENT_CIDRS": "10.0.0.0/8,192.168.1.0/24",
                               "EPHEMERAL_K8S_PROXY_LINK_BASE": "http://127.0.0.1:8001"})
    assert env.client_selector == {"tier": "airflow", "component": "worker"}
    assert env.client_cidrs == ["10.0.0.0/8", "192.168.1.0/24"]
    assert env.proxy_link_base == "http://127.0.0.1:8001"
    assert KubeConfig().client_selector is None  # the instance's clients (render.network)
    extras = KubeConfig(client_selector={"app": "airflow"}, client_cidrs=["10.1.0.0/16"])
    assert (extras.client_selector, extras.client_cidrs) == ({"app": "airflow"},
                                                             ["10.1.0.0/16"])


@pytest.mark.parametrize(("variable", "value", "needle"), [
    ("EPHEMERAL_K8S_CLIENT_SELECTOR", "tier", "client_selector"),
    ("EPHEMERAL_K8S_CLIENT_SELECTOR", "bad key!=x", "client_selector"),
    ("EPHEMERAL_K8S_CLIENT_CIDRS", "10.0.0.1/8", "client_cidrs"),
    ("EPHEMERAL_K8S_CLIENT_CIDRS", "everyone", "client_cidrs"),
    ("EPHEMERAL_K8S_ENDPOINT_MODE", "tunnel", "endpoint_mode"),
])
def test_bad_settings_are_refused_naming_the_field(variable: str, value: str,
                                                   needle: str) -> None:
    with pytest.raises(BackendUnavailable, match=needle):
        KubeConfig.from_env({variable: value})


def test_access_hides_its_headers() -> None:
    access = Access(dashboard="http://x", headers={"Authorization": "Bearer s3cret"})
    assert "s3cret" not in repr(access) + str(access)


def test_handles_never_carry_credentials(proxy_backend: KubernetesBackend,
                                         apiserver: ApiServer) -> None:
    handle = proxy_backend.create(RAY, identity=owner(RAY))
    proxy_backend.wait_ready(handle, timeout=5)
    dumped = ClusterHandle.model_validate_json(handle.model_dump_json()).model_dump_json()
    assert apiserver.token not in dumped
    assert token_of(apiserver, handle.name) not in dumped


@pytest.mark.parametrize(("template", "refused"), [
    ("https://{cluster}-{port}.ray.example.com", None),
    ("http://127.0.0.1:8001/{namespace}/{cluster}/{port}", None),  # a port-forward
    ("http://{cluster}-{port}.ray.example.com", "must be an https URL"),
    ("https://{name}.ray.example.com", "is no placeholder"),
])
def test_an_ingress_template_is_https_and_names_known_placeholders(
        template: str, refused: str | None) -> None:
    """Every request through the ingress carries the cluster's Ray token."""
    def make() -> KubeConfig:
        return KubeConfig(namespace=NAMESPACE, endpoint_mode="ingress",
                          ingress_url_template=template)
    if refused is None:
        assert make().ingress_url(cluster="c", service="s", port="8265").startswith("http")
        return
    with pytest.raises(ValueError, match=refused) as err:
        make()
    assert "ingress_url_template" in str(err.value)


@pytest.mark.parametrize(("setting", "value"), [("EPHEMERAL_K8S_NAMESPACE", "Team_A"),
                                                ("EPHEMERAL_K8S_CLUSTER_DOMAIN", "cluster local")])
def test_a_namespace_or_domain_no_service_name_can_hold_is_refused(setting: str,
                                                                   value: str) -> None:
    """Either goes into every endpoint's Service name: accepted, it showed only as a cluster
    that never got ready, after it was made."""
    with pytest.raises(BackendUnavailable, match=setting.removeprefix("EPHEMERAL_K8S_").lower()):
        KubeConfig.from_env({setting: value})
