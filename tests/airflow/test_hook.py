"""The ``ephemeral`` connection type: its form as Airflow reads it, its fields, how a task's
backend and instance are resolved from it, and ``test_connection`` against the strict API mock
(one SelfSubjectAccessReview per verb the shipped Role grants) and on the local backend."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ephemeral.errors import BackendUnavailable
from tests.kubernetes.apiserver import ApiServer
from tests.kubernetes.test_rbac_sufficient import enforce, granted

NAMESPACE = "hook-test"
TOKEN = "tok-hook-5d2e"


def connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, conn_type: str,
               **extra: Any) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}",
                       json.dumps({"conn_type": conn_type, "extra": extra}))


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: str
           ) -> Iterator[ApiServer]:
    """The API mock, a kubernetes connection ``k8s`` to it and an ephemeral connection
    ``eph`` that uses it."""
    api = ApiServer(namespace="elsewhere", token=TOKEN).start()
    try:
        kubeconfig = tmp_path / "kubeconfig.yaml"
        api.kubeconfig(kubeconfig)
        connection(monkeypatch, "k8s", "kubernetes", kube_config_path=str(kubeconfig),
                   namespace="elsewhere", ephemeral_endpoint_mode="dns")
        connection(monkeypatch, "eph", "ephemeral", backend="kubernetes", namespace=NAMESPACE,
                   instance="staging", kubernetes_conn_id="k8s")
        yield api
    finally:
        api.stop()


def check(conn_id: str = "eph") -> tuple[bool, str]:
    """What the connection form's Test button shows."""
    from ephemeral.airflow.hooks import EphemeralHook

    return EphemeralHook(conn_id).test_connection()


# -- the form ------------------------------------------------------------------------------

def test_airflow_shows_the_connection_form_from_the_provider_info(airflow_db: str) -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    hooks = manager.hooks
    assert hooks["ephemeral"] is not None
    assert hooks["ephemeral"].hook_class_name == "ephemeral.airflow.hooks.EphemeralHook"
    assert hooks["ephemeral"].connection_id_attribute_name == "ephemeral_conn_id"
    widgets = manager.connection_form_widgets
    for field in ("backend", "namespace", "instance", "kubernetes_conn_id"):
        assert f"extra__ephemeral__{field}" in widgets
    assert widgets["extra__ephemeral__backend"].field["schema"]["enum"] == [
        None, "local", "kubernetes"]
    assert "password" in manager.field_behaviours["ephemeral"]["hidden_fields"]


def test_the_checks_ask_for_exactly_what_the_shipped_role_grants() -> None:
    from ephemeral.airflow.hooks import RULES

    asked = {(verb, rule.resource) for rule in RULES for verb in rule.verbs}
    assert asked == granted()


# -- the connection's fields ---------------------------------------------------------------

@pytest.mark.parametrize(("extra", "error"), [
    ({"backend": "yarn"}, "backend 'yarn' is not one of local, kubernetes"),
    ({"namspace": "ml"}, "unknown field namspace"),
    ({"backend": "local", "namespace": "ml"}, "are for the kubernetes backend"),
    ({"namespace": "ML_team"}, "not a Kubernetes namespace name"),
    ({"instance": "prod eu"}, "must be 1-40 characters"),
    ({"instance": "Prod_EU.x"}, "must be 1-40 characters"),  # a label value, not an instance
])
def test_a_bad_field_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, airflow_db: str,
                                        extra: dict[str, str], error: str) -> None:
    from ephemeral.airflow.backends import resolve

    connection(monkeypatch, "bad", "ephemeral", **extra)
    with pytest.raises(BackendUnavailable, match=error):
        resolve(conn_id="bad")
    ok, message = check("bad")
    assert not ok
    assert error.split("'")[0] in message


def test_the_legacy_prefixed_extras_are_read_too(monkeypatch: pytest.MonkeyPatch,
                                                 airflow_db: str) -> None:
    from ephemeral.airflow.hooks import EphemeralHook

    connection(monkeypatch, "old", "ephemeral", extra__ephemeral__backend="local",
               extra__ephemeral__instance="qa")
    conn = EphemeralHook("old").get_conn()
    assert (conn.backend, conn.instance) == ("local", "qa")


