"""The shipped Role (compose/k8s/rbac.yaml) is enough for everything the backend does, and
nothing more is needed: the API mock answers 403 to every (verb, resource) the Role does not
grant, as RBAC would, while Ray and Spark clusters are created, probed (a stuck one too, whose
timeout reads events and pods), reached with ``access`` (the Ray token's Secret), listed and
deleted, with Service DNS names and through the API server's service proxy (a job submitted
there is a POST: ``create`` on ``services/proxy``)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from ephemeral.backends.base import Phase
from ephemeral.backends.kubernetes import KubeConfig, KubernetesBackend
from ephemeral.errors import BackendError, ReadinessTimeout, TeardownIncomplete
from tests.conftest import small
from tests.kubernetes.apiserver import ApiServer, Operator, RayScenario
from tests.kubernetes.apiserver.harness import hold_until_watched
from tests.kubernetes.apiserver.store import RESOURCES
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.test_backend import owner

K8S = Path(__file__).resolve().parents[2] / "compose" / "k8s"
ROLE_FILE = K8S / "rbac.yaml"
REAPER_FILE = K8S / "reaper-cronjob.yaml"
VERBS = ("get", "list", "watch", "create", "delete", "patch")


def granted(path: Path = ROLE_FILE) -> set[tuple[str, str]]:
    [role] = [d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "Role"]
    return {(verb, res) for rule in role["rules"] for res in rule["resources"]
            for verb in rule["verbs"]}


def enforce(server: ApiServer, allowed: set[tuple[str, str]]) -> None:
    for verb in VERBS:
        for plural in [*RESOURCES, "services/proxy"]:
            if (verb, plural) not in allowed:
                server.forbid(verb, plural)


def lifecycle(backend: KubernetesBackend, held: tuple[ApiServer, Operator] | None = None
              ) -> None:
    """Create, wait, list, reach and delete a Ray and a Spark cluster, and a Spark cluster in
    operator mode (a SparkConnect); with ``held``, the mock controllers wait for the readiness
    wait's watch (so it must watch)."""
    spark_operator = KubernetesBackend(backend.config.model_copy(
        update={"spark_mode": "operator"}), client=backend.client)
    cases = [(backend, small("ray/adhoc-cpu", replicas=1)), (backend, small("spark/etl")),
             (spark_operator, small("spark/etl"))]
    for backend, spec in cases:
        start: Callable[[], None] = lambda: None  # noqa: E731
        if held is not None:
            start = hold_until_watched(*held, "rayclusters" if spec.engine == "ray"
                                       else "sparkconnects" if backend is spark_operator
                                       else "deployments")
        handle = backend.create(spec, identity=owner(spec))
        start()
        assert backend.wait_ready(handle, timeout=10).phase is Phase.READY
        assert handle.name in {h.name for h in backend.list_owned()}
        access = backend.access(handle)
        if spec.engine == "ray" and backend.config.resolved_endpoint_mode() != "dns":
            request = urllib.request.Request(
                f"{access.dashboard}/api/jobs/", headers=access.headers | {
                    "Content-Type": "application/json"},
                data=json.dumps({"entrypoint": "python -c pass"}).encode())
            with urllib.request.urlopen(request, timeout=5) as resp:
                assert resp.status == 200
        backend.delete(handle, wait=True)
        assert backend.get(handle.name) is None


