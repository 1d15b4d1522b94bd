"""Two deployments in one namespace (the strict API mock): a name is never spliced into a label
selector, and a delete by name only ever selects this deployment's objects, with the one
selector ``down``'s guard also asks with. Staging's cluster survives everything production
tries by name; only a handle production looked up with --all-instances deletes it."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ephemeral.backends.base import OwnerSelector
from ephemeral.backends.kubernetes import KubernetesBackend
from ephemeral.cli import main as cli_main
from ephemeral.errors import SpecError
from ephemeral.specs import ClusterIdentity
from ephemeral.specs.identity import INSTANCE_LABEL, PREFIX
from tests.conftest import small
from tests.kubernetes.apiserver import ApiServer
from tests.kubernetes.conftest import NAMESPACE

RAY = small("ray/adhoc-cpu", replicas=1)
KINDS = ("rayclusters", "networkpolicies", "services", "deployments", "pods")
INJECTED = [",app.kubernetes.io/component!=ray-cluster", ",ephemeral.dev/instance!=prod",
            " ", "\n"]


def objects(server: ApiServer) -> dict[str, list[str]]:
    return {plural: sorted(o["metadata"]["name"] for o in server.store.list(plural, NAMESPACE))
            for plural in KINDS}


@pytest.fixture
def staging(k8s_backend: KubernetesBackend, monkeypatch: pytest.MonkeyPatch) -> str:
    """Staging's cluster; the test then runs as production."""
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "staging")
    handle = k8s_backend.create(RAY, identity=ClusterIdentity(
        spec_name=RAY.spec.name, dag_id="train", run_id="r1", task_id="create_cluster"))
    k8s_backend.wait_ready(handle, timeout=60)  # its pods and Services are there
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    return handle.name


@pytest.mark.parametrize("suffix", INJECTED)
def test_an_injected_name_is_refused_and_staging_keeps_everything(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, staging: str, suffix: str) -> None:
    before = objects(apiserver)
    name = staging + suffix
    # What `ephemeral down NAME` did: the guard saw nothing, the delete took a NetworkPolicy.
    with pytest.raises(SpecError, match="lowercase letters"):
        k8s_backend.get(name, all_instances=True)
    with pytest.raises(SpecError, match="lowercase letters"):
        k8s_backend.delete(name, wait=True)
    assert objects(apiserver) == before


def test_prod_deleting_staging_by_name_deletes_nothing_and_returns(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, staging: str) -> None:
    """A bare name is this deployment's: no object of staging is selected, deleted or waited
    for (the wait would end in TeardownIncomplete)."""
    before = objects(apiserver)
    assert k8s_backend.get(staging) is None
    k8s_backend.delete(staging, wait=True)  # missing here is success
    assert objects(apiserver) == before
    assert objects(apiserver)["rayclusters"] == [staging]


def test_down_refuses_staging_by_name_and_an_injected_name(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, staging: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_main, "_backend", lambda _name: k8s_backend)
    before = objects(apiserver)
    plain = CliRunner().invoke(cli_main.app, ["down", staging])
    assert plain.exit_code == 1
    assert "belongs to deployment instance 'staging'" in " ".join(plain.output.split())
    injected = CliRunner().invoke(cli_main.app, ["down", staging + INJECTED[0]])
    assert injected.exit_code == 2
    assert "SpecError" in injected.output
    assert "NAME" in injected.output
    assert objects(apiserver) == before


def test_all_instances_deletes_exactly_the_looked_up_cluster(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, staging: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The explicit way across deployments: `down --all-instances NAME` deletes by the handle
    it looked up, whose own instance scopes the delete."""
    monkeypatch.setattr(cli_main, "_backend", lambda _name: k8s_backend)
    mine = k8s_backend.create(RAY, identity=ClusterIdentity.manual(RAY.spec.name, "prod-own"))
    done = CliRunner().invoke(cli_main.app, ["down", "--all-instances", staging])
    assert done.exit_code == 0, done.output
    assert objects(apiserver)["rayclusters"] == [mine.name]
    assert k8s_backend.get(mine.name) is not None


@pytest.mark.parametrize("value", ["a,b", "x!=y", "a b", "-lead", "trail-", "x" * 64, "a=b"])
def test_owner_selector_refuses_what_is_not_a_label_value(value: str) -> None:
    with pytest.raises(SpecError, match="label value"):
        OwnerSelector(labels={PREFIX + "cluster": value})
    with pytest.raises(SpecError, match="label value"):
        OwnerSelector(labels={INSTANCE_LABEL: value}, all_instances=True)


@pytest.mark.parametrize("key", ["a,b", "x!=y", "", "a b", "ephemeral.dev/"])
def test_owner_selector_refuses_what_is_not_a_label_key(key: str) -> None:
    with pytest.raises(SpecError, match="label key"):
        OwnerSelector(labels={key: "v"}, all_instances=True)


def test_one_selector_for_the_guard_and_the_delete() -> None:
    """By name: the name and this deployment's instance; by an identity or a handle: theirs."""
    mine = OwnerSelector.of_target("c1")
    assert mine.labels == {PREFIX + "cluster": "c1", INSTANCE_LABEL: mine.labels[INSTANCE_LABEL]}
    assert OwnerSelector.of_target("c1", all_instances=True).labels == {PREFIX + "cluster": "c1"}
    identity = ClusterIdentity.manual(RAY.spec.name, "c2")
    assert OwnerSelector.of_target(identity).labels == {PREFIX + "cluster": "c2",
                                                        INSTANCE_LABEL: identity.instance}
    assert OwnerSelector.of_target(identity).as_label_selector() == (
        f"{PREFIX}cluster=c2,{INSTANCE_LABEL}={identity.instance}")