def test_the_connection_sets_backend_namespace_and_instance(server: ApiServer) -> None:
    from ephemeral.airflow.backends import resolve
    from ephemeral.backends.kubernetes import KubernetesBackend

    target = resolve(conn_id="eph")
    assert isinstance(target.backend, KubernetesBackend)
    assert target.backend.config.namespace == NAMESPACE  # over the kubernetes connection's
    assert target.backend.config.endpoint_mode == "dns"  # its ephemeral_* extras still apply
    assert target.instance == "staging"
    assert target.connection == "eph"  # what handles record
    # The kubernetes connection alone: its own namespace, this deployment's instance.
    direct = resolve(None, None, "k8s")
    assert isinstance(direct.backend, KubernetesBackend)
    assert direct.backend.config.namespace == "elsewhere"
    assert direct.connection == "k8s"
    assert resolve(conn_id="k8s").connection == "k8s"  # a kubernetes conn_id works the same


def test_our_extras_of_a_kubernetes_connection_are_read_with_the_legacy_prefix_too(
        server: ApiServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A connection saved by an older form (extra__kubernetes__<name>): the provider's hook
    reads its own fields so; ours were ignored (the Spark mode stayed standalone)."""
    from ephemeral.airflow.backends import resolve
    from ephemeral.backends.kubernetes import KubernetesBackend

    connection(monkeypatch, "k8s_old", "kubernetes",
               extra__kubernetes__kube_config_path=str(tmp_path / "kubeconfig.yaml"),
               extra__kubernetes__ephemeral_spark_mode="operator")
    target = resolve(None, None, "k8s_old")
    assert isinstance(target.backend, KubernetesBackend)
    assert target.backend.config.spark_mode == "operator"


def test_kubernetes_settings_a_connection_overrides_are_said_not_to_apply(
        server: ApiServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A connection's extras are its whole config: EPHEMERAL_K8S_* values that differ (the
    clients a NetworkPolicy admits, the Spark mode) silently did not apply."""
    from ephemeral.airflow.backends import resolve

    monkeypatch.setenv("EPHEMERAL_K8S_CLIENT_CIDRS", "10.0.0.0/8")
    monkeypatch.setenv("EPHEMERAL_K8S_ENDPOINT_MODE", "dns")  # the connection's own: said not
    monkeypatch.setenv("EPHEMERAL_K8S_NAMESPACE", "elsewhere")  # the k8s connection's own
    resolve(None, None, "k8s")
    resolve(conn_id="eph")  # its namespace over the kubernetes connection's: not a setting's
    said = [r.getMessage() for r in caplog.records if "do not apply" in r.getMessage()]
    assert said == ["connection 'k8s' is used, so EPHEMERAL_K8S_CLIENT_CIDRS (set otherwise) do "
                    "not apply: set them as its ephemeral_* extras (namespace: its own), or "
                    "unset them"] * 2


def test_a_task_naming_no_target_reaches_the_deployments_connection(
        server: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """[ephemeral] kubernetes_conn_id is where the run-end cleanup and the reaper look: a
    setup naming no connection made its clusters elsewhere (the local backend, or the
    EPHEMERAL_K8S_* namespace), where nothing deleting them looked."""
    from ephemeral.airflow.backends import resolve
    from ephemeral.airflow.run_end import configured_backend
    from ephemeral.backends.kubernetes import KubernetesBackend
    from ephemeral.backends.local import LocalBackend

    monkeypatch.setenv("EPHEMERAL_KUBERNETES_CONN_ID", "k8s")
    for target in (resolve(), resolve("kubernetes")):
        assert isinstance(target.backend, KubernetesBackend)
        assert target.backend.config.namespace == "elsewhere"  # the connection's
        assert target.connection == "k8s"  # recorded: the teardown resolves the same
    cleanup = configured_backend()
    assert isinstance(cleanup, KubernetesBackend)
    assert cleanup.config.namespace == "elsewhere"
    assert isinstance(resolve("local").backend, LocalBackend)  # a task's own choice stands
    assert resolve(conn_id="eph").connection == "eph"


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"backend": "local"}, "backend 'local' but connection 'eph' says 'kubernetes'"),
    ({"kubernetes_conn_id": "k8s_other"}, "but connection 'eph' uses 'k8s'"),
])
def test_settings_given_twice_must_agree(server: ApiServer, kwargs: dict[str, str],
                                         error: str) -> None:
    from ephemeral.airflow.backends import resolve

    with pytest.raises(BackendUnavailable, match=error):
        resolve(conn_id="eph", **kwargs)


