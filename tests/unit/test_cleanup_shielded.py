"""A second Ctrl-C (or SIGTERM, SIGHUP) while a failed setup deletes its cluster cut the
deletion short: the local cluster stayed in state "deleting", which the reaper kept until its
ttl, holding one of the host's slots. The deletion now finishes first, and the reaper finishes
one that was cut short anyway (its deleter killed) at its next pass, whatever its expiry."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from ephemeral.backends.fake import InMemoryBackend
from ephemeral.backends.local import LocalBackend
from ephemeral.errors import ReadinessTimeout
from ephemeral.lifecycle import delete_after_failure
from ephemeral.specs import ClusterIdentity, resolve
from tests.conftest import small

SPEC = small("ray/adhoc-cpu", replicas=1)


class SecondInterrupt(InMemoryBackend):
    """Its deletion is interrupted halfway (as a second Ctrl-C would), then finishes."""

    def __init__(self) -> None:
        super().__init__(ready_after_probes=1)
        self.finished = False

    def delete(self, target: object, *, wait: bool = True) -> bool:
        os.kill(os.getpid(), signal.SIGINT)
        self.finished = super().delete(target, wait=wait)  # type: ignore[arg-type]
        return self.finished


@pytest.fixture(autouse=True)
def _ctrl_c_as_from_a_terminal() -> None:
    """SIGINT as Python sets it when started from a terminal: a run started in the background
    (`cmd &` in a script, as a CI runner may) inherits it ignored, which the held signals keep
    ignored, so the second Ctrl-C these tests send would never come. The run's own handler is
    put back after each test (conftest's ``_stop_signals_kept``)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _made(backend: InMemoryBackend) -> object:
    return backend.create(SPEC, identity=ClusterIdentity.manual(SPEC.spec.name, "c"))


def test_a_second_interrupt_waits_for_the_deletion_of_an_interrupted_setup() -> None:
    backend = SecondInterrupt()
    handle = _made(backend)
    first = KeyboardInterrupt()
    before = signal.getsignal(signal.SIGINT)
    try:
        deleted = delete_after_failure(backend, handle, first)  # type: ignore[arg-type]
    except KeyboardInterrupt:  # the deletion cut short (a failure, not pytest's end)
        deleted = None
    assert deleted is True
    assert backend.finished
    assert backend.get("c") is None
    assert "c was deleted after the failure" in first.__notes__[0]
    assert signal.getsignal(signal.SIGINT) is before  # the handler is back


def test_an_interrupt_during_the_deletion_after_another_failure_comes_after_it() -> None:
    """The interrupt is not lost (the command still stops), and says what became of the
    cluster, as the failure it replaces did."""
    backend = SecondInterrupt()
    handle = _made(backend)
    timeout = ReadinessTimeout("not ready in 600s")
    with pytest.raises(KeyboardInterrupt) as stopped:
        delete_after_failure(backend, handle, timeout)  # type: ignore[arg-type]
    assert backend.finished
    assert "c was deleted after the failure" in stopped.value.__notes__[0]


def test_outside_the_main_thread_nothing_is_held() -> None:
    """Signal handlers can be set in the main thread only (a triggerer runs its events in
    others): the deletion there is as before."""
    backend = InMemoryBackend(ready_after_probes=1)
    handle = _made(backend)
    result: list[bool] = []
    err = ReadinessTimeout("x")
    thread = threading.Thread(target=lambda: result.append(
        delete_after_failure(backend, handle, err)))  # type: ignore[arg-type]
    thread.start()
    thread.join(30)
    assert result == [True]


def test_the_reaper_finishes_a_local_deletion_that_was_cut_short(ephemeral_home: Path) -> None:
    """A local cluster whose deleter was stopped (state "deleting", no deletion under way) is
    not another backend's deletion going on in the background: it goes at once, however far
    its expiry."""
    from ephemeral.backends.base import Endpoints, make_handle
    from ephemeral.backends.local.state import ClusterState, save
    from ephemeral.reaper import reap

    spec = resolve("ray/adhoc-cpu", "ci-cpu")
    ident = ClusterIdentity.manual(spec.spec.name, "cut-short")
    cdir = ephemeral_home / "clusters" / ident.name
    save(cdir, ClusterState(handle=make_handle(spec, ident, backend="local",
                                               endpoints=Endpoints()),
                            uid="u", slot=-1, plan=[], deleting=True))
    backend = LocalBackend()
    [listed] = backend.list_owned()
    assert listed.deleting is not None
    assert not listed.deleting.in_background
    [dry] = reap(backend, lookup=None, dry_run=True)
    assert (dry.delete, dry.deleted) == (True, False)
    assert "cut short" in dry.reason
    assert cdir.exists()
    [d] = reap(backend, lookup=None)
    assert (d.delete, d.deleted, d.error) == (True, True, "")
    assert not cdir.exists()
    assert backend.list_owned() == []
