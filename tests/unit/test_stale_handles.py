"""Callers that list clusters and delete them later (the run-end listener, the reaper) delete
only the life they listed: the name may have been torn down and made again in between."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.backends.base import ClusterHandle, OwnerSelector
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.specs import ClusterIdentity, resolve

SPEC = resolve("ray/adhoc-cpu", "ci-cpu")
IDENT = ClusterIdentity(spec_name=SPEC.spec.name, dag_id="d", run_id="r1", task_id="create")


class ListedEarlier(InMemoryBackend):
    """Its first listing is the one taken before the name was made again."""

    def __init__(self) -> None:
        super().__init__()
        self.stale: list[ClusterHandle] | None = None

    def list_owned(self, selector: OwnerSelector | None = None) -> list[ClusterHandle]:
        if self.stale is not None:
            stale, self.stale = self.stale, None
            return stale
        return super().list_owned(selector)


def test_the_run_end_leaves_a_newer_life_alone(ephemeral_home: Any) -> None:
    from ephemeral.airflow.run_end import delete_run_clusters

    backend = ListedEarlier()
    old = backend.create(SPEC, identity=IDENT)
    backend.delete(old)
    time.sleep(0.01)
    new = backend.create(SPEC, identity=IDENT)
    backend.stale = [old]
    assert delete_run_clusters("d", "r1", backend=backend, failed_setup=lambda _h: False) == []
    assert [h.created_ts for h in backend.list_owned()] == [new.created_ts]


def test_the_local_backend_deletes_only_the_life_a_handle_names(tmp_path: Any) -> None:
    """Its state file records the life (no process needed: a cluster of no nodes)."""
    from ephemeral.backends.base import Endpoints, make_handle
    from ephemeral.backends.local import LocalBackend
    from ephemeral.backends.local.state import ClusterState, load, save

    backend = LocalBackend(home=tmp_path)
    cdir = tmp_path / "clusters" / IDENT.name

    def made() -> ClusterHandle:
        handle = make_handle(SPEC, IDENT, backend="local", endpoints=Endpoints())
        save(cdir, ClusterState(handle=handle, uid="u", slot=0, plan=[]))
        return handle

    old = made()
    time.sleep(0.01)
    new = made()  # the name made again after the first was torn down
    assert backend.delete(old, wait=False) is False
    state = load(cdir)
    assert state is not None
    assert state.handle.created_ts == new.created_ts
    assert backend.delete(new, wait=False) is True
    assert load(cdir) is None


def test_a_job_task_never_records_a_release_of_a_newer_cluster(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A job task's release after its last job: when the name is a newer cluster's by then,
    nothing is deleted and no deletion is recorded as the job task's."""
    from ephemeral.airflow import release

    recorded: list[object] = []
    monkeypatch.setattr("ephemeral.report.deletions.record_deleted",
                        lambda *a, **k: recorded.append(k))
    monkeypatch.setattr("ephemeral.report.store.write_release", lambda *a, **k: None)
    monkeypatch.setattr("ephemeral.report.engines.engine_jobs", lambda backend, handle: [])
    from ephemeral.activity import Activity

    monkeypatch.setattr("ephemeral.activity.cluster_activity",  # nothing else runs on it
                        lambda backend, handle: Activity(False, "no Ray job pending or running"))
    deleting: list[object] = []

    class Newer:
        def delete(self, handle: object, *, wait: bool = True) -> bool:
            deleting.append(handle)
            return False

    handle = SimpleNamespace(name="eph-x", created_at="2026-11-30T00:00:00Z")
    by = {"task": "job", "dag_id": "d", "run_id": "r"}
    assert release.release(Newer(), handle, by, {}) is None  # type: ignore[arg-type]
    assert deleting == [handle]
    assert recorded == []