def test_without_the_provider_the_error_names_the_extra(
        server: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.airflow.backends import resolve

    monkeypatch.setitem(sys.modules, "airflow.providers.cncf.kubernetes.hooks.kubernetes", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'airflow-provider-ephemeral\[kubernetes\]'"):
        resolve(conn_id="eph")


def test_the_providers_hook_parses_the_kubernetes_connection(
        server: ApiServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Its rules, not a copy of them: e.g. two credential sources at once are refused."""
    from ephemeral.airflow.backends import resolve

    connection(monkeypatch, "k8s", "kubernetes", kube_config_path=str(tmp_path / "k"),
               in_cluster=True)
    with pytest.raises(BackendUnavailable, match="mutually exclusive"):
        resolve(conn_id="eph")


# -- test_connection on Kubernetes ----------------------------------------------------------

def test_the_shipped_role_passes(server: ApiServer) -> None:
    from ephemeral.airflow.hooks import RULES

    enforce(server, granted())
    ok, message = check()
    assert ok, message
    assert f"namespace {NAMESPACE}" in message
    assert "instance staging" in message
    assert len(server.reviews) == sum(len(rule.verbs) for rule in RULES)
    assert {ns for *_, ns in server.reviews} == {NAMESPACE}
    assert ("create", "services/proxy", NAMESPACE) in server.reviews


def test_each_denied_verb_is_named(server: ApiServer) -> None:
    enforce(server, granted() - {("delete", "rayclusters"), ("get", "secrets")})
    ok, message = check()
    assert not ok
    assert "denied delete rayclusters.ray.io, get secrets" in message
    assert "compose/k8s/rbac.yaml" in message


def test_a_denial_the_settings_do_not_need_is_reported_but_passes(
        server: ApiServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    enforce(server, granted() - {("create", "sparkconnects"), ("get", "services/proxy")})
    ok, message = check()  # standalone Spark, endpoint mode dns
    assert ok, message
    assert "not needed with these settings: create sparkconnects" in message
    assert "get services/proxy" in message
    kubeconfig = tmp_path / "kubeconfig.yaml"
    connection(monkeypatch, "k8s", "kubernetes", kube_config_path=str(kubeconfig),
               ephemeral_spark_mode="operator", ephemeral_endpoint_mode="proxy")
    ok, message = check()
    assert not ok
    assert "denied create sparkconnects.sparkoperator.k8s.io, get services/proxy" in message


def test_an_unreachable_api_server_says_so(server: ApiServer, monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    config = server.kubeconfig()
    config["clusters"][0]["cluster"]["server"] = "http://127.0.0.1:9"  # discard: refused
    path = tmp_path / "nowhere.yaml"
    path.write_text(json.dumps(config))
    connection(monkeypatch, "k8s", "kubernetes", kube_config_path=str(path))
    ok, message = check()
    assert not ok
    assert "http://127.0.0.1:9 unreachable" in message


def test_credentials_the_server_refuses_say_so(server: ApiServer) -> None:
    server.token = "rotated"
    ok, message = check()
    assert not ok
    assert "refused the access review (401" in message


# -- test_connection on the local backend --------------------------------------------------

def test_local_checks_the_home_and_the_engines(monkeypatch: pytest.MonkeyPatch,
                                               airflow_db: str, tmp_path: Path) -> None:
    connection(monkeypatch, "here", "ephemeral", backend="local", instance="laptop")
    ok, message = check("here")
    assert ok, message
    assert "ray and pyspark importable; instance laptop" in message
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("EPHEMERAL_HOME", str(blocker / "home"))
    ok, message = check("here")
    assert not ok
    assert f"EPHEMERAL_HOME {blocker / 'home'} is not writable" in message


def test_the_api_servers_test_button_path(server: ApiServer,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """As Airflow's POST /connections/test does it: a transient connection exported as a URI
    to the environment, its hook found through the provider info, then ``test_connection``."""
    from airflow.models.connection import Connection

    enforce(server, granted() - {("watch", "pods")})
    conn = Connection(conn_id="transient1", conn_type="ephemeral", extra=json.dumps({
        "backend": "kubernetes", "namespace": NAMESPACE, "kubernetes_conn_id": "k8s"}))
    monkeypatch.setenv("AIRFLOW_CONN_TRANSIENT1", conn.get_uri())
    ok, message = conn.test_connection()
    assert not ok
    assert message.endswith("denied watch pods; apply compose/k8s/rbac.yaml "
                            "(docs/kubernetes.md) to this identity"), message