def test_the_role_is_enough_for_the_whole_lifecycle(k8s_backend: KubernetesBackend,
                                                    apiserver: ApiServer, operator: Operator,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    enforce(apiserver, granted())
    lifecycle(k8s_backend, (apiserver, operator))
    # The waits watched, and never fell back to polling for want of the watch verb.
    assert apiserver.requests("watch", "rayclusters")
    assert apiserver.requests("watch", "deployments")
    assert apiserver.requests("watch", "sparkconnects")
    assert "cannot watch" not in caplog.text
    # A cluster that never gets ready: the timeout's diagnosis lists events and pods.
    operator.ray_scenario = RayScenario.IMAGE_PULL
    spec = small("ray/adhoc-cpu", replicas=1)
    handle = k8s_backend.create(spec, identity=owner(spec, run="stuck"))
    with pytest.raises(ReadinessTimeout, match="ImagePullBackOff"):
        k8s_backend.wait_ready(handle, timeout=0.5)
    k8s_backend.delete(handle, wait=True)


def test_the_role_is_enough_through_the_service_proxy(kubeconfig_file: Path,
                                                     apiserver: ApiServer,
                                                     operator: Operator) -> None:
    enforce(apiserver, granted())
    backend = KubernetesBackend(KubeConfig(
        kubeconfig_path=str(kubeconfig_file), namespace=NAMESPACE, endpoint_mode="proxy",
        poll_interval=0.02, delete_timeout=3, request_timeout=5))
    try:
        lifecycle(backend)
    finally:
        backend.client.close()
    verbs = {m for m, p, *_ in apiserver.calls if "/proxy/" in p}
    assert verbs == {"GET", "POST"}


def test_a_role_from_before_operator_mode_still_runs_standalone_clusters(
        k8s_backend: KubernetesBackend, apiserver: ApiServer) -> None:
    # Such an identity cannot have made a SparkConnect, but another may have: it makes, waits
    # for and deletes its own clusters by their handles, and what would hide the SparkConnects
    # it cannot see (a listing: ls, the reaper; a deletion by name) fails naming the rule.
    enforce(apiserver, {(v, r) for v, r in granted() if r != "sparkconnects"})
    for spec in (small("ray/adhoc-cpu", replicas=1), small("spark/etl")):
        handle = k8s_backend.create(spec, identity=owner(spec))
        assert k8s_backend.wait_ready(handle, timeout=10).phase is Phase.READY
        assert k8s_backend.delete(handle, wait=True)
    with pytest.raises(BackendError, match="cannot list sparkconnects"):
        k8s_backend.list_owned()
    with pytest.raises(TeardownIncomplete, match="cannot get sparkconnects"):
        k8s_backend.delete("no-such-cluster")


def test_the_role_grants_secrets_only_get() -> None:
    assert {v for v, r in granted() if r == "secrets"} == {"get"}
    assert {v for v, r in granted() if r == "services/proxy"} == {"get", "create"}


@pytest.mark.parametrize(("verb", "plural"), [("create", "rayclusters"), ("delete", "services"),
                                              ("list", "pods"), ("create", "deployments"),
                                              ("create", "networkpolicies"), ("get", "secrets")])
def test_without_a_rule_the_backend_names_what_to_grant(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, operator: Operator,
        verb: str, plural: str) -> None:
    assert (verb, plural) in granted()
    enforce(apiserver, granted() - {(verb, plural)})
    # The Spark Services are owned by the master, and the mock's collector would take them at
    # once; a real one may not have yet when the backend lists them, and the backend deletes them.
    if (verb, plural) == ("delete", "services"):
        operator.slow_collection = {("Deployment", "services")}
    with pytest.raises(BackendError, match=rf"{verb}.*{plural}"):
        lifecycle(k8s_backend)


def test_the_reapers_role_finds_reads_and_deletes_but_never_creates(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, operator: Operator) -> None:
    reaper = granted(REAPER_FILE)
    assert {verb for verb, _ in reaper} == {"get", "list", "watch", "delete"}
    made = []
    for spec in (small("ray/adhoc-cpu", replicas=1), small("spark/etl")):
        handle = k8s_backend.create(spec, identity=owner(spec))
        assert k8s_backend.wait_ready(handle, timeout=10).ready
        made.append(handle.name)
    enforce(apiserver, reaper)
    owned = k8s_backend.list_owned()
    assert sorted(h.name for h in owned) == sorted(made)
    for handle in owned:
        k8s_backend.access(handle)  # is it busy? The Ray token, read by name
        k8s_backend.delete(handle, wait=True)
    assert apiserver.store.all() == []
    spec = small("ray/adhoc-cpu", replicas=1)
    with pytest.raises(BackendError, match="cannot create rayclusters"):
        k8s_backend.create(spec, identity=owner(spec, run="reaper-made"))
