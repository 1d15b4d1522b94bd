"""Provision and tear down clusters: the rules that hold whoever calls (CLI, Airflow, tests).

The rule "what a failed setup created is deleted" lives here once: ``deleting_on_failure``
wraps everything after ``create`` (readiness timeout, a node that died, an interrupt, any bug),
in the CLI and the operator, and around its trigger's failure event; ``delete_killed`` is what
a kill calls. Nothing downstream deletes the cluster of a failed setup: Airflow 3.3 never runs
its teardown. Its exception, a cluster the setup did not make but adopted, is
``deletes_after_failure``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from ephemeral.backends.base import ClusterBackend, ClusterHandle, ClusterStatus
from ephemeral.backends.readiness import Readiness
from ephemeral.errors import ClusterFailed
from ephemeral.specs.identity import ClusterIdentity
from ephemeral.specs.resolve import ResolvedSpec

DEFAULT_READY_TIMEOUT = 600.0
# The Airflow setup's (CreateClusterOperator's) default: a scheduled cluster may wait for nodes
# (an autoscaler's, a GPU pool's) longer than an interactive `up`. A form that creates one
# budgets its job's timeout with it (ephemeral.adhoc.check_timeout_within_spec_ttl).
SETUP_READY_TIMEOUT = 900.0
ProgressFn = Callable[[ClusterStatus], None]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Provisioned:
    handle: ClusterHandle
    status: ClusterStatus
    seconds_to_ready: float
    adopted: bool = False
    """It existed before this call (create is idempotent by identity, and says so:
    ``ClusterHandle.adopted``): not this call's to delete when the wait fails."""


def provision(
    backend: ClusterBackend,
    spec: ResolvedSpec,
    identity: ClusterIdentity,
    *,
    timeout: float = DEFAULT_READY_TIMEOUT,
    on_progress: ProgressFn | None = None,
    poll: float | None = None,
) -> Provisioned:
    """Create the cluster and wait until usable; delete it again if that fails, unless it
    existed before (``deletes_after_failure``): a second ``up`` of a name that times out or is
    interrupted leaves the cluster of the first (whose own call still deletes it if it never
    gets ready)."""
    started = time.monotonic()
    handle = backend.create(spec, identity=identity)
    wait = Readiness.within(backend, handle, timeout=timeout, poll_interval=poll)
    with deleting_on_failure(backend, handle):
        status = wait.wait(on_progress)
    return Provisioned(handle, status, time.monotonic() - started, adopted=handle.adopted)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def interrupt_on_stop_signals() -> None:
    """Make SIGTERM (a CI job's timeout, `timeout`, a kill) and SIGHUP (a closed terminal) end
    the process as Ctrl-C does: a KeyboardInterrupt, so every cleanup that covers an interrupt
    (``deleting_on_failure``, a job stopped on interrupt) covers them too. By default Python
    dies on them without unwinding, leaving what it made running."""
    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    for stop in STOP_SIGNALS:
        # One the caller ignores stays ignored: `nohup ephemeral submit …` must outlive the
        # terminal, its job and cluster with it.
        if signal.getsignal(stop) is not signal.SIG_IGN:
            signal.signal(stop, interrupt)


def deletes_after_failure(handle: ClusterHandle, *, cluster_failed: bool) -> bool:
    """Whether a failed, timed-out or killed wait for ``handle``'s cluster deletes it: yes,
    unless the cluster existed before the call that waits (``ClusterHandle.adopted``: an
    earlier try's, or another caller's of the name, whose work may run on it; a cleared
    Airflow task re-runs its setup, which adopts the cluster its downstream tasks use). An
    adopted cluster goes only when it failed itself (``cluster_failed``: a node died): nobody
    can use it, and its maker may be the crashed call this one retries."""
    return cluster_failed or not handle.adopted


def _adopted_note(handle: ClusterHandle) -> str:
    return (f"{handle.name} existed before this call (adopted): not deleted; whoever made it, "
            "its teardown or the reaper deletes it")


