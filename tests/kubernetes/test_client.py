"""The client against the strict API mock: every API failure becomes an ephemeral error."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from ephemeral.backends.kubernetes import KubeConfig
from ephemeral.backends.kubernetes.client import (
    CONFIGMAP,
    DEPLOYMENT,
    INITIAL_EVENTS_END,
    POD,
    RAYCLUSTER,
    SERVICE,
    AlreadyExists,
    Forbidden,
    KubeClient,
    KubeRayMissing,
    WatchExpired,
    WatchUnsupported,
)
from ephemeral.errors import BackendError, BackendUnavailable, SpecError
from tests.kubernetes.apiserver import ApiServer, Operator
from tests.kubernetes.conftest import NAMESPACE


@pytest.fixture
def client(kubeconfig_file: Path) -> KubeClient:
    return KubeClient(KubeConfig(kubeconfig_path=str(kubeconfig_file), namespace=NAMESPACE,
                                 request_timeout=5))


def configmap(name: str = "cm", **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {"ephemeral.dev/cluster": "c1"}},
            "data": {"k": "v"}, **extra}


def raycluster(name: str = "rc", **spec_extra: Any) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": name},
            "spec": {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": {
                "containers": [{"name": "ray-head", "image": "rayproject/ray:2.60.0"}]}}},
                **spec_extra}}


def test_create_get_list_delete_roundtrip(client: KubeClient, apiserver: ApiServer,
                                          operator: Operator) -> None:
    created = client.create(configmap())
    assert created["metadata"]["resourceVersion"]
    assert client.get(CONFIGMAP, "cm")["data"] == {"k": "v"}  # type: ignore[index]
    assert [o["metadata"]["name"] for o in client.list_objects(
        CONFIGMAP, labels="ephemeral.dev/cluster in (c1,c2)")] == ["cm"]
    assert client.list_objects(CONFIGMAP, labels="ephemeral.dev/cluster!=c1") == []
    assert client.list_objects(CONFIGMAP, labels="!ephemeral.dev/cluster") == []
    operator.stop()  # no garbage collector: the foreground deletion stays pending
    assert client.delete(CONFIGMAP, "cm") is True
    pending = client.get(CONFIGMAP, "cm")
    assert pending is not None
    assert pending["metadata"]["deletionTimestamp"]
    assert pending["metadata"]["finalizers"] == ["foregroundDeletion"]
    operator.reconcile()  # no dependents: the collector lets it go
    assert client.get(CONFIGMAP, "cm") is None
    # Deleting what is gone is success (False: nothing was there).
    assert client.delete(CONFIGMAP, "cm") is False
    posted = [path for method, path, *_ in apiserver.calls if method == "POST"]
    assert posted == [f"/api/v1/namespaces/{NAMESPACE}/configmaps?fieldValidation=Strict"]
    deleted = [path for method, path, *_ in apiserver.calls if method == "DELETE"]
    assert all("propagationPolicy=Foreground" in p for p in deleted)


def test_custom_objects_go_to_their_group(client: KubeClient) -> None:
    client.create(raycluster())
    assert client.get(RAYCLUSTER, "rc")["kind"] == "RayCluster"  # type: ignore[index]
    assert client.get(RAYCLUSTER, "missing") is None


def test_duplicate_create_is_already_exists(client: KubeClient) -> None:
    client.create(configmap())
    with pytest.raises(AlreadyExists, match="already exists"):
        client.create(configmap())


def test_forbidden_names_the_verb_and_the_resource(client: KubeClient,
                                                   apiserver: ApiServer) -> None:
    apiserver.forbid("create", "rayclusters")
    with pytest.raises(Forbidden) as info:
        client.create(raycluster())
    message = str(info.value)
    assert "cannot create rayclusters.ray.io" in message
    assert f"namespace {NAMESPACE!r}" in message
    assert "grant verb 'create'" in message
    assert info.value.verb == "create"
    assert not info.value.retryable


@pytest.mark.parametrize(("message", "error", "hint"), [
    ('deployments.apps "c-master" is forbidden: exceeded quota: q, requested: '
     "count/deployments.apps=1, used: count/deployments.apps=4, limited: "
     "count/deployments.apps=4", BackendUnavailable, "raise the quota"),
    ('deployments.apps "c-master" is forbidden: unable to create new content in namespace '
     f"{NAMESPACE} because it is being terminated", BackendError, "namespace is being deleted"),
])
def test_a_403_that_is_not_rbac_does_not_ask_for_a_role(
        client: KubeClient, apiserver: ApiServer, message: str, error: type[BackendError],
        hint: str) -> None:
    # Quotas and a terminating namespace answer 403 too; granting a verb would not help.
    apiserver.fail("create", "deployments", 403, reason="Forbidden", message=message)
    with pytest.raises(error) as info:
        client.create({"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": "c-master"}})
    assert not isinstance(info.value, Forbidden)
    assert "grant" not in str(info.value)
    assert hint in str(info.value)
    assert f"create deployments.apps 'c-master' in namespace {NAMESPACE!r}" in str(info.value)


def test_unknown_field_is_refused_by_strict_validation(client: KubeClient) -> None:
    with pytest.raises(SpecError, match=r"spec\.headGroupSpec\.bogus"):
        client.create(raycluster(headGroupSpec={"rayStartParams": {}, "bogus": 1, "template": {
            "spec": {"containers": [{"name": "ray-head", "image": "x"}]}}}))


def test_schema_violation_is_a_spec_error_with_the_field(client: KubeClient) -> None:
    with pytest.raises(SpecError) as info:
        client.create(raycluster(workerGroupSpecs=[{"groupName": "w", "replicas": "two",
                                                     "minReplicas": 0, "maxReplicas": 2,
                                                     "template": {}}]))
    assert any("workerGroupSpecs" in f for f in info.value.fields)


def test_missing_crd_says_kuberay_is_not_installed(client: KubeClient,
                                                   apiserver: ApiServer) -> None:
    apiserver.crd_installed = False
    for call in (lambda: client.create(raycluster()), lambda: client.get(RAYCLUSTER, "rc"),
                 lambda: client.list_objects(RAYCLUSTER)):
        with pytest.raises(KubeRayMissing, match=r"KubeRay is not installed \(CRD "
                           r"rayclusters\.ray\.io not found\)"):
            call()


def test_server_errors_are_retryable(client: KubeClient, apiserver: ApiServer) -> None:
    apiserver.fail("list", "deployments", 503)
    with pytest.raises(BackendUnavailable) as info:
        client.list_objects(DEPLOYMENT)
    assert info.value.retryable
    assert client.list_objects(DEPLOYMENT) == []


def test_rejected_credentials(kubeconfig_file: Path, apiserver: ApiServer) -> None:
    apiserver.token = "rotated"
    client = KubeClient(KubeConfig(kubeconfig_path=str(kubeconfig_file), namespace=NAMESPACE))
    with pytest.raises(BackendError, match="unauthorized"):
        client.list_objects(CONFIGMAP)


def test_connection_refused_is_backend_unavailable(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    path = tmp_path / "kubeconfig"
    path.write_text(f"""
