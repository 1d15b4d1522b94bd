"""A reap pass issues every deletion before it waits for any, and waits for all of them against
one budget: clusters stuck in deletion (a finalizer nobody clears) hold back no other, and a
later pass reports them without waiting on them again."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from ephemeral.backends.base import ClusterHandle
from ephemeral.backends.kubernetes import KubernetesBackend
from ephemeral.reaper import reap
from ephemeral.specs import ClusterIdentity
from tests.conftest import small
from tests.kubernetes.apiserver import ApiServer
from tests.kubernetes.conftest import NAMESPACE

RAY = small("ray/adhoc-cpu", replicas=1)
STUCK = ("aa-stuck", "ab-stuck")  # listed first
BUDGET = 1.5


def test_clusters_stuck_in_deletion_hold_back_no_other(
        k8s_backend: KubernetesBackend, apiserver: ApiServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A long delete_timeout: the pass's budget bounds the waits, not one timeout per cluster.
    backend = KubernetesBackend(k8s_backend.config.model_copy(update={"delete_timeout": 60.0}))
    for name in (*STUCK, "zz-leak"):
        backend.create(RAY, identity=ClusterIdentity.manual(RAY.spec.name, name))
    for name in STUCK:  # e.g. a third-party finalizer that hangs
        apiserver.store.update("rayclusters", NAMESPACE, name,
                               lambda o: o["metadata"].update(finalizers=["example.com/hold"]))
    told: list[tuple[str, bool]] = []

    def notify(handle: ClusterHandle, reason: str, error: Exception | None = None) -> None:
        told.append((handle.name, error is None))

    monkeypatch.setattr("ephemeral.reaper.notify_reaped", notify)
    expired = datetime.now(UTC) + timedelta(days=30)
    start = time.monotonic()
    first = {d.cluster: d for d in reap(backend, lookup=None, now=expired,
                                        delete_budget=BUDGET)}
    assert time.monotonic() - start < BUDGET + 3  # one budget for the pass, not one each
    assert first["zz-leak"].deleted
    assert not first["zz-leak"].error
    for name in STUCK:
        assert not first[name].deleted
        assert "not gone within the pass's 2s" in first[name].error
        assert "finalizers: example.com/hold" in first[name].error
    # Every DELETE went out before the pass watched anything go.
    calls = [(method, path) for method, path, *_ in apiserver.calls]
    deletes = [i for i, (method, path) in enumerate(calls)
               if method == "DELETE" and "/rayclusters/" in path]
    watches = [i for i, (method, path) in enumerate(calls) if "watch=" in path]
    assert len(deletes) == 3
    assert max(deletes) < min(watches)
    # Completed or not, each deletion is heard of.
    assert sorted(told) == [("aa-stuck", False), ("ab-stuck", False), ("zz-leak", True)]

    # The next pass reports them under way, asks for nothing again, waits for nothing.
    told.clear()
    before = len(apiserver.calls)
    start = time.monotonic()
    again = reap(backend, lookup=None, now=datetime.now(UTC), delete_budget=30)
    assert time.monotonic() - start < 1.0
    assert [(d.cluster, d.deleting, d.deleted, d.error) for d in again] == [
        (name, True, False, "") for name in STUCK]
    assert all("deleting since " in d.reason and "finalizers example.com/hold" in d.reason
               for d in again)
    assert not [c for c in apiserver.calls[before:] if c[0] == "DELETE"]
    assert told == []
    # Deleting for longer than a pass's budget: stuck, an error (the pass fails).
    later = reap(backend, lookup=None, now=datetime.now(UTC) + timedelta(seconds=60),
                 delete_budget=30)
    assert all("is a finalizer stuck?" in d.error for d in later)
