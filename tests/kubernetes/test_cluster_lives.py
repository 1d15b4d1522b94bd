"""A handle names one life of its cluster: a delete by a handle held since (the reaper's
listing, an earlier try's) never removes a newer cluster made under the same name after the
first was torn down (a cleared run's setup), and every DELETE carries the uid it verified.
Whether a create made the cluster or found it is what the backend says, never a guess."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ephemeral.backends.kubernetes import KubernetesBackend
from ephemeral.backends.kubernetes.client import CONFIGMAP, RAYCLUSTER, Kind, KubeClient, Replaced
from ephemeral.errors import ReadinessTimeout
from ephemeral.lifecycle import provision
from ephemeral.reaper import RunInfo, reap
from ephemeral.specs import ClusterIdentity
from ephemeral.specs.identity import parse_utc
from tests.conftest import small
from tests.kubernetes.apiserver import ApiServer, Operator
from tests.kubernetes.conftest import NAMESPACE

RAY = small("ray/adhoc-cpu", replicas=1)


def ident() -> ClusterIdentity:
    return ClusterIdentity(spec_name=RAY.spec.name, dag_id="train", run_id="r1",
                           task_id="create_cluster")


def uid_of(apiserver: ApiServer, name: str) -> str | None:
    obj = apiserver.store.get("rayclusters", NAMESPACE, name)
    return obj["metadata"]["uid"] if obj else None


def test_a_stale_handle_leaves_the_newer_life_alone(k8s_backend: KubernetesBackend,
                                                    apiserver: ApiServer) -> None:
    old = k8s_backend.create(RAY, identity=ident())
    [listed] = k8s_backend.list_owned()  # the reaper's view
    k8s_backend.delete(old, wait=True)  # the run's teardown
    time.sleep(0.01)
    new = k8s_backend.create(RAY, identity=ident())  # the cleared run's setup
    assert new.created_ts != old.created_ts
    uid = uid_of(apiserver, new.name)
    assert k8s_backend.delete(listed, wait=True) is False
    assert uid_of(apiserver, new.name) == uid
    assert not [c for c in apiserver.calls if c[0] == "DELETE" and uid in c[1]]
    assert k8s_backend.delete(new, wait=True) is True  # its own handle deletes it
    assert uid_of(apiserver, new.name) is None


def test_a_life_made_between_the_look_and_the_delete_is_kept(
        k8s_backend: KubernetesBackend, apiserver: ApiServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The primary verified, then replaced before the DELETE: the uid precondition (409)."""
    old = k8s_backend.create(RAY, identity=ident())
    real = KubeClient.delete
    newer: dict[str, Any] = {}

    def replacing_first(self: KubeClient, kind: Kind, name: str, *,
                        uid: str | None = None) -> bool:
        if kind is RAYCLUSTER and not newer:
            obj = apiserver.store.get("rayclusters", NAMESPACE, name)
            assert obj is not None
            apiserver.store.remove("rayclusters", NAMESPACE, name)
            newer.update(apiserver.store.put("rayclusters", NAMESPACE, obj))
        return real(self, kind, name, uid=uid)

    monkeypatch.setattr(KubeClient, "delete", replacing_first)
    assert k8s_backend.delete(old, wait=True) is False
    assert uid_of(apiserver, old.name) == newer["metadata"]["uid"]
    [body] = [json.loads(c[3]) for c in apiserver.calls
              if c[0] == "DELETE" and "/rayclusters/" in c[1]]
    assert body["preconditions"]["uid"] not in (None, newer["metadata"]["uid"])


def test_undo_deletes_only_what_the_create_made(k8s_backend: KubernetesBackend,
                                                apiserver: ApiServer) -> None:
    apiserver.fail("create", "networkpolicies", 500, times=1)
    with pytest.raises(Exception, match="request timed out"):
        k8s_backend.create(RAY, identity=ident())
    [body] = [json.loads(c[3]) for c in apiserver.calls
              if c[0] == "DELETE" and "/rayclusters/" in c[1]]
    assert body["preconditions"]["uid"]


def test_the_mock_honours_delete_preconditions(k8s_backend: KubernetesBackend) -> None:
    client = k8s_backend.client
    made = client.create({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": "cm"}, "data": {"k": "v"}})
    with pytest.raises(Replaced, match="Precondition failed"):
        client.delete(CONFIGMAP, "cm", uid="not-its-uid")
    assert client.get(CONFIGMAP, "cm") is not None
    assert client.delete(CONFIGMAP, "cm", uid=made["metadata"]["uid"]) is True


def test_the_reaper_deletes_only_the_life_it_judged(k8s_backend: KubernetesBackend,
                                                    apiserver: ApiServer) -> None:
    old = k8s_backend.create(RAY, identity=ident())
    lives: dict[str, Any] = {}

    def lookup(_dag: str, _run: str) -> RunInfo:
        # Asked about the run: it ended an hour ago; right then it is cleared, its teardown
        # deletes the cluster and the re-run's setup makes it again.
        k8s_backend.delete(old, wait=True)
        lives["new"] = k8s_backend.create(RAY, identity=ident())
        return RunInfo("success", datetime.now(UTC) - timedelta(hours=1))

    [d] = reap(k8s_backend, lookup=lookup, grace=600)
    assert (d.delete, d.deleted) == (False, False)
    assert "another cluster since" in d.reason
    assert [h.created_ts for h in k8s_backend.list_owned()] == [lives["new"].created_ts]


def test_a_second_up_in_the_same_second_leaves_the_first_ones_cluster(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, operator: Operator) -> None:
    """Adoption is what create says, not a comparison of whole-second creation times."""
    operator.paused = True  # the first `up` still waits for its cluster
    # The premise (both calls in one wall-clock second) can be lost on a loaded machine: each
    # try uses a run of its own, and what must never happen is checked on every try.
    for attempt in range(5):
        while datetime.now(UTC).microsecond > 200_000:  # early in a second: both calls in it
            time.sleep(0.01)
        identity = ClusterIdentity(spec_name=RAY.spec.name, dag_id="train",
                                   run_id=f"r{attempt}", task_id="create_cluster")
        first = k8s_backend.create(RAY, identity=identity)
        with pytest.raises(ReadinessTimeout):  # the second `up` of the name times out
            provision(k8s_backend, RAY, identity, timeout=0.3)
        same_second = datetime.now(UTC).replace(microsecond=0) == parse_utc(first.created_at)
        assert uid_of(apiserver, first.name) is not None
        assert not [c for c in apiserver.calls if c[0] == "DELETE"]
        if same_second:
            return
    pytest.fail("five tries could not make both calls within one second")