apiVersion: v1
kind: Config
current-context: c
clusters: [{{name: k, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: c, context: {{cluster: k, user: u}}}}]
""")
    client = KubeClient(KubeConfig(kubeconfig_path=str(path), request_timeout=2))
    with pytest.raises(BackendUnavailable, match="cannot reach the Kubernetes API server") as info:
        client.list_objects(CONFIGMAP)
    assert info.value.retryable


def test_kubeconfig_content_is_used_and_never_shown(apiserver: ApiServer) -> None:
    import yaml

    content = yaml.safe_dump(apiserver.kubeconfig())
    config = KubeConfig(kubeconfig=content, namespace=NAMESPACE)
    assert KubeClient(config).list_objects(CONFIGMAP) == []
    for text in (repr(config), str(config), config.model_dump_json(), str(config.model_dump())):
        assert apiserver.token not in text
    # A broken one names the source, never the content.
    with pytest.raises(BackendUnavailable) as info:
        KubeClient(KubeConfig(kubeconfig="users: [{token: s3cr3t}]: ]")).list_objects(CONFIGMAP)
    assert "s3cr3t" not in str(info.value)
    assert info.value.__cause__ is None


# -- watch -------------------------------------------------------------------------------------

def service(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "labels": labels}, "spec": {"clusterIP": "None"}}


def raw_watch(apiserver: ApiServer, query: str) -> tuple[int, list[dict[str, Any]], float]:
    """The mock's answer to a watch over plain HTTP: status, events, seconds it took."""
    import json
    import time
    import urllib.request

    request = urllib.request.Request(
        f"{apiserver.url}/api/v1/namespaces/{NAMESPACE}/services?watch=true&{query}",
        headers={"Authorization": f"Bearer {apiserver.token}"})
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        events = [json.loads(line) for line in resp if line.strip()]
        return resp.status, events, time.monotonic() - started


