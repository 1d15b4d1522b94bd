"""A local cluster is processes of the host that made it. A handle from another host (a task
an executor ran elsewhere, a home shared over NFS) is refused naming both hosts, by every
operation: it never reads as "deleted", "gone" or "not this run's" while the cluster runs on."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ephemeral.backends.base import OwnerSelector
from ephemeral.backends.local import LocalBackend
from ephemeral.backends.local.backend import HOST_ANNOTATION
from ephemeral.backends.local.state import ClusterState, save
from ephemeral.errors import BackendUnavailable
from ephemeral.specs import ClusterIdentity, resolve

SPEC = resolve("ray/adhoc-cpu", "ci-cpu")
IDENT = ClusterIdentity(spec_name=SPEC.spec.name, dag_id="d", run_id="r", task_id="create")


@pytest.fixture
def made(ephemeral_home: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A cluster create recorded on this host, with no process started."""
    def start(self: LocalBackend, _spec: object, handle: Any, cdir: Path, slot: int,
              _devices: object) -> Any:
        save(cdir, ClusterState(handle=handle, uid="u", slot=slot, plan=[]))
        return handle

    monkeypatch.setattr(LocalBackend, "_start", start)
    return LocalBackend().create(SPEC, identity=IDENT)


def test_a_create_records_its_host(made: Any) -> None:
    assert made.annotations[HOST_ANNOTATION] == socket.gethostname()
    [listed] = LocalBackend().list_owned()
    assert listed.annotations[HOST_ANNOTATION] == socket.gethostname()


def test_every_operation_refuses_a_handle_from_another_host(
        made: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = LocalBackend()
    here = socket.gethostname()
    monkeypatch.setattr(socket, "gethostname", lambda: "worker-b")
    calls: dict[str, Callable[[], object]] = {
        "delete": lambda: backend.delete(made),
        "start_delete": lambda: backend.start_delete(made),
        "probe": lambda: backend.probe(made),
        "endpoints": lambda: backend.endpoints(made),
        "access": lambda: backend.access(made),
        "spark_auth": lambda: backend.spark_auth(made),
        "head_view": lambda: backend.head_view(made),
        "diagnose": lambda: backend.diagnose(made),
        "owned": lambda: backend.owned(made, OwnerSelector()),
    }
    for what, call in calls.items():
        with pytest.raises(BackendUnavailable) as err:
            call()
        assert f"host {here!r}" in str(err.value), what
        assert "'worker-b'" in str(err.value), what
        assert f"ephemeral down {made.name}" in str(err.value), what
    # Nothing was deleted: on its own host the cluster is still there, and deletable.
    monkeypatch.setattr(socket, "gethostname", lambda: here)
    assert [h.name for h in backend.list_owned()] == [made.name]
    assert backend.delete(made) is True
    assert backend.list_owned() == []


def test_a_handle_of_an_earlier_version_without_a_host_is_taken(made: Any) -> None:
    old = made.model_copy(update={"annotations": {
        k: v for k, v in made.annotations.items() if k != HOST_ANNOTATION}})
    assert LocalBackend().delete(old) is True