@contextmanager
def deleting_on_failure(backend: ClusterBackend, handle: ClusterHandle, *,
                        passes: tuple[type[BaseException], ...] = (),
                        before: Callable[[BaseException], None] | None = None,
                        after: Callable[[float, bool], None] | None = None) -> Iterator[None]:
    """Delete the cluster when the block raises anything but ``passes`` (Airflow's
    TaskDeferred: the wait goes on in the triggerer) and ``deletes_after_failure`` allows it;
    then re-raise. ``before`` runs first (a log line, a flag that keeps ``on_kill`` from
    deleting twice); ``after`` gets when the deletion started (epoch seconds) and whether it
    completed (the run report's record)."""
    try:
        yield
    except passes:
        raise
    except BaseException as err:
        # A ClusterFailed, or an error raised from one (a trigger's failure event names it).
        failed = any(isinstance(e, ClusterFailed) for e in (err, err.__cause__))
        if not deletes_after_failure(handle, cluster_failed=failed):
            err.add_note(_adopted_note(handle))
            raise
        if before:
            before(err)
        started = time.time()
        deleted = delete_after_failure(backend, handle, err)
        if after:
            after(started, deleted)
        raise


def delete_after_failure(backend: ClusterBackend, handle: ClusterHandle,
                         err: BaseException) -> bool:
    """Delete what a failed setup made; whether that completed. The original failure stays
    the error, and a cleanup that fails too is noted on it (the reaper is then the last
    line). A stop signal during the deletion (a second Ctrl-C) waits for its end: cut short,
    it left the cluster half deleted, holding its resources until the reaper's pass."""
    with stop_signals_held() as held:
        try:
            backend.delete(handle, wait=True)
        except Exception as cleanup:  # noqa: BLE001 - any cleanup failure is reported, not raised
            err.add_note(f"deleting {handle.name} after the failure also failed: "
                         f"{type(cleanup).__name__}: {cleanup}")
            deleted = False
        else:
            err.add_note(f"{handle.name} was deleted after the failure: nothing of it is left")
            deleted = True
    if held and not isinstance(err, KeyboardInterrupt):  # an interrupt is already under way
        try:
            signal.raise_signal(held[0])  # as it would have come, by its own handler
        except BaseException as stopped:
            for note in getattr(err, "__notes__", ()):  # what became of the cluster
                stopped.add_note(note)
            raise
    return deleted


@contextmanager
def stop_signals_held() -> Iterator[list[int]]:
    """Hold SIGINT and the STOP_SIGNALS until the block ends; the list holds those that came.
    Only the main thread can set handlers: elsewhere (a triggerer's, a test's thread) none are
    held. A signal the caller ignores stays ignored."""
    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return

    def hold(signum: int, _frame: FrameType | None) -> None:
        held.append(signum)

    before = {stop: signal.getsignal(stop) for stop in (signal.SIGINT, *STOP_SIGNALS)}
    for stop, handler in before.items():
        if handler is not signal.SIG_IGN:
            signal.signal(stop, hold)
    try:
        yield held
    finally:
        for stop, handler in before.items():  # None: set outside Python, the default then
            signal.signal(stop, signal.SIG_DFL if handler is None else handler)


def delete_killed(backend: ClusterBackend, handle: ClusterHandle, by: str, *,
                  reason: str = "killed") -> None:
    """A setup killed while it waits (in the worker or deferred), or whose in-process test run
    ends without its teardown (``reason`` says which): the cluster goes, whatever
    ``on_failure`` says, unless the setup adopted it (``deletes_after_failure``), and is then
    recorded in its run's report, as a failed setup's is (no teardown runs for it). The
    deletion's error, if any, is raised after the record."""
    if not deletes_after_failure(handle, cluster_failed=False):
        log.warning("setup %s was killed: %s", by, _adopted_note(handle))
        return
    started, deleted = time.time(), None
    try:
        backend.delete(handle, wait=True)  # False (a newer cluster has the name): gone too
        deleted = time.time()
    finally:
        from ephemeral.report.deletions import record_deleted

        record_deleted(handle, by=f"{by} ({reason})", started=started, deleted=deleted,
                       jobs=[], release=False, deletion="complete" if deleted else
                       f"failed ({reason}): the reaper deletes it")


def teardown(
    backend: ClusterBackend, target: ClusterHandle | ClusterIdentity | str
) -> float:
    """Delete and wait until nothing is left; return the seconds it took."""
    started = time.monotonic()
    backend.delete(target, wait=True)
    return time.monotonic() - started
