"""The backend contract of DESIGN.md, one suite run against every backend.

The local backend runs it with real Ray and Spark processes; the Kubernetes backend runs it
against the strict API mock of tests/kubernetes (real client, real HTTP, a KubeRay-like operator).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemeral.backends.base import ClusterBackend, OwnerSelector, Phase
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.errors import EphemeralError, IdentityConflict
from ephemeral.specs import ClusterIdentity
from ephemeral.specs.identity import PREFIX
from tests.conftest import small

READY_TIMEOUT = 180


@pytest.fixture(params=["fake", "kubernetes", pytest.param("local", marks=pytest.mark.local)])
def backend(request: pytest.FixtureRequest, ephemeral_home: Path,
            tmp_path: Path) -> Iterator[ClusterBackend]:
    if request.param == "fake":
        yield InMemoryBackend()
    elif request.param == "kubernetes":
        from tests.kubernetes.apiserver.harness import mock_backend

        # A deployment on Kubernetes sets its instance (require_instance).
        request.getfixturevalue("monkeypatch").setenv("EPHEMERAL_INSTANCE", "contract")
        with mock_backend(tmp_path) as k8s:
            yield k8s
    else:
        yield request.getfixturevalue("local_backend")


def owner(spec_name: str, run: str = "run-1", index: int = -1) -> ClusterIdentity:
    return ClusterIdentity(spec_name=spec_name, dag_id="contract", run_id=run,
                           task_id="create_cluster", map_index=index)


RAY = small("ray/adhoc-cpu", replicas=1)


def test_create_is_idempotent_and_labelled(backend: ClusterBackend) -> None:
    ident = owner(RAY.spec.name)
    first = backend.create(RAY, identity=ident)
    second = backend.create(RAY, identity=ident)
    # The backend says which call made it (never inferred from times), and never stores it.
    assert (first.adopted, second.adopted) == (False, True)
    assert second.model_copy(update={"adopted": False}) == first
    assert "adopted" not in second.model_dump()
    owned = backend.list_owned()
    assert [h.name for h in owned] == [ident.name]
    labels = owned[0].labels
    assert labels[PREFIX + "dag-id"] == "contract"
    assert labels[PREFIX + "spec-hash"] == RAY.hash
    assert labels[PREFIX + "spec"] == "adhoc-cpu"
    assert first.endpoints.dashboard
    assert first.endpoints.gcs
    assert backend.wait_ready(first, timeout=READY_TIMEOUT).phase is Phase.READY
    # Once ready, another create of the same identity still adopts rather than restarts.
    assert backend.create(RAY, identity=ident).model_copy(update={"adopted": False}) == first
    assert len(backend.list_owned()) == 1


def test_a_different_spec_under_the_same_identity_is_refused(backend: ClusterBackend) -> None:
    ident = owner(RAY.spec.name)
    backend.create(RAY, identity=ident)
    bigger = small("ray/adhoc-cpu", replicas=2)
    assert bigger.hash != RAY.hash
    with pytest.raises(IdentityConflict, match="hash"):
        backend.create(bigger, identity=ident)
    assert len(backend.list_owned()) == 1


def test_probe_with_zero_timeout_returns_at_once(backend: ClusterBackend) -> None:
    handle = backend.create(RAY, identity=owner(RAY.spec.name))
    status = backend.wait_ready(handle, timeout=0)
    assert status.phase in (Phase.STARTING, Phase.READY)
    assert status.nodes_expected in (0, 2)


def test_delete_by_identity_without_the_handle(backend: ClusterBackend) -> None:
    ident = owner(RAY.spec.name)
    handle = backend.create(RAY, identity=ident)
    backend.wait_ready(handle, timeout=READY_TIMEOUT)
    # A teardown derives the identity from its own context: no XCom, no handle.
    backend.delete(owner(RAY.spec.name), wait=True)
    assert backend.list_owned() == []
    assert backend.wait_ready(handle, timeout=0).phase is Phase.GONE


def test_delete_is_idempotent(backend: ClusterBackend) -> None:
    handle = backend.create(RAY, identity=owner(RAY.spec.name))
    backend.delete(handle, wait=True)
    backend.delete(handle, wait=True)
    backend.delete("eph-never-created-0000000000", wait=True)
    assert backend.list_owned() == []


def test_a_handle_deletes_only_its_own_life(backend: ClusterBackend) -> None:
    """Torn down and made again under its name (a cleared run), a cluster is another life:
    a handle of the first (the reaper's listing, an earlier try's) deletes nothing of it."""
    ident = owner(RAY.spec.name)
    old = backend.create(RAY, identity=ident)
    assert backend.delete(old, wait=True) is True
    time.sleep(0.01)  # lives differ by their creation moment, to the millisecond
    new = backend.create(RAY, identity=ident)
    assert backend.delete(old, wait=True) is False
    assert [h.created_ts for h in backend.list_owned()] == [new.created_ts]
    assert backend.delete(ident.name, wait=True) is True  # by name: whichever life is there
    assert backend.list_owned() == []


def test_deletions_are_issued_first_and_waited_for_later(backend: ClusterBackend) -> None:
    """``start_delete`` (the reaper's): many deletions issued before any is waited for, against
    one deadline; a handle of an ended life issues nothing (None)."""
    a = backend.create(RAY, identity=owner(RAY.spec.name, run="run-a"))
    b = backend.create(RAY, identity=owner(RAY.spec.name, run="run-b"))
    issued = [backend.start_delete(h) for h in (a, b)]
    deadline = time.monotonic() + READY_TIMEOUT
    for deletion in issued:
        assert deletion is not None
        deletion.wait(deadline)
    assert backend.list_owned() == []
    ident = owner(RAY.spec.name, run="run-c")
    old = backend.create(RAY, identity=ident)
    backend.delete(old, wait=True)
    time.sleep(0.01)
    new = backend.create(RAY, identity=ident)
    assert backend.start_delete(old) is None
    assert [h.created_ts for h in backend.list_owned()] == [new.created_ts]


def test_list_owned_filters_by_owner_labels(backend: ClusterBackend) -> None:
    a = backend.create(RAY, identity=owner(RAY.spec.name, run="run-a"))
    b = backend.create(RAY, identity=owner(RAY.spec.name, run="run-b"))
    assert a.name != b.name
    only_a = backend.list_owned(OwnerSelector(labels={PREFIX + "run-id": "run-a"}))
    assert [h.name for h in only_a] == [a.name]
    assert {h.name for h in backend.list_owned()} == {a.name, b.name}
    assert backend.get(b.name) == b
    assert backend.get("eph-missing-0000000000") is None


def test_only_project_errors_escape(backend: ClusterBackend) -> None:
    ident = owner(RAY.spec.name)
    backend.create(RAY, identity=ident)
    with pytest.raises(EphemeralError):
        backend.create(small("ray/adhoc-cpu", replicas=2), identity=ident)