def test_the_mock_streams_watch_events_as_the_api_server_does(apiserver: ApiServer) -> None:
    apiserver.store.put("services", NAMESPACE, service("a", app="x"))
    apiserver.store.put("services", NAMESPACE, service("b", app="y"))
    # No resourceVersion: the current objects as ADDED; timeoutSeconds ends the stream.
    code, events, took = raw_watch(apiserver, "labelSelector=app%3Dx&timeoutSeconds=1")
    assert code == 200
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "a")]
    assert 0.9 <= took < 3
    # From a resourceVersion: the changes after it, selector applied to both sides.
    since = apiserver.store.resource_version()
    apiserver.store.update("services", NAMESPACE, "b",
                           lambda o: o["metadata"]["labels"].update(app="x"))
    apiserver.store.update("services", NAMESPACE, "a",
                           lambda o: o["metadata"]["labels"].update(app="z"))
    _, events, _ = raw_watch(apiserver, f"labelSelector=app%3Dx&resourceVersion={since}"
                                        "&timeoutSeconds=1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "b"), ("DELETED", "a")]
    # Too old: HTTP 200 and an ERROR event carrying a 410 Status.
    apiserver.store.compact()
    _, events, _ = raw_watch(apiserver, f"resourceVersion={since}&timeoutSeconds=1")
    [error] = events
    assert error["type"] == "ERROR"
    assert (error["object"]["kind"], error["object"]["code"]) == ("Status", 410)
    assert error["object"]["reason"] == "Expired"


def test_watch_sees_create_modify_delete_with_a_selector(client: KubeClient,
                                                         apiserver: ApiServer) -> None:
    store = apiserver.store
    store.put("services", NAMESPACE, service("before", app="x"))
    seen: list[tuple[str, str]] = []
    for type_, obj in client.watch(SERVICE, labels="app=x", timeout=5):
        seen.append((type_, obj["metadata"].get("name", "")))
        if type_ == "BOOKMARK":  # the view is complete: now change things
            assert obj["metadata"]["annotations"] == {INITIAL_EVENTS_END: "true"}
            client.create(service("mine", app="x"))
            client.create(service("other", app="y"))
            store.update("services", NAMESPACE, "mine",
                         lambda o: o["metadata"].setdefault("annotations", {}).update(a="1"))
            store.remove("services", NAMESPACE, "mine")
        if type_ == "DELETED":
            break
    assert seen == [("ADDED", "before"), ("BOOKMARK", ""), ("ADDED", "mine"),
                    ("MODIFIED", "mine"), ("DELETED", "mine")]
    # Custom objects (Watch().stream over CustomObjectsApi), by name.
    client.create(raycluster("rc"))
    client.create(raycluster("rc2"))
    events = [(t, o["metadata"].get("name")) for t, o in client.watch(RAYCLUSTER, name="rc",
                                                                      timeout=0.5)]
    assert events == [("ADDED", "rc"), ("BOOKMARK", None)]
    assert apiserver.requests("watch", "rayclusters")
    assert all("fieldSelector=metadata.name%3Drc" in p
               for p in apiserver.requests("watch", "rayclusters"))


def test_a_410_restarts_from_a_fresh_list(client: KubeClient, apiserver: ApiServer) -> None:
    store = apiserver.store
    store.put("services", NAMESPACE, service("a", app="x"))
    store.put("services", NAMESPACE, service("b", app="x"))
    seen: list[tuple[str, str]] = []
    for type_, obj in client.watch(SERVICE, labels="app=x", timeout=5):
        seen.append((type_, obj["metadata"].get("name", "")))
        if len(seen) == 3:  # the first BOOKMARK: the stream drops, and meanwhile...
            apiserver.end_watches()
            store.remove("services", NAMESPACE, "a")
            store.update("services", NAMESPACE, "b",
                         lambda o: o["metadata"].setdefault("annotations", {}).update(a="1"))
            store.put("services", NAMESPACE, service("c", app="x"))
            store.compact()  # ... the history it would resume from is gone: 410
        if len(seen) == 7:
            break
    assert seen == [("ADDED", "a"), ("ADDED", "b"), ("BOOKMARK", ""),
                    ("DELETED", "a"), ("MODIFIED", "b"), ("ADDED", "c"), ("BOOKMARK", "")]
    assert len(apiserver.requests("list", "services")) == 2
    # From a caller's own resourceVersion the watch cannot know its view: the caller relists.
    old = store.resource_version()
    store.compact()
    with pytest.raises(WatchExpired, match="too old"):
        list(client.watch(SERVICE, resource_version=old, timeout=2))


def test_watch_errors_are_translated(client: KubeClient, apiserver: ApiServer) -> None:
    apiserver.forbid("watch", "pods")
    with pytest.raises(Forbidden, match="cannot watch pods") as info:
        list(client.watch(POD, timeout=1))
    assert info.value.verb == "watch"
    assert "grant verb 'watch'" in str(info.value)
    apiserver.fail("watch", "rayclusters", 405, reason="MethodNotAllowed", message="no watch")
    with pytest.raises(WatchUnsupported, match="no watch"):
        list(client.watch(RAYCLUSTER, timeout=1))
